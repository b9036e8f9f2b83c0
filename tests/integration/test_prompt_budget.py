"""Every prompt fits the serving model's context window, and a failed or empty completion is an error.

Two servers: the scripted OpenAI-compatible double (real HTTP; ``context_window=`` makes it behave
like llama-server started with ``-c N``), and the real llama-cpp-python server with SmolLM2 and a
512-token window, where a prompt past the window used to end as an empty, successful reply.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from ops.llm_server import MODEL_ALIAS, start_llm
from ops.servers import RunningServer
from tests.support.edge_client import Client, connect, running_edge
from tests.support.scripted_llm import ScriptedLLM, prompt_tokens
from workers.orchestrator.worker import WORKER, OrchestratorSettings
from workers.runtime import running_worker

WINDOW = 480  # the general agent's prompt, the two last exchanges and the reply; not all six
MAX_TOKENS = 32


def is_done(event: dict[str, Any]) -> bool:
    return bool(event["kind"] == "reply.done")


async def turn(client: Client, text: str, timeout: float = 10.0) -> list[dict[str, Any]]:
    await client.chat(text)
    return await client.until(is_done, timeout=timeout)


@pytest.fixture(scope="module")
async def small_llm() -> AsyncIterator[ScriptedLLM]:
    async with ScriptedLLM(context_window=WINDOW) as server:
        yield server


@pytest.fixture(scope="module")
async def edge(nats_url: str, small_llm: ScriptedLLM) -> AsyncIterator[str]:
    settings = OrchestratorSettings(
        nats_url=nats_url,
        llm_base_url=small_llm.base_url,
        llm_max_tokens=MAX_TOKENS,
        llm_timeout_s=2.0,
        memory_timeout_s=0.1,
        retrieval_timeout_s=0.1,
        subject_prefix="budget",
    )
    async with running_worker(WORKER, settings), running_edge(nats_url, subject_prefix="budget") as url:
        yield url


async def test_a_long_conversation_drops_its_oldest_turns_to_fit(edge: str, small_llm: ScriptedLLM) -> None:
    client = await connect(edge)
    small_llm.requests.clear()
    for i in range(6):  # each turn and its echoed reply: ~80 tokens; six of them are over the window
        events = await turn(client, f"question {i}: " + "tell me more about the weather " * 9)
        assert not [e for e in events if e["kind"] == "error"], events
        assert events[-1]["finish_reason"] in ("stop", "length") and events[-1]["text"].startswith(
            f"You said: question {i}"
        )
    last = small_llm.requests[-1]
    assert prompt_tokens(last) <= WINDOW - MAX_TOKENS
    contents = [m["content"] for m in last["messages"]]
    assert contents[-1].startswith("question 5") and any(c.startswith("question 4") for c in contents)
    assert not any(c.startswith("question 0") for c in contents)  # the oldest went first
    await client.close()


async def test_a_message_that_alone_overflows_is_refused(edge: str, small_llm: ScriptedLLM) -> None:
    client = await connect(edge)
    sent = len(small_llm.requests)
    events = await turn(client, "far too long " * 200)
    errors = [e for e in events if e["kind"] == "error"]
    assert [(e["code"], e["retryable"]) for e in errors] == [("llm_context_overflow", False)]
    assert events[-1]["finish_reason"] == "error" and events[-1]["text"] == ""
    assert len(small_llm.requests) == sent  # never sent to the model
    assert (await turn(client, "short one"))[-1]["text"] == "You said: short one"
    await client.close()


@pytest.fixture(scope="module")
def tiny_local_llm() -> Iterator[RunningServer]:
    server = start_llm(context=512)
    yield server
    server.stop()


async def test_the_real_local_server_with_a_small_window(nats_url: str, tiny_local_llm: RunningServer) -> None:
    """Before budgeting, the fourth turn's prompt passed 512 tokens and came back empty with finish "stop"."""
    settings = OrchestratorSettings(
        nats_url=nats_url,
        llm_base_url=tiny_local_llm.url,
        llm_model=MODEL_ALIAS,
        llm_max_tokens=48,
        memory_timeout_s=0.1,
        subject_prefix="tinyctx",
    )
    paragraph = (
        "Our team keeps a garden behind the office with tomatoes, beans, basil and three apple trees. "
        "Every Friday someone waters it, and in autumn we share the apples with the neighbours. "
    )
    async with running_worker(WORKER, settings), running_edge(nats_url, subject_prefix="tinyctx") as url:
        client = await connect(url)
        for i in range(6):
            events = await turn(client, f"Note {i}. {paragraph} What grows there?", timeout=90)
            errors = [e for e in events if e["kind"] == "error"]
            done = events[-1]
            assert not errors and done["finish_reason"] in ("stop", "length") and done["text"].strip(), (i, events)
        events = await turn(client, paragraph * 20, timeout=30)
        assert [e["code"] for e in events if e["kind"] == "error"] == ["llm_context_overflow"]
        assert events[-1]["finish_reason"] == "error"
        await client.close()
