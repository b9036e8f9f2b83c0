"""A foreground turn never waits behind background work on the local LLM server.

The real llama-cpp-python server with SmolLM2 (ops.llm_server.start_llm) serves one request at a
time. Background callers (the memory worker's summaries) mark their requests with the header
``X-SB-Priority: background`` (workers/runtime/llm_priority.py). The bug this reproduces: a spoken
turn that arrived during a summary waited for the whole summary (6-7 s with the 1.5B) before its
first delta. Here the "summary" is made long on purpose (its end-of-turn tokens are biased away).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any, cast

import openai
import pytest

from ops.llm_server import MODEL_ALIAS, start_llm
from ops.servers import RunningServer
from workers.runtime.llm_priority import BACKGROUND_HEADERS

pytestmark = pytest.mark.slow

# SmolLM2's end-of-text and end-of-turn tokens: never chosen, so a background request runs to max_tokens.
NO_END = {"0": -100.0, "2": -100.0}
LONG = 300  # tokens: ~4-6 s of decoding for SmolLM2 on 2 shared cores
SUMMARY = [
    {"role": "system", "content": "You keep a running summary of a conversation."},
    {"role": "user", "content": "Summarise: user: I live in Lyon and I like trains. assistant: Noted. " * 6},
]
TURN = [{"role": "user", "content": "Say hello."}]


@pytest.fixture(scope="module")
def llm_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    server = start_llm(log_file=tmp_path_factory.mktemp("llm") / "llm.log")
    try:
        yield server
    finally:
        server.stop()


def client(server: RunningServer) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=server.url, api_key="local", max_retries=0, timeout=60)


async def background(server: RunningServer, max_tokens: int = LONG) -> str:
    """A summary-like request, not streamed, as the memory worker makes them."""
    async with client(server) as llm:
        response = await llm.chat.completions.create(
            model=MODEL_ALIAS,
            messages=cast(Any, SUMMARY),
            max_tokens=max_tokens,
            logit_bias=cast(Any, NO_END),
            extra_headers=BACKGROUND_HEADERS,
        )
        return response.choices[0].message.content or ""


async def first_delta(server: RunningServer, max_tokens: int = 8, **extra: Any) -> tuple[float, str]:
    """Seconds from sending a streamed turn to its first content delta, and the whole reply."""
    started = time.monotonic()
    first, text = 0.0, ""
    async with client(server) as llm:
        stream = await llm.chat.completions.create(
            model=MODEL_ALIAS,
            messages=cast(Any, TURN),
            max_tokens=max_tokens,
            stream=True,
            extra_body=extra,
        )
        async for chunk in stream:
            piece = chunk.choices[0].delta.content if chunk.choices else None
            if piece and not first:
                first = time.monotonic() - started
            text += piece or ""
    return first, text


async def test_a_turn_does_not_wait_for_a_running_background_request(llm_server: RunningServer) -> None:
    await first_delta(llm_server)  # warms the server up
    alone, _ = await first_delta(llm_server)
    summary = asyncio.create_task(background(llm_server))
    await asyncio.sleep(1.0)  # the summary is being processed now (its prompt, or its ~300 tokens)
    assert not summary.done()
    sent = time.monotonic()
    ended: list[float] = []
    summary.add_done_callback(lambda _: ended.append(time.monotonic() - sent))
    during, reply = await first_delta(llm_server)
    assert reply
    # Before: the turn waited for the rest of the summary (seconds; minutes on a loaded machine).
    # Now the summary is aborted as soon as the turn arrives, wherever it is.
    assert ended and ended[0] < 1.0, f"the summary went on for {ended or 'ever'} s after the turn arrived"
    assert during < max(2.0, 3 * alone), f"first delta {during:.2f}s with a summary running ({alone:.2f}s alone)"
    with pytest.raises(openai.APIStatusError) as aborted:  # pre-empted: an error, never a cut-short summary
        await summary
    assert aborted.value.status_code == 503
    assert "background_preempted" in str(aborted.value.body)
    assert await background(llm_server, max_tokens=4)  # the server serves on, background included


async def test_background_waits_while_a_turn_is_in_flight(llm_server: RunningServer) -> None:
    turn = asyncio.create_task(first_delta(llm_server, max_tokens=120, logit_bias=NO_END))
    await asyncio.sleep(0.3)
    started = time.monotonic()
    summary = await background(llm_server, max_tokens=4)
    waited = time.monotonic() - started
    assert turn.done(), "the background request was served before the turn had finished"
    _, reply = turn.result()
    assert len(reply) > 100  # the turn was not cut short by the request that arrived behind it
    assert summary and waited > 0.5
