"""What a tool round adds to a turn over the bus request itself (issue 17: target <= 5 ms).

One process, as the tests run it: a real nats-server, the scripted OpenAI-compatible server (real
HTTP and SSE), the tools worker and the orchestrator. Each turn, the scripted model calls
``calculate`` and then answers; the orchestrator's model is wrapped to time the end of the first
stream and the start of the second. Per turn:

  round     end of the model's stream with the call -> start of the request with the result
  request   the bus request itself, as tool.result's duration_ms says
  overhead  round - request: assembling the call, tool.call and tool.result events, messages

    .venv/bin/python -m bench.tool_round [--turns 200] [--pause-ms 20]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import nats
import uvloop
from nats.aio.msg import Msg

from contracts import events as ev
from contracts.envelope import new_id
from ops.servers import start_nats
from tests.support.scripted_llm import ScriptedLLM
from workers.orchestrator.worker import WORKER, OrchestratorSettings, OrchestratorWorker
from workers.runtime import Bus, running_worker
from workers.runtime.logging import configure_logging
from workers.runtime.settings import RuntimeSettings
from workers.tools.worker import WORKER as TOOLS

PREFIX = "bench"
SESSION = "bench-tools-1"


def timed(stream: Callable[..., AsyncIterator[Any]], marks: list[tuple[str, float]]) -> Callable[..., Any]:
    async def wrapper(*args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        marks.append(("start", time.perf_counter()))
        async for chunk in stream(*args, **kwargs):
            yield chunk
        marks.append(("end", time.perf_counter()))

    return wrapper


def percentile(values: list[float], q: float) -> float:
    return sorted(values)[min(len(values) - 1, int(q * len(values)))]


async def run(nats_url: str, turns: int, pause_s: float) -> None:
    marks: list[tuple[str, float]] = []

    def started(worker: OrchestratorWorker) -> None:
        setattr(worker.model, "stream", timed(worker.model.stream, marks))  # noqa: B010 - an instance's method

    settings = OrchestratorSettings(nats_url=nats_url, subject_prefix=PREFIX, memory_timeout_s=0.05)
    async with (
        ScriptedLLM() as llm,
        running_worker(TOOLS, RuntimeSettings(nats_url=nats_url, subject_prefix=PREFIX)),
        running_worker(WORKER, settings.model_copy(update={"llm_base_url": llm.base_url}), started=started),
    ):
        client = await nats.connect(nats_url)
        bus = Bus("bench", PREFIX)
        bus.attach(client)
        results: asyncio.Queue[ev.ToolResult] = asyncio.Queue()
        done: asyncio.Queue[ev.ReplyDone] = asyncio.Queue()

        async def on_result(msg: Msg) -> None:
            results.put_nowait(ev.ToolResult.model_validate_json(msg.data))

        async def on_done(msg: Msg) -> None:
            done.put_nowait(ev.ReplyDone.model_validate_json(msg.data))

        await client.subscribe(f"{PREFIX}.ev.{SESSION}.turn.tool_result", cb=on_result)
        await client.subscribe(f"{PREFIX}.ev.{SESSION}.turn.reply", cb=on_done)
        rounds, requests = [], []
        for i in range(turns + 5):  # the first 5 warm up
            llm.script(tool_calls=[("calculate", {"expression": f"{i} * 7"})])
            llm.script(reply=f"{i} times 7 is {i * 7}.")
            marks.clear()
            turn = ev.UserTurn(
                session_id=SESSION, turn_id=new_id(), producer="bench", text=f"{i} times 7?", source="typed"
            )
            await bus.publish(turn, durable=True)
            reply = await asyncio.wait_for(done.get(), 10)
            result = await asyncio.wait_for(results.get(), 1)
            assert reply.finish_reason == "stop" and result.status == "ok", (reply, result)
            (_, end1), (_, start2) = marks[1], marks[2]
            if i >= 5:
                rounds.append((start2 - end1) * 1000)
                requests.append(result.duration_ms)
            await asyncio.sleep(pause_s)
        await client.drain()
    overheads = [r - q for r, q in zip(rounds, requests, strict=True)]
    for name, values in (("round", rounds), ("request", requests), ("overhead", overheads)):
        print(
            f"{name:9} p50 {statistics.median(values):6.2f} ms   p95 {percentile(values, 0.95):6.2f} ms"
            f"   ({len(values)} turns)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--turns", type=int, default=200, help="Turns measured (default 200)")
    parser.add_argument("--pause-ms", type=float, default=20.0, help="Idle time between turns (default 20)")
    args = parser.parse_args()
    configure_logging("warning", "json", process="bench")
    with tempfile.TemporaryDirectory(prefix="tool-bench-") as tmp:
        server = start_nats(Path(tmp) / "nats")
        try:
            uvloop.run(run(server.url, args.turns, args.pause_ms / 1000))
        finally:
            server.stop()


if __name__ == "__main__":
    main()
