"""Which tool a turn's words plainly ask for (workers/orchestrator/tool_hints.py)."""

from __future__ import annotations

import pytest

from workers.orchestrator.tool_hints import required_tool

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
