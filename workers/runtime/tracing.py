"""W3C trace context on NATS headers, so that one turn is one trace across every process.

Vocabulary of OpenTelemetry: a *trace* (128-bit ``trace_id``) is made of *spans* (64-bit
``span_id``); here every published message is a span, its ``traceparent`` header carries the
trace id and the message's own span id, and ``Sb-Parent-Span`` names the span of the message
whose handling published it (absent for a root). Handlers get the incoming message's context
from the runtime's handling scope (:func:`workers.runtime.handling.handled`) through a context variable, which
asyncio copies into the tasks a handler starts; :class:`~workers.runtime.bus.Bus` stamps every
publish from it. A turn event published outside any handler (the transcriber's audio loop, the
edge's typed chat) starts the trace whose id is derived from its ``turn_id``, so every producer
of a turn joins the same trace even where no message links them. Nothing is exported: the
headers are recorded with the events in JetStream and ``sb trace`` reads them back.
"""

from __future__ import annotations

import contextvars
import hashlib
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from contracts import headers as h

_TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")


@dataclass(frozen=True)
class SpanContext:
    trace_id: str  # 32 lower-case hex
    span_id: str  # 16 lower-case hex

    @property
    def traceparent(self) -> str:
        return f"00-{self.trace_id}-{self.span_id}-01"


def parse_traceparent(value: str | None) -> SpanContext | None:
    """The context of a ``traceparent`` header, or None when absent or malformed (all-zero ids too)."""
    match = _TRACEPARENT.match((value or "").strip().lower())
    if match is None or set(match[1]) == {"0"} or set(match[2]) == {"0"}:
        return None
    return SpanContext(match[1], match[2])


def new_span_id() -> str:
    return os.urandom(8).hex()


def turn_trace_id(turn_id: str) -> str:
    """The trace id of a turn that starts outside any handler: stable for every producer."""
    return hashlib.sha256(turn_id.encode()).hexdigest()[:32]


_current: contextvars.ContextVar[SpanContext | None] = contextvars.ContextVar("sb_span", default=None)


def current() -> SpanContext | None:
    return _current.get()


@contextmanager
def handling(parent: SpanContext | None) -> Iterator[None]:
    """Everything published inside the block is a child of ``parent``."""
    token = _current.set(parent)
    try:
        yield
    finally:
        _current.reset(token)


def stamp(headers: dict[str, str], turn_id: str | None) -> None:
    """Add ``traceparent`` (and ``Sb-Parent-Span``) for a message published now."""
    parent = _current.get()
    if parent is not None:
        trace_id = parent.trace_id
        headers[h.PARENT_SPAN] = parent.span_id
    else:
        trace_id = turn_trace_id(turn_id) if turn_id else os.urandom(16).hex()
    headers[h.TRACEPARENT] = SpanContext(trace_id, new_span_id()).traceparent
