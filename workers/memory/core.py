"""Memory's logic, testable without the bus: record events, answer context and history requests.

Context of a turn = the running summary, the user's facts, and the most recent turns that fit the
token budget (newest kept first; returned oldest first; the asking turn itself left out). Tokens are
estimated as ``ceil(chars / 4) + 4`` per turn. The material of a session (its last
``context_turns`` turns, summary and facts: one document, one read) is cached per replica,
LRU-bounded; a stored turn, a new summary or a forget invalidates the session's entry, and a load
that raced an invalidation is not cached, so the cache is never older than the last write this
replica made.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter, OrderedDict
from collections.abc import Iterator
from typing import Protocol

from contracts import events as ev

from .facts import extract_facts
from .store import MemoryStore, SessionMemory

TURN_OVERHEAD_TOKENS = 4
Recordable = ev.UserTurn | ev.ReplyDone | ev.TranscriptFinal | ev.ForgetSession


def estimate_tokens(text: str) -> int:
    return (len(text) + 3) // 4


class SummaryScheduler(Protocol):
    def stored(self, session_id: str) -> None: ...

    def forget(self, session_id: str) -> None: ...


class ContextCache:
    def __init__(self, max_sessions: int) -> None:
        self._entries: OrderedDict[str, SessionMemory] = OrderedDict()
        self._loading: Counter[str] = Counter()
        self._stale: set[str] = set()
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

    def put(self, session_id: str, material: SessionMemory) -> None:
        if session_id in self._stale:
            return
        self._entries[session_id] = material
        self._entries.move_to_end(session_id)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)

    def invalidate(self, session_id: str) -> None:
        self._entries.pop(session_id, None)
        if session_id in self._loading:
            self._stale.add(session_id)


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


class Memory:
    def __init__(self, store: MemoryStore, cache: ContextCache, summaries: SummaryScheduler,
                 context_turns: int = 40, producer: str = "memory") -> None:
        self.store = store
        self.cache = cache
        self._summaries = summaries
        self._context_turns = context_turns
        self._producer = producer
        self._window_writes: Counter[str] = Counter()

    async def record(self, event: Recordable, position: int) -> bool:
        """Persist one event at its bus position; False when it was already stored (a duplicate)."""
        session = event.session_id
        if isinstance(event, ev.ForgetSession):
            await self.store.forget(session)
            self._summaries.forget(session)
            self._window_writes.pop(session, None)
            self.cache.invalidate(session)
            return True
        if isinstance(event, ev.TranscriptFinal):
            return await self.store.add_transcript(event.event_id, session, position, {
                "turn_id": event.turn_id, "text": event.text, "engine": event.engine,
                "confidence": event.confidence, "audio_start": event.audio_start, "audio_end": event.audio_end,
                "forced": event.forced, "at": event.published_at})
        if isinstance(event, ev.UserTurn):
            fields = {"role": "user", "text": event.text, "turn_id": event.turn_id, "at": event.published_at,
                      "source": event.source}
        else:
            if not event.text:
                return False  # a reply that produced nothing (failed or cancelled at once) has nothing to recall
            fields = {"role": "assistant", "text": event.text, "turn_id": event.turn_id, "at": event.published_at,
                      "agent": event.agent, "finish_reason": event.finish_reason}
        # The window write is repeated for a duplicate, harmlessly (same position, same content): that
        # completes a write a crash cut short after the turn itself was stored.
        stored, _ = await asyncio.gather(
            self.store.add_turn(event.event_id, session, position, fields),
            self.store.add_to_window(session, position, {k: fields[k] for k in ("role", "text", "turn_id", "at")}))
        if isinstance(event, ev.UserTurn) and (facts := extract_facts(event.text)):
            await self.store.set_facts(session, position, facts)
        self.cache.invalidate(session)
        if stored:
            self._summaries.stored(session)
            self._window_writes[session] += 1
            if self._window_writes[session] >= self._context_turns:
                del self._window_writes[session]
                await self.store.trim_window(session, self._context_turns)
        return stored

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
            session_id=request.session_id, turn_id=request.turn_id, producer=self._producer, turns=turns,
            summary=material.summary.text if material.summary else "", facts=[f.text for f in material.facts],
            tokens=tokens)

    async def history(self, request: ev.HistoryRequest) -> ev.HistoryReply:
        page = await self.store.recent_turns(request.session_id, request.limit + 1, before=request.before)
        more = len(page) > request.limit
        page = page[: request.limit]
        turns = [ev.StoredTurn(role=t.role, text=t.text, turn_id=t.turn_id, at=t.at, position=t.position)
                 for t in reversed(page)]
        return ev.HistoryReply(session_id=request.session_id, turn_id=request.turn_id, producer=self._producer,
                               turns=turns, next_before=turns[0].position if more and turns else None)
