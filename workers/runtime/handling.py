"""What the runtime does around every message a worker handles, whichever way it came in.

One scope, :func:`handled`: the log context (session, turn, subject, trace), the trace
context the handler's publishes inherit, the handler's time in ``sb_handler_seconds``, and
the dead letter of a message that failed (or, for JetStream, its redelivery). Every
transport (transports.py) runs its handlers inside it. Messages are served with nats-py
directly, not through FastStream's generic consume pipeline (``bench/hop_bench.py``: over a
raw nats-py subscriber, FastStream added 0.24 ms per message back to back and 0.73 ms on an
idle machine; this scope 0.11 and 0.15 ms); FastStream still writes the AsyncAPI document.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator

import structlog
from nats.aio.msg import Msg

from contracts import headers as h

from . import tracing
from .bus import Bus
from .deadletter import settle_failure
from .metrics import observe_handled

_LOG_CONTEXT = ("session_id", "turn_id", "subject", "trace_id")


@contextlib.asynccontextmanager
async def handled(raw: Msg, worker: str, bus: Bus, max_deliver: int) -> AsyncIterator[None]:
    """Handle ``raw`` inside the block; a failure is dead-lettered here unless JetStream redelivers it."""
    headers: dict[str, str] = dict(raw.headers or {})
    parent = tracing.parse_traceparent(headers.get(h.TRACEPARENT))
    structlog.contextvars.bind_contextvars(
        session_id=headers.get(h.SESSION),
        turn_id=headers.get(h.TURN),
        subject=raw.subject,
        **({"trace_id": parent.trace_id} if parent else {}),
    )
    started, outcome = time.perf_counter(), "error"
    try:
        with tracing.handling(parent):  # a dead letter too is a child of the message it keeps
            try:
                yield
                outcome = "ok"
            except Exception as error:
                if not await settle_failure(bus, worker, raw, headers, error, max_deliver):
                    raise
    finally:
        observe_handled(worker, headers.get(h.KIND, ""), outcome, time.perf_counter() - started)
        structlog.contextvars.unbind_contextvars(*_LOG_CONTEXT)
