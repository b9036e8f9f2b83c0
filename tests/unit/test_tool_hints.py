"""Which tool a turn's words plainly ask for (workers/orchestrator/tool_hints.py)."""

from __future__ import annotations

import json

import pytest

from ops.tool_calling import ToolChoice, pass_allowed_tools
from workers.orchestrator.llm import tool_choice
from workers.orchestrator.tool_hints import NUMBER_TOOLS, allowed_tools, mentions_time, required_tool

ALL = frozenset({"calculate", "convert_units", "get_time", "set_reminder", "search_knowledge", "recall_memory"})


@pytest.mark.parametrize(
    ("text", "tool"),
    [
        # every arithmetic and unit question of the evaluation set that the 1.5B answered wrongly from memory
        ("What is 1764 divided by 42?", "calculate"),
        ("What is 23 squared?", "calculate"),
        ("What is 15 percent of 240?", "calculate"),
        ("what's 12*7", "calculate"),
        ("I have 3 boxes with 14 apples each and eat 5 apples. How many apples are left?", "calculate"),
        ("How many miles is 10 kilometres? Round to one decimal.", "convert_units"),
        ("Convert 212 degrees Fahrenheit to Celsius.", "convert_units"),
        ("How many pounds are 5 kilograms? Round to one decimal.", "convert_units"),
        ("How many minutes are there in 3.5 hours?", "convert_units"),
        ("Convert 3 flurbs into kilograms.", "convert_units"),
        ("5 km to miles?", "convert_units"),
        ("What time is it in the time zone Mars/Olympus_Mons?", "get_time"),
        ("what time is it in Tokyo", "get_time"),
        ("Remind me in 10 minutes to call Bob", "set_reminder"),
        ("set a timer for 5 minutes", "set_reminder"),
        # the model decides: no number, a plain clock question (the prompt has the session's time), chat
        ("What is the capital of France?", None),
        ("what time is it?", None),
        ("What year is it?", None),
        ("How do you say thank you in Spanish?", None),
        ("I was born in 1990 and I like cats.", None),
        ("My favourite number is 7.", None),
        ("Tell me about the 3 musketeers", None),
        ("In my documents, what did the grasshopper do all summer?", None),
    ],
)
def test_a_turn_that_plainly_needs_a_tool_names_it(text: str, tool: str | None) -> None:
    assert required_tool(text, ALL) == tool


def test_only_an_offered_tool_is_required() -> None:
    assert required_tool("What is 23 squared?", frozenset({"get_time"})) is None
    assert required_tool("Convert 212 F to C", frozenset({"calculate"})) is None


@pytest.mark.parametrize(
    ("text", "numbers_allowed"),
    [
        ("How do you say good morning in German?", False),
        ("At what temperature in Celsius does water boil at sea level?", False),
        ("What is the square root of two?", True),
        ("Split the bill in half", True),
        ("What is 9 times 9?", True),
    ],
)
def test_a_turn_without_a_number_may_not_call_the_number_tools(text: str, numbers_allowed: bool) -> None:
    allowed = allowed_tools(text, ALL)
    assert allowed >= ALL - NUMBER_TOOLS
    assert (allowed >= NUMBER_TOOLS) is numbers_allowed


def test_the_tool_choice_on_the_wire_is_openais() -> None:
    offered = {"calculate", "get_time", "handoff"}
    assert tool_choice(offered, offered, None) == {}  # auto: the default, not sent
    assert tool_choice(offered, offered, "calculate") == {
        "tool_choice": {"type": "function", "function": {"name": "calculate"}}
    }
    narrowed = tool_choice(offered, {"get_time", "handoff"}, "calculate")  # required but not allowed: not required
    assert narrowed == {
        "tool_choice": {
            "type": "allowed_tools",
            "allowed_tools": {
                "mode": "auto",
                "tools": [
                    {"type": "function", "function": {"name": "get_time"}},
                    {"type": "function", "function": {"name": "handoff"}},
                ],
            },
        }
    }
    assert tool_choice(offered, set(), None) == {"tool_choice": "none"}


def _tool(name: str) -> dict[str, object]:
    return {"type": "function", "function": {"name": name, "parameters": {"type": "object"}}}


def test_our_local_server_reads_every_tool_choice() -> None:
    tools = [_tool("calculate"), _tool("get_time"), _tool("handoff")]
    assert ToolChoice.of(tools, None) == ToolChoice(tools) == ToolChoice.of(tools, "auto")
    assert ToolChoice.of(tools, "required") == ToolChoice(tools, required=True)
    assert ToolChoice.of(tools, "none").names == frozenset()
    named = ToolChoice.of(tools, {"type": "function", "function": {"name": "get_time"}})
    assert named.names == {"get_time"} and named.required
    wire = tool_choice({"calculate", "get_time", "handoff"}, {"get_time", "handoff"}, None)["tool_choice"]
    narrowed = ToolChoice.of(tools, wire)
    assert narrowed.names == {"get_time", "handoff"} and not narrowed.required
    with pytest.raises(ValueError, match="not among the tools offered"):
        ToolChoice.of(tools, {"type": "function", "function": {"name": "rm_rf"}})


def test_allowed_tools_pass_through_our_server_to_the_handler_or_fall_back_to_auto() -> None:
    tools = [_tool("calculate"), _tool("get_time"), _tool("handoff")]
    wire = tool_choice({"calculate", "get_time", "handoff"}, {"get_time"}, None)
    body = json.dumps({"messages": [], "tools": tools, **wire}).encode()
    passed = json.loads(pass_allowed_tools(body, handled=True))["tool_choice"]
    assert passed["type"] == "function"  # a shape llama-cpp-python's request model accepts
    assert ToolChoice.of(tools, passed).names == {"get_time"}
    assert json.loads(pass_allowed_tools(body, handled=False))["tool_choice"] == "auto"  # another chat handler
    plain = json.dumps({"messages": [], "tool_choice": "required"}).encode()
    assert pass_allowed_tools(plain, handled=True) == plain and pass_allowed_tools(b"{oops", handled=True) == b"{oops"


@pytest.mark.parametrize(
    ("text", "timely"),
    [
        ("What year is it now?", True),
        ("What day of the week is it today?", True),
        ("Which month are we in?", True),
        ("How long until Christmas?", True),
        ("Remind me tomorrow morning", True),
        ("What is the capital of Italy?", False),
        ("Which river flows through it?", False),
        ("Thanks, that helps a lot.", False),
    ],
)
def test_the_date_goes_into_the_prompt_only_when_the_turn_may_need_it(text: str, timely: bool) -> None:
    assert mentions_time(text) is timely
