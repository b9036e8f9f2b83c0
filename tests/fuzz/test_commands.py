"""Fuzzed text frames on an authenticated socket: arbitrary JSON, near-valid commands, deep nesting, garbage."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.fuzz.harness import Stack, check, exchange, healthy, open_socket
from tests.fuzz.strategies import accepted_chat, text_frames


@settings(settings.get_profile("fuzz"), max_examples=400)
@given(frames=st.lists(text_frames, min_size=1, max_size=12))
async def test_text_frames_keep_the_protocol(stack: Stack, frames: list[str]) -> None:
    ws = await open_socket(stack.url)
    chats = sum(map(accepted_chat, frames))
    check(await exchange(ws, frames, chats), chats)
    await healthy(stack)


@settings(settings.get_profile("fuzz"), max_examples=100)
@given(texts=st.lists(st.text(min_size=1, max_size=300), min_size=1, max_size=4), interrupt=st.booleans())
async def test_every_accepted_chat_ends_once(stack: Stack, texts: list[str], interrupt: bool) -> None:
    """Chats back to back (each supersedes the last) and an interrupt: every turn still ends exactly once."""
    frames = [json.dumps({"type": "chat", "text": text}) for text in texts]
    frames += [json.dumps({"type": "interrupt"})] if interrupt else []
    ws = await open_socket(stack.url)
    check(await exchange(ws, frames, len(texts)), len(texts))


@settings(settings.get_profile("fuzz"), max_examples=30)
@given(burst=st.integers(30, 70), frames=st.lists(text_frames, max_size=4))
async def test_bursts_past_the_rate_limit(stack: Stack, burst: int, frames: list[str]) -> None:
    """More frames than the text bucket holds (40): rate_limited, then 4008, never anything undocumented."""
    ws = await open_socket(stack.url)
    pings = [json.dumps({"type": "ping", "id": n}) for n in range(burst)]
    # Whether the late chats were accepted depends on timing; only the promises are checked, not the count.
    outcome = await exchange(ws, [*pings, *frames], refill_s=0.2)  # 20 frames/s: 4 tokens
    check(outcome, len(outcome.of_kind("turn.user")))
