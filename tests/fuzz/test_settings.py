"""Settings commands with random values: refused or echoed, and the session's next chat is still answered."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from contracts.client import COMMANDS, Settings
from tests.fuzz.harness import Stack, check, exchange, healthy, open_socket
from tests.fuzz.strategies import TEXT, field_values, long_text

SHORT = TEXT | long_text(16) | long_text(32) | long_text(64) | st.sampled_from(["", "general", "coach", "en-US", "de"])
FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "agent": SHORT,
    "tone": st.sampled_from(["neutral", "concise", "friendly", "formal", "rude", ""]) | TEXT,
    "voice": SHORT,
    "tts_provider": SHORT,
    "language": SHORT,
    "knowledge_bases": st.lists(SHORT, max_size=5) | st.lists(st.just("kb"), min_size=50, max_size=300),
}


@st.composite
def settings_commands(draw: st.DrawFn) -> dict[str, Any]:
    command: dict[str, Any] = {"type": "settings"}
    for name, values in FIELDS.items():
        if draw(st.booleans()):
            # Mostly the field's own kind of value, sometimes any JSON at all (wrong types, nesting).
            command[name] = draw(st.none() | values | values | field_values)
    return command


def _valid(frame: str) -> bool:
    try:
        return isinstance(COMMANDS.validate_json(frame), Settings)
    except ValueError:
        return False


@settings(settings.get_profile("fuzz"), max_examples=180)
@given(commands=st.lists(settings_commands(), min_size=1, max_size=3), text=st.text(min_size=1, max_size=200))
async def test_random_settings_then_a_chat(stack: Stack, commands: list[dict[str, Any]], text: str) -> None:
    frames = [json.dumps(command) for command in commands]
    ws = await open_socket(stack.url)
    outcome = await exchange(ws, [*frames, json.dumps({"type": "chat", "text": text})], 1)
    check(outcome, 1)
    # Every valid settings command is echoed (before the chat's reply.done, which waits on the bus in order).
    assert len(outcome.of_kind("session.settings")) == sum(map(_valid, frames)), outcome.events
    await healthy(stack)
