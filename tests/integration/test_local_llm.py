"""The embedded default LLM: SmolLM2-135M-Instruct served by llama-cpp-python on loopback.

A real server (ops.llm_server.start_llm) is started once for the module; loading takes
about 1.5 s on two cores and each request below decodes at most 24 tokens.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from ops.llm_server import MODEL_ALIAS, start_llm
from ops.servers import RunningServer
from workers.orchestrator.llm import OpenAIChatModel, ToolCallRequest
from workers.orchestrator.tools import ToolOutcome, call_message


@pytest.fixture(scope="module")
def llm_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    log_file: Path = tmp_path_factory.mktemp("llm") / "llm.log"
    server = start_llm(log_file=log_file)
    try:
        yield server
    finally:
        server.stop()


def test_models_lists_the_alias(llm_server: RunningServer) -> None:
    with urllib.request.urlopen(f"{llm_server.url}/models", timeout=5) as response:
        assert response.status == 200
        body = json.load(response)
    assert MODEL_ALIAS in [model["id"] for model in body["data"]]


async def test_streaming_chat_completion(llm_server: RunningServer) -> None:
    client = openai.AsyncOpenAI(base_url=llm_server.url, api_key="local")
    try:
        stream = await client.chat.completions.create(
            model=MODEL_ALIAS,
            messages=[
                {"role": "system", "content": "You are a friendly, concise assistant."},
                {"role": "user", "content": "Say hello in one short sentence."},
            ],
            stream=True,
            max_tokens=24,
            stream_options={"include_usage": True},
        )
        deltas: list[str] = []
        usages = []
        finish_reasons = []
        async for chunk in stream:
            assert chunk.model == MODEL_ALIAS
            if chunk.usage is not None:
                usages.append(chunk.usage)
            for choice in chunk.choices:
                if choice.delta.content:
                    deltas.append(choice.delta.content)
                if choice.finish_reason is not None:
                    finish_reasons.append(choice.finish_reason)
    finally:
        await client.close()

    assert len(deltas) > 1, deltas
    assert "".join(deltas).strip()
    assert finish_reasons in (["stop"], ["length"])
    # llama-cpp-python's server ignores stream_options: no chunk carries usage. If a later
    # version starts sending it, it must count the streamed tokens.
    assert all(usage.completion_tokens > 0 for usage in usages)
    assert usages == [], "llama_cpp.server now reports usage in streams: update ops/llm_server.py's docstring"


async def test_non_streaming_completion_reports_usage(llm_server: RunningServer) -> None:
    async with openai.AsyncOpenAI(base_url=llm_server.url, api_key="local") as client:
        response = await client.chat.completions.create(
            model=MODEL_ALIAS,
            messages=[{"role": "user", "content": "Say hello in one short sentence."}],
            max_tokens=16,
        )
    assert response.choices[0].message.content
    assert response.usage is not None
    assert 0 < response.usage.completion_tokens <= 16
    assert response.usage.prompt_tokens > 0


async def test_the_real_server_takes_a_tool_round_as_the_orchestrator_writes_it(llm_server: RunningServer) -> None:
    """The second request of a tool round (the assistant's calls, then the results) is accepted by
    llama-cpp-python's server: it refused a null assistant content with HTTP 500 under `just up`."""
    call = ToolCallRequest("text_call_0", "calculate", json.dumps({"expression": "12 * 7"}))
    outcome = ToolOutcome(call, "ok", {"expression": "12 * 7", "value": 84, "text": "84"})
    messages = [
        {"role": "system", "content": "You are a concise assistant."},
        {"role": "user", "content": "What is 12 times 7?"},
        call_message("", [call]),
        outcome.message(),
    ]
    model = OpenAIChatModel(llm_server.url, "local", MODEL_ALIAS, timeout_s=30)
    try:
        text = "".join([chunk.text async for chunk in model.stream(messages, None, max_tokens=16)])
    finally:
        await model.close()
    assert text.strip()
