"""How a worker says what it consumes: one decorator family on its handler methods.

``@consumes(subject, delivery=...)`` marks a method of a :class:`~workers.runtime.Worker` as the
handler of a contract subject (a name in ``contracts.subjects``); ``@serves`` marks a
request/reply handler whose return value is the reply (requests are independent: a replica answers
up to ``max_in_flight`` at once, 64 unless declared; direct events are handled one at a time, in
order). The runtime reads these marks from the
class, so the AsyncAPI document and the JetStream provisioning come from the class alone,
without constructing the worker. Four ways in, one handling scope (``handling.handled``):

- ``direct``: core NATS (optionally a queue group). Fastest; a message sent while no replica
  listens is gone, so only for events whose loss a later event repairs (interrupts, state).
- ``jetstream``: a durable pull consumer (``durable=`` a ``ConsumerSpec``) with explicit acks,
  bounded redelivery, dead letters, ack-deadline heartbeats for long handlers and re-creation
  when the server lost it. ``batch=N`` hands the handler up to N messages at once, in order.
- ``partitioned``: core NATS on the partitions of a subject this replica owns; the worker opens
  and closes partitions at run time (``Worker.partitions``).
- ``recorded``: everything a stream recorded from a start time on, read in order by an
  ephemeral consumer that resumes after the last message seen (observers such as stats).

The payload type comes from the subject's contract; a handler parameter annotated
:class:`Delivery` also gets the message's delivery details.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from nats.aio.msg import Msg

from contracts import headers as h
from contracts.envelope import Event
from contracts.streams import ConsumerSpec, StreamSpec
from contracts.subjects import BY_NAME, Subject

DeliveryKind = Literal["direct", "jetstream", "partitioned", "recorded"]
F = TypeVar("F", bound=Callable[..., Any])
_MARK = "__sb_consumes__"


@dataclass(frozen=True)
class Consumption:
    """One handler's subscription, as declared."""

    method: str  # the handler method's name
    subject: str  # a name in contracts.subjects, or "" for a whole stream (recorded)
    delivery: DeliveryKind
    queue: str = ""
    durable: ConsumerSpec | None = None  # jetstream
    batch: int = 1  # jetstream: most messages per call (the handler takes a list)
    # jetstream, batch 1, and @serves: messages handled at once (1: one at a time, in order; a name: that setting)
    max_in_flight: int | str = 1
    stream: StreamSpec | None = None  # recorded
    filter: str = ""  # recorded: the subject filter relative to the prefix (default: the subject's wildcard)
    headers_only: bool = False  # recorded: payloads are not needed
    replies: bool = False  # @serves: the return value is sent to the requester
    wants_delivery: bool = False  # the handler has a Delivery parameter

    @property
    def contract(self) -> Subject | None:
        return BY_NAME.get(self.subject)

    @property
    def model(self) -> type[Event] | None:
        """What the payload (or, for binary subjects, the Sb-Meta header) is parsed into."""
        contract = self.contract
        return contract.message if contract else None

    def title(self, worker: str) -> str:
        return f"{worker}.{self.method.removeprefix('on_')}"


class Delivery:
    """What a handler may want to know about how its message came: JetStream details, raw bytes."""

    __slots__ = ("msg",)

    def __init__(self, msg: Msg) -> None:
        self.msg = msg

    @property
    def subject(self) -> str:
        return self.msg.subject

    @property
    def data(self) -> bytes:
        return self.msg.data

    @property
    def headers(self) -> dict[str, str]:
        return dict(self.msg.headers or {})

    @property
    def meta(self) -> str:
        """The Sb-Meta header of a binary message."""
        return (self.msg.headers or {}).get(h.META, "")

    @property
    def deliveries(self) -> int:
        """How often JetStream delivered this message (1 for core NATS)."""
        return int(self.msg.metadata.num_delivered) if _is_jetstream(self.msg) else 1

    @property
    def stream_sequence(self) -> int:
        return int(self.msg.metadata.sequence.stream) if _is_jetstream(self.msg) else 0

    async def in_progress(self) -> None:
        """Keep a JetStream message's ack deadline (the runtime does it for running handlers too)."""
        if _is_jetstream(self.msg):
            await self.msg.in_progress()

    @property
    def published_at(self) -> float:
        """When JetStream stored the message (epoch seconds); 0 for core NATS."""
        return self.msg.metadata.timestamp.timestamp() if _is_jetstream(self.msg) else 0.0


def _is_jetstream(msg: Msg) -> bool:
    return bool(msg.reply) and msg.reply.startswith("$JS.ACK.")


def consumes(
    subject: str = "",
    *,
    delivery: DeliveryKind = "direct",
    queue: str = "",
    durable: ConsumerSpec | None = None,
    batch: int = 1,
    max_in_flight: int | str = 1,
    stream: StreamSpec | None = None,
    filter: str = "",
    headers_only: bool = False,
) -> Callable[[F], F]:
    """Mark a worker method as the handler of ``subject`` (see the module docstring)."""
    if subject and subject not in BY_NAME:
        raise ValueError(f"{subject!r} is not a subject declared in contracts.subjects")
    if delivery == "jetstream" and durable is None:
        raise ValueError("a jetstream consumption needs its durable ConsumerSpec")
    if delivery == "recorded" and stream is None:
        raise ValueError("a recorded consumption needs the stream it reads")

    def mark(method: F) -> F:
        # A parameter annotated Delivery, or a batch of (event, Delivery) tuples (annotations may be strings).
        wants = any(
            p.annotation is Delivery or "Delivery" in str(p.annotation)
            for p in inspect.signature(method).parameters.values()
        )
        setattr(
            method,
            _MARK,
            Consumption(
                method=method.__name__,
                subject=subject,
                delivery=delivery,
                queue=queue,
                durable=durable,
                batch=batch,
                max_in_flight=max_in_flight,
                stream=stream,
                filter=filter,
                headers_only=headers_only,
                wants_delivery=wants,
            ),
        )
        return method

    return mark


def serves(subject: str, *, queue: str, max_in_flight: int = 64) -> Callable[[F], F]:
    """Mark a worker method as a request/reply handler; it returns the reply (None: an empty reply).
    Up to ``max_in_flight`` requests are answered at once: one slow answer (a database read) must not
    queue the others behind it past their requesters' deadlines."""

    def mark(method: F) -> F:
        consumes(subject, queue=queue, max_in_flight=max_in_flight)(method)
        declared: Consumption = getattr(method, _MARK)
        setattr(method, _MARK, Consumption(**{**declared.__dict__, "replies": True}))
        return method

    return mark


def consumptions(worker_class: type) -> list[Consumption]:
    """What a worker class consumes, in definition order (base classes first)."""
    found: dict[str, Consumption] = {}
    for klass in reversed(worker_class.__mro__):
        for name, value in vars(klass).items():
            mark = getattr(value, _MARK, None)
            if isinstance(mark, Consumption):
                found[name] = mark
    return list(found.values())
