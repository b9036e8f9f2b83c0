"""Hypothesis strategies for what a client can put on the wire, valid, near-valid and garbage."""

from __future__ import annotations

import json
import struct
from typing import Any

from hypothesis import strategies as st

from contracts.client import COMMANDS, Chat

# Lone surrogates cannot be sent as UTF-8 text frames; they still reach the edge as JSON escapes.
UNICODE = st.characters(exclude_categories=["Cs"])
TEXT = st.text(UNICODE, max_size=40)
COMMAND_TYPES = ("hello", "chat", "settings", "interrupt", "ping")

json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | TEXT
json_values: st.SearchStrategy[Any] = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
    max_leaves=12,
)


@st.composite
def long_text(draw: st.DrawFn, around: int) -> str:
    """A string of about ``around`` characters (limits sit there), one repeated character, maybe multi-byte."""
    char = draw(st.sampled_from(["a", " ", "é", "中", "😀", "\u0000", '"', "\\", "["]))
    return char * draw(st.integers(around - 8, around + 8))


@st.composite
def nested(draw: st.DrawFn) -> Any:
    """Arrays and objects nested around the edge's depth limit (16) and far past it."""
    depth = draw(st.sampled_from([15, 16, 17, 40, 300]))
    value: Any = draw(json_scalars)
    for _ in range(depth):
        value = [value] if draw(st.booleans()) else {"k": value}
    return value


field_values: st.SearchStrategy[Any] = (
    json_values | long_text(64) | long_text(8_000) | long_text(4_096) | nested() | st.sampled_from(COMMAND_TYPES)
)


@st.composite
def near_command(draw: st.DrawFn) -> dict[str, Any]:
    """A command of a real type whose fields are kept, dropped, retyped or joined by unknown ones."""
    kind = draw(st.sampled_from(COMMAND_TYPES))
    fields: dict[str, dict[str, Any]] = {
        "hello": {"token": "x", "protocol": 1},
        "chat": {"text": draw(TEXT.filter(bool) | long_text(8_000))},
        "settings": {"tone": "concise", "agent": "general"},
        "interrupt": {},
        "ping": {"id": draw(st.integers() | TEXT | st.none())},
    }
    valid = fields[kind]
    # Sometimes the type itself is wrong: unknown, another JSON type, a near miss.
    wrong_types = st.sampled_from([kind.upper(), kind + " "]) | json_scalars
    command: dict[str, Any] = {"type": draw(st.sampled_from([kind]) | st.sampled_from([kind]) | wrong_types)}
    for name, value in valid.items():
        choice = draw(st.sampled_from(["keep", "keep", "drop", "mutate"]))
        if choice == "keep":
            command[name] = value
        elif choice == "mutate":
            command[name] = draw(field_values)
    command |= draw(st.dictionaries(TEXT, field_values, max_size=2))
    return command


def encode(value: Any, ascii_only: bool) -> str:
    return json.dumps(value, ensure_ascii=ascii_only)


text_frames: st.SearchStrategy[str] = st.one_of(
    st.builds(encode, json_values, st.booleans()),
    st.builds(encode, near_command(), st.booleans()),
    st.builds(encode, nested(), st.booleans()),
    st.text(UNICODE, max_size=60),  # mostly not JSON
    long_text(16_384),  # around the text frame limit, in bytes for ASCII
    st.sampled_from(['{"type":"chat","text":"hi"', "[" * 100_000, '{"type":"ping","id":NaN}', "", "null"]),
)


def _depth(value: Any) -> int:
    if isinstance(value, list):
        return 1 + max(map(_depth, value), default=0)
    if isinstance(value, dict):
        return 1 + max(map(_depth, value.values()), default=0)
    return 0


def accepted_chat(frame: str, max_bytes: int = 16_384) -> bool:
    """Whether the documented rules make the edge accept ``frame`` as a chat (within rate and budget)."""
    if len(frame.encode()) > max_bytes or frame.count("[") + frame.count("{") > 10_000:
        return False
    try:
        if _depth(json.loads(frame)) > 16:
            return False
        return isinstance(COMMANDS.validate_json(frame), Chat)
    except (ValueError, RecursionError):
        return False


CLIENT_HEADER = struct.Struct("<BBHId")
FRAME_TYPES = st.sampled_from([0x01, 0x02, 0x03, 0x81, 0x00, 0x04, 0xFF]) | st.integers(0, 255)
CAPTURE_TIMES = st.floats() | st.sampled_from([0.0, -1.0, 1.7e9, 1e308]) | st.floats(1.7e9, 1.8e9)


@st.composite
def payloads(draw: st.DrawFn) -> bytes:
    size = draw(st.sampled_from([0, 1, 2, 3, 640, 641, 65_536 - 16, 65_536 - 15, 262_144]) | st.integers(0, 2_000))
    if size > 2_000:  # large payloads: cheap to build, the content does not matter to the limit
        return bytes([draw(st.integers(0, 255))]) * size
    start = b"\xff\xd8\xff" if draw(st.booleans()) else b""  # JPEG magic, so camera frames pass that check
    return (start + draw(st.binary(min_size=size, max_size=size)))[:size] if size else b""


@st.composite
def binary_frames(draw: st.DrawFn) -> bytes:
    if draw(st.integers(0, 4)) == 0:
        return draw(st.binary(max_size=40))
    header = CLIENT_HEADER.pack(
        draw(FRAME_TYPES),
        draw(st.sampled_from([1, 1, 1, 0, 2, 255])),
        draw(st.integers(0, 0xFFFF)),
        draw(st.integers(0, 0xFFFFFFFF)),
        draw(CAPTURE_TIMES),
    )
    return header + draw(payloads())
