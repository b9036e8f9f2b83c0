"""Health that tells the truth, as an operator sees it: a transcriber whose recognition pool is broken is
listed as degraded, with the reason, by service discovery and by `sb status` (exit status 3).

Issue 15 ("a worker whose consumer, pool or partition lease is broken reports degraded through service
discovery, not healthy"; observation 3: "health still says all services are healthy"). The transcriber
runs one recognition child here (harness.py). One SIGKILL of it: degraded while the child is respawned,
healthy again once it has loaded. Killed again and again: the pool gives up (a crash loop) and stays
broken; the worker says so until it is restarted, and is healthy again after that.

`sb status` runs in this process (ops.cli._status, what the command runs) with the expected services
narrowed to the ones this test starts: the command exits 1 for a missing service before it looks at
health, and starting all of them here would load every model for nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal

import pytest

from ops import access, cli, registry
from ops.health import ServiceInstance, discover
from tests.support.waiting import eventually
from workers.runtime.settings import RuntimeSettings

from .harness import Stack

ONE_CRASH = "transcriber child 0 restarting after a crash"
CRASH_LOOP = "transcriber pool broken: crash loop"


async def transcriber(stack: Stack) -> ServiceInstance:
    [found] = [s for s in await discover(stack.nc, wait_s=0.3) if s.name == "transcriber"]
    return found


async def until_health(stack: Stack, says: str | None, within: float) -> ServiceInstance:
    """The transcriber as discovery lists it once one of its problems contains ``says`` (None: it has none)."""
    seen: ServiceInstance | None = None
    try:
        async with asyncio.timeout(within):
            while True:
                seen = await transcriber(stack)
                if not seen.problems if says is None else any(says in p for p in seen.problems):
                    return seen
    except TimeoutError:
        raise AssertionError(f"the transcriber's health never said {says or 'ok'!r} in {within:g} s: {seen}") from None


async def sb_status(stack: Stack, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    settings = RuntimeSettings(nats_url=stack.nats_url, nats_users_file=stack.bus_users / access.CREDENTIALS)
    capsys.readouterr()
    code = await cli._status(settings, watch=False, wait=0.0)
    return code, capsys.readouterr().out


async def kill_children(stack: Stack) -> list[int]:
    """SIGKILL the recognition children alive now (none: wait for the respawned one)."""
    await eventually(lambda: bool(stack.recognition_children()), within=20.0)
    children = stack.recognition_children()
    for pid in children:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return children


async def test_a_broken_recognition_pool_is_degraded_in_discovery_and_sb_status(
    stack: Stack, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(registry, "SERVICES", ("transcriber",))
    await stack.ensure("transcriber")
    await until_health(stack, None, within=30.0)  # every child loaded
    assert (await sb_status(stack, capsys))[0] == 0

    # One crash: degraded while the child is respawned and loads, then healthy on its own.
    killed = await kill_children(stack)
    assert (await until_health(stack, ONE_CRASH, within=5.0)).problems == (f"{ONE_CRASH} (1 in 60 s)",)
    await until_health(stack, None, within=30.0)
    assert set(stack.recognition_children()).isdisjoint(killed)

    # A crash loop: the pool gives up, and the worker says so for as long as it runs.
    for _ in range(10):
        await kill_children(stack)
        if CRASH_LOOP in " ".join((await until_health(stack, "transcriber", within=5.0)).problems):
            break
    broken = await transcriber(stack)
    assert any(p.startswith(CRASH_LOOP) and "(last killed by SIGKILL)" in p for p in broken.problems), broken
    code, shown = await sb_status(stack, capsys)
    assert code == 3, shown
    assert f"DEGRADED: {CRASH_LOOP}" in shown and "degraded: transcriber" in shown, shown
    await asyncio.sleep(2.0)
    assert (await transcriber(stack)).problems == broken.problems  # no recovery but a restart

    await stack.stop("transcriber")
    await stack.ensure("transcriber")
    await until_health(stack, None, within=30.0)
    code, shown = await sb_status(stack, capsys)
    assert code == 0 and "all expected services healthy" in shown, shown
