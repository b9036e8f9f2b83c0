"""Memory's bus-free logic: fact patterns, the token budget, the context cache, recording a batch."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import pytest

from contracts import events as ev
from workers.memory.core import (
    TRIMS_PER_BATCH,
    ContextCache,
    Memory,
    Recordable,
    assemble,
    estimate_tokens,
    plan_writes,
)
from workers.memory.facts import extract_facts
from workers.memory.store import (
    Doc,
    Fact,
    InsertOnce,
    SessionMemory,
    SetFact,
    SetWindow,
    Summary,
    Turn,
    Write,
    parse_turn,
)


@pytest.mark.parametrize(
    ("text", "facts"),
    [
        ("Hi! My name is Alice and I live in Paris.", ["Their name is Alice", "They live in Paris"]),
        ("I'm from New Zealand, I work as a nurse.", ["They are from New Zealand", "They work as a nurse"]),
        ("I\u2019m 34 years old", ["They are 34 years old"]),
        ("my favourite colour is blue", ["Their favourite colour is blue"]),
        ("I'm allergic to peanuts and I work at Acme Corp", ["They are allergic to peanuts", "They work at Acme Corp"]),
        ("I'm not from Paris", []),
        ("my name is not Bob", []),
        ("If my name is Bob, then what?", []),
        ("Imagine I live in Rome.", []),
        ("what is my name?", []),
        ("my wife's name is Ann", []),
        ("I'm tired and I'm going home", []),
        ("I live in a small flat in the centre of Berlin with my cat", []),  # too long to be sure of the place
    ],
)
def test_facts_are_caught_only_when_stated_plainly(text: str, facts: list[str]) -> None:
    assert sorted(f.text for f in extract_facts(text)) == sorted(facts)


def test_fact_keys_are_safe_field_names_and_a_later_statement_wins() -> None:
    assert [f.key for f in extract_facts("I'm allergic to tree nuts$.")] == ["allergy_tree_nuts_"]
    assert [f.text for f in extract_facts("My name is Al. Actually my name is Alan.")] == ["Their name is Alan"]


def turn(n: int, text: str, role: str = "user") -> Turn:
    return Turn("user" if role == "user" else "assistant", text, f"t{n}", float(n), n)


def test_assemble_keeps_the_newest_turns_that_fit_oldest_first() -> None:
    turns = [turn(4, "d" * 40, "assistant"), turn(3, "c" * 40), turn(2, "b" * 400), turn(1, "a")]  # newest first
    memory = SessionMemory(turns, Summary("s" * 20, 0), [Fact("name", "Their name is Al")])
    fixed = estimate_tokens("s" * 20) + estimate_tokens("Their name is Al")
    chosen, tokens = assemble(memory, max_tokens=fixed + 2 * (10 + 4), exclude_turn_id=None)
    assert [t.turn_id for t in chosen] == ["t3", "t4"] and tokens == fixed + 28
    chosen, _ = assemble(memory, max_tokens=10_000, exclude_turn_id="t3")
    assert [t.turn_id for t in chosen] == ["t1", "t2", "t4"]


def test_cache_is_lru_bounded_and_a_racing_invalidation_keeps_a_load_out() -> None:
    cache = ContextCache(max_sessions=2)
    empty = SessionMemory([], None, [])
    for session in ("a", "b", "c"):
        cache.put(session, empty)
    assert cache.get("a") is None and cache.get("b") is empty and cache.get("c") is empty
    with cache.loading("b"):
        cache.invalidate("b")  # a write lands while "b" is being read from the store
        cache.put("b", empty)  # that read may predate the write: not cached
    assert cache.get("b") is None
    with cache.loading("b"):
        cache.put("b", empty)
    assert cache.get("b") is empty


# ------------------------------------------------------------------ recording a batch


class DictStore:
    """MemoryStore's write semantics on dicts: documents inserted once per event id, the session document's
    window and facts (a fact only over an older statement of its key), a forget deleting the session."""

    def __init__(self) -> None:
        self.docs: dict[str, dict[str, Doc]] = {"turns": {}, "transcripts": {}}
        self.sessions: dict[str, Doc] = {}
        self.bulk_writes = 0
        self.trimmed: list[str] = []

    async def write(self, writes: Sequence[Write]) -> set[str]:
        self.bulk_writes += 1
        inserted: set[str] = set()
        for write in writes:
            if isinstance(write, InsertOnce):
                if write.event_id not in self.docs[write.collection]:
                    inserted.add(write.event_id)
                    self.docs[write.collection][write.event_id] = {
                        "_id": write.event_id,
                        "session_id": write.session_id,
                        "position": write.position,
                        **write.fields,
                    }
            elif isinstance(write, SetWindow):
                self.sessions.setdefault(write.session_id, {"window": {}, "facts": {}})["window"].update(write.turns)
            elif isinstance(write, SetFact):
                facts = self.sessions[write.session_id]["facts"]  # the real update matches no document: no fact
                if facts.get(write.fact.key, {"position": -1})["position"] < write.position:
                    facts[write.fact.key] = {"text": write.fact.text, "position": write.position}
            else:
                self.sessions.pop(write.session_id, None)
                for docs in self.docs.values():
                    for key in [k for k, d in docs.items() if d["session_id"] == write.session_id]:
                        del docs[key]
        return inserted

    async def trim_window(self, session_id: str, keep: int) -> None:
        self.trimmed.append(session_id)
        window = self.sessions[session_id]["window"]
        for position in sorted(window)[:-keep]:
            del window[position]

    async def session(self, session_id: str, turns: int) -> SessionMemory:
        doc = self.sessions.get(session_id, {"window": {}, "facts": {}})
        latest = sorted(doc["window"], reverse=True)[:turns]
        facts = sorted(doc["facts"].items(), key=lambda fact: fact[1]["position"])
        return SessionMemory(
            [Turn(**doc["window"][p], position=p) for p in latest],
            None,
            [Fact(key, fact["text"]) for key, fact in facts],
        )

    async def recent_turns(self, session_id: str, limit: int, before: int | None = None) -> list[Turn]:
        docs = sorted(
            (
                d
                for d in self.docs["turns"].values()
                if d["session_id"] == session_id and (before is None or d["position"] < before)
            ),
            key=lambda d: -int(d["position"]),
        )
        return [t for t in map(parse_turn, docs[:limit]) if t is not None]


class Summaries:
    """The summarizer's view: turns it was told were stored, per session, and the forgotten sessions."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.forgotten: list[str] = []

    def stored(self, session_id: str) -> None:
        self.counts[session_id] += 1

    def forget(self, session_id: str) -> None:
        self.forgotten.append(session_id)
        self.counts.pop(session_id, None)


A, B = "session-a", "session-b"


def user(session: str, turn: str, text: str) -> ev.UserTurn:
    return ev.UserTurn(session_id=session, turn_id=turn, text=text, source="typed", producer="test")


def reply(session: str, turn: str, text: str) -> ev.ReplyDone:
    return ev.ReplyDone(session_id=session, turn_id=turn, text=text, agent="general", producer="test")


def at_positions(*events: Recordable, first: int = 1) -> list[tuple[Recordable, int]]:
    """Events as the writer gets them: each with its stream position, in stream order."""
    return [(event, first + i) for i, event in enumerate(events)]


def recorder(context_turns: int = 40) -> tuple[Memory, DictStore, Summaries]:
    store, summaries = DictStore(), Summaries()
    return Memory(store, ContextCache(100), summaries, context_turns=context_turns), store, summaries


async def texts(memory: Memory, session: str) -> list[str]:
    page = await memory.history(ev.HistoryRequest(session_id=session, producer="test", limit=100))
    return [t.text for t in page.turns]


def kinds(writes: list[Write]) -> list[tuple[str, str]]:
    return [(type(w).__name__, w.session_id) for w in writes]


async def test_a_batch_is_one_bulk_write_applied_in_stream_order() -> None:
    memory, store, summaries = recorder()
    transcript = ev.TranscriptFinal(
        session_id=A,
        turn_id="t2",
        text="spoken",
        engine="whisper",
        confidence=0.9,
        audio_start=1.0,
        audio_end=2.0,
        producer="test",
    )
    batch = at_positions(
        user(A, "t1", "My name is Al."),
        reply(A, "t1", "Hi Al"),
        user(B, "t1", "other"),
        transcript,
        user(A, "t2", "spoken"),
        reply(A, "t2", ""),
        user(A, "t3", "My name is Bo."),
    )
    writes = plan_writes(batch, keep=40)
    # Turns and transcripts as they came; then each session's window; then facts, which need the session document.
    assert kinds(writes) == [
        ("InsertOnce", A),
        ("InsertOnce", A),
        ("InsertOnce", B),
        ("InsertOnce", A),
        ("InsertOnce", A),
        ("InsertOnce", A),
        ("SetWindow", A),
        ("SetWindow", B),
        ("SetFact", A),
        ("SetFact", A),
    ]
    assert [w.position for w in writes if isinstance(w, InsertOnce)] == [1, 2, 3, 4, 5, 7]
    await memory.record_batch(batch)
    assert store.bulk_writes == 1
    assert await texts(memory, A) == ["My name is Al.", "Hi Al", "spoken", "My name is Bo."]  # no empty reply
    assert [d["text"] for d in store.docs["transcripts"].values()] == ["spoken"]
    assert sorted(store.sessions[A]["window"]) == [1, 2, 5, 7]
    assert (await memory.material(A)).facts == [Fact("name", "Their name is Bo")]  # the later statement
    assert summaries.counts == {A: 4, B: 1}


async def test_a_forget_in_a_batch_is_a_barrier() -> None:
    memory, store, summaries = recorder()
    batch = at_positions(
        user(A, "t1", "My name is Al."),
        user(B, "t1", "keep me"),
        ev.ForgetSession(session_id=A, producer="test"),
        user(A, "t2", "after forgetting"),
        reply(A, "t2", "noted"),
    )
    writes = plan_writes(batch, keep=40)
    assert kinds(writes) == [
        ("InsertOnce", A),
        ("InsertOnce", B),
        ("SetWindow", A),
        ("SetWindow", B),
        ("SetFact", A),
        ("Forget", A),
        ("InsertOnce", A),
        ("InsertOnce", A),
        ("SetWindow", A),
    ]
    await memory.record_batch(batch)
    assert store.bulk_writes == 1
    assert await texts(memory, A) == ["after forgetting", "noted"]
    assert sorted(store.sessions[A]["window"]) == [4, 5] and store.sessions[A]["facts"] == {}
    assert await texts(memory, B) == ["keep me"]
    assert summaries.forgotten == [A] and summaries.counts == {A: 2, B: 1}  # counted afresh after it


async def test_a_redelivered_batch_writes_nothing_twice() -> None:
    memory, store, summaries = recorder()
    first = at_positions(user(A, "t1", "My name is Al."), reply(A, "t1", "Hi Al"), user(B, "t1", "hello"))
    second = at_positions(user(A, "t2", "My name is Bo."), reply(A, "t2", "Hi Bo"), first=4)
    await memory.record_batch(first)
    await memory.record_batch(second)
    before = (store.docs["turns"].copy(), store.sessions[A]["window"].copy(), summaries.counts.copy())
    await memory.record_batch(first)  # redelivered after the next batch was stored (a lost ack)
    await memory.record_batch(first[1:] + second)  # or overlapping the next one
    assert (store.docs["turns"], store.sessions[A]["window"], summaries.counts) == before
    assert await texts(memory, A) == ["My name is Al.", "Hi Al", "My name is Bo.", "Hi Bo"]
    assert (await memory.material(A)).facts == [Fact("name", "Their name is Bo")]  # not set back to Al


async def test_the_window_keeps_the_newest_turns_of_a_long_batch() -> None:
    memory, store, _ = recorder(context_turns=3)
    await memory.record_batch(at_positions(*(user(A, f"t{i}", f"line {i}") for i in range(5))))
    assert sorted(store.sessions[A]["window"]) == [3, 4, 5]  # only the newest 3 were written to it
    await memory.record_batch(at_positions(user(A, "t5", "line 5"), first=6))
    assert sorted(store.sessions[A]["window"]) == [3, 4, 5, 6]  # trimmed again after 3 more turns
    assert await texts(memory, A) == [f"line {i}" for i in range(6)]


async def test_sessions_falling_due_together_are_trimmed_a_few_a_batch() -> None:
    memory, store, _ = recorder(context_turns=2)
    sessions = [f"session-{n:02d}" for n in range(TRIMS_PER_BATCH + 4)]
    await memory.record_batch(at_positions(*(user(s, "t1", "one") for s in sessions)))
    await memory.record_batch(
        at_positions(*(user(s, "t2", "two") for s in sessions), user(sessions[-1], "t3", "3"), first=100)
    )
    assert len(store.trimmed) == TRIMS_PER_BATCH and store.trimmed[0] == sessions[-1]  # the most overdue first
    await memory.record_batch(at_positions(*(user(s, "t4", "four") for s in sessions), first=200))
    assert sorted(store.trimmed) == sorted(sessions)  # the rest on the next batch


class CountingStore(DictStore):
    def __init__(self) -> None:
        super().__init__()
        self.reads = 0

    async def session(self, session_id: str, turns: int) -> SessionMemory:
        self.reads += 1
        return await super().session(session_id, turns)


async def test_a_cached_context_gains_each_stored_turn_without_reading_the_store_again() -> None:
    # Seen at 200 typed turns a second: each recorded turn dropped its session's cached context, so every
    # turn's context was a store read; they queued behind the writes and most turns missed the deadline.
    store, summaries = CountingStore(), Summaries()
    memory = Memory(store, ContextCache(100), summaries, context_turns=3)
    ask = ev.ContextRequest(session_id=A, producer="test")
    await memory.record_batch(at_positions(user(A, "t1", "hello"), reply(A, "t1", "hi")))
    await memory.context(ask)
    assert store.reads == 1
    await memory.record_batch(at_positions(user(A, "t2", "how are you"), reply(A, "t2", "fine"), first=3))
    await memory.record_batch(at_positions(user(A, "t2", "how are you"), first=3))  # a redelivery: no twin
    cached = await memory.context(ask)
    assert store.reads == 1
    assert [t.text for t in cached.turns] == ["hi", "how are you", "fine"]  # the newest 3, as the window keeps
    memory.cache.invalidate(A)
    assert (await memory.context(ask)).turns == cached.turns  # what the store holds says the same
    assert store.reads == 2
    await memory.record_batch(at_positions(user(A, "t3", "My name is Al."), first=5))  # a fact: read back
    assert [f for f in (await memory.context(ask)).facts] == ["Their name is Al"] and store.reads == 3


def test_a_turn_stored_while_its_context_loads_is_added_to_what_the_load_brings() -> None:
    cache = ContextCache(max_sessions=10)
    with cache.loading(A):
        cache.add_turn(A, turn(2, "stored meanwhile"), keep=40)  # the load may have read the store before it
        cache.put(A, SessionMemory([turn(1, "older")], None, []))
    cached = cache.get(A)
    assert cached is not None and [t.text for t in cached.turns] == ["stored meanwhile", "older"]
