"""How reliably the model calls tools (issue 17, section 3): the orchestrator's own prompt and model
client (workers/orchestrator: build_prompt, the general agent's tools, OpenAIChatModel with its
text-call parsing and grammar repair) against an OpenAI-compatible server, no bus.

Each case is one typed request. Round 1: the right call is the expected tool (or none) with
arguments its JSON Schema accepts. Then any call runs in-process (the tools worker's plain
functions; recall, reminders and search get a canned result), its result goes back, and the right
answer is a reply that holds the expected answer (a question the model answered without the
expected tool can still be answered right). Prints each miss, then per-kind accuracy and the
first-delta and round times.

    .venv/bin/python -m bench.tool_calls                  # starts the embedded default (1.5B)
    .venv/bin/python -m bench.tool_calls --llm-url http://127.0.0.1:8089/v1 [--only calc]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import re
import statistics
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import jsonschema  # type: ignore[import-untyped]

from contracts.tools import BY_TOOL
from ops import models
from ops.llm_server import start_llm
from workers.orchestrator.agents import AgentRegistry, handoff_tool
from workers.orchestrator.core import session_now
from workers.orchestrator.llm import ChatMessage, LLMError, OpenAIChatModel, ToolCallRequest
from workers.orchestrator.prompt import build_prompt
from workers.orchestrator.tools import call_message
from workers.tools import core


@dataclass(frozen=True)
class Case:
    kind: str
    say: str
    tool: str | None  # the expected call; None: the model should answer without one
    answer: str  # a regular expression the final reply must match


NOW = dt.datetime.now(dt.UTC)
CASES: tuple[Case, ...] = (
    Case("calculate", "What is 12 times 7?", "calculate", r"\b84\b"),
    Case("calculate", "What is 15 percent of 240?", "calculate", r"\b36\b"),
    Case(
        "calculate", "I have 3 boxes with 14 apples each and eat 5 apples. How many are left?", "calculate", r"\b37\b"
    ),
    Case("calculate", "What is the square root of 144?", "calculate", r"\b12\b"),
    Case("calculate", "Divide 1000 by 8.", "calculate", r"\b125\b"),
    Case("convert_units", "How many kilometers is 10 miles?", "convert_units", r"\b16[.,]0?9"),
    Case("convert_units", "Convert 212 degrees Fahrenheit to Celsius.", "convert_units", r"\b100\b"),
    Case("convert_units", "How many pounds is 5 kilograms?", "convert_units", r"\b11[.,]0?2"),
    Case("convert_units", "How many minutes are there in 3.5 hours?", "convert_units", r"\b210\b"),
    Case("get_time", "What day of the week is it today?", "get_time", NOW.strftime("%A")),
    Case("get_time", "What year is it?", "get_time", str(NOW.year)),
    Case("get_time", "What time is it in Tokyo right now?", "get_time", r"\d{1,2}[:.]\d{2}|\b\d{1,2} ?(am|pm)\b"),
    Case("recall_memory", "What did I tell you last week about my sister?", "recall_memory", r"lisbon"),
    Case("set_reminder", "Remind me in 10 minutes to take the cake out of the oven.", "set_reminder", r"remind|10"),
    Case("search_knowledge", "What does my employee handbook say about vacation days?", "search_knowledge", r"25"),
    Case("handoff", "Please hand me over to the coach, I want to practise interviews.", "handoff", r""),
    Case("none", "What is the capital of France?", None, r"\bparis\b"),
    Case("none", "How do you say thank you in Spanish?", None, r"gracias"),
    Case("none", "Hi there! How are you today?", None, r"."),
    Case("none", "Who wrote Romeo and Juliet?", None, r"shakespeare"),
)

CANNED: dict[str, dict[str, Any]] = {
    "recall_memory": {
        "matches": [{"role": "user", "text": "My sister just moved to Lisbon.", "at": "2026-11-30T18:00", "score": 1}],
        "facts": [],
        "text": "1 earlier turn: 'My sister just moved to Lisbon.'",
    },
    "set_reminder": {"reminder_id": "r1", "due": "in 10 minutes", "in_s": 600, "text": "take the cake out"},
    "search_knowledge": {
        "passages": [
            {"n": 1, "text": "Employees get 25 vacation days a year.", "source": "handbook.md", "section": "Leave"}
        ],
        "citations": [{"document_id": "d1", "source": "handbook.md"}],
    },
}


def run_tool(name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    if name == "calculate":
        return core.calculation(arguments)
    if name == "convert_units":
        return core.conversion(arguments)
    if name == "get_time":
        return core.current_time(arguments, "UTC")
    return CANNED.get(name, {"ok": True})


@dataclass
class Outcome:
    case: Case
    call_miss: str  # '' when the model called what it should (or nothing when it should not)
    answer_miss: str  # '' when the final reply holds the answer
    first_delta_ms: float | None
    turn_ms: float


async def complete(
    model: OpenAIChatModel, messages: list[ChatMessage], tools: list[dict[str, Any]] | None
) -> tuple[str, tuple[ToolCallRequest, ...], float | None]:
    start, first, text = time.perf_counter(), None, []
    calls: tuple[ToolCallRequest, ...] = ()
    async for chunk in model.stream(messages, None, 200, tools):
        if chunk.text:
            first = first or (time.perf_counter() - start) * 1000
            text.append(chunk.text)
        calls = chunk.tool_calls or calls
    return "".join(text), calls, first


async def one(model: OpenAIChatModel, registry: AgentRegistry, case: Case) -> Outcome:
    """Round 1 as the orchestrator asks it; then, as the orchestrator would, the calls run and the model answers."""
    agent = registry.default
    tools = [BY_TOOL[name].function() for name in sorted(agent.tools) if name in BY_TOOL]
    if handoff := handoff_tool(registry, agent):
        tools.append(handoff)
    messages = build_prompt(agent, None, case.say, [], None, [], now=session_now(None)).messages
    start = time.perf_counter()
    try:
        text, calls, first = await complete(model, messages, tools)
        names = [c.name for c in calls]
        if case.tool is None:
            call_miss = f"called {names}" if calls else ""
        elif case.tool not in names:
            call_miss = f"expected a call of {case.tool}, got {names or 'text: ' + repr(text[:100])}"
        else:
            call_miss = ""
        for call in calls:
            schema = next(t["function"]["parameters"] for t in tools if t["function"]["name"] == call.name)
            jsonschema.validate(json.loads(call.arguments), schema)
        if calls and "handoff" not in names:
            results = [{"role": "tool", "tool_call_id": c.id, "content": json.dumps(run_tool_safe(c))} for c in calls]
            text, _, first = await complete(model, [*messages, call_message(text, calls), *results], tools)
        answer_miss = "" if re.search(case.answer, text, re.I) else f"reply {text[:120]!r} lacks /{case.answer}/"
    except (LLMError, ValueError, jsonschema.ValidationError) as error:
        call_miss = answer_miss = f"{type(error).__name__}: {str(error)[:160]}"
        first = None
    return Outcome(case, call_miss, answer_miss, first, (time.perf_counter() - start) * 1000)


def run_tool_safe(call: ToolCallRequest) -> dict[str, Any]:
    try:
        return {"result": run_tool(call.name, json.loads(call.arguments))}
    except ValueError as error:
        return {"error": str(error)}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--llm-url", help="an OpenAI-compatible base URL (default: start the embedded model)")
    parser.add_argument("--model", default=models.DEFAULT, help="local model when starting one")
    parser.add_argument("--only", default="", help="run the cases whose kind starts with this")
    parser.add_argument("--repeat", type=int, default=1, help="run the set this many times")
    args = parser.parse_args()
    server = None if args.llm_url else start_llm(name=args.model)
    url = args.llm_url or (server.url if server else "")
    model = OpenAIChatModel(url, "none", args.model, timeout_s=120.0)
    registry = AgentRegistry.from_file(None)
    outcomes: list[Outcome] = []
    try:
        for _ in range(args.repeat):
            for case in CASES:
                if case.kind.startswith(args.only):
                    outcome = await one(model, registry, case)
                    outcomes.append(outcome)
                    misses = "; ".join(m for m in (outcome.call_miss, outcome.answer_miss) if m)
                    print(f"{'ok  ' if not misses else 'MISS'} {case.kind:16} {case.say[:50]!r} {misses}")
    finally:
        await model.close()
        if server:
            server.stop()
    calls, answers, total = Counter[str](), Counter[str](), Counter[str]()
    for o in outcomes:
        total[o.case.kind] += 1
        calls[o.case.kind] += not o.call_miss
        answers[o.case.kind] += not o.answer_miss
    print("\n| kind | right call | right answer | of |\n|---|---:|---:|---:|")
    for kind in total:
        print(f"| {kind} | {calls[kind]} | {answers[kind]} | {total[kind]} |")
    print(f"| **all** | **{sum(calls.values())}** | **{sum(answers.values())}** | **{sum(total.values())}** |")
    firsts = [o.first_delta_ms for o in outcomes if o.first_delta_ms is not None]
    turns = [o.turn_ms for o in outcomes]
    if len(firsts) >= 2:
        q = statistics.quantiles(firsts, n=20)
        print(f"\nfirst delta of the reply: p50 {statistics.median(firsts):.0f} ms, p95 {q[18]:.0f} ms")
    print(f"whole turn (both rounds): p50 {statistics.median(turns):.0f} ms, max {max(turns):.0f} ms")


if __name__ == "__main__":
    asyncio.run(main())
