"""What the runtime does around every message a worker handles, on either way in.

One scope, :func:`handled`: the log context (session, turn, subject, trace), the trace
context the handler's publishes inherit, the handler's time in ``sb_handler_seconds``, and
the dead letter of a message that failed (or, for JetStream, its redelivery). FastStream
subscriptions get it as one middleware (:func:`runtime_middleware`). A worker may also
declare a :class:`DirectSubscription` for a latency-critical core NATS subject: the runtime
serves it with nats-py under the same scope, without FastStream's generic consume pipeline
(``bench/hop_bench.py``: over a raw nats-py subscriber, FastStream adds 0.24 ms per message
back to back and 0.73 ms on an idle machine, a direct subscription 0.11 and 0.15 ms). Only
the orchestrator's user turns take that way today.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import structlog
from faststream import BaseMiddleware
from faststream.message import StreamMessage
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from contracts import headers as h
from contracts.envelope import Event
from contracts.subjects import BY_NAME

from . import tracing
from .bus import Bus
from .deadletter import settle_failure
from .metrics import observe_handled

E = TypeVar("E", bound=Event)
_LOG_CONTEXT = ("session_id", "turn_id", "subject", "trace_id")


@contextlib.asynccontextmanager
async def handled(raw: Msg, worker: str, bus: Bus, max_deliver: int) -> AsyncIterator[None]:
    """Handle ``raw`` inside the block; a failure is dead-lettered here unless JetStream redelivers it."""
    headers: dict[str, str] = dict(raw.headers or {})
    parent = tracing.parse_traceparent(headers.get(h.TRACEPARENT))
    structlog.contextvars.bind_contextvars(
        session_id=headers.get(h.SESSION), turn_id=headers.get(h.TURN), subject=raw.subject,
        **({"trace_id": parent.trace_id} if parent else {}))
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


def runtime_middleware(bus: Bus, worker: str, max_deliver: int) -> type[BaseMiddleware]:
    class RuntimeMiddleware(BaseMiddleware):
        async def consume_scope(self, call_next: Callable[[Any], Awaitable[Any]], msg: StreamMessage[Any]) -> Any:
            async with handled(msg.raw_message, worker, bus, max_deliver):
                return await call_next(msg)
            return None  # dead-lettered

    return RuntimeMiddleware


@dataclass(frozen=True)
class DirectSubscription(Generic[E]):
    """A core NATS subject a worker consumes without FastStream (see the module's docstring)."""

    subject: str  # a name in contracts.subjects
    model: type[E]
    handler: Callable[[E], Awaitable[None]]
    queue: str = ""  # a queue group: one replica gets each message
    title: str = ""  # its name in the AsyncAPI document, like a FastStream subscriber's title


async def serve_direct(bus: Bus, subscription: DirectSubscription[Any], worker: str,
                       max_deliver: int) -> Subscription:
    async def on_message(msg: Msg) -> None:
        async with handled(msg, worker, bus, max_deliver):
            await subscription.handler(subscription.model.model_validate_json(msg.data))

    subject = BY_NAME[subscription.subject].wildcard(bus.prefix)
    return await bus.nc.subscribe(subject, queue=subscription.queue, cb=on_message)
