"""One worker, no NATS: its handlers run in milliseconds against a bus that records (Pipecat's ``run_test``).

    async with WorkerHarness(VoiceWorker, VoiceSettings(), providers=[FakeTTS("piper")]) as h:
        await h.deliver(ev.SessionStarted(session_id=SID, producer="test", capabilities=["audio_out"]))
        await h.deliver(ev.ReplyDone(session_id=SID, turn_id="t1", producer="test", text="Hi.", agent="general"))
        done = await h.wait_for(ev.AudioOutDone)
        frames = h.frames(ev.AudioOutMeta)

- The worker class is constructed with a :class:`RecordingBus` (a real :class:`Bus` subclass): it
  records what is published (events, and binary frames with their meta) on the subjects the real
  bus would use (so an undeclared kind fails the same way), answers ``request()`` from
  ``responders`` (none: "unavailable", as NATS's no-responders), and its ``js`` answers every
  message lookup with ``NotFoundError``: what the bus recorded about a new session. ``nc`` is
  absent (a worker that needs raw NATS needs the real-server tests).
- ``start()`` runs on entering the block, ``stop()`` on leaving it.
- ``deliver(event)`` hands the event to every handler whose ``@consumes`` subscription matches its
  subject, as NATS would route it, one after another, and returns when they have; to send
  something while a handler is busy, deliver in a task. A handler's exception propagates.
- ``providers``: fakes built instead of the worker's own providers: a ``ChatModel`` is what
  ``build_model`` returns, ``TTSProvider``\\ s are what ``available`` offers (by name). The worker's
  module must build them with those factories. Speech engines load in child processes, out of reach.

Not covered (tests/integration is): partitioned subscriptions, acks, redelivery, dead letters,
health, and the payloads' wire form.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from types import ModuleType, TracebackType
from typing import Any, Generic, NamedTuple, NoReturn, Self, TypeVar, cast
from unittest import mock

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from contracts import headers as h
from contracts.envelope import Event
from contracts.subjects import subject_matches
from workers.orchestrator.llm import ChatModel, build_model
from workers.runtime import Bus, Delivery, RuntimeSettings, Worker
from workers.runtime.bus import DependencyUnavailableError, subject_for
from workers.runtime.consumes import Consumption, consumptions
from workers.runtime.provision import consumer_config
from workers.voice.providers import available
from workers.voice.providers.base import TTSProvider

E = TypeVar("E", bound=Event)
W = TypeVar("W", bound=Worker[Any])
Responder = Callable[[Event], Awaitable[Event]]


class Sent(NamedTuple):
    subject: str
    event: Event  # for a binary message, its meta
    payload: bytes | None  # a binary message's bytes


class _NothingRecorded:
    """JetStream as a new session finds it: every message lookup answers "not found"."""

    async def get_msg(self, *args: object, **kwargs: object) -> NoReturn:
        raise NotFoundError

    get_last_msg = get_msg


class RecordingBus(Bus):
    """A bus that records what is published and answers requests from in-process responders."""

    def __init__(self, producer: str, prefix: str, responders: Mapping[str, Responder]) -> None:
        super().__init__(producer, prefix)
        self.sent: list[Sent] = []  # everything published, in order
        self.requests: list[tuple[str, Event]] = []  # (service name, request), in order
        self._responders = dict(responders)
        self._changed = asyncio.Event()

    @property
    def js(self) -> JetStreamContext:
        return cast(JetStreamContext, _NothingRecorded())

    async def publish(self, event: Event, *, durable: bool = False, **params: str) -> None:
        self._record(Sent(subject_for(event, self.prefix, **params), event, None))

    async def publish_binary(self, meta: Event, payload: bytes) -> None:
        self._record(Sent(subject_for(meta, self.prefix), meta, payload))

    async def request(self, name: str, event: Event, reply_type: type[E], timeout: float) -> E:
        self.requests.append((name, event))
        responder = self._responders.get(name)
        if responder is None:
            raise DependencyUnavailableError(name, "unavailable")
        try:
            async with asyncio.timeout(timeout):
                reply = await responder(event)
        except TimeoutError:
            raise DependencyUnavailableError(name, "timeout") from None
        return reply_type.model_validate_json(reply.model_dump_json())  # parsed as the real bus parses a reply

    async def changed(self) -> None:
        """Return once something more is published."""
        await self._changed.wait()

    def _record(self, sent: Sent) -> None:
        self.sent.append(sent)
        self._changed.set()  # wakes every waiter; the next ones wait on a fresh event
        self._changed = asyncio.Event()


class WorkerHarness(Generic[W]):
    """``async with WorkerHarness(WorkerClass, settings, providers=[...], responders={...}) as h``."""

    def __init__(
        self,
        worker_type: type[W],
        settings: RuntimeSettings | None = None,
        *,
        providers: Sequence[ChatModel | TTSProvider] = (),
        responders: Mapping[str, Responder] | None = None,
    ) -> None:
        self.settings = settings if settings is not None else worker_type.settings_type()
        self.bus = RecordingBus(worker_type.name, self.settings.subject_prefix, responders or {})
        self._worker_type = worker_type
        self._providers = providers
        self._patches = contextlib.ExitStack()
        self._worker: W | None = None

    @property
    def worker(self) -> W:
        assert self._worker is not None, "the worker runs inside `async with` only"
        return self._worker

    async def __aenter__(self) -> Self:
        module = sys.modules[self._worker_type.__module__]
        for name, factory in _replaced_factories(module, self._providers).items():
            self._patches.enter_context(mock.patch.object(module, name, factory))
        try:
            self._worker = self._worker_type(self.settings, self.bus)
            await self._worker.start()
        except BaseException:
            self._patches.close()
            raise
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            await self.worker.stop()
        finally:
            self._patches.close()

    async def deliver(self, event: Event) -> None:
        """Call every handler subscribed to the event's subject, in declaration order."""
        subject = subject_for(event, self.bus.prefix)
        handlers = [
            c
            for c in consumptions(self._worker_type)
            if any(subject_matches(pattern, subject) for pattern in _subscribed(c, self.bus.prefix))
        ]
        if not handlers:
            raise LookupError(f"{self._worker_type.name} consumes nothing on {subject}")
        for consumption in handlers:
            await getattr(self.worker, consumption.method)(*_arguments(consumption, event, subject))

    def published(self, kind: type[E]) -> list[E]:
        """The events of this type published so far (binary messages: their metas), in order."""
        return [sent.event for sent in self.bus.sent if isinstance(sent.event, kind)]

    def frames(self, kind: type[E]) -> list[tuple[E, bytes]]:
        """The binary messages published so far whose meta is of this type: (meta, payload), in order."""
        return [
            (sent.event, sent.payload)
            for sent in self.bus.sent
            if isinstance(sent.event, kind) and sent.payload is not None
        ]

    async def wait_for(self, kind: type[E], count: int = 1, timeout: float = 1.0) -> list[E]:
        """The events of this type once at least ``count`` were published; TimeoutError after ``timeout``."""
        async with asyncio.timeout(timeout):
            while len(found := self.published(kind)) < count:
                await self.bus.changed()
        return found


def _replaced_factories(module: ModuleType, providers: Sequence[ChatModel | TTSProvider]) -> dict[str, Any]:
    """The names in ``module`` bound to a provider factory, and what builds the fakes instead."""
    fakes: dict[Callable[..., Any], Callable[..., Any]] = {}
    models = [p for p in providers if isinstance(p, ChatModel)]
    if models:
        (model,) = models  # a worker streams from one chat model
        fakes[build_model] = lambda *_args, **_options: model
    voices = {p.name: p for p in providers if isinstance(p, TTSProvider)}
    if voices:
        fakes[available] = lambda *_args, **_options: dict(voices)  # a fresh dict: start() drops failed ones
    bound = {name: fakes[value] for name, value in vars(module).items() if callable(value) and value in fakes}
    if len(bound) < len(fakes):
        raise ValueError(
            f"{module.__name__} does not build its providers with "
            f"{', '.join(f.__name__ for f in fakes)}: the harness cannot put fakes in"
        )
    return bound


def _subscribed(consumption: Consumption, prefix: str) -> list[str]:
    """The subjects a consumption listens on, as its transport subscribes (see workers/runtime/transports.py)."""
    if consumption.filter:
        return [f"{prefix}.{consumption.filter}"]
    if consumption.contract is not None:
        return [consumption.contract.wildcard(prefix)]
    if consumption.durable is not None:
        return list(consumer_config(consumption.durable, prefix).filter_subjects or [])
    return []


def _arguments(consumption: Consumption, event: Event, subject: str) -> list[Any]:
    """The handler's arguments, shaped as the runtime's transports shape them."""
    headers = h.event_headers(event)
    binary = consumption.contract is not None and consumption.contract.binary
    if binary:
        headers[h.META] = event.model_dump_json()
    # A core NATS message (not JetStream: first delivery, no stream sequence) that nobody answers: no client.
    data = b"" if binary else event.model_dump_json().encode()
    delivery = Delivery(Msg(_client=cast(Client, None), subject=subject, data=data, headers=headers))
    if consumption.delivery == "recorded":
        return [delivery]
    arguments: list[Any] = [event, delivery] if consumption.wants_delivery else [event]
    if consumption.batch > 1:  # a list of messages: each an event, or an (event, Delivery) tuple
        return [[tuple(arguments) if consumption.wants_delivery else event]]
    return arguments
