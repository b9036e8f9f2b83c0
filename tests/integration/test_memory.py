"""The memory worker against real NATS and a real MongoDB wire-protocol server (or SB_TEST_MONGO_URL)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from nats.aio.client import Client

from contracts import events as ev
from contracts.envelope import SessionEvent
from contracts.subjects import BY_NAME, dead_letter_subject
from tests.contract_tap import DELIBERATELY_INVALID
from tests.support.bus import serving
from tests.support.edge_client import connect, running_edge
from tests.support.mongo import database_url, mongo_url
from tests.support.scripted_llm import ScriptedLLM
from tests.support.waiting import probed
from workers.memory.store import MemoryStore
from workers.memory.summarizer import INSTRUCTION
from workers.memory.worker import WORKER, MemorySettings
from workers.orchestrator.worker import WORKER as ORCHESTRATOR
from workers.orchestrator.worker import OrchestratorSettings
from workers.runtime import Bus, running_worker
from workers.runtime.bus import flush_ordered

__all__ = ["mongo_url"]
PREFIX = "mem"


@pytest.fixture(scope="module")
def db_url(mongo_url: str) -> str:
    return database_url(mongo_url, "memory_it")


@pytest.fixture(scope="module")
async def store(db_url: str) -> AsyncIterator[MemoryStore]:
    store = MemoryStore(db_url, "unused")
    yield store
    await store.client.drop_database(store.db.name)
    await store.close()


@pytest.fixture(scope="module")
async def memory(nats_url: str, db_url: str, llm: ScriptedLLM, store: MemoryStore) -> AsyncIterator[Bus]:
    settings = MemorySettings(
        nats_url=nats_url,
        mongo_url=db_url,
        subject_prefix=PREFIX,
        llm_base_url=llm.base_url,
        llm_model="scripted",
        summary_after_turns=6,
        summary_keep_recent=2,
    )
    async with serving(WORKER, settings) as bus:
        yield bus


def user(session: str, turn: str, text: str) -> ev.UserTurn:
    return ev.UserTurn(session_id=session, turn_id=turn, text=text, source="typed", producer="test")


def reply(session: str, turn: str, text: str) -> ev.ReplyDone:
    return ev.ReplyDone(session_id=session, turn_id=turn, text=text, agent="general", producer="test")


async def publish(bus: Bus, *events: SessionEvent) -> None:
    for event in events:
        await bus.publish(event, durable=True)


async def stored_texts(store: MemoryStore, session: str) -> list[str]:
    return [t.text for t in reversed(await store.recent_turns(session, 1_000))]


async def test_turns_replies_and_transcripts_are_stored_in_bus_order(memory: Bus, store: MemoryStore) -> None:
    session = "session-order-1"
    transcript = ev.TranscriptFinal(
        session_id=session,
        turn_id="t2",
        text="spoken words",
        engine="whisper",
        confidence=0.9,
        audio_start=1.0,
        audio_end=2.5,
        producer="test",
    )
    await publish(
        memory,
        user(session, "t1", "first"),
        reply(session, "t1", "answer one"),
        transcript,
        user(session, "t2", "spoken words"),
        reply(session, "t2", ""),
    )
    texts = await probed(lambda: stored_texts(store, session), lambda t: len(t) == 3)
    assert texts == ["first", "answer one", "spoken words"]  # the empty reply has nothing to recall
    turns = list(reversed(await store.recent_turns(session, 10)))
    assert [t.role for t in turns] == ["user", "assistant", "user"]
    assert [t.position for t in turns] == sorted(t.position for t in turns)
    transcripts = await store.db.transcripts.find({"session_id": session}).to_list()
    assert [(d["text"], d["engine"], d["audio_end"]) for d in transcripts] == [("spoken words", "whisper", 2.5)]


async def test_a_duplicate_is_stored_once(memory: Bus, store: MemoryStore, nc: Client) -> None:
    session = "session-dup-1"
    turn = user(session, "t1", "only once")
    subject = BY_NAME["turn.user"].subject(session, PREFIX)
    js = nc.jetstream()
    # Republished past JetStream's dedupe window: a new message id, the same event id.
    for copy in range(3):
        await js.publish(subject, turn.model_dump_json().encode(), headers={"Nats-Msg-Id": f"copy-{copy}"})
    await publish(memory, user(session, "t2", "marker"))
    await probed(lambda: stored_texts(store, session), lambda t: "marker" in t)
    assert await store.db.turns.count_documents({"session_id": session}) == 2
    assert await store.db.turns.count_documents({"_id": turn.event_id}) == 1


async def test_malformed_and_oversized_turns_are_dead_lettered(memory: Bus, store: MemoryStore, nc: Client) -> None:
    session = "session-bad-1"
    letters = await nc.subscribe(dead_letter_subject("memory", PREFIX))
    await flush_ordered(nc)
    subject = BY_NAME["turn.user"].subject(session, PREFIX)
    oversized = {**json.loads(user(session, "t1", "x").model_dump_json()), "text": "y" * 16_001}
    js, marked = nc.jetstream(), {DELIBERATELY_INVALID: "1"}
    await js.publish(subject, b"{not json", headers=marked)
    await js.publish(subject, json.dumps(oversized).encode(), headers=marked)
    first = ev.DeadLetter.model_validate_json((await letters.next_msg(timeout=10)).data)
    second = ev.DeadLetter.model_validate_json((await letters.next_msg(timeout=10)).data)
    assert first.deliveries == 1 and first.original_subject == subject
    assert second.error_type == "ValidationError" and "text" in second.reason and "16000" in second.reason
    await publish(memory, user(session, "t2", "after the bad ones"))
    assert await probed(lambda: stored_texts(store, session), bool) == ["after the bad ones"]


async def test_a_burst_is_drained_and_a_new_sessions_turn_follows_it(memory: Bus, store: MemoryStore) -> None:
    """Issue 15: one event at a time (~100/s) a burst kept a new session's turn out of history for long."""
    sessions = [f"session-burst-{i:02d}" for i in range(40)]
    burst = [user(sessions[i % len(sessions)], f"t{i // len(sessions)}", f"burst {i}") for i in range(4_000)]
    for first in range(0, len(burst), 500):
        await asyncio.gather(*(memory.publish(event, durable=True) for event in burst[first : first + 500]))
    fresh = user("session-after-burst", "t1", "am I remembered?")
    await publish(memory, fresh)
    request = ev.HistoryRequest(session_id=fresh.session_id, producer="test")

    async def history() -> list[str]:
        return [t.text for t in (await memory.request("memory.history", request, ev.HistoryReply, timeout=5)).turns]

    # Generous: at ~100 events/s this would take 40 s; written in batches, a few.
    assert await probed(history, bool, timeout=20.0) == ["am I remembered?"]
    drained = await store.db.turns.find({"session_id": {"$in": sessions}}, {"_id": 1}).to_list()
    assert len(drained) == len(burst)  # everything published before it was written before it


async def test_context_has_recent_turns_within_budget_and_facts(memory: Bus, store: MemoryStore) -> None:
    session = "session-ctx-1"
    await publish(
        memory,
        user(session, "t1", "Hello, my name is Alice and I live in Lyon."),
        reply(session, "t1", "Nice to meet you, Alice."),
        user(session, "t2", "I work as a nurse. " + "blah " * 200),
        reply(session, "t2", "Long day?"),
        user(session, "t3", "What should I cook tonight?"),
    )
    await probed(lambda: stored_texts(store, session), lambda t: len(t) == 5)
    request = ev.ContextRequest(session_id=session, turn_id="t3", producer="test", max_tokens=100)
    context = await memory.request("memory.context", request, ev.ContextReply, timeout=5)
    assert context.facts == ["Their name is Alice", "They live in Lyon", "They work as a nurse"]
    # The asking turn is left out; the long turn does not fit 100 tokens, so the window stops there.
    assert [t.text for t in context.turns] == ["Long day?"]
    assert 0 < context.tokens <= 100
    roomy = await memory.request(
        "memory.context", request.model_copy(update={"max_tokens": 2_000}), ev.ContextReply, timeout=5
    )
    assert [t.turn_id for t in roomy.turns] == ["t1", "t1", "t2", "t2"]


async def test_a_later_statement_of_a_fact_replaces_the_earlier_one(memory: Bus, store: MemoryStore) -> None:
    session = "session-facts-1"
    await publish(memory, user(session, "t1", "My name is Al and I live in Rome."))
    await probed(lambda: stored_texts(store, session), bool)
    await publish(memory, user(session, "t2", "My name is Bo."))
    await probed(lambda: stored_texts(store, session), lambda t: len(t) == 2)
    assert [f.text for f in (await store.session(session, 10)).facts] == ["They live in Rome", "Their name is Bo"]


async def test_a_new_turn_invalidates_the_cached_context(memory: Bus, store: MemoryStore) -> None:
    session = "session-cache-1"
    await publish(memory, user(session, "t1", "one"))
    await probed(lambda: stored_texts(store, session), bool)
    request = ev.ContextRequest(session_id=session, turn_id="t9", producer="test")
    first = await memory.request("memory.context", request, ev.ContextReply, timeout=5)
    again = await memory.request("memory.context", request, ev.ContextReply, timeout=5)
    assert [t.text for t in first.turns] == [t.text for t in again.turns] == ["one"]
    await publish(memory, reply(session, "t1", "two"))
    await probed(lambda: stored_texts(store, session), lambda t: len(t) == 2)
    fresh = await memory.request("memory.context", request, ev.ContextReply, timeout=5)
    assert [t.text for t in fresh.turns] == ["one", "two"]


async def test_a_summary_of_older_turns_is_made_in_the_background(
    memory: Bus, store: MemoryStore, llm: ScriptedLLM
) -> None:
    session = "session-sum-1"
    events = [
        user(session, f"t{i}", f"question {i}") if i % 2 == 0 else reply(session, f"t{i - 1}", f"answer {i}")
        for i in range(6)
    ]
    await publish(memory, *events)
    summary = await probed(lambda: store.summary(session), lambda s: s is not None)
    assert summary is not None
    # The scripted LLM echoes the prompt: the four older turns went in, the two most recent did not.
    assert "question 0" in summary.text and "answer 3" in summary.text and "question 4" not in summary.text
    assert any(r["messages"][0]["content"] == INSTRUCTION for r in llm.requests)
    request = ev.ContextRequest(session_id=session, turn_id="t9", producer="test")
    context = await memory.request("memory.context", request, ev.ContextReply, timeout=5)
    assert context.summary == summary.text


async def test_history_is_paged_newest_page_first(memory: Bus, store: MemoryStore) -> None:
    session = "session-hist-1"
    await publish(memory, *(user(session, f"t{i}", f"line {i}") for i in range(5)))
    await probed(lambda: stored_texts(store, session), lambda t: len(t) == 5)
    request = ev.HistoryRequest(session_id=session, producer="test", limit=2)
    pages: list[list[str]] = []
    while True:
        page = await memory.request("memory.history", request, ev.HistoryReply, timeout=5)
        pages.append([t.text for t in page.turns])
        if page.next_before is None:
            break
        request = request.model_copy(update={"before": page.next_before})
    assert pages == [["line 3", "line 4"], ["line 1", "line 2"], ["line 0"]]


async def test_a_malformed_stored_document_is_skipped(memory: Bus, store: MemoryStore) -> None:
    session = "session-malformed-1"
    await publish(memory, user(session, "t1", "good"))
    await probed(lambda: stored_texts(store, session), bool)
    await store.db.sessions.update_one({"_id": session}, {"$set": {"window.999999999": {"role": "robot"}}})
    request = ev.ContextRequest(session_id=session, turn_id="t9", producer="test")
    await publish(memory, reply(session, "t1", "still good"))  # also invalidates the cache
    await probed(lambda: stored_texts(store, session), lambda t: len(t) == 2)
    context = await memory.request("memory.context", request, ev.ContextReply, timeout=5)
    assert [t.text for t in context.turns] == ["good", "still good"]


async def test_forget_deletes_the_sessions_memory(memory: Bus, store: MemoryStore) -> None:
    session, other = "session-forget-1", "session-forget-2"
    await publish(
        memory,
        user(session, "t1", "My name is Bob."),
        user(other, "t1", "keep me"),
        ev.ForgetSession(session_id=session, producer="test"),
        user(session, "t2", "after forgetting"),
    )
    await probed(lambda: stored_texts(store, session), lambda t: t == ["after forgetting"])
    assert (await store.session(session, 10)).facts == []
    assert await stored_texts(store, other) == ["keep me"]


async def test_history_and_forget_through_the_edge(memory: Bus, store: MemoryStore, nats_url: str) -> None:
    async with running_edge(nats_url, subject_prefix=PREFIX) as url:
        client = await connect(url)
        other = await connect(url)
        await client.chat("remember this")
        await client.until(lambda e: e["kind"] == "turn.user")
        await probed(lambda: stored_texts(store, client.session_id), bool)
        auth = {"Authorization": f"Bearer {client.token}"}
        async with httpx.AsyncClient(base_url=url) as http:
            path = f"/v1/sessions/{client.session_id}"
            page = (await http.get(f"{path}/history", headers=auth)).raise_for_status().json()
            assert [t["text"] for t in page["turns"]] == ["remember this"] and page["next_before"] is None
            assert (await http.get(f"{path}/history")).status_code == 401
            assert (await http.get(f"{path}/history", headers={"Authorization": "Bearer junk"})).status_code == 401
            stranger = {"Authorization": f"Bearer {other.token}"}
            assert (await http.get(f"{path}/history", headers=stranger)).status_code == 403
            assert (await http.delete(f"{path}/memory", headers=stranger)).status_code == 403
            assert (await http.delete(f"{path}/memory", headers=auth)).status_code == 202

            async def turns() -> list[Any]:
                body: dict[str, Any] = (await http.get(f"{path}/history", headers=auth)).json()
                return list(body["turns"])

            assert await probed(turns, lambda t: t == []) == []
        await client.close()
        await other.close()


async def test_orchestrator_uses_memory_and_goes_on_without_it(nats_url: str, db_url: str, llm: ScriptedLLM) -> None:
    prefix = "memorch"
    memory = MemorySettings(nats_url=nats_url, mongo_url=db_url, subject_prefix=prefix, summary_after_turns=0)
    orchestrator = OrchestratorSettings(
        nats_url=nats_url, llm_base_url=llm.base_url, subject_prefix=prefix, memory_timeout_s=1.0
    )
    async with running_worker(ORCHESTRATOR, orchestrator), running_edge(nats_url, subject_prefix=prefix) as url:
        client = await connect(url)
        async with running_worker(WORKER, memory):
            await client.chat("My name is Alice.")
            first = (await client.until(lambda e: e["kind"] == "reply.done"))[-1]
            await asyncio.sleep(0.5)  # let memory store the turn
            await client.chat("[echo_system] who am I?")
            second = (await client.until(lambda e: e["kind"] == "reply.done"))[-1]
        assert first["memory"] == second["memory"] == "ok"
        assert "Their name is Alice" in second["text"]
        await client.chat("anyone there?")
        third = (await client.until(lambda e: e["kind"] == "reply.done"))[-1]
        assert third["memory"] in ("unavailable", "timeout") and third["text"] == "You said: anyone there?"
        await client.close()
