"""Tool calls of the embedded default model (Qwen2.5-Coder-1.5B) through our launcher (ops/tool_calling.py).

The pure parts (when a reply is a call, the call's grammar schema) are checked without a model;
then the real 1.5B server is started once (its file is joined by setup; loading ~1 s, the first
prompt ~10-20 s on 2 cores) and the orchestrator's own client asks it as a turn would.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from contracts.tools import BY_TOOL, unbounded
from ops import models
from ops.llm_server import start_llm
from ops.servers import RunningServer
from ops.tool_calling import call_intended, call_schema
from workers.orchestrator.agents import shipped_agents
from workers.orchestrator.llm import Chunk, OpenAIChatModel
from workers.orchestrator.tools import call_message

NAMES = frozenset({"get_time", "calculate"})


@pytest.mark.parametrize(
    ("start", "verdict"),
    [
        ("", None),
        ("<tool", None),
        ("<tool_call>", True),
        ("<tools>\n", True),
        ("{", True),
        ("```", None),
        ("```json", True),
        ("```python", False),
        ("get", None),  # may become a tool's name
        ("get_time", None),  # a name alone: a call only once the reply ends there
        ('get_time({"time_zone": "Asia/Tokyo"})', True),
        ("Get ready", False),
        ("The answer is 84.", False),
    ],
)
def test_a_reply_is_a_call_by_its_first_characters(start: str, verdict: bool | None) -> None:
    assert call_intended(start, NAMES) is verdict


def test_the_call_grammar_admits_each_offered_tool_without_bounds() -> None:
    tools = [BY_TOOL["calculate"].function(), BY_TOOL["set_reminder"].function()]
    schema = call_schema(tools)
    assert [a["properties"]["name"]["const"] for a in schema["oneOf"]] == ["calculate", "set_reminder"]
    assert "maxLength" not in json.dumps(schema)  # a 500-long bound became a grammar that crashed llama.cpp
    assert unbounded({"a": [{"maxLength": 3, "type": "string"}], "minimum": 1}) == {"a": [{"type": "string"}]}


@pytest.fixture(scope="module")
def qwen(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    server = start_llm(log_file=tmp_path_factory.mktemp("qwen") / "llm.log", name=models.DEFAULT)
    yield server
    server.stop()


async def _ask(
    model: OpenAIChatModel, messages: list[dict[str, object]], tools: list[dict[str, object]]
) -> list[Chunk]:
    return [chunk async for chunk in model.stream(messages, None, 120, tools)]


async def test_the_embedded_model_calls_a_tool_and_answers_from_its_result(qwen: RunningServer, tmp_path: Path) -> None:
    model = OpenAIChatModel(qwen.url, "none", models.DEFAULT, timeout_s=300.0)
    tools = [BY_TOOL["calculate"].function()]
    messages: list[dict[str, object]] = [
        {"role": "system", "content": "You are a voice assistant. Use calculate for any arithmetic."},
        {"role": "user", "content": "What is 12 times 7?"},
    ]
    try:
        chunks = await _ask(model, messages, tools)
        (call,) = [c for chunk in chunks for c in chunk.tool_calls]
        assert call.name == "calculate" and not call.id.startswith("text_call")  # the server's tool_calls, not text
        expression = json.loads(call.arguments)["expression"]
        assert expression.replace(" ", "") in ("12*7", "7*12"), expression
        assert not "".join(chunk.text for chunk in chunks).strip()  # nothing of the call reached the user as text
        result: dict[str, object] = {
            "role": "tool",
            "tool_call_id": call.id,
            "content": json.dumps({"value": 84, "text": f"{expression} = 84"}),
        }
        answer = await _ask(model, [*messages, call_message("", [call]), result], tools)
        text = "".join(chunk.text for chunk in answer)
        assert "84" in text and not any(chunk.tool_calls for chunk in answer), text
    finally:
        await model.close()


async def test_a_required_tool_is_called_where_the_model_would_answer_from_memory(qwen: RunningServer) -> None:
    model = OpenAIChatModel(qwen.url, "none", models.DEFAULT, timeout_s=300.0)
    tools = [BY_TOOL["convert_units"].function()]
    messages: list[dict[str, object]] = [{"role": "user", "content": "How many miles is 10 kilometres?"}]
    try:
        chunks = [chunk async for chunk in model.stream(messages, None, 120, tools, required_tool="convert_units")]
        (call,) = [c for chunk in chunks for c in chunk.tool_calls]
        assert call.name == "convert_units" and not call.id.startswith("text_call")
        arguments = json.loads(call.arguments)
        assert arguments["value"] == 10, arguments
        assert not "".join(chunk.text for chunk in chunks).strip()
    finally:
        await model.close()


async def test_a_call_of_a_tool_not_allowed_this_turn_becomes_a_plain_answer(qwen: RunningServer) -> None:
    # Seen: for this question the 1.5B writes a call (calculate, or get_time); with only handoff allowed it
    # must answer in words, and nothing of a call may reach the user.
    model = OpenAIChatModel(qwen.url, "none", models.DEFAULT, timeout_s=300.0, temperature=0.2)
    tools = [BY_TOOL[name].function() for name in ("calculate", "get_time", "convert_units")]
    messages: list[dict[str, object]] = [
        {"role": "system", "content": shipped_agents().agents[0].system_prompt},
        {"role": "user", "content": "How do you say good morning in German?"},
    ]
    try:
        unnarrowed = [c async for c in model.stream(messages, None, 60, tools)]
        assert any(chunk.tool_calls for chunk in unnarrowed)  # the model's own choice: a call (else no test)
        # allowed_tools on the wire (our server passes it to the handler), and "none"
        for allowed in (frozenset({"convert_units"}), frozenset()):
            chunks = [c async for c in model.stream(messages, None, 60, tools, allowed=allowed)]
            text = "".join(chunk.text for chunk in chunks)
            assert not any(chunk.tool_calls for chunk in chunks) and "guten morgen" in text.lower(), (allowed, text)
            assert "{" not in text and "tool_call" not in text
    finally:
        await model.close()
