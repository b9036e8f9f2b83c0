"""The sessions a transcriber replica hears: per session, a bounded queue of audio frames drained in
order by the session's own task, which pushes them to recognition (shards.Shards) and hands what
comes back to the worker to publish. A plain class: the worker's bus is two callbacks.

Supervised: a failure never silently stops a session's audio.

- A push that fails (the session's recognition process died and took its state: ChildLost; or a
  bug) is logged with the session, the user gets an ``error`` event (``recognition_lost``) and the
  next frames start a new utterance.
- Recognition down (PoolBroken): logged and told (``recognition_unavailable``) once, not per frame;
  the frames are dropped until a push succeeds again (health says why, from the pool).
- A task that ends anyway (an exception it does not catch, a cancellation from below) is logged
  with the session when it ends; the session's next audio re-opens it and tells the user
  (``recognition_lost``: the frames it held are gone). At most ``restarts`` re-opens per session
  in ``restart_window_s``; past that the session's audio is dropped until the window allows
  another, the user is told (``recognition_unavailable``) and ``problems()`` says so.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import KW_ONLY, dataclass, field
from typing import Protocol

from workers.runtime.logging import get_logger
from workers.speech.pool import PoolBroken

from .pipeline import Output

log = get_logger("transcriber")

SESSION_RESTARTS = 5  # re-opens of one session's task within SESSION_RESTART_WINDOW_S
SESSION_RESTART_WINDOW_S = 60.0

Frame = tuple[bytes, float]  # PCM16 and its capture time (epoch s)
Publish = Callable[[str, Output], Awaitable[None]]  # (session id, output)
Tell = Callable[[str, str, str], Awaitable[None]]  # (session id, error code, message): an error event


class Recognition(Protocol):
    """What the sessions need of recognition: shards.Shards."""

    async def push(self, session_id: str, frames: list[Frame]) -> tuple[list[Output], bool]: ...

    async def close(self, session_id: str, finish: bool) -> list[Output]: ...


@dataclass
class Session:
    partition: int
    queue: asyncio.Queue[Frame]
    task: asyncio.Task[None] | None = None
    last_audio: float = field(default_factory=time.monotonic)
    in_turn: bool = False
    restarts: deque[float] = field(default_factory=deque)  # monotonic times its task was re-opened, in the window
    given_up: bool = False  # its task kept ending: its audio is dropped for now (told, in problems)
    unavailable: bool = False  # told recognition is down (PoolBroken); until a push succeeds again


@dataclass(eq=False)
class SessionTasks:
    recognition: Recognition
    publish: Publish
    tell: Tell
    _: KW_ONLY
    queue_frames: int  # frames buffered per session; the oldest is shed past it
    idle_s: float  # a session without audio for this long (and not in a turn) is forgotten
    restarts: int = SESSION_RESTARTS
    restart_window_s: float = SESSION_RESTART_WINDOW_S
    sessions: dict[str, Session] = field(default_factory=dict, init=False)

    def __contains__(self, session_id: str) -> bool:
        return session_id in self.sessions

    def problems(self) -> list[str]:
        given_up = sum(session.given_up for session in self.sessions.values())
        return [f"{given_up} session(s) not heard: their recognition task keeps failing"] if given_up else []

    # ------------------------------------------------------------------ audio in

    async def feed(self, session_id: str, partition: int, pcm: bytes, captured_at: float) -> None:
        """One frame of the session's audio (heard on ``partition``), queued for its task."""
        session = self.sessions.get(session_id) or self._open(session_id, partition)
        session.last_audio = time.monotonic()
        if not await self._supervise(session_id, session):
            return  # its task keeps failing: not heard until the restart window allows another
        try:
            session.queue.put_nowait((pcm, captured_at))
        except asyncio.QueueFull:
            # Recognition is falling behind real time: shed the oldest audio rather than grow.
            session.queue.get_nowait()
            session.queue.put_nowait((pcm, captured_at))
            log.warning("transcriber falling behind; oldest audio dropped", session_id=session_id)

    # ------------------------------------------------------------------ sessions out

    async def end(self, session_id: str) -> None:
        """The session is over: its turn in progress is published as a (forced) final."""
        if session_id not in self.sessions:
            return
        self._drop(session_id)
        for output in await self.recognition.close(session_id, finish=True):
            await self.publish(session_id, output)

    async def end_all(self) -> None:
        for session_id in list(self.sessions):
            await self.end(session_id)

    async def release(self, partition: int) -> None:
        """The partition moved to another replica: its sessions are forgotten here, unfinished."""
        for session_id, session in list(self.sessions.items()):
            if session.partition == partition:
                if session.in_turn:
                    log.warning(
                        "session moved to another replica; its utterance in flight is lost",
                        session_id=session_id,
                        partition=partition,
                    )
                self._drop(session_id)
                await self.recognition.close(session_id, finish=False)

    async def forget_idle(self) -> None:
        """Forget the sessions without audio for ``idle_s`` that are not in a turn."""
        cutoff = time.monotonic() - self.idle_s
        for session_id, session in list(self.sessions.items()):
            if session.last_audio < cutoff and not session.in_turn:
                self._drop(session_id)
                await self.recognition.close(session_id, finish=False)

    def _drop(self, session_id: str) -> None:
        session = self.sessions.pop(session_id, None)
        if session is not None and session.task is not None:
            session.task.cancel()

    # ------------------------------------------------------------------ the tasks, supervised

    def _open(self, session_id: str, partition: int) -> Session:
        session = Session(partition, asyncio.Queue(self.queue_frames))
        self.sessions[session_id] = session
        session.task = self._run(session_id, session)
        return session

    def _run(self, session_id: str, session: Session) -> asyncio.Task[None]:
        task = asyncio.create_task(self._process(session_id, session), name=f"transcribe-{session_id}")
        task.add_done_callback(lambda ended: self._ended(session_id, session, ended))
        return task

    def _ended(self, session_id: str, session: Session, task: asyncio.Task[None]) -> None:
        """A session's task ended: by our hand (dropped), or not: then it is said, and the session's
        next audio re-opens it (``_supervise``)."""
        if self.sessions.get(session_id) is not session or session.task is not task:
            return
        error = None if task.cancelled() else task.exception()
        how = "cancelled" if task.cancelled() else repr(error)[:300] if error is not None else "returned"
        log.error("session recognition task ended; re-opened at its next audio", session_id=session_id, how=how)

    async def _supervise(self, session_id: str, session: Session) -> bool:
        """Re-open the session's task if it ended, within the bound; False: it may not run now."""
        if session.task is not None and not session.task.done():
            return True
        now = time.monotonic()
        while session.restarts and session.restarts[0] < now - self.restart_window_s:
            session.restarts.popleft()
        if len(session.restarts) >= self.restarts:
            if not session.given_up:
                session.given_up = True
                log.error(
                    "session recognition task keeps ending; its audio is dropped for now",
                    session_id=session_id,
                    restarts=len(session.restarts),
                    window_s=self.restart_window_s,
                )
                await self.tell(session_id, "recognition_unavailable", "speech recognition keeps failing; please type")
            return False
        session.restarts.append(now)
        session.given_up, session.in_turn = False, False
        session.task = self._run(session_id, session)
        await self.tell(session_id, "recognition_lost", "what you were saying was lost; please say it again")
        return True

    async def _process(self, session_id: str, session: Session) -> None:
        """The session's audio, in order, through its recognizer. A failure never ends the session's
        hearing: it is logged and told to the user, and the next utterance starts afresh."""
        while True:
            frames = [await session.queue.get()]
            while not session.queue.empty():  # catch up in one hop to the shard
                frames.append(session.queue.get_nowait())
            try:
                outputs, session.in_turn = await self.recognition.push(session_id, frames)
                session.unavailable = False
                for output in outputs:
                    await self.publish(session_id, output)
            except PoolBroken as error:  # the frames are dropped (health says why); told once, not per frame
                if not session.unavailable:
                    session.unavailable = True
                    log.error(
                        "recognition is down; this session's audio is not heard",
                        session_id=session_id,
                        error=str(error)[:300],
                    )
                    await self.tell(session_id, "recognition_unavailable", "speech recognition is down; please type")
            except Exception as error:  # ChildLost (its process died) or a bug: the next utterance starts afresh
                log.error(
                    "recognition failed; the session goes on with its next utterance",
                    session_id=session_id,
                    error=repr(error)[:300],
                )
                session.in_turn = False
                await self.tell(session_id, "recognition_lost", "what you were saying was lost; please say it again")
