"""A worker never dies on one bad message: it dead-letters it with the reason.

Messages that can never succeed (undecodable, failing contract validation) go to the
dead-letter subject at once. Other failures of a JetStream message are retried by
redelivery up to ``max_deliver`` times, then dead-lettered. Core NATS messages have no
redelivery, so any failure dead-letters them.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from nats.aio.msg import Msg
from pydantic import ValidationError

from contracts.events import DeadLetter

from .bus import Bus
from .logging import get_logger

log = get_logger("deadletter")


class PermanentError(Exception):
    """A message that can never be handled, whatever is retried: dead-lettered at once."""


PERMANENT_ERRORS: tuple[type[BaseException], ...] = (
    ValidationError,
    json.JSONDecodeError,
    UnicodeDecodeError,
    PermanentError,
)


def _deliveries(raw: Any) -> int | None:
    """How often JetStream delivered this message; None for core NATS."""
    if getattr(raw, "reply", "").startswith("$JS.ACK."):
        return int(raw.metadata.num_delivered)
    return None


async def settle_failure(
    bus: Bus, worker: str, raw: Msg, headers: dict[str, str], error: Exception, max_deliver: int
) -> bool:
    """Dead-letter the message that failed (True), or leave it to JetStream's redelivery (False)."""
    deliveries = _deliveries(raw)
    permanent = isinstance(error, PERMANENT_ERRORS)
    if deliveries is not None and not permanent and deliveries < max_deliver:
        log.warning(
            "handler failed; will be redelivered", error=repr(error)[:300], delivery=deliveries, max_deliver=max_deliver
        )
        return False
    await _dead_letter(bus, worker, raw, headers, error, deliveries or 1)
    return True


async def _dead_letter(
    bus: Bus, worker: str, raw: Any, hdrs: dict[str, str], error: Exception, deliveries: int
) -> None:
    reason = _reason(error)
    letter = DeadLetter(
        producer=worker,
        worker=worker,
        original_subject=raw.subject,
        reason=reason,
        error_type=type(error).__name__,
        deliveries=deliveries,
        headers=hdrs,
        payload_b64=base64.b64encode(raw.data or b"").decode(),
    )
    log.error("message dead-lettered", reason=reason[:300], error_type=letter.error_type, deliveries=deliveries)
    await bus.publish(letter, worker=worker)


def _reason(error: Exception) -> str:
    if isinstance(error, ValidationError):
        details = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']}" for e in error.errors()[:5])
        return f"invalid {error.title}: {details}"[:2000]
    return f"{type(error).__name__}: {error}"[:2000]
