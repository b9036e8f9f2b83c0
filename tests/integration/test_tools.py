"""Tool calls end to end: the scripted model calls tools, the orchestrator asks them on the bus, the
client's socket sees tool.call and tool.result, the model gets the results and answers.

Two stacks: the real tools worker (prefix ``tools``), and a test responder that serves
``calculate`` slowly on purpose and nothing else (prefix ``slowtools``: slow, missing, interrupted).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from nats.aio.client import Client as Nats
from nats.aio.msg import Msg

from contracts import events as ev
from ops import tools as ops_tools
from tests.support.bus import client_bus
from tests.support.edge_client import Client, connect, running_edge
from tests.support.scripted_llm import ScriptedLLM
from tests.support.waiting import eventually
from workers.orchestrator.worker import WORKER, OrchestratorSettings
from workers.runtime import running_worker
from workers.runtime.settings import RuntimeSettings
from workers.tools.worker import WORKER as TOOLS

TOOL_TIMEOUT_S = 0.5


def settings(nats_url: str, llm: ScriptedLLM, prefix: str) -> OrchestratorSettings:
    return OrchestratorSettings(
        nats_url=nats_url,
        llm_base_url=llm.base_url,
        llm_timeout_s=2.0,
        memory_timeout_s=0.1,
        tool_timeout_s=TOOL_TIMEOUT_S,
        subject_prefix=prefix,
    )


@pytest.fixture(scope="module")
async def edge(nats_url: str, llm: ScriptedLLM) -> AsyncIterator[str]:
    async with (
        running_worker(TOOLS, RuntimeSettings(nats_url=nats_url, subject_prefix="tools")),
        running_worker(WORKER, settings(nats_url, llm, "tools")),
        running_edge(nats_url, subject_prefix="tools") as url,
    ):
        yield url


@pytest.fixture(scope="module")
async def slow_edge(nats_url: str, llm: ScriptedLLM) -> AsyncIterator[str]:
    """``calculate`` answers after ``float(expression)`` seconds; no other tool is served."""

    answering: set[asyncio.Task[None]] = set()

    async def answer(msg: Msg) -> None:
        call = ev.ToolRequest.model_validate_json(msg.data)
        await asyncio.sleep(float(call.arguments["expression"]))
        result = {"expression": call.arguments["expression"], "value": 0, "text": "slept"}
        reply = ev.ToolReply(session_id=call.session_id, turn_id=call.turn_id, producer="test", result=result)
        await msg.respond(reply.model_dump_json().encode())

    async def slow(msg: Msg) -> None:  # a subscription's callbacks run one at a time: answer in tasks
        task = asyncio.create_task(answer(msg))
        answering.add(task)
        task.add_done_callback(answering.discard)

    async with client_bus(nats_url, "slowtools") as bus:
        await bus.nc.subscribe("slowtools.svc.tools.calculate", cb=slow)
        async with (
            running_worker(WORKER, settings(nats_url, llm, "slowtools")),
            running_edge(nats_url, subject_prefix="slowtools") as url,
        ):
            yield url


def is_done(event: dict[str, Any]) -> bool:
    return bool(event["kind"] == "reply.done")


def of(kind: str, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in events if e["kind"] == kind]


def tool_messages(request: dict[str, Any]) -> list[dict[str, Any]]:
    return [json.loads(m["content"]) for m in request["messages"] if m["role"] == "tool"]


async def turn(client: Client, text: str) -> list[dict[str, Any]]:
    await client.chat(text)
    return await client.until(is_done)


async def test_a_calculation_goes_through_the_bus_to_the_model_and_its_answer(
    edge: str, llm: ScriptedLLM, nc: Nats
) -> None:
    llm.clear()
    llm.script(tool_calls=[("calculate", {"expression": "12 * 7"})])
    llm.script(reply="12 times 7 is 84.")
    client = await connect(edge)
    events = await turn(client, "what is 12 times 7?")

    (call,), (result,) = of("tool.call", events), of("tool.result", events)
    assert call["name"] == "calculate" and json.loads(call["arguments"]) == {"expression": "12 * 7"}
    assert call["round"] == 1 and call["agent"] == "general" and result["call_id"] == call["call_id"]
    assert result["status"] == "ok" and result["result"]["value"] == 84 and result["duration_ms"] < 500
    done = events[-1]
    assert done["finish_reason"] == "stop" and done["text"] == "12 times 7 is 84."
    first, second = llm.requests
    offered = {t["function"]["name"] for t in first["tools"]}
    assert offered == {
        *("calculate", "convert_units", "get_time", "search_knowledge", "recall_memory", "set_reminder", "handoff")
    }
    # "12 times 7" plainly asks for arithmetic: the first round requires the call, the answer round does not.
    assert first["tool_choice"] == {"type": "function", "function": {"name": "calculate"}}
    assert "tool_choice" not in second
    assert first["temperature"] == second["temperature"] == 0.2  # SB_LLM_TEMPERATURE's default
    # No word about time: no date line, so the next turn's prompt starts with this one's (the server's cache).
    assert not [m for m in first["messages"] if m["content"].startswith("(If the user asks about the date")]
    assistant = next(m for m in second["messages"] if m.get("tool_calls"))
    assert assistant["tool_calls"][0]["id"] == call["call_id"]
    assert tool_messages(second) == [result["result"]]
    # Recorded like any session event: `sb trace` shows the calls under the turn that made them.
    records = await ops_tools.turn_messages(nc.jetstream(), done["turn_id"], client.session_id, "tools", 0)
    tree = ops_tools.trace_tree(records)
    assert any("orchestrator: tool.call" in line for line in tree), tree
    assert any("orchestrator: tool.result" in line for line in tree), tree
    await client.close()


async def test_time_in_the_sessions_zone(edge: str, llm: ScriptedLLM) -> None:
    llm.clear()
    client = await connect(edge)
    await client.send(type="settings", time_zone="Asia/Tokyo")
    await client.until(lambda e: e["kind"] == "session.settings")
    llm.script(tool_calls=[("get_time", {})])
    llm.script(reply="It is late in Tokyo.")
    (result,) = of("tool.result", await turn(client, "what time is it?"))
    assert [m for m in llm.requests[0]["messages"] if m["content"].startswith("(If the user asks about the date")]
    # The session's time is in the prompt: no tool is required; no number in the words: none of the number tools.
    choice = llm.requests[0]["tool_choice"]
    assert choice["type"] == "allowed_tools" and choice["allowed_tools"]["mode"] == "auto"
    allowed = {tool["function"]["name"] for tool in choice["allowed_tools"]["tools"]}
    assert "get_time" in allowed and not allowed & {"calculate", "convert_units"}
    assert result["status"] == "ok" and result["result"]["time_zone"] == "Asia/Tokyo"
    assert result["result"]["iso"].endswith("+09:00")
    await client.close()


async def test_parallel_calls_and_hostile_input_each_get_their_outcome(edge: str, llm: ScriptedLLM) -> None:
    llm.clear()
    llm.script(
        tool_calls=[
            ("convert_units", {"value": 5, "from_unit": "mi", "to_unit": "km"}),
            ("calculate", {"expression": "9 ** 9 ** 9"}),
            ("calculate", "{not json"),
            ("launch_rockets", {}),
        ]
    )
    llm.script(reply="Done.")
    client = await connect(edge)
    events = await turn(client, "convert and compute")

    results = of("tool.result", events)
    assert [r["call_id"] for r in results] == [c["call_id"] for c in of("tool.call", events)]
    assert [r["status"] for r in results] == ["ok", "error", "error", "error"]
    assert results[0]["result"]["value"] == pytest.approx(8.04672)
    assert "too large" in results[1]["error"] and results[1]["duration_ms"] < 100
    assert "not a JSON object" in results[2]["error"] and "no tool named" in results[3]["error"]
    assert [m.get("error") for m in tool_messages(llm.requests[-1])][1:] == [r["error"] for r in results[1:]]
    assert events[-1]["finish_reason"] == "stop"
    await client.close()


async def test_the_model_hands_the_conversation_to_another_agent(edge: str, llm: ScriptedLLM) -> None:
    llm.clear()
    llm.script(tool_calls=[("handoff", {"agent": "coach"}), ("get_time", {})])
    llm.script(reply="Coach here: what would you like to practise?")
    client = await connect(edge)
    events = await turn(client, "I want to practise for an interview")

    (call,), (result,) = of("tool.call", events), of("tool.result", events)  # the round's other call is not made
    assert (call["name"], call["agent"], result["status"], result["result"]) == (
        "handoff",
        "general",
        "ok",
        {"agent": "coach"},
    )
    done = events[-1]
    assert done["agent"] == "coach" and done["text"] == "Coach here: what would you like to practise?"
    handed = llm.requests[-1]  # the coach answers the turn afresh, and may not hand it on again
    assert "patient coach" in handed["messages"][0]["content"]
    assert {t["function"]["name"] for t in handed["tools"]} == {"calculate", "convert_units"}
    assert (await turn(client, "next question"))[-1]["agent"] == "coach"  # it sticks
    await client.close()


async def test_a_question_routed_to_the_documents_is_not_handed_away(edge: str, llm: ScriptedLLM) -> None:
    llm.clear()
    llm.script(reply="Your documents do not say.")
    client = await connect(edge)
    events = await turn(client, "In my documents, who won the race?")
    assert events[-1]["agent"] == "knowledge" and not of("tool.call", events)
    (asked,) = llm.requests
    assert "handoff" not in {t["function"]["name"] for t in asked.get("tools") or []}
    await client.close()


async def test_a_handoff_to_no_agent_is_an_error_for_the_model(edge: str, llm: ScriptedLLM) -> None:
    llm.clear()
    llm.script(tool_calls=[("handoff", {"agent": "pirate"}), ("calculate", {"expression": "1 + 1"})])
    llm.script(reply="I stay.")
    client = await connect(edge)
    events = await turn(client, "talk like a pirate")
    handoff, calculation = of("tool.result", events)
    assert handoff["status"] == "error" and "no other agent named 'pirate'" in handoff["error"]
    assert calculation["status"] == "ok" and events[-1]["agent"] == "general"
    await client.close()


async def test_calls_run_at_once(slow_edge: str, llm: ScriptedLLM) -> None:
    llm.clear()
    llm.script(tool_calls=[("calculate", {"expression": "0.3"}), ("calculate", {"expression": "0.3"})])
    llm.script(reply="Both done.")
    client = await connect(slow_edge)
    started = time.monotonic()
    events = await turn(client, "two slow ones")
    assert [r["status"] for r in of("tool.result", events)] == ["ok", "ok"]
    assert time.monotonic() - started < 0.55  # not 0.6 one after the other
    await client.close()


async def test_a_slow_tool_times_out_and_a_missing_one_is_unavailable(slow_edge: str, llm: ScriptedLLM) -> None:
    llm.clear()
    llm.script(tool_calls=[("calculate", {"expression": "2"}), ("get_time", {})])
    llm.script(reply="Sorry, my tools failed.")
    client = await connect(slow_edge)
    started = time.monotonic()
    events = await turn(client, "slow and missing")

    timeout, missing = of("tool.result", events)
    assert timeout["status"] == "timeout" and TOOL_TIMEOUT_S * 1000 <= timeout["duration_ms"] < 900
    assert missing["status"] == "unavailable" and missing["duration_ms"] < 100
    assert {m["error"] for m in tool_messages(llm.requests[-1])} == {timeout["error"], missing["error"]}
    assert events[-1]["finish_reason"] == "stop" and events[-1]["text"] == "Sorry, my tools failed."
    assert time.monotonic() - started < 1.5
    # A tool nobody serves is not offered again for a while; the slow one still is.
    await turn(client, "and now?")
    assert {t["function"]["name"] for t in llm.requests[-1]["tools"]} >= {"calculate"}
    assert "get_time" not in {t["function"]["name"] for t in llm.requests[-1]["tools"]}
    await client.close()


async def test_rounds_are_bounded(edge: str, llm: ScriptedLLM) -> None:
    llm.clear()
    for _ in range(3):  # max_tool_rounds: the model keeps calling
        llm.script(tool_calls=[("calculate", {"expression": "1 + 1"})])
    llm.script(reply="Two.")
    client = await connect(edge)
    events = await turn(client, "again and again")
    assert [c["round"] for c in of("tool.call", events)] == [1, 2, 3]
    assert "tools" not in llm.requests[-1] and events[-1]["text"] == "Two."
    await client.close()


async def test_an_interrupt_cancels_the_tool_round(slow_edge: str, llm: ScriptedLLM) -> None:
    llm.clear()
    llm.script(tool_calls=[("calculate", {"expression": "0.4"})])
    client = await connect(slow_edge)
    await client.chat("something slow")
    await client.until(lambda e: e["kind"] == "tool.call")
    await client.send(type="interrupt")
    events = await client.until(is_done)
    assert events[-1]["finish_reason"] == "cancelled" and not of("tool.result", events)
    await asyncio.sleep(0.5)  # the tool's late answer changes nothing
    assert len(llm.requests) == 1
    await client.send(type="ping", id="after")
    assert [e["kind"] for e in await client.until(lambda e: e["kind"] == "pong")] == ["pong"]
    await client.close()


@pytest.mark.parametrize(
    "written",
    [
        '{"name": "calculate", "arguments": {"expression": "12 * 7"}}',
        '```json\n{\n  "name": "calculate",\n  "arguments": {\n    "expression": "12 * 7"\n  }\n}\n```',
        '<tool_call>\n{"name": "calculate", "arguments": {"expression": "12 * 7"}}\n</tool_call>',
    ],
)
async def test_a_call_the_model_wrote_as_text_is_made_and_never_shown(
    edge: str, llm: ScriptedLLM, written: str
) -> None:
    """What the embedded Qwen2.5-Coder does (a server without its tool parser passes the call on as text)."""
    llm.clear()
    llm.script(reply=written)
    llm.script(reply="12 times 7 is 84.")
    client = await connect(edge)
    events = await turn(client, "what is 12 times 7?")
    (result,) = of("tool.result", events)
    assert result["status"] == "ok" and result["result"]["value"] == 84
    assert not any("calculate" in e["text"] for e in of("reply.delta", events))  # the call was never shown
    assert events[-1]["text"] == "12 times 7 is 84."
    await client.close()


async def test_warm_up_has_the_model_evaluate_each_agents_prompt_and_tools_the_default_last(nats_url: str) -> None:
    async with ScriptedLLM() as llm:
        warmed = settings(nats_url, llm, "warmtools").model_copy(update={"warm_up": True})
        async with running_worker(WORKER, warmed):
            await eventually(lambda: len(llm.requests) >= 3, within=10)
        agents = [r["messages"][0]["content"].split(".")[0] for r in llm.requests]
        assert len(llm.requests) == 3 and all(r["max_tokens"] == 1 for r in llm.requests)
        assert agents[-1] == "You are Switchboard, a helpful voice and chat assistant"  # the default, kept live
        general = llm.requests[-1]
        assert {"calculate", "get_time", "handoff"} <= {t["function"]["name"] for t in general["tools"]}
        # Each turn of that agent starts with the same messages (its first user message aside).
        assert general["messages"][0]["role"] == "system" and general["messages"][-1]["role"] == "user"


async def test_no_warm_up_unless_asked(nats_url: str) -> None:
    async with ScriptedLLM() as llm, running_worker(WORKER, settings(nats_url, llm, "coldtools")):
        await asyncio.sleep(0.5)
        assert llm.requests == []
