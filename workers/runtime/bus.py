"""Publishing and requesting contract events on NATS.

Every event goes to the subject its kind is declared on in ``contracts.subjects``, with the
standard headers (``Nats-Msg-Id`` for dedupe, session, turn, schema, trace context), so a
worker can neither publish on an undeclared subject nor forget a header. A service (a worker,
the edge) publishes only what ``contracts.subjects.PUBLISHERS`` gives it: the NATS server would
drop anything else without a word to the caller, so the bus says it first.
"""

from __future__ import annotations

import functools
from typing import TypeVar

import nats.errors
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.errors import NoStreamResponseError, ServiceUnavailableError
from prometheus_client import Counter
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_delay, wait_exponential

from contracts import headers as h
from contracts.envelope import Event, SessionEvent
from contracts.subjects import BY_NAME, DEFAULT_PREFIX, PUBLISHERS, SERVICES, SUBJECTS, Subject

from . import tracing
from .metrics import PUBLISHED

ReplyT = TypeVar("ReplyT", bound=Event)
#: What a JetStream publish raises while no stream leader can store it (it may be stored on a retry).
_NOT_STORED = (TimeoutError, nats.errors.NoRespondersError, NoStreamResponseError, ServiceUnavailableError)
_BY_KIND: dict[str, Subject] = {}
for _spec in SUBJECTS:  # the first subject declared for a kind is where producers publish it
    _BY_KIND.setdefault(_spec.message.kind_name(), _spec)


class BusNotConnectedError(RuntimeError):
    pass


class NotAPublisherError(PermissionError):
    """A service publishing a subject the contracts give to others."""


class DependencyUnavailableError(RuntimeError):
    """A request/reply service did not answer in time or has no responder."""

    def __init__(self, service: str, status: str) -> None:
        super().__init__(f"{service}: {status}")
        self.service = service
        self.status = status  # "timeout" | "unavailable"


async def flush_ordered(nc: Client) -> None:
    """Make sure the server has processed everything sent so far (subscriptions included).

    nats-py 2.16's ``flush()`` writes its PING straight to the socket while earlier commands
    may still sit in the client's pending buffer, so the PONG can come back before the
    server saw a SUB: under load, a message published right after was then missed. Pushing
    the pending buffer out first restores the order.
    """
    await nc._flush_pending(force_flush=True)
    await nc.flush()


def headers_for(event: Event) -> dict[str, str]:
    """The standard headers plus trace context: what every message this bus sends carries."""
    headers = h.event_headers(event)
    tracing.stamp(headers, event.turn_id if isinstance(event, SessionEvent) else None)
    _published(event.producer, event.kind).inc()
    return headers


@functools.cache  # labels() takes a lock and builds a key on every call; producers and kinds are few
def _published(producer: str, kind: str) -> Counter:
    return PUBLISHED.labels(producer, kind)


def declared_subject(event: Event) -> Subject:
    spec = _BY_KIND.get(event.kind)
    if spec is None:
        raise LookupError(f"no subject is declared for kind {event.kind!r}")
    return spec


def subject_for(event: Event, prefix: str = DEFAULT_PREFIX, **params: str) -> str:
    spec = declared_subject(event)
    session = event.session_id if isinstance(event, SessionEvent) else None
    return spec.subject(session if spec.per_session else None, prefix, **params)


class Bus:
    """A worker's or the edge's handle on NATS: contract-aware publish, binary publish, request."""

    def __init__(self, producer: str, prefix: str = DEFAULT_PREFIX) -> None:
        self.producer = producer
        self.prefix = prefix
        self._publishes = {n for n, who in PUBLISHERS.items() if producer in who} if producer in SERVICES else None
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None

    def attach(self, nc: Client) -> None:
        self._nc = nc
        self._js = nc.jetstream()

    @property
    def nc(self) -> Client:
        if self._nc is None:
            raise BusNotConnectedError("the bus is not connected yet")
        return self._nc

    @property
    def js(self) -> JetStreamContext:
        if self._js is None:
            raise BusNotConnectedError("the bus is not connected yet")
        return self._js

    def may_publish(self, spec: Subject) -> None:
        if self._publishes is not None and spec.name not in self._publishes:
            raise NotAPublisherError(
                f"{self.producer} does not publish {spec.name!r}: contracts.subjects.PUBLISHERS gives it to "
                f"{', '.join(PUBLISHERS[spec.name]) or 'nobody'}"
            )

    async def publish(self, event: Event, *, durable: bool = False, **params: str) -> None:
        """Publish on the event's declared subject. ``durable`` waits for JetStream's ack."""
        self.may_publish(declared_subject(event))
        subject = subject_for(event, self.prefix, **params)
        payload = event.model_dump_json().encode()
        headers = headers_for(event)
        if durable:
            await self.js.publish(subject, payload, headers=headers)
        else:
            await self.nc.publish(subject, payload, headers=headers)

    async def publish_stored(self, event: Event, within_s: float) -> None:
        """Publish until JetStream has stored it (its ack), retrying for ``within_s``: a clustered
        stream electing a new leader stores nothing for a few seconds, and a plain publish then is
        lost although subscribers saw it. Retries carry the same ``Nats-Msg-Id``: stored once."""
        async for attempt in AsyncRetrying(
            retry=retry_if_exception_type(_NOT_STORED),
            wait=wait_exponential(multiplier=0.1, max=1.0),
            stop=stop_after_delay(within_s),
            reraise=True,
        ):
            with attempt:
                await self.publish(event, durable=True)

    async def publish_binary(self, meta: Event, payload: bytes) -> None:
        """Publish raw media with its meta model in the ``Sb-Meta`` header."""
        self.may_publish(declared_subject(meta))
        headers = headers_for(meta)
        headers[h.META] = meta.model_dump_json()
        await self.nc.publish(subject_for(meta, self.prefix), payload, headers=headers)

    async def request(self, name: str, event: Event, reply_type: type[ReplyT], timeout: float) -> ReplyT:
        """Request/reply with a deadline; raises DependencyUnavailableError instead of hanging."""
        self.may_publish(BY_NAME[name])
        subject = BY_NAME[name].subject(prefix=self.prefix)
        try:
            msg = await self.nc.request(
                subject, event.model_dump_json().encode(), timeout=timeout, headers=headers_for(event)
            )
        except nats.errors.NoRespondersError:
            raise DependencyUnavailableError(name, "unavailable") from None
        except (TimeoutError, nats.errors.TimeoutError):
            raise DependencyUnavailableError(name, "timeout") from None
        return reply_type.model_validate_json(msg.data)
