"""Supervised session tasks of the transcriber (issue 15): whatever a session's recognition task
meets (a failing push, a lost recognizer, recognition down, a task that ends), the failure is logged
with the session, the user is told, and the session's next audio is heard again. No NATS, no model:
the worker runs on a recording bus with in-process shards that script what recognition hears."""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator, Iterator, MutableMapping
from typing import Any, cast
from unittest import mock

import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from structlog.testing import capture_logs

from contracts import events as ev
from contracts.envelope import new_id
from contracts.subjects import BY_NAME
from tests.support.harness import WorkerHarness
from workers.runtime import Delivery
from workers.speech.pool import ChildLost, PoolBroken
from workers.transcriber import worker as transcriber_module
from workers.transcriber.pipeline import Output
from workers.transcriber.sessions import SESSION_RESTARTS, SessionTasks
from workers.transcriber.worker import Transcriber, TranscriberSettings

SID = "session-supervised-01"
SPEECH, SILENCE = b"\x01" * 640, bytes(640)  # 20 ms frames the fake hears as speech / as silence
HEARD = ["vad.speech_started", "transcript.partial", "vad.speech_stopped", "transcript.final", "turn.user"]


class FakeShards:
    """In place of shards.Shards, in the worker's process: a frame with a non-zero byte is speech, a
    zero frame silence; an utterance gives speech_started and a partial at its first frame,
    speech_stopped and its final at the first silence after it. ``failures``: what the next pushes
    raise, in order (the session's state is gone with each); ``broken``: what every push raises."""

    def __init__(self) -> None:
        self.failures: deque[BaseException] = deque()
        self.broken: BaseException | None = None
        self.pushes = 0
        self.turns: dict[str, str] = {}  # session -> its turn in progress
        self.closed: list[tuple[str, bool]] = []  # (session, finish) of each close

    async def start(self) -> None:
        return None

    async def push(self, session_id: str, frames: list[tuple[bytes, float]]) -> tuple[list[Output], bool]:
        self.pushes += 1
        failure = self.broken or (self.failures.popleft() if self.failures else None)
        if failure is not None:
            self.turns.pop(session_id, None)
            raise failure
        outputs: list[Output] = []
        for pcm, at in frames:
            turn = self.turns.get(session_id)
            if any(pcm) and turn is None:
                turn = self.turns[session_id] = new_id()
                outputs += [Output("speech_started", turn, wall_at=at), Output("partial", turn, text="hello")]
            elif not any(pcm) and turn is not None:
                del self.turns[session_id]
                outputs += [
                    Output("speech_stopped", turn, wall_at=at),
                    Output("final", turn, wall_at=at, text="hello there"),
                ]
        return outputs, session_id in self.turns

    async def close(self, session_id: str, finish: bool) -> list[Output]:
        self.closed.append((session_id, finish))
        turn = self.turns.pop(session_id, None)
        return [Output("final", turn, text="hello", forced=True)] if finish and turn is not None else []

    def problems(self) -> list[str]:
        return []

    def shutdown(self) -> None:
        return None


@pytest.fixture
def shards() -> Iterator[FakeShards]:
    fake = FakeShards()
    with mock.patch.object(transcriber_module, "Shards", lambda *_args: fake):
        yield fake


@pytest.fixture(autouse=True)
async def quick() -> AsyncIterator[None]:
    async with asyncio.timeout(2.0):
        yield


@contextlib.asynccontextmanager
async def transcriber(shards: FakeShards) -> AsyncIterator[tuple[Transcriber, WorkerHarness[Transcriber]]]:
    """The worker's audio logic on a recording bus; its partition leases (KV, NATS) are not started."""
    h = WorkerHarness(Transcriber, TranscriberSettings(turn_policy="silence"))
    worker = Transcriber(cast(TranscriberSettings, h.settings), h.bus)
    try:
        yield worker, h
    finally:
        await worker.stop()


async def say(worker: Transcriber, *frames: bytes, session_id: str = SID) -> None:
    """Frames as the partitioned subscription hands them over, each given time to be recognised."""
    subject = BY_NAME["audio.in.partition"].subject(session_id, worker.bus.prefix, partition="3")
    for pcm in frames:
        meta = ev.AudioInMeta(session_id=session_id, producer="edge")
        await worker.on_audio(meta, Delivery(Msg(_client=cast(Client, None), subject=subject, data=pcm)))
        for _ in range(3):
            await asyncio.sleep(0)


def kinds(h: WorkerHarness[Transcriber]) -> list[str]:
    return [sent.event.kind for sent in h.bus.sent]


def logged_for(logs: list[MutableMapping[str, Any]], level: str) -> list[MutableMapping[str, Any]]:
    return [entry for entry in logs if entry["log_level"] == level and entry.get("session_id") == SID]


UTTERANCE = (SPEECH, SPEECH, SPEECH, SILENCE)


async def test_an_utterance_is_heard(shards: FakeShards) -> None:
    async with transcriber(shards) as (worker, h):
        await say(worker, *UTTERANCE)
        await h.wait_for(ev.UserTurn)
        assert kinds(h) == HEARD


@pytest.mark.parametrize(
    ("failure", "told"),
    [
        (RuntimeError("a bug in the pipeline"), "recognition_lost"),
        (ChildLost("transcriber", 0, "was killed (SIGKILL)", SID), "recognition_lost"),
        # A cancellation leaking from below ends the task (as cancelled, not by us): it used to stay dead.
        (asyncio.CancelledError(), "recognition_lost"),
        # PoolBroken used to end the task: the session was never heard again in this process.
        (PoolBroken("transcriber pool broken: test"), "recognition_unavailable"),
    ],
    ids=["a-bug", "recognizer-state-lost", "task-ended", "recognition-down"],
)
async def test_a_failure_is_logged_with_the_session_told_and_the_next_utterance_heard(
    shards: FakeShards, failure: BaseException, told: str
) -> None:
    shards.failures.append(failure)
    async with transcriber(shards) as (worker, h):
        with capture_logs() as logs:
            await say(worker, SPEECH)
            await say(worker, *UTTERANCE)
            await h.wait_for(ev.UserTurn)
        [error] = h.published(ev.ErrorEvent)
        assert (error.session_id, error.code, error.retryable) == (SID, told, True)
        assert kinds(h) == ["error", *HEARD]
        assert logged_for(logs, "error"), logs


async def test_recognition_down_for_good_is_told_once_per_session(shards: FakeShards) -> None:
    shards.broken = PoolBroken("transcriber pool broken: crash loop")
    async with transcriber(shards) as (worker, h):
        with capture_logs() as logs:
            await say(worker, *UTTERANCE * 10)
            await say(worker, *UTTERANCE, session_id="session-supervised-02")
        assert [(e.session_id, e.code) for e in h.published(ev.ErrorEvent)] == [
            (SID, "recognition_unavailable"),
            ("session-supervised-02", "recognition_unavailable"),
        ]
        assert len(logged_for(logs, "error")) == 1


async def test_a_session_whose_task_keeps_ending_is_not_restarted_in_a_loop(shards: FakeShards) -> None:
    shards.broken = asyncio.CancelledError()
    async with transcriber(shards) as (worker, h):
        with capture_logs() as logs:
            await say(worker, *UTTERANCE * 25)  # 100 frames: 2 s of audio
        limit = SESSION_RESTARTS
        assert shards.pushes == limit + 1  # the first task, then the bounded re-opens
        assert [e.code for e in h.published(ev.ErrorEvent)] == ["recognition_lost"] * limit + [
            "recognition_unavailable"
        ]
        assert any(SID in problem or "1 session" in problem for problem in worker.problems())
        assert len(logged_for(logs, "error")) == limit + 2  # each end, and the giving up
        # Other sessions are heard.
        shards.broken = None
        await say(worker, *UTTERANCE, session_id="session-supervised-02")
        assert kinds(h)[-5:] == HEARD


async def test_a_moved_partition_forgets_its_sessions_unfinished_and_an_ended_session_is_finished() -> None:
    shards = FakeShards()
    heard: list[tuple[str, Output]] = []
    told: list[tuple[str, str]] = []

    async def publish(session_id: str, output: Output) -> None:
        heard.append((session_id, output))

    async def tell(session_id: str, code: str, message: str) -> None:
        told.append((session_id, code))

    tasks = SessionTasks(shards, publish, tell, queue_frames=50, idle_s=300.0)
    await tasks.feed("moving", 1, SPEECH, 1.0)
    await tasks.feed("staying", 2, SPEECH, 1.0)
    await asyncio.sleep(0)
    await tasks.release(1)
    assert "moving" not in tasks and "staying" in tasks and shards.closed == [("moving", False)]
    heard.clear()
    await tasks.end("staying")
    assert "staying" not in tasks and shards.closed[-1] == ("staying", True)
    assert [(sid, out.kind, out.forced) for sid, out in heard] == [("staying", "final", True)]
    await tasks.forget_idle()  # nothing left, nothing told
    assert told == []
