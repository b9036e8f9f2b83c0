"""Tool calls written as text are recognised; everything else is released as it was."""

from __future__ import annotations

import pytest

from workers.orchestrator.text_tools import TextToolCalls, parse_calls

TOOLS = {"calculate", "get_time"}


def stream(pieces: list[str]) -> tuple[str, list[tuple[str, str]]]:
    written = TextToolCalls(TOOLS)
    shown = "".join(written.feed(piece) for piece in pieces)
    calls, held = written.finish()
    return shown + held, calls


@pytest.mark.parametrize(
    "text",
    [
        '{"name": "calculate", "arguments": {"expression": "2+2"}}',
        '```json\n{"name": "calculate", "arguments": {"expression": "2+2"}}\n```',
        '<tool_call>\n{"name": "calculate", "arguments": "{\\"expression\\": \\"2+2\\"}"}\n</tool_call>',
        '[{"name": "calculate", "parameters": {"expression": "2+2"}}]',
    ],
)
def test_the_shapes_small_models_write_are_calls(text: str) -> None:
    shown, calls = stream([text[:3], text[3:10], text[10:]])
    assert shown == "" and calls == [("calculate", '{"expression": "2+2"}')]


def test_two_tagged_calls_are_two_calls() -> None:
    first = '<tool_call>{"name": "get_time", "arguments": {}}</tool_call>'
    second = '<tool_call>{"name": "calculate", "arguments": {"expression": "1"}}</tool_call>'
    text = f"{first}\n{second}"
    assert [name for name, _ in parse_calls(text, TOOLS)] == ["get_time", "calculate"]


@pytest.mark.parametrize(
    "text",
    [
        "The answer is 4.",
        '{"name": "delete_everything", "arguments": {}}',  # not an offered tool: shown as written
        '{"name": "calculate", "arguments": {"expression": "2+2"}} and that is all',  # prose after it
        "```python\nprint(4)\n```",  # code, not a call
        "{not json",
    ],
)
def test_anything_else_is_shown_as_written(text: str) -> None:
    shown, calls = stream([text[:2], text[2:]])
    assert shown == text and calls == []


def test_ordinary_text_streams_at_once_and_no_tools_means_no_holding() -> None:
    written = TextToolCalls(TOOLS)
    assert written.feed("Hel") == "Hel" and written.feed("lo {") == "lo {"
    assert TextToolCalls(set()).feed("{") == "{"
