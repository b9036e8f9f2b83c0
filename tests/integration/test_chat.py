"""Typed chat end to end: WebSocket -> edge -> NATS -> orchestrator -> LLM (real HTTP) -> NATS -> edge."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from ops.llm_server import MODEL_ALIAS, start_llm
from ops.servers import RunningServer, free_port
from tests.support.edge_client import Client, connect, running_edge
from tests.support.scripted_llm import ScriptedLLM
from workers.orchestrator.agents import TONES
from workers.orchestrator.worker import WORKER, OrchestratorSettings
from workers.runtime import running_worker


@pytest.fixture(scope="module")
async def edge(nats_url: str, llm: ScriptedLLM) -> AsyncIterator[str]:
    settings = OrchestratorSettings(
        nats_url=nats_url, llm_base_url=llm.base_url, llm_timeout_s=1.0, memory_timeout_s=0.2, retrieval_timeout_s=0.2
    )
    async with running_worker(WORKER, settings), running_edge(nats_url) as url:
        yield url


def is_done(event: dict[str, Any]) -> bool:
    return bool(event["kind"] == "reply.done")


async def turn(client: Client, text: str) -> list[dict[str, Any]]:
    await client.chat(text)
    return await client.until(is_done)


async def test_typed_turn_streams_deltas_then_done(edge: str) -> None:
    client = await connect(edge)
    events = await turn(client, "hello there")
    kinds = [e["kind"] for e in events]
    assert kinds[0] == "turn.user" and kinds[-1] == "reply.done"
    deltas = [e for e in events if e["kind"] == "reply.delta"]
    done = events[-1]
    assert len(deltas) >= 3 and "".join(d["text"] for d in deltas) == done["text"] == "You said: hello there"
    assert [d["seq"] for d in deltas] == list(range(len(deltas)))
    assert done["turn_id"] == events[0]["turn_id"] == deltas[0]["turn_id"]
    assert done["finish_reason"] == "stop" and done["usage"]["completion_tokens"] == len(deltas)
    assert done["agent"] == "general" and done["memory"] == "unavailable" and done["retrieval"] == "skipped"
    assert done["first_token_at"] >= done["captured_at"]
    await client.close()


async def test_tone_and_agent_settings_shape_the_system_prompt(edge: str, llm: ScriptedLLM) -> None:
    client = await connect(edge)
    await client.send(type="settings", tone="formal", agent="coach")
    await client.until(lambda e: e["kind"] == "session.settings")
    done = (await turn(client, "[echo_system] how do I start?"))[-1]
    assert done["agent"] == "coach"
    assert "patient coach" in done["text"] and TONES["formal"] in done["text"]
    await client.close()


async def test_handoff_switches_agent_and_sticks(edge: str) -> None:
    client = await connect(edge)
    assert (await turn(client, "what is the weather like"))[-1]["agent"] == "general"
    assert (await turn(client, "please switch to coach"))[-1]["agent"] == "coach"
    assert (await turn(client, "and now?"))[-1]["agent"] == "coach"
    knowledge = (await turn(client, "talk to knowledge: what does the handbook say?"))[-1]
    assert knowledge["agent"] == "knowledge" and knowledge["retrieval"] == "unavailable"
    await client.close()


async def test_interrupt_mid_reply_stops_the_deltas(edge: str) -> None:
    client = await connect(edge)
    await client.chat("[tokens:60] [delay:25]")
    await client.until(lambda e: e["kind"] == "reply.delta" and e["seq"] >= 2)
    await client.send(type="interrupt")
    events = await client.until(is_done)
    flush_at = next(i for i, e in enumerate(events) if e["kind"] == "flush")
    assert not [e for e in events[flush_at:] if e["kind"] == "reply.delta"]
    assert events[-1]["finish_reason"] == "cancelled" and 3 <= len(events[-1]["text"].split()) < 60
    # Nothing of the cancelled turn arrives later either.
    await asyncio.sleep(0.3)
    await client.send(type="ping", id="after")
    tail = await client.until(lambda e: e["kind"] == "pong")
    assert [e["kind"] for e in tail] == ["pong"]
    await client.close()


async def test_new_turn_supersedes_the_one_in_flight(edge: str) -> None:
    client = await connect(edge)
    await client.chat("[tokens:60] [delay:25]")
    await client.until(lambda e: e["kind"] == "reply.delta")
    await client.chat("second question")
    first_done = (await client.until(is_done))[-1]
    second_done = (await client.until(is_done))[-1]
    assert first_done["finish_reason"] == "superseded"
    assert second_done["finish_reason"] == "stop" and second_done["text"] == "You said: second question"
    await client.close()


@pytest.mark.parametrize(
    ("marker", "code"),
    [
        ("[status:500]", "llm_failed"),
        ("[status:400]", "llm_rejected"),
        ("[status:401]", "llm_auth"),
        ("[status:429]", "llm_rate_limited"),
        ("[hang]", "llm_timeout"),
        ("[malformed]", "llm_bad_stream"),
        ("[misshapen]", "llm_bad_stream"),
        ("[empty]", "llm_empty_reply"),
        ("[silent]", "llm_empty_reply"),
        ("[stream_error]", "llm_stream_error"),
    ],
)
async def test_llm_failures_become_error_events_and_the_worker_carries_on(edge: str, marker: str, code: str) -> None:
    client = await connect(edge)
    events = await turn(client, f"{marker} boom")
    errors = [e for e in events if e["kind"] == "error"]
    assert [e["code"] for e in errors] == [code] and errors[0]["source"] == "orchestrator"
    assert events[-1]["finish_reason"] == "error"
    assert (await turn(client, "still there?"))[-1]["text"] == "You said: still there?"
    await client.close()


async def test_unreachable_llm_is_reported(nats_url: str) -> None:
    settings = OrchestratorSettings(
        nats_url=nats_url, llm_base_url=f"http://127.0.0.1:{free_port()}/v1", subject_prefix="unreach"
    )
    async with running_worker(WORKER, settings), running_edge(nats_url, subject_prefix="unreach") as url:
        client = await connect(url)
        events = await turn(client, "anyone?")
        assert [e["code"] for e in events if e["kind"] == "error"] == ["llm_unavailable"]
        await client.close()


async def test_parallel_sessions_get_only_their_own_replies(edge: str) -> None:
    clients = await asyncio.gather(*(connect(edge) for _ in range(6)))
    results = await asyncio.gather(*(turn(c, f"[delay:5] I am client {i}") for i, c in enumerate(clients)))
    for i, (client, events) in enumerate(zip(clients, results, strict=True)):
        assert events[-1]["text"] == f"You said: I am client {i}"
        assert {e["session_id"] for e in events if "session_id" in e} == {client.session_id}
        await client.close()


async def test_a_new_replica_reads_the_sessions_recorded_settings(nats_url: str, llm: ScriptedLLM) -> None:
    settings = OrchestratorSettings(nats_url=nats_url, llm_base_url=llm.base_url, subject_prefix="replica")
    async with running_edge(nats_url, subject_prefix="replica") as url:
        client = await connect(url)
        await client.send(type="settings", agent="coach")
        await client.until(lambda e: e["kind"] == "session.settings")
        # The orchestrator starts only now: it never saw the settings event live.
        async with running_worker(WORKER, settings):
            assert (await turn(client, "hi"))[-1]["agent"] == "coach"
        await client.close()


@pytest.fixture(scope="module")
def local_llm() -> Iterator[RunningServer]:
    server = start_llm()
    yield server
    server.stop()


async def test_turn_through_the_real_local_model(nats_url: str, local_llm: RunningServer) -> None:
    settings = OrchestratorSettings(
        nats_url=nats_url, llm_base_url=local_llm.url, llm_model=MODEL_ALIAS, llm_max_tokens=24, subject_prefix="local"
    )
    async with running_worker(WORKER, settings), running_edge(nats_url, subject_prefix="local") as url:
        client = await connect(url)
        await client.chat("Say hello.")
        events = await client.until(is_done, timeout=60)
        deltas = [e for e in events if e["kind"] == "reply.delta"]
        done = events[-1]
        assert len(deltas) >= 2 and done["finish_reason"] in ("stop", "length") and done["text"].strip()
        assert done["model"] == MODEL_ALIAS and done["usage"]["completion_tokens"] > 0
        await client.close()
