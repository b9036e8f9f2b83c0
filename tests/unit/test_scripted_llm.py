"""ScriptedLLM driven through the real openai.AsyncOpenAI client over real HTTP and SSE."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionChunk, ChatCompletionMessageParam

from tests.support.scripted_llm import ScriptedLLM

pytestmark = pytest.mark.filterwarnings("error")


@pytest.fixture(autouse=True)
def no_server_errors(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """uvicorn logs an error for every unclean ASGI exit; the scripted failures must not cause one."""
    with caplog.at_level(logging.WARNING, logger="uvicorn"):
        yield
    records = caplog.get_records("setup") + caplog.get_records("call")
    assert [r.getMessage() for r in records if r.name.startswith("uvicorn")] == []


@pytest.fixture
async def llm() -> AsyncIterator[ScriptedLLM]:
    async with ScriptedLLM() as server:
        yield server


@pytest.fixture
async def client(llm: ScriptedLLM) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(base_url=llm.base_url, api_key="test", max_retries=0) as c:
        yield c


def user(text: str) -> list[ChatCompletionMessageParam]:
    return [{"role": "user", "content": text}]


async def stream(client: openai.AsyncOpenAI, text: str, **kwargs: Any) -> list[ChatCompletionChunk]:
    chunks: list[ChatCompletionChunk] = []
    response = await client.chat.completions.create(model="scripted", messages=user(text), stream=True, **kwargs)
    async for chunk in response:
        chunks.append(chunk)
    return chunks


def contents(chunks: list[ChatCompletionChunk]) -> list[str]:
    return [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]


async def eventually(condition: Callable[[], bool], timeout: float = 1.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.005)
    return True


async def test_default_stream_reply_with_usage_chunk(client: openai.AsyncOpenAI) -> None:
    chunks = await stream(client, "hello there", stream_options={"include_usage": True})

    assert chunks[0].choices[0].delta.role == "assistant"
    assert contents(chunks) == ["You ", "said: ", "hello ", "there"]
    finish = chunks[-2]
    assert finish.choices[0].finish_reason == "stop"
    assert finish.choices[0].delta.content is None
    usage_chunk = chunks[-1]
    assert usage_chunk.choices == []
    assert usage_chunk.usage is not None
    assert (usage_chunk.usage.prompt_tokens, usage_chunk.usage.completion_tokens) == (2, 4)
    assert usage_chunk.usage.total_tokens == 6
    assert all(c.usage is None for c in chunks[:-1])
    assert {c.id for c in chunks} == {chunks[0].id}
    assert {c.object for c in chunks} == {"chat.completion.chunk"}
    assert {c.model for c in chunks} == {"scripted"}


async def test_stream_without_include_usage_has_no_usage_chunk(client: openai.AsyncOpenAI) -> None:
    chunks = await stream(client, "hi")

    assert all(c.choices for c in chunks)
    assert all(c.usage is None for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert "".join(contents(chunks)) == "You said: hi"


async def test_non_streaming_reply(client: openai.AsyncOpenAI) -> None:
    messages: list[ChatCompletionMessageParam] = [
        {"role": "system", "content": "Be brief and kind."},
        {"role": "user", "content": "first question"},
        {"role": "assistant", "content": "an answer"},
        {"role": "user", "content": "second question please"},
    ]
    completion = await client.chat.completions.create(model="m-1", messages=messages)

    assert completion.object == "chat.completion"
    assert completion.model == "m-1"
    choice = completion.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == "You said: second question please"
    assert choice.finish_reason == "stop"
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == 4 + 2 + 2 + 3
    assert completion.usage.completion_tokens == 5
    assert completion.usage.total_tokens == 16


async def test_models_lists_scripted(client: openai.AsyncOpenAI) -> None:
    models = await client.models.list()
    assert [m.id for m in models.data] == ["scripted"]


async def test_unknown_path_and_bad_json_get_openai_style_errors(llm: ScriptedLLM) -> None:
    async with httpx.AsyncClient(base_url=llm.base_url, headers={"authorization": "Bearer test"}) as http:
        missing = await http.get("/nope")
        bad = await http.post("/chat/completions", content=b"{not json", headers={"content-type": "application/json"})
        no_key = await http.post(
            "/chat/completions", json={"model": "m", "messages": []}, headers={"authorization": ""}
        )

    assert missing.status_code == 404
    assert missing.json()["error"]["type"] == "invalid_request_error"
    assert bad.status_code == 400
    assert "message" in bad.json()["error"]
    assert no_key.status_code == 401
    assert no_key.json()["error"]["code"] == "invalid_api_key"
    assert llm.requests == []


async def test_tokens_marker_streams_exactly_n_pieces(client: openai.AsyncOpenAI) -> None:
    chunks = await stream(client, "[tokens:7]", stream_options={"include_usage": True})

    assert contents(chunks) == [f"tok{k} " for k in range(7)]
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 7


async def test_max_tokens_truncates_with_finish_reason_length(client: openai.AsyncOpenAI) -> None:
    chunks = await stream(client, "[tokens:10]", max_tokens=3)
    completion = await client.chat.completions.create(
        model="scripted", messages=user("[tokens:10]"), max_completion_tokens=4
    )

    assert contents(chunks) == ["tok0 ", "tok1 ", "tok2 "]
    assert chunks[-1].choices[0].finish_reason == "length"
    assert completion.choices[0].message.content == "tok0 tok1 tok2 tok3 "
    assert completion.choices[0].finish_reason == "length"


async def content_arrivals(client: openai.AsyncOpenAI, text: str) -> list[float]:
    """Seconds from the request to each content chunk of a streamed reply."""
    started = time.perf_counter()
    arrivals: list[float] = []
    response = await client.chat.completions.create(model="scripted", messages=user(text), stream=True)
    async for chunk in response:
        if chunk.choices and chunk.choices[0].delta.content:
            arrivals.append(time.perf_counter() - started)
    return arrivals


async def test_delay_marker_spaces_every_chunk(client: openai.AsyncOpenAI) -> None:
    arrivals = await content_arrivals(client, "[tokens:3] [delay:40]")
    assert len(arrivals) == 3
    assert arrivals[0] >= 0.035
    assert all(later - earlier >= 0.035 for earlier, later in itertools.pairwise(arrivals))


async def test_first_delay_marker_delays_only_the_first_chunk(client: openai.AsyncOpenAI) -> None:
    arrivals = await content_arrivals(client, "[first_delay:200] [tokens:4]")
    assert len(arrivals) == 4
    assert arrivals[0] >= 0.19
    assert arrivals[-1] - arrivals[0] < 0.15


async def test_markers_are_stripped_from_the_echo(client: openai.AsyncOpenAI) -> None:
    completion = await client.chat.completions.create(
        model="scripted", messages=user("[delay:1] hello  [first_delay:1]")
    )
    assert completion.choices[0].message.content == "You said: hello"


async def test_client_interrupting_a_delayed_stream_frees_the_server(
    llm: ScriptedLLM, client: openai.AsyncOpenAI
) -> None:
    started = time.perf_counter()
    response = await client.chat.completions.create(
        model="scripted", messages=user("[tokens:50] [delay:20]"), stream=True
    )
    received: list[str] = []
    async for chunk in response:
        if chunk.choices and chunk.choices[0].delta.content:
            received.append(chunk.choices[0].delta.content)
        if len(received) == 3:
            break
    assert llm.in_flight == 1
    await response.close()

    assert received == ["tok0 ", "tok1 ", "tok2 "]
    assert await eventually(lambda: llm.in_flight == 0, timeout=0.5)
    assert time.perf_counter() - started < 0.6  # the full stream would take a second


@pytest.mark.parametrize(
    ("status", "error", "code"),
    [
        (400, openai.BadRequestError, None),
        (401, openai.AuthenticationError, "invalid_api_key"),
        (404, openai.NotFoundError, "model_not_found"),
        (429, openai.RateLimitError, "rate_limit_exceeded"),
        (500, openai.InternalServerError, None),
        (503, openai.InternalServerError, "service_unavailable"),
    ],
)
@pytest.mark.parametrize("streaming", [True, False])
async def test_status_marker_raises_the_matching_openai_error(
    client: openai.AsyncOpenAI, status: int, error: type[openai.APIStatusError], code: str | None, streaming: bool
) -> None:
    with pytest.raises(error) as raised:
        await client.chat.completions.create(model="scripted", messages=user(f"[status:{status}]"), stream=streaming)

    assert raised.value.status_code == status
    assert raised.value.code == code
    assert isinstance(raised.value.body, dict)
    assert raised.value.body["message"]


async def test_hang_marker_trips_the_client_timeout(llm: ScriptedLLM, client: openai.AsyncOpenAI) -> None:
    started = time.perf_counter()
    with pytest.raises(openai.APITimeoutError):
        await client.chat.completions.create(model="scripted", messages=user("[hang]"), stream=True, timeout=0.5)

    assert 0.45 <= time.perf_counter() - started < 2.0
    assert await eventually(lambda: llm.in_flight == 0)


async def test_malformed_marker_breaks_stream_iteration_after_one_chunk(client: openai.AsyncOpenAI) -> None:
    received: list[str] = []
    response = await client.chat.completions.create(model="scripted", messages=user("[malformed] hi"), stream=True)
    with pytest.raises(json.JSONDecodeError):
        async for chunk in response:
            received.append(chunk.choices[0].delta.content or "")

    assert received == ["You "]


async def test_misshapen_marker_sends_json_that_is_no_chunk_after_one_valid_chunk(client: openai.AsyncOpenAI) -> None:
    body = {"model": "scripted", "messages": user("[misshapen] hi"), "stream": True}
    response = await client.post(
        "/chat/completions", cast_to=object, body=body, stream=True, stream_cls=openai.AsyncStream[object]
    )
    events: list[Any] = [event async for event in response]

    assert [e["choices"][0]["delta"] for e in events] == [{"role": "assistant", "content": "You "}, "not an object"]


async def test_disconnect_marker_raises_connection_error_after_two_chunks(client: openai.AsyncOpenAI) -> None:
    received: list[ChatCompletionChunk] = []
    response = await client.chat.completions.create(model="scripted", messages=user("[disconnect] hi"), stream=True)
    with pytest.raises(openai.APIConnectionError):
        async for chunk in response:
            received.append(chunk)

    assert contents(received) == ["You ", "said: "]
    assert all(c.choices[0].finish_reason is None for c in received)


@pytest.mark.parametrize(
    ("marker", "error"),
    [("[malformed]", json.JSONDecodeError), ("[disconnect]", openai.APIConnectionError)],
)
async def test_failure_markers_also_break_non_streaming_replies(
    client: openai.AsyncOpenAI, marker: str, error: type[Exception]
) -> None:
    with pytest.raises(error):
        await client.chat.completions.create(model="scripted", messages=user(marker))


async def test_echo_system_replies_with_the_system_prompt(client: openai.AsyncOpenAI) -> None:
    system = "You are Switchboard.\n  Answer in one sentence."
    messages: list[ChatCompletionMessageParam] = [
        {"role": "system", "content": system},
        {"role": "user", "content": "[echo_system]"},
    ]
    response = await client.chat.completions.create(model="scripted", messages=messages, stream=True)
    chunks = [chunk async for chunk in response]
    completion = await client.chat.completions.create(model="scripted", messages=messages)

    assert "".join(contents(chunks)) == system
    assert len(contents(chunks)) == 7
    assert completion.choices[0].message.content == system


async def test_requests_are_recorded_in_order_and_clear_forgets_them(
    llm: ScriptedLLM, client: openai.AsyncOpenAI
) -> None:
    await stream(client, "one", temperature=0.25)
    await client.chat.completions.create(model="other", messages=user("two"))

    assert [r["messages"][-1]["content"] for r in llm.requests] == ["one", "two"]
    assert llm.requests[0]["stream"] is True
    assert llm.requests[0]["temperature"] == 0.25
    assert llm.requests[1]["model"] == "other"
    assert "stream" not in llm.requests[1]

    llm.clear()
    assert llm.requests == []


async def test_script_applies_to_the_next_request_only(llm: ScriptedLLM, client: openai.AsyncOpenAI) -> None:
    llm.script(reply="A scripted answer.")
    first = await stream(client, "hello")
    second = await stream(client, "hello")

    assert contents(first) == ["A ", "scripted ", "answer."]
    assert "".join(contents(second)) == "You said: hello"


async def test_script_status_then_recovery(llm: ScriptedLLM, client: openai.AsyncOpenAI) -> None:
    llm.script(status=503)
    with pytest.raises(openai.InternalServerError):
        await client.chat.completions.create(model="scripted", messages=user("hi"))
    completion = await client.chat.completions.create(model="scripted", messages=user("hi"))

    assert completion.choices[0].message.content == "You said: hi"


async def test_script_delay_and_markers_win_over_script(llm: ScriptedLLM, client: openai.AsyncOpenAI) -> None:
    llm.script(reply="ignored because of the marker", delay_ms=30)
    started = time.perf_counter()
    chunks = await stream(client, "[tokens:2]")

    assert contents(chunks) == ["tok0 ", "tok1 "]
    assert time.perf_counter() - started >= 0.055


@pytest.mark.parametrize("delay_ms", [0, 5])
async def test_scripted_tool_calls_stream_in_openais_shape(
    llm: ScriptedLLM, client: openai.AsyncOpenAI, delay_ms: float
) -> None:
    llm.script(tool_calls=[("calculate", {"expression": "12 * 7"}), ("get_time", "{}")], delay_ms=delay_ms)
    chunks = await stream(client, "what is 12 times 7, and what time is it?")

    calls = [call for c in chunks if c.choices for call in c.choices[0].delta.tool_calls or []]
    assert len(calls) > 4 and not contents(chunks)  # arguments come in pieces
    names = {c.index: c.function.name for c in calls if c.function and c.function.name}
    ids = {c.index: c.id for c in calls if c.id}
    arguments = {i: "".join(c.function.arguments or "" for c in calls if c.index == i and c.function) for i in names}
    assert names == {0: "calculate", 1: "get_time"} and len(set(ids.values())) == 2
    assert json.loads(arguments[0]) == {"expression": "12 * 7"} and arguments[1] == "{}"
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


async def test_scripted_tool_calls_without_streaming(llm: ScriptedLLM, client: openai.AsyncOpenAI) -> None:
    llm.script(reply="Let me check.", tool_calls=[("get_time", {"time_zone": "Europe/Paris"})])
    completion = await client.chat.completions.create(model="scripted", messages=user("time?"))

    message = completion.choices[0].message
    assert message.content == "Let me check." and completion.choices[0].finish_reason == "tool_calls"
    assert message.tool_calls and message.tool_calls[0].type == "function"
    assert message.tool_calls[0].function.name == "get_time"


async def test_stop_is_fast_with_requests_in_flight() -> None:
    llm = ScriptedLLM()
    started = time.perf_counter()
    await llm.start()
    assert time.perf_counter() - started < 0.1
    async with openai.AsyncOpenAI(base_url=llm.base_url, api_key="test", max_retries=0) as client:

        async def consume(text: str) -> None:
            response = await client.chat.completions.create(model="scripted", messages=user(text), stream=True)
            async for _ in response:
                pass

        hanging = asyncio.create_task(consume("[hang]"))
        slow = asyncio.create_task(consume("[tokens:100] [delay:50]"))
        assert await eventually(lambda: llm.in_flight == 2)

        started = time.perf_counter()
        await llm.stop()
        stop_seconds = time.perf_counter() - started
        results = await asyncio.gather(hanging, slow, return_exceptions=True)

    assert stop_seconds < 0.1
    assert llm.in_flight == 0
    assert all(isinstance(r, openai.APIConnectionError) for r in results), results
    leftovers = [t for t in asyncio.all_tasks() if "run_asgi" in repr(t) or "_watch" in repr(t)]
    assert leftovers == []
