"""Memory's logic, testable without the bus: record events, answer context and history requests.

Recording is group commit: a batch of events (in stream order, each with its stream position) becomes
one ordered list of writes (:func:`plan_writes`) that the store applies in one bulk write. Within a
batch a forget is a barrier: everything before it is written first, then the forget, then what follows.

Context of a turn = the running summary, the user's facts, and the most recent turns that fit the
token budget (newest kept first; returned oldest first; the asking turn itself left out). Tokens are
estimated as ``ceil(chars / 4) + 4`` per turn. The material of a session (its last
``context_turns`` turns, summary and facts: one document, one read) is cached per replica,
LRU-bounded; a stored turn, a new summary or a forget invalidates the session's entry, and a load
that raced an invalidation is not cached, so the cache is never older than the last write this
replica made.
"""

from __future__ import annotations

import contextlib
from collections import Counter, OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import replace
from typing import Protocol, TypeGuard

from contracts import events as ev

from .facts import extract_facts
from .store import Doc, Forget, InsertOnce, SessionMemory, SetFact, SetWindow, Turn, Write

TURN_OVERHEAD_TOKENS = 4
Recordable = ev.UserTurn | ev.ReplyDone | ev.TranscriptFinal | ev.ForgetSession
WINDOW_FIELDS = ("role", "text", "turn_id", "at")
TRIMS_PER_BATCH = 8


def estimate_tokens(text: str) -> int:
    return (len(text) + 3) // 4


class Store(Protocol):
    """What Memory needs of the store (store.MemoryStore)."""

    async def write(self, writes: Sequence[Write]) -> set[str]: ...

    async def trim_window(self, session_id: str, keep: int) -> None: ...

    async def session(self, session_id: str, turns: int) -> SessionMemory: ...

    async def recent_turns(self, session_id: str, limit: int, before: int | None = None) -> list[Turn]: ...


class SummaryScheduler(Protocol):
    def stored(self, session_id: str) -> None: ...

    def forget(self, session_id: str) -> None: ...


class ContextCache:
    def __init__(self, max_sessions: int) -> None:
        self._entries: OrderedDict[str, SessionMemory] = OrderedDict()
        self._loading: Counter[str] = Counter()
        self._stale: set[str] = set()
        self._arrived: dict[str, list[tuple[Turn, int]]] = {}  # turns stored while a load was in flight
        self._max = max_sessions

    def get(self, session_id: str) -> SessionMemory | None:
        entry = self._entries.get(session_id)
        if entry is not None:
            self._entries.move_to_end(session_id)
        return entry

    @contextlib.contextmanager
    def loading(self, session_id: str) -> Iterator[None]:
        """Mark a load in flight, so that an invalidation meanwhile keeps its result out."""
        self._loading[session_id] += 1
        try:
            yield
        finally:
            self._loading[session_id] -= 1
            if not self._loading[session_id]:
                del self._loading[session_id]
                self._stale.discard(session_id)  # the next load starts after the write
                self._arrived.pop(session_id, None)

    def put(self, session_id: str, material: SessionMemory) -> None:
        if session_id in self._stale:
            return
        for turn, keep in self._arrived.pop(session_id, []):  # the load may have read the store before them
            material = _with_turn(material, turn, keep)
        self._entries[session_id] = material
        self._entries.move_to_end(session_id)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)

    def invalidate(self, session_id: str) -> None:
        self._entries.pop(session_id, None)
        if session_id in self._loading:
            self._stale.add(session_id)

    def add_turn(self, session_id: str, turn: Turn, keep: int) -> None:
        """A turn just stored: a cached context gains it (newest first, ``keep`` at most), as the store's
        window does; a load in flight gets it too. Invalidating instead cost a store read for every turn's
        context: at 200 typed turns a second those reads queued behind the writes (1.6 s each) and most turns
        missed the 250 ms deadline; dropping a load that a write overlapped kept every session uncached."""
        if session_id in self._loading:  # kept for the load in flight, which may have read the store before it
            self._arrived.setdefault(session_id, []).append((turn, keep))
        if (entry := self._entries.get(session_id)) is not None:
            self._entries[session_id] = _with_turn(entry, turn, keep)


def _with_turn(material: SessionMemory, turn: Turn, keep: int) -> SessionMemory:
    """``material`` with ``turn`` in place (newest first, one turn per position), ``keep`` at most."""
    turns = [t for t in material.turns if t.position != turn.position] + [turn]
    return replace(material, turns=sorted(turns, key=lambda t: t.position, reverse=True)[:keep])


def assemble(material: SessionMemory, max_tokens: int, exclude_turn_id: str | None) -> tuple[list[ev.MemoryTurn], int]:
    """The most recent turns that fit the budget after the summary and facts, oldest first."""
    used = estimate_tokens(material.summary.text) if material.summary else 0
    used += sum(estimate_tokens(f.text) for f in material.facts)
    chosen: list[ev.MemoryTurn] = []
    for turn in material.turns:
        if turn.turn_id == exclude_turn_id and turn.role == "user":
            continue  # the turn being answered: the orchestrator sends it itself
        cost = estimate_tokens(turn.text) + TURN_OVERHEAD_TOKENS
        if used + cost > max_tokens:
            break
        used += cost
        chosen.append(ev.MemoryTurn(role=turn.role, text=turn.text, turn_id=turn.turn_id, at=turn.at))
    chosen.reverse()
    return chosen, used


def _recalled(event: Recordable) -> TypeGuard[ev.UserTurn | ev.ReplyDone]:
    """A turn to remember: a user turn, or a reply that said something (one that failed or was cancelled at
    once has nothing to recall)."""
    return isinstance(event, ev.UserTurn | ev.ReplyDone) and bool(event.text)


def _fields(event: ev.UserTurn | ev.ReplyDone) -> Doc:
    if isinstance(event, ev.UserTurn):
        return {
            "role": "user",
            "text": event.text,
            "turn_id": event.turn_id,
            "at": event.published_at,
            "source": event.source,
        }
    return {
        "role": "assistant",
        "text": event.text,
        "turn_id": event.turn_id,
        "at": event.published_at,
        "agent": event.agent,
        "finish_reason": event.finish_reason,
    }


def plan_writes(events: Sequence[tuple[Recordable, int]], keep: int) -> list[Write]:
    """The writes that record ``events`` (each with its stream position), in stream order.

    Turns and transcripts are written as they come. Window entries are gathered per session (its newest
    ``keep``: older ones would be trimmed anyway) and facts are set after them (they need the session
    document); both are written before a forget and at the end, so a forget deletes exactly what came
    before it. Every write is idempotent: a redelivered batch changes nothing, and completes a batch a
    crash cut short.
    """
    writes: list[Write] = []
    windows: dict[str, dict[int, Doc]] = {}
    facts: list[SetFact] = []

    def flush() -> None:
        writes.extend(
            SetWindow(session, {p: turns[p] for p in sorted(turns)[-keep:]}) for session, turns in windows.items()
        )
        writes.extend(facts)
        windows.clear()
        facts.clear()

    for event, position in events:
        session = event.session_id
        if isinstance(event, ev.ForgetSession):
            flush()
            writes.append(Forget(session))
        elif isinstance(event, ev.TranscriptFinal):
            writes.append(
                InsertOnce(
                    "transcripts",
                    event.event_id,
                    session,
                    position,
                    {
                        "turn_id": event.turn_id,
                        "text": event.text,
                        "engine": event.engine,
                        "confidence": event.confidence,
                        "audio_start": event.audio_start,
                        "audio_end": event.audio_end,
                        "forced": event.forced,
                        "at": event.published_at,
                    },
                )
            )
        elif _recalled(event):
            fields = _fields(event)
            writes.append(InsertOnce("turns", event.event_id, session, position, fields))
            windows.setdefault(session, {})[position] = {k: fields[k] for k in WINDOW_FIELDS}
            if isinstance(event, ev.UserTurn):
                facts.extend(SetFact(session, position, fact) for fact in extract_facts(event.text))
    flush()
    return writes


class Memory:
    def __init__(
        self,
        store: Store,
        cache: ContextCache,
        summaries: SummaryScheduler,
        context_turns: int = 40,
        producer: str = "memory",
    ) -> None:
        self.store = store
        self.cache = cache
        self._summaries = summaries
        self._context_turns = context_turns
        self._producer = producer
        self._window_writes: Counter[str] = Counter()

    async def record_batch(self, events: Sequence[tuple[Recordable, int]]) -> None:
        """Persist events at their stream positions in one bulk write (see :func:`plan_writes`).

        Safe to repeat after a failure at any point (the worker does, while the database is unreachable):
        what was stored already is not counted again."""
        writes = plan_writes(events, self._context_turns)
        stored = await self.store.write(writes)
        stating = {(w.session_id, w.position) for w in writes if isinstance(w, SetFact)}
        for event, position in events:  # in stream order, as if recorded one by one
            session = event.session_id
            if isinstance(event, ev.ForgetSession):
                self._summaries.forget(session)
                self._window_writes.pop(session, None)
                self.cache.invalidate(session)
                continue
            if not _recalled(event):
                continue  # a transcript is not part of a context
            if event.event_id in stored:
                self._summaries.stored(session)
                self._window_writes[session] += 1
            if (session, position) in stating:
                self.cache.invalidate(session)  # facts too: read back as stored
            else:
                fields = _fields(event)
                turn = Turn(fields["role"], fields["text"], fields["turn_id"], fields["at"], position)
                self.cache.add_turn(session, turn, self._context_turns)
        due = {event.session_id for event, _ in events if self._window_writes[event.session_id] >= self._context_turns}
        # A few trims per batch, the most overdue first: sessions that keep pace with each other fall due
        # together, and a hundred trims at once (a read and a write each) stalled the writer for 100 ms.
        for session in sorted(due, key=self._window_writes.__getitem__, reverse=True)[:TRIMS_PER_BATCH]:
            await self.store.trim_window(session, self._context_turns)
            del self._window_writes[session]  # after the trim: a failed one is tried again on the retry

    async def material(self, session_id: str) -> SessionMemory:
        cached = self.cache.get(session_id)
        if cached is not None:
            return cached
        with self.cache.loading(session_id):
            material = await self.store.session(session_id, self._context_turns)
            self.cache.put(session_id, material)
        return material

    async def context(self, request: ev.ContextRequest) -> ev.ContextReply:
        material = await self.material(request.session_id)
        turns, tokens = assemble(material, request.max_tokens, request.turn_id)
        return ev.ContextReply(
            session_id=request.session_id,
            turn_id=request.turn_id,
            producer=self._producer,
            turns=turns,
            summary=material.summary.text if material.summary else "",
            facts=[f.text for f in material.facts],
            tokens=tokens,
        )

    async def history(self, request: ev.HistoryRequest) -> ev.HistoryReply:
        page = await self.store.recent_turns(request.session_id, request.limit + 1, before=request.before)
        more = len(page) > request.limit
        page = page[: request.limit]
        turns = [
            ev.StoredTurn(role=t.role, text=t.text, turn_id=t.turn_id, at=t.at, position=t.position)
            for t in reversed(page)
        ]
        return ev.HistoryReply(
            session_id=request.session_id,
            turn_id=request.turn_id,
            producer=self._producer,
            turns=turns,
            next_before=turns[0].position if more and turns else None,
        )
