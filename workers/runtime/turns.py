"""The turn lifecycle of one session in one place, and the one bounded table that holds sessions.

:class:`TurnLedger` answers what barge-in, flushing and late-output dropping all ask: which turn's
reply is being generated, which turn's speech may still be playing, and which turns were
interrupted (so their late output is dropped) or are over (interrupted, or their audio ended: the
voice never speaks them again). The edge (per socket), the transcriber (barge-in), the voice worker
(the turn it speaks) and the orchestrator (the turn whose reply it generates) keep one per session
and feed it the events they see; it is pure (a clock is injected), so its rules are tested once
(tests/unit/test_turns.py).

:class:`SessionTable` is the bounded map every per-session state lives in: least recently used
first out, never a session that is busy (the caller says what busy means).
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

V = TypeVar("V")

#: Finish reasons after which the reply's speech plays out (the others stop it).
SPOKEN_FINISH = frozenset({"stop", "length"})


class TurnLedger:
    """One session's turns as the assistant goes through them."""

    def __init__(
        self,
        audio_out: bool = False,
        playback_grace_s: float = 60.0,
        remember: int = 64,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.audio_out = audio_out  # replies are spoken, so a finished reply may still be playing
        self.generating: str | None = None  # the turn whose reply is being generated
        self._speaking: str | None = None  # the turn whose speech may still be playing
        self._speaking_until = 0.0
        self._grace = playback_grace_s
        self._interrupted: deque[str] = deque(maxlen=remember)
        self._ended: deque[str] = deque(maxlen=remember)  # turns whose audio ended
        self._clock = clock

    @property
    def speaking(self) -> str | None:
        """The turn whose speech may still play (until its audio.done, at most the grace after its reply)."""
        if self._speaking is not None and self._clock() >= self._speaking_until:
            self._speaking = None
        return self._speaking

    def user_turn(self, turn_id: str) -> None:
        self.generating = turn_id

    def replying(self, turn_id: str) -> None:
        """A piece of the reply to ``turn_id`` was seen (a replica that missed the user turn catches up)."""
        if turn_id not in self._interrupted:
            self.generating = turn_id

    def reply_done(self, turn_id: str, finish_reason: str) -> None:
        if self.generating == turn_id:
            self.generating = None
        if self.audio_out and finish_reason in SPOKEN_FINISH:
            self.speaking_now(turn_id)

    def speaking_now(self, turn_id: str) -> None:
        """Audio of ``turn_id`` is being sent."""
        if not self.over(turn_id):
            self._speaking, self._speaking_until = turn_id, self._clock() + self._grace

    def audio_done(self, turn_id: str) -> None:
        if turn_id not in self._ended:
            self._ended.append(turn_id)
        if self._speaking == turn_id:
            self._speaking = None

    def active(self) -> str | None:
        """The turn a barge-in interrupts: the one being generated, else the one still speaking."""
        return self.generating or self.speaking

    def interrupt(self, turn_id: str | None = None) -> list[str]:
        """Interrupt ``turn_id`` (None: whatever is active); returns the turns now interrupted."""
        turns = [turn_id] if turn_id else list(dict.fromkeys(t for t in (self.generating, self.speaking) if t))
        for turn in turns:
            if turn not in self._interrupted:
                self._interrupted.append(turn)
            if self.generating == turn:
                self.generating = None
            if self._speaking == turn:
                self._speaking = None
        return turns

    def interrupted(self, turn_id: str | None) -> bool:
        """Whether output of ``turn_id`` is late output of an interrupted turn."""
        return turn_id is not None and turn_id in self._interrupted

    def over(self, turn_id: str) -> bool:
        """Whether ``turn_id`` was interrupted or its audio ended: it does not speak (again)."""
        return turn_id in self._interrupted or turn_id in self._ended


class SessionTable(Generic[V]):
    """Per-session state, at most ``limit`` sessions: the least recently used idle one goes first."""

    def __init__(self, limit: int, busy: Callable[[V], bool] = lambda _: False) -> None:
        self.limit = limit
        self._busy = busy
        self._items: OrderedDict[str, V] = OrderedDict()

    def get(self, session_id: str) -> V | None:
        value = self._items.get(session_id)
        if value is not None:
            self._items.move_to_end(session_id)
        return value

    def setdefault(self, session_id: str, make: Callable[[], V]) -> V:
        value = self.get(session_id)
        if value is None:
            value = self._items[session_id] = make()
            self._evict()
        return value

    def pop(self, session_id: str) -> V | None:
        return self._items.pop(session_id, None)

    def __contains__(self, session_id: object) -> bool:
        return session_id in self._items

    def __len__(self) -> int:
        return len(self._items)

    def items(self) -> Iterator[tuple[str, V]]:
        return iter(list(self._items.items()))

    def _evict(self) -> None:
        over = len(self._items) - self.limit
        if over <= 0:
            return
        for session_id, value in list(self._items.items()):
            if not self._busy(value):
                del self._items[session_id]
                over -= 1
                if over == 0:
                    return
