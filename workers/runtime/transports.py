"""The four ways a message reaches a worker's handler (see consumes.py), all under one handling scope.

JetStream consumers are read with the pull protocol directly (``$JS.API.CONSUMER.MSG.NEXT``): one
long-lived pull request keeps credit open, so a message is delivered the moment it is stored
(no request round trip per message), and the transport owns what a long-lived consumer needs:
re-pulling after a reconnect or a lost request (idle heartbeats), re-creating a consumer the
server lost, resuming an ordered read after the last sequence seen (nats-py's ordered consumer
re-creates with a start time and a start sequence at once after a server restart: error 10094),
and keeping long handlers' ack deadlines alive. Each transport reports what is broken in
``problems()``; the worker's health says it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from contracts import headers as h
from contracts.streams import ConsumerSpec, StreamSpec
from contracts.subjects import BY_NAME
from contracts.validate import declared

from .bus import Bus
from .consumes import Consumption, Delivery
from .deadletter import PermanentError
from .handling import handled
from .logging import get_logger
from .provision import consumer_config, ensure_consumer, stream_name

log = get_logger("runtime")
Handler = Callable[..., Awaitable[Any]]

_STATUS = "Status"
_HEARTBEAT_S = 2.0  # idle heartbeat asked of the server; two missed ones mean the pull is gone
_RECOVER_PAUSE_S = 0.1
_EXPIRES_S = 30.0  # a pull request's lifetime; renewed before it ends


class Transport:
    """One declared consumption, served. ``start`` subscribes; ``stop`` drains."""

    def __init__(self, bus: Bus, worker: str, consumption: Consumption, handler: Handler, max_deliver: int) -> None:
        self.bus = bus
        self.worker = worker
        self.consumption = consumption
        self.handler = handler
        self.max_deliver = max_deliver

    async def start(self) -> None:
        raise NotImplementedError

    async def stop(self) -> None:
        raise NotImplementedError

    def problems(self) -> list[str]:
        return []

    def on_reconnect(self) -> None:
        """The connection came back: pulls made before it may be gone with a restarted server."""

    def _parse(self, msg: Msg) -> tuple[Any, ...]:
        """The handler's arguments: the payload parsed by its contract (and the Delivery if asked).

        A consumer over several subjects (a durable with many filters) parses each message by the
        contract of the subject it came on."""
        contract = self.consumption.contract or declared(msg.subject)
        if contract is None:
            raise UndeclaredSubjectError(f"no contract declares {msg.subject!r}")
        body = msg.headers.get(h.META, "") if contract.binary and msg.headers else msg.data
        event = contract.message.model_validate_json(body)
        return (event, Delivery(msg)) if self.consumption.wants_delivery else (event,)

    async def _handle(self, msg: Msg) -> Any:
        """Parse and handle one message under the runtime's scope; returns the handler's result."""
        result = None
        async with handled(msg, self.worker, self.bus, self.max_deliver):
            result = await self.handler(*self._parse(msg))
            return result
        raise _DeadLettered  # the scope dead-lettered it (or left it to redelivery)


class UndeclaredSubjectError(PermanentError):
    """A message on a subject no contract declares: it can never be handled (dead-lettered at once)."""


class _DeadLettered(Exception):  # noqa: N818 - a signal between two methods, not an error
    pass


# ---------------------------------------------------------------------- core NATS


class DirectTransport(Transport):
    """Core NATS, optionally in a queue group; ``@serves`` handlers answer the requester.

    nats-py runs a subscription's callback for one message at a time: events keep their order that
    way. Requests are answered in tasks instead, up to the declared ``max_in_flight`` at once (a
    replica that answered memory context one request at a time missed the 250 ms deadline for most
    turns at 200 typed turns a second while its CPU idled)."""

    _sub: Subscription | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        limit = self.consumption.max_in_flight if self.consumption.replies else 1
        self._slots = asyncio.Semaphore(int(limit))
        self._answering: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        contract = self.consumption.contract
        assert contract is not None
        on_message = self._on_request if self.consumption.replies else self._on_message
        self._sub = await self.bus.nc.subscribe(
            contract.wildcard(self.bus.prefix), queue=self.consumption.queue, cb=on_message
        )

    async def _on_request(self, msg: Msg) -> None:
        await self._slots.acquire()  # at the limit, the next request waits here (in the subscription)
        task = asyncio.create_task(self._on_message(msg))
        self._answering.add(task)
        task.add_done_callback(self._answered)

    def _answered(self, task: asyncio.Task[None]) -> None:
        self._answering.discard(task)
        self._slots.release()

    async def _on_message(self, msg: Msg) -> None:
        try:
            result = await self._handle(msg)
        except _DeadLettered:
            result = None
        if self.consumption.replies and msg.reply:
            await msg.respond(result.model_dump_json().encode() if result is not None else b"")

    async def stop(self) -> None:
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.drain()  # type: ignore[no-untyped-call]  # received ones are handled first
        if self._answering:
            await asyncio.wait(set(self._answering))


class PartitionedTransport(Transport):
    """Core NATS on the partitions this replica owns; the worker opens and closes them."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._subs: dict[int, Subscription] = {}

    @property
    def owned(self) -> set[int]:
        return set(self._subs)

    async def start(self) -> None:
        return None  # nothing is owned until the worker says so

    async def own(self, partition: int) -> None:
        if partition in self._subs:
            return
        subject = BY_NAME[self.consumption.subject].subject("*", self.bus.prefix, partition=str(partition))
        self._subs[partition] = await self.bus.nc.subscribe(subject, cb=self._on_message)

    async def release(self, partition: int) -> None:
        sub = self._subs.pop(partition, None)
        if sub is not None:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def _on_message(self, msg: Msg) -> None:
        with contextlib.suppress(_DeadLettered):
            await self._handle(msg)

    async def stop(self) -> None:
        for partition in list(self._subs):
            await self.release(partition)


# ---------------------------------------------------------------------- JetStream


class _Puller(Transport):
    """The pull protocol with open credit, heartbeats and recovery; subclasses say what a message means."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._inbox_sub: Subscription | None = None
        self._inbox = ""
        self._consumer = ""
        self._stream = ""
        self._pending = 0  # messages the open pull may still bring
        self._pull_alive_until = 0.0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._problem = ""
        self._failures = 0
        self._lost = False  # the open pull (or the consumer) is known to be gone
        self._recovered_at = 0.0

    # what a subclass provides
    def capacity(self) -> int:
        raise NotImplementedError

    async def ensure_consumer(self) -> None:
        """Create (or re-create) the consumer; sets ``_stream`` and ``_consumer``."""
        raise NotImplementedError

    def on_delivered(self, msg: Msg) -> None:
        raise NotImplementedError

    # the protocol
    async def start(self) -> None:
        self._inbox = self.bus.nc.new_inbox()
        self._inbox_sub = await self.bus.nc.subscribe(self._inbox, cb=self._on_inbox)
        await self.ensure_consumer()
        self._task = asyncio.create_task(self._pull_loop(), name=f"pull-{self.consumption.title(self.worker)}")

    def problems(self) -> list[str]:
        return [self._problem] if self._problem else []

    def on_reconnect(self) -> None:
        self._lost = True  # a restarted server forgot our pull request (and an ephemeral consumer)
        self._wake.set()

    async def _on_inbox(self, msg: Msg) -> None:
        self._pull_alive_until = time.monotonic() + 2 * _HEARTBEAT_S + 1.0
        status = (msg.headers or {}).get(_STATUS)
        if status is None and not msg.data and msg.headers is None:
            return
        if status is not None:
            if status == "100":  # idle heartbeat: the pull is alive
                return
            # 408: a pull expired; 409: the consumer was deleted or changed leader; 404: nothing now. The
            # status says how much of that pull's credit was left unused.
            unused = (msg.headers or {}).get("Nats-Pending-Messages")
            self._pending = max(0, self._pending - int(unused)) if unused and unused.isdigit() else 0
            if status in ("409", "503"):  # 503: no responders, the consumer is gone (or going) on the server
                reason = (msg.headers or {}).get("Description") or ("no responders" if status == "503" else status)
                self._problem = f"consumer {self._consumer}: {reason}"
                self._lost = True
            self._wake.set()
            return
        self._pending = max(0, self._pending - 1)
        self.on_delivered(msg)

    async def _pull_loop(self) -> None:
        while not self._stopping:
            try:
                if self._lost or (self._pull_alive_until and time.monotonic() > self._pull_alive_until):
                    # No message, heartbeat or status for two heartbeats: the request (or the consumer) is gone.
                    self._pending = 0
                    if time.monotonic() - self._recovered_at < _RECOVER_PAUSE_S:
                        await asyncio.sleep(_RECOVER_PAUSE_S)  # lost again at once: the server is still deleting it
                    await self._recover()
                    self._recovered_at = time.monotonic()
                    self._lost = False
                want = self.capacity() - self._pending
                if want > 0 and (self._pending == 0 or want >= max(1, self.capacity() // 2)):
                    await self._pull(want)
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(_HEARTBEAT_S):
                        await self._wake.wait()
                if self._problem and self._pull_alive_until > time.monotonic() and self._failures == 0:
                    self._problem = ""
            except asyncio.CancelledError:
                raise
            except Exception as error:
                self._failures += 1
                self._problem = f"consumer {self._consumer or self.consumption.method}: {type(error).__name__}"
                if self._failures in (1, 10) or self._failures % 60 == 0:
                    log.warning(
                        "JetStream consumer unavailable; retrying",
                        consumer=self._consumer,
                        error=repr(error)[:200],
                        attempts=self._failures,
                    )
                await asyncio.sleep(min(0.25 * self._failures, 2.0))
                with contextlib.suppress(Exception):
                    await self._recover()

    async def _pull(self, batch: int) -> None:
        request = {"batch": batch, "expires": int(_EXPIRES_S * 1e9), "idle_heartbeat": int(_HEARTBEAT_S * 1e9)}
        await self.bus.nc.publish(
            f"$JS.API.CONSUMER.MSG.NEXT.{self._stream}.{self._consumer}",
            json.dumps(request).encode(),
            reply=self._inbox,
        )
        self._pending += batch  # an earlier pull may still be open: credit adds up
        self._pull_alive_until = time.monotonic() + 2 * _HEARTBEAT_S + 1.0
        self._failures = 0

    async def _recover(self) -> None:
        """Make sure the consumer exists; a fresh pull follows."""
        try:
            await self.bus.js.consumer_info(self._stream, self._consumer)
        except NotFoundError:
            log.warning("JetStream consumer was gone; re-creating it", consumer=self._consumer)
            await self.ensure_consumer()
        self._problem = ""

    async def stop(self) -> None:
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._inbox_sub is not None:
            with contextlib.suppress(Exception):
                await self._inbox_sub.unsubscribe()


class JetStreamTransport(_Puller):
    """A durable consumer: explicit acks, bounded redelivery, dead letters, ack-deadline heartbeats."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        spec = self.consumption.durable
        assert spec is not None
        self.spec: ConsumerSpec = spec
        self._queue: list[Msg] = []
        self._last_seen = 0  # highest stream sequence delivered to this replica
        self._in_flight: dict[asyncio.Task[None], Msg] = {}
        self._ready = asyncio.Event()
        self._handling: list[Msg] = []  # the batch being handled
        self._batch_idle = asyncio.Event()
        self._batch_idle.set()
        self._dispatcher: asyncio.Task[None] | None = None
        self._keepalive: asyncio.Task[None] | None = None

    def _limit(self) -> int:
        if self.consumption.batch > 1:
            return self.consumption.batch
        return int(self.consumption.max_in_flight)

    def capacity(self) -> int:
        return max(
            0, self._limit() * (2 if self.consumption.batch > 1 else 1) - len(self._queue) - len(self._in_flight)
        )

    async def ensure_consumer(self) -> None:
        self._stream = stream_name(_stream_of(self.spec), self.bus.prefix)
        config = consumer_config(self.spec, self.bus.prefix, after=self._last_seen)
        if self._last_seen and (await self.bus.js.stream_info(self._stream)).state.last_seq < self._last_seen:
            # The stream itself was re-created (its sequences started again): all it holds is new to us.
            self._last_seen = 0
            config = replace(config, deliver_policy=DeliverPolicy.ALL, opt_start_seq=None)
        # Otherwise a consumer re-created after the server lost it resumes after the last message seen.
        info = await ensure_consumer(self.bus.js, self._stream, config)
        self._consumer = info.name

    async def start(self) -> None:
        await super().start()
        self._dispatcher = asyncio.create_task(self._dispatch(), name=f"dispatch-{self._consumer}")
        self._keepalive = asyncio.create_task(self._keep_alive(), name=f"in-progress-{self._consumer}")

    def on_delivered(self, msg: Msg) -> None:
        self._last_seen = max(self._last_seen, int(msg.metadata.sequence.stream))
        if self.consumption.batch == 1 and not self._queue and len(self._in_flight) < self._limit():
            self._start(msg)  # room now: straight to its handler (the dispatcher would cost a loop turn)
            return
        self._queue.append(msg)
        self._ready.set()

    async def _dispatch(self) -> None:
        while True:
            await self._ready.wait()
            self._ready.clear()
            if self.consumption.batch > 1:
                while self._queue:
                    batch, self._queue = self._queue[: self.consumption.batch], self._queue[self.consumption.batch :]
                    self._batch_idle.clear()
                    self._handling = batch
                    try:
                        await self._handle_batch(batch)
                    finally:
                        self._handling = []
                        self._batch_idle.set()
                    self._wake.set()
                continue
            while self._queue and len(self._in_flight) < self._limit():
                self._start(self._queue.pop(0))
            await asyncio.sleep(0)

    def _start(self, msg: Msg) -> None:
        task = asyncio.create_task(self._handle_one(msg))
        self._in_flight[task] = msg
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._in_flight.pop(task, None)
        self._ready.set()  # room for a queued message
        self._wake.set()  # and for more credit

    async def _handle_one(self, msg: Msg) -> None:
        try:
            await self._handle(msg)
        except _DeadLettered:
            pass  # kept in the dead-letter stream with the reason: acked below, never redelivered
        except Exception as error:  # the handler's scope logged and re-raised it for redelivery
            log.debug("message left for redelivery", error=repr(error)[:200])
            await _settle(msg.nak(delay=min(float(_delivered(msg)), 5.0)))
            return
        await _settle(msg.ack())

    async def _handle_batch(self, batch: list[Msg]) -> None:
        """Parse every message (a bad one is dead-lettered alone), hand the rest over in order, ack all.

        When the batch fails, its messages are handled one by one, so only one that fails alone is
        redelivered and, after ``max_deliver`` attempts, dead-lettered: a poison message never takes
        the good ones of its batch with it."""
        parsed: list[tuple[Msg, tuple[Any, ...]]] = []
        for msg in batch:
            async with handled(msg, self.worker, self.bus, 1):  # unreadable: dead-lettered at once
                parsed.append((msg, self._parse(msg)))
        try:
            if parsed:
                await self.handler([_item(args) for _, args in parsed])
        except Exception as error:
            log.warning("batch failed; handling its messages one by one", size=len(batch), error=repr(error)[:300])
            alone = {id(msg) for msg, _ in parsed}
            for msg, args in parsed:
                await self._handle_alone(msg, args)
            for msg in batch:
                if id(msg) not in alone:
                    await _settle(msg.ack())
            return
        for msg in batch:
            await _settle(msg.ack())

    async def _handle_alone(self, msg: Msg, args: tuple[Any, ...]) -> None:
        try:
            async with handled(msg, self.worker, self.bus, self.max_deliver):  # the last attempt: dead-lettered
                await self.handler([_item(args)])
        except Exception:  # left for redelivery
            await _settle(msg.nak(delay=min(float(_delivered(msg)), 5.0)))
            return
        await _settle(msg.ack())

    async def _keep_alive(self) -> None:
        """Long handlers keep their messages: JetStream redelivers only what a dead replica held."""
        while True:
            await asyncio.sleep(self.spec.ack_wait_s / 3)
            queued = self._queue if self.consumption.batch > 1 else []  # batch 1: queued ones are not pulled long
            for msg in [*self._in_flight.values(), *self._handling, *queued]:
                await _settle(msg.in_progress())

    async def stop(self) -> None:
        await super().stop()  # no more pulls
        await self._batch_idle.wait()  # a batch being written is finished and acked
        if self._dispatcher is not None:
            self._dispatcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._dispatcher
        for msg in self._queue:  # received but not started: another replica takes them now
            await _settle(msg.nak())
        self._queue.clear()
        if self._in_flight:
            await asyncio.wait(list(self._in_flight))  # running ones finish (the caller bounds the wait)
        if self._keepalive is not None:
            self._keepalive.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._keepalive


class RecordedTransport(_Puller):
    """Everything a stream recorded on a filter from a start time on, in order, resumed after restarts."""

    def __init__(self, *args: Any, since: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._since = since
        self._last_stream_seq = 0
        self._expected_consumer_seq = 1
        self._backlog: asyncio.Queue[Msg] = asyncio.Queue()
        self._reader: asyncio.Task[None] | None = None

    def capacity(self) -> int:
        return max(0, 512 - self._backlog.qsize())

    def _filter(self) -> str:
        if self.consumption.filter:
            return f"{self.bus.prefix}.{self.consumption.filter}"
        contract = self.consumption.contract
        assert contract is not None
        return contract.wildcard(self.bus.prefix)

    async def ensure_consumer(self) -> None:
        stream = self.consumption.stream
        assert stream is not None
        self._stream = stream_name(stream, self.bus.prefix)
        if self._consumer:
            with contextlib.suppress(Exception):
                await self.bus.js.delete_consumer(self._stream, self._consumer)
        start: dict[str, Any] = (
            {"deliver_policy": DeliverPolicy.BY_START_SEQUENCE, "opt_start_seq": self._last_stream_seq + 1}
            if self._last_stream_seq
            else {"deliver_policy": DeliverPolicy.BY_START_TIME, "opt_start_time": _rfc3339(self._since)}
        )
        config = ConsumerConfig(
            ack_policy=AckPolicy.NONE,
            filter_subject=self._filter(),
            mem_storage=True,
            inactive_threshold=60.0,
            headers_only=self.consumption.headers_only or None,
            **start,
        )
        info = await self.bus.js.add_consumer(self._stream, config)
        self._consumer = info.name
        self._expected_consumer_seq = 1
        self._pending = 0

    async def _recover(self) -> None:
        await self.ensure_consumer()  # an ephemeral consumer is cheap: always start afresh after the last seen
        self._problem = ""

    async def start(self) -> None:
        await super().start()
        self._reader = asyncio.create_task(self._read(), name=f"read-{self.consumption.method}")

    def on_delivered(self, msg: Msg) -> None:
        sequence = msg.metadata.sequence
        if int(sequence.consumer) != self._expected_consumer_seq:
            self._lost = True  # a gap: read again from after the last message seen
            self._wake.set()
            return
        self._expected_consumer_seq += 1
        self._last_stream_seq = int(sequence.stream)
        self._backlog.put_nowait(msg)

    async def _read(self) -> None:
        while True:
            msg = await self._backlog.get()
            with contextlib.suppress(Exception):
                await self.handler(Delivery(msg))
            if self._backlog.qsize() < 256:
                self._wake.set()

    async def stop(self) -> None:
        await super().stop()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        if self._consumer:
            with contextlib.suppress(Exception):
                await self.bus.js.delete_consumer(self._stream, self._consumer)


def _stream_of(spec: ConsumerSpec) -> StreamSpec:
    from contracts.streams import STREAMS

    for stream in STREAMS:
        if stream.name == spec.stream:
            return stream
    raise LookupError(f"consumer {spec.durable} reads unknown stream {spec.stream}")


def _item(args: tuple[Any, ...]) -> Any:
    """One entry of a batch: the event, or (event, Delivery) when the handler asked for deliveries."""
    return args[0] if len(args) == 1 else args


def _delivered(msg: Msg) -> int:
    return int(msg.metadata.num_delivered)


def _rfc3339(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


async def _settle(action: Awaitable[None]) -> None:
    """An ack that cannot be sent (bus gone) is redelivered later: nothing to do but go on."""
    with contextlib.suppress(Exception):
        await action


def transport_for(
    bus: Bus, worker: str, consumption: Consumption, handler: Handler, max_deliver: int, since: float
) -> Transport:
    if consumption.delivery == "jetstream":
        return JetStreamTransport(bus, worker, consumption, handler, max_deliver)
    if consumption.delivery == "recorded":
        return RecordedTransport(bus, worker, consumption, handler, max_deliver, since=since)
    if consumption.delivery == "partitioned":
        return PartitionedTransport(bus, worker, consumption, handler, max_deliver)
    return DirectTransport(bus, worker, consumption, handler, max_deliver)


__all__ = [
    "Client",
    "DirectTransport",
    "JetStreamTransport",
    "PartitionedTransport",
    "RecordedTransport",
    "Transport",
    "transport_for",
]
