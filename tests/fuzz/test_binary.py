"""Fuzzed binary frames for each hello audio encoding: random bytes, valid headers with random fields and payloads."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.fuzz.harness import Stack, check, exchange, healthy, open_socket
from tests.fuzz.strategies import binary_frames

ENCODINGS = st.sampled_from(["pcm_s16le", "webm_opus", "ogg_opus"])
SAMPLE_RATES = st.sampled_from([16_000, 8_000, 48_000, 44_100])


@settings(settings.get_profile("fuzz"), max_examples=300)
@given(
    encoding=ENCODINGS,
    sample_rate=SAMPLE_RATES,
    frames=st.lists(binary_frames(), min_size=1, max_size=12),
)
async def test_binary_frames_keep_the_protocol(
    stack: Stack, encoding: str, sample_rate: int, frames: list[bytes]
) -> None:
    ws = await open_socket(stack.url, audio={"encoding": encoding, "sample_rate": sample_rate})
    check(await exchange(ws, frames))
    await healthy(stack)


@settings(settings.get_profile("fuzz"), max_examples=50)
@given(encoding=ENCODINGS, frames=st.lists(binary_frames(), min_size=1, max_size=6), text=st.text(min_size=1))
async def test_chat_is_answered_after_binary_frames(
    stack: Stack, encoding: str, frames: list[bytes], text: str
) -> None:
    """Media garbage does not stop the socket's turns: a chat after it still ends with one reply.done."""
    ws = await open_socket(stack.url, audio={"encoding": encoding})
    check(await exchange(ws, [*frames, json.dumps({"type": "chat", "text": text})], 1), 1)
