"""The orchestrator's side of tools without the bus: the runner's outcomes, streamed calls assembled, handoff."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any, TypeVar

import pytest

from contracts import events as ev
from contracts.envelope import Event
from workers.orchestrator.agents import AgentRegistry, handoff_target, handoff_tool
from workers.orchestrator.llm import ToolCallRequest, _assembled, _read_chunk
from workers.orchestrator.tools import MAX_RESULT_CHARS, SessionContext, ToolOutcome, ToolRunner
from workers.runtime.bus import DependencyUnavailableError

R = TypeVar("R", bound=Event)
TURN = ev.UserTurn(session_id="session-1", turn_id="turn-1", producer="edge", text="hi", source="typed")
ALL = frozenset({"get_time", "calculate", "convert_units", "search_knowledge"})


class FakeTools:
    """Answers every request after ``delay_s`` with ``answer(request)``, which may raise."""

    producer = "orchestrator"

    def __init__(self, answer: Any, delay_s: float = 0.0) -> None:
        self.answer = answer
        self.delay_s = delay_s
        self.asked: list[tuple[str, ev.ToolRequest, float]] = []

    async def request(self, name: str, event: Event, reply_type: type[R], timeout: float) -> R:
        assert isinstance(event, ev.ToolRequest) and reply_type is ev.ToolReply
        self.asked.append((name, event, timeout))
        await asyncio.sleep(self.delay_s)
        reply: R = self.answer(event)
        return reply


def reply(result: dict[str, Any] | None = None, error: str = "") -> ev.ToolReply:
    return ev.ToolReply(session_id="session-1", producer="tools", result=result, error=error)


def call(name: str, arguments: Any = None, call_id: str = "c1") -> ToolCallRequest:
    return ToolCallRequest(call_id, name, arguments if isinstance(arguments, str) else json.dumps(arguments or {}))


async def run(tools: FakeTools, *calls: ToolCallRequest, max_s: float = 5.0) -> list[ToolOutcome]:
    runner = ToolRunner(tools, max_s)
    return await runner.run(TURN, calls, ALL, SessionContext("Europe/Paris", ["notes"]))


async def test_a_result_goes_to_the_model_with_the_session_context_and_the_deadline() -> None:
    tools = FakeTools(lambda r: reply({"value": 84, "text": "84"}))
    (outcome,) = await run(tools, call("calculate", {"expression": "12*7"}), max_s=0.3)
    assert outcome.status == "ok" and json.loads(outcome.message()["content"]) == {"value": 84, "text": "84"}
    name, request, timeout = tools.asked[0]
    assert name == "tools.calculate" and request.arguments == {"expression": "12*7"}
    assert (request.time_zone, request.knowledge_bases, request.call_id) == ("Europe/Paris", ["notes"], "c1")
    assert 0.29 < timeout <= 0.3  # the tool's 1 s deadline, capped by the setting


def unavailable(status: str) -> Any:
    def fail(request: ev.ToolRequest) -> ev.ToolReply:
        raise DependencyUnavailableError("tools.get_time", status)

    return fail


def misshapen(request: ev.ToolRequest) -> ev.ToolReply:
    raise ValueError("not a ToolReply")


@pytest.mark.parametrize(
    ("answer", "status", "error"),
    [
        (unavailable("timeout"), "timeout", "did not answer within 1 s"),
        (unavailable("unavailable"), "unavailable", "unavailable right now"),
        (misshapen, "error", "the tool get_time failed"),
        (lambda r: reply(error="unknown time zone 'Mars/Base'"), "error", "unknown time zone"),
        (lambda r: reply(), "error", "gave no result"),
    ],
)
async def test_every_failure_is_an_error_the_model_reads(answer: Any, status: str, error: str) -> None:
    (outcome,) = await run(FakeTools(answer), call("get_time"))
    assert outcome.status == status and error in outcome.error
    assert json.loads(outcome.message()["content"]) == {"error": outcome.error}


async def test_a_tool_nobody_serves_is_not_offered_for_a_while(monkeypatch: pytest.MonkeyPatch) -> None:
    runner = ToolRunner(FakeTools(unavailable("unavailable")), 1.0)
    offered = {t["function"]["name"] for t in runner.definitions(ALL)}
    await runner.run(TURN, [call("get_time")], ALL, SessionContext())
    assert {t["function"]["name"] for t in runner.definitions(ALL)} == offered - {"get_time"}
    monkeypatch.setattr(ToolRunner, "ABSENT_FOR_S", 0.0)
    await runner.run(TURN, [call("get_time")], ALL, SessionContext())
    assert {t["function"]["name"] for t in runner.definitions(ALL)} == offered


async def test_calls_that_cannot_be_made_are_not_sent() -> None:
    tools = FakeTools(lambda r: reply({}))
    outcomes = await run(tools, call("launch", {}), call("calculate", "{broken"), call("calculate", "[1, 2]"))
    assert [o.error for o in outcomes] == [
        "there is no tool named 'launch'",
        "the arguments are not a JSON object",
        "the arguments are not a JSON object",
    ]
    assert tools.asked == []
    runner = ToolRunner(tools, 1.0)
    (not_allowed,) = await runner.run(TURN, [call("calculate", {})], frozenset({"get_time"}), SessionContext())
    assert not_allowed.status == "error" and tools.asked == []


async def test_a_rounds_calls_run_at_once_in_order() -> None:
    tools = FakeTools(lambda r: reply({"n": r.call_id}), delay_s=0.1)
    started = time.perf_counter()
    outcomes = await run(tools, *(call("get_time", {}, f"c{i}") for i in range(4)))
    assert time.perf_counter() - started < 0.3 and [o.result for o in outcomes] == [{"n": f"c{i}"} for i in range(4)]


def test_results_are_cut_for_the_model_and_citations_are_read() -> None:
    cited = {"document_id": "d1", "source": "a.md", "section": "One"}
    outcome = ToolOutcome(call("search_knowledge"), "ok", {"text": "x" * 10_000, "citations": [cited, {"no": 1}]})
    assert len(outcome.message()["content"]) == MAX_RESULT_CHARS
    assert [c.source for c in outcome.citations()] == ["a.md"]  # the misshapen one is left out


def test_streamed_pieces_of_calls_are_assembled() -> None:
    calls: dict[int, list[str]] = {}
    pieces = [
        {"index": 0, "id": "call_a", "type": "function", "function": {"name": "calculate", "arguments": ""}},
        {"index": 1, "id": "call_b", "type": "function", "function": {"name": "get_time", "arguments": "{}"}},
        {"index": 0, "function": {"arguments": '{"expression": '}},
        {"index": 0, "function": {"arguments": '"1 + 1"}'}},
    ]
    for piece in pieces:
        _read_chunk({"choices": [{"delta": {"tool_calls": [piece]}, "finish_reason": None}]}, calls)
    assert _assembled(calls) == [
        ToolCallRequest("call_a", "calculate", '{"expression": "1 + 1"}'),
        ToolCallRequest("call_b", "get_time", "{}"),
    ]
    with pytest.raises(ValueError):
        _read_chunk({"choices": [{"delta": {"tool_calls": ["not an object"]}}]}, calls)


def test_handoff_offers_the_other_agents_and_names_a_valid_one() -> None:
    registry = AgentRegistry()
    general = registry.default
    tool = handoff_tool(registry, general)
    assert tool is not None and tool["function"]["parameters"]["properties"]["agent"]["enum"] == ["coach", "knowledge"]
    assert handoff_target(registry, general, '{"agent": "coach"}') == registry.get("coach")
    assert "no other agent named 'general'" in str(handoff_target(registry, general, '{"agent": "general"}'))
    assert "no other agent named 'None'" in str(handoff_target(registry, general, "{broken"))
