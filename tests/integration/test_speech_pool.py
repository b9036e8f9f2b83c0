"""The supervised child-process pool (workers/speech/pool.py) with real spawned processes killed
by SIGKILL: cheap child functions for the mechanism, and the transcriber's real recognition
pipeline (silero VAD + pocketsphinx, piper speech) for the recovery that matters.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import re
import signal
import time

import pytest
from prometheus_client import REGISTRY

from tests.support.speech import silence, synthesize, word_error_rate
from workers.speech.pool import ChildLost, ChildPool, PoolBroken
from workers.transcriber.endpoint import EndpointConfig
from workers.transcriber.shards import ShardConfig, Shards

SENTENCE = "Please turn off the lights in the kitchen."

# ------------------------------------------------------------------ run in the children

_counts: dict[str, int] = {}


def loaded(_: str) -> None:
    """A cheap initializer: the mechanism does not need models."""


def cannot_load(_: str) -> None:
    raise RuntimeError("no model here")


def count(key: str) -> int:
    """Per-key state kept in the child: how many calls this key made in this process."""
    _counts[key] = _counts.get(key, 0) + 1
    return _counts[key]


def nap(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


# ------------------------------------------------------------------ helpers


async def noticed(pool: ChildPool[str] | Shards) -> list[str]:
    """The problems once the pool has noticed a death (a kill is not seen at once)."""
    for _ in range(1000):
        if problems := pool.problems():
            return problems
        await asyncio.sleep(0.01)
    raise AssertionError("the pool did not notice the death within 10 s")


def metric(name: str, pool: str) -> float | None:
    return REGISTRY.get_sample_value(name, {"pool": pool})


# ------------------------------------------------------------------ the mechanism


async def test_a_killed_child_is_respawned_and_each_key_that_lost_state_is_told_once() -> None:
    pool = ChildPool("test-kill", 2, loaded, "")
    await pool.start()
    try:
        pids = {key: await pool.call(key, os.getpid) for key in (f"session-{n}" for n in range(12))}
        doomed_pid = pids["session-0"]
        running, idle, fresh = [key for key, pid in pids.items() if pid == doomed_pid][:3]
        other = next(key for key, pid in pids.items() if pid != doomed_pid)
        for key in (running, running, idle, other):
            await pool.call(key, count, key)
        pool.forget(fresh)  # its state is gone by the caller's choice: not reported

        call = asyncio.create_task(pool.call(running, nap, 30.0))
        await asyncio.sleep(0.1)
        os.kill(doomed_pid, signal.SIGKILL)
        with pytest.raises(ChildLost) as lost:
            await call
        assert lost.value.key == running and "killed by SIGKILL" in str(lost.value)
        assert await noticed(pool) == [f"test-kill child {lost.value.child} restarting after a crash (1 in 60 s)"]

        assert await pool.call(running, count, running) == 1  # the new process, fresh state
        with pytest.raises(ChildLost) as told:  # had no call in flight: told on its next call, once
            await pool.call(idle, count, idle)
        assert told.value.key == idle
        assert await pool.call(idle, count, idle) == 1
        assert await pool.call(fresh, os.getpid) not in (doomed_pid, None)  # a new key on the same child works
        assert await pool.call(other, count, other) == 2  # the other child kept its state
        assert pool.problems() == []
        assert metric("sb_pool_crashes_total", "test-kill") == metric("sb_pool_restarts_total", "test-kill") == 1
    finally:
        pool.shutdown()


async def test_unpinned_calls_fail_only_where_the_child_died_and_errors_come_back() -> None:
    pool = ChildPool("test-any", 1, loaded, "")
    await pool.start()
    try:
        [pid] = pool.pids()
        running = asyncio.create_task(pool.call(None, nap, 30.0))
        waiting = asyncio.create_task(pool.call(None, nap, 0.0))
        await asyncio.sleep(0.1)
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(ChildLost) as lost:
            await running
        assert lost.value.key is None
        assert await waiting not in (pid, None)  # ran on the respawned child
        with pytest.raises(ValueError, match="invalid literal") as error:
            await pool.call(None, int, "not a number")
        assert any("in child process" in note for note in error.value.__notes__)
    finally:
        pool.shutdown()


async def test_a_crash_loop_breaks_the_pool_instead_of_spinning() -> None:
    pool = ChildPool("test-loop", 1, loaded, "", crash_limit=3)
    await pool.start()
    try:
        for _ in range(3):
            await pool.start()  # waits for the respawned child
            [pid] = pool.pids()
            os.kill(pid, signal.SIGKILL)
            await noticed(pool)
        assert pool.problems() == [
            "test-loop pool broken: crash loop: child 0 died 3 times in 60 s (last killed by SIGKILL)"
        ]
        with pytest.raises(PoolBroken, match="crash loop"):
            await pool.call(None, os.getpid)
        assert metric("sb_pool_restarts_total", "test-loop") == 2
        assert not [p for p in multiprocessing.active_children() if p.name.startswith("test-loop")]
    finally:
        pool.shutdown()


async def test_a_child_that_cannot_load_breaks_the_pool_at_start() -> None:
    pool = ChildPool("test-load", 2, cannot_load, "")
    with pytest.raises(PoolBroken, match="could not start: RuntimeError: no model here"):
        await pool.start()
    [problem] = pool.problems()
    assert re.fullmatch(r"test-load pool broken: child \d could not start: RuntimeError: no model here", problem)
    pool.shutdown()


async def test_shutdown_kills_a_busy_child_after_the_grace() -> None:
    pool = ChildPool("test-stop", 2, loaded, "")
    await pool.start()
    busy = asyncio.create_task(pool.call("busy", nap, 30.0))
    await asyncio.sleep(0.1)
    started = time.monotonic()
    pool.shutdown(grace_s=0.5)
    assert time.monotonic() - started < 2.0
    with pytest.raises(PoolBroken, match="shut down"):
        await busy
    assert not [p for p in multiprocessing.active_children() if p.name.startswith("test-stop")]
    with pytest.raises(PoolBroken):
        await pool.call("busy", os.getpid)


# ------------------------------------------------------------------ the transcriber's recognition


@pytest.mark.slow
async def test_transcriber_shards_recover_after_their_process_is_killed() -> None:
    config = ShardConfig(
        "pocketsphinx",
        None,
        "en",
        vad_onnx=True,
        vad_threshold=0.5,
        vad_min_silence_ms=160,
        endpoint=EndpointConfig(),
        partial_interval_s=0.25,
    )
    speech = synthesize(SENTENCE) + silence(1.5)
    frames = [(speech[at : at + 640], 1_700_000_000 + at / 32_000) for at in range(0, len(speech), 640)]
    shards = Shards(1, config)
    await shards.start()
    try:
        push = asyncio.create_task(shards.push("killed", frames))
        await asyncio.sleep(0.05)
        for process in multiprocessing.active_children():
            if process.name == "transcriber-0":
                process.kill()
        with pytest.raises(ChildLost) as lost:
            await push
        assert lost.value.key == "killed"
        assert (await noticed(shards))[0].startswith("transcriber child 0 restarting after a crash")

        for session in ("killed", "new"):  # the same session and a new one, on the respawned process
            outputs, _ = await shards.push(session, frames)
            outputs += await shards.close(session, finish=True)
            kinds = [out.kind for out in outputs]
            assert "speech_started" in kinds and "speech_stopped" in kinds, kinds
            final = next(out for out in outputs if out.kind == "final")
            assert word_error_rate(SENTENCE, final.text) <= 0.3, final.text
        assert shards.problems() == []
    finally:
        shards.shutdown()
