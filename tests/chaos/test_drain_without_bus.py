"""Workers told to stop (SIGTERM) after nats-server is already gone still exit within a few seconds.

Issue 15, observation 6: "workers sent SIGTERM after NATS was already gone did not exit within 7 s".
A worker's drain has a deadline when the bus is gone: nothing can be acked, published or deleted
then, so waiting for it only delays the stop (and, under ``just up``, supervisord's SIGKILL follows
after 10 s), and closing the dead connection must not end the process with a traceback (exit status 1,
as every worker here did before). Every worker: durable JetStream consumers (orchestrator, tools,
retriever, video; memory's in batches), recorded ephemeral ones (stats, four of them), core NATS only
(keywords, voice), partitioned audio with leases (transcriber), process pools (transcriber, video,
retriever), and the edge (uvicorn's lifespan).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time

from ops.servers import port_open
from tests.support.waiting import eventually

from .harness import REPORT, Stack

WORKERS = ("orchestrator", "memory", "stats", "tools", "keywords", "transcriber", "retriever", "video", "voice", "edge")
#: Well under the 7 s observed, and under supervisord's 10 s grace before its SIGKILL.
EXIT_WITHIN_S = 4.0


async def test_workers_sigtermed_after_nats_is_gone_exit_within_a_few_seconds(stack: Stack) -> None:
    await stack.ensure(*WORKERS)
    outage = asyncio.create_task(stack.restart_nats(down_s=EXIT_WITHIN_S + 6.0))
    try:
        await eventually(lambda: not port_open("127.0.0.1", stack.nats_port), within=10.0)
        await asyncio.sleep(1.0)  # every worker has noticed: its client is reconnecting
        processes = {name: stack.services[name].process for name in WORKERS}
        told = time.monotonic()
        for process in processes.values():
            assert process is not None and process.poll() is None
            process.send_signal(signal.SIGTERM)
        exited: dict[str, float] = {}

        def all_exited() -> bool:
            for name, process in processes.items():
                if name not in exited and process is not None and process.poll() is not None:
                    exited[name] = time.monotonic() - told
            return len(exited) == len(processes)

        with contextlib.suppress(AssertionError):  # the verdict below names who did not exit
            await eventually(all_exited, within=15.0)
    finally:
        await outage
    REPORT.append(
        "[drain without the bus] exit after SIGTERM: " + ", ".join(f"{n} {s:.1f}s" for n, s in sorted(exited.items()))
    )
    slow = {name: exited.get(name) for name in WORKERS if exited.get(name, 99.0) >= EXIT_WITHIN_S}
    logs = "\n".join(stack.log_tail(name, 8) for name in slow)
    assert not slow, f"still running (None) or slow to exit after SIGTERM with the bus gone: {slow}\n{logs}"
    # uvicorn ends a graceful stop by raising the signal it handled again: the edge's status says SIGTERM.
    clean = {name: 0 if name != "edge" else -signal.SIGTERM for name in WORKERS}
    assert {n: p.returncode for n, p in processes.items() if p} == clean
    # Its shutdown (discovery service, drain) failed with a traceback before it was bounded like the workers'.
    assert "Application shutdown failed" not in (stack.logs / "edge.log").read_text(errors="replace")
