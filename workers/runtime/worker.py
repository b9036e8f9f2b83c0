"""Running a worker: connect (with retry), provision streams, subscribe, announce health, drain on stop.

A worker module declares a :class:`WorkerSpec`; ``python -m workers.<name>`` calls
:func:`main`, and tests use :func:`running_worker` to run the same code in-process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar
from urllib.parse import urlsplit, urlunsplit

import nats
import nats.micro
import uvloop
from faststream.nats import NatsBroker, NatsRouter
from faststream.nats.security import NatsUserPassword
from nats.aio.client import Client

from contracts.streams import STREAMS, ConsumerSpec

from .bus import Bus, flush_ordered
from .handling import DirectSubscription, runtime_middleware, serve_direct
from .logging import configure_logging, get_logger
from .metrics import serve_metrics
from .provision import provision
from .settings import RuntimeSettings, load_settings

S = TypeVar("S", bound=RuntimeSettings)
VERSION = "0.1.0"
log = get_logger("runtime")


@dataclass(frozen=True)
class WorkerSpec(Generic[S]):
    """What a worker is: its name, settings, how to build its subscriptions, and its resources.

    ``build`` wires subjects to the worker's domain logic and returns a FastStream router.
    ``lifespan`` (optional) opens and closes resources around the run (clients, models).
    ``direct`` (optional) lists latency-critical core NATS subscriptions the runtime serves
    without FastStream, with the same dead letters, tracing and metrics (runtime/handling.py).
    """

    name: str
    description: str
    settings: type[S]
    build: Callable[[S, Bus], NatsRouter]
    lifespan: Callable[[S, Bus], AbstractAsyncContextManager[None]] | None = None
    consumers: tuple[ConsumerSpec, ...] = field(default_factory=tuple)
    direct: Callable[[S, Bus], Sequence[DirectSubscription[Any]]] | None = None


class StartupError(RuntimeError):
    pass


def connect_options(settings: RuntimeSettings, name: str) -> dict[str, Any]:
    options: dict[str, Any] = {
        "servers": settings.nats_servers(),
        "name": f"sb-{name}",
        "allow_reconnect": True,
        "max_reconnect_attempts": -1,  # never give up once running; the log says so each time
        "reconnect_time_wait": 1.0,
        "connect_timeout": 2,
    }
    if settings.nats_user:
        options["user"] = settings.nats_user
        options["password"] = settings.nats_password.get_secret_value() if settings.nats_password else None
    if settings.nats_creds:
        options["user_credentials"] = settings.nats_creds
    return options


async def connect_nats(settings: RuntimeSettings, name: str, **callbacks: Any) -> Client:
    """Connect with retries for ``connect_timeout_s``; then fail with one clear error."""
    options = connect_options(settings, name) | {"error_cb": _log_nats_error} | callbacks
    return await _with_retry(settings, lambda: nats.connect(**options))


async def _with_retry(settings: RuntimeSettings, connect: Callable[[], Awaitable[Client]]) -> Client:
    """nats-py retries the servers itself (forever, once connected); start-up gets a deadline."""
    try:
        async with asyncio.timeout(settings.connect_timeout_s):
            return await connect()
    except (TimeoutError, *_CONNECT_ERRORS) as error:
        raise StartupError(
            f"cannot reach NATS at {shown_url(settings.nats_url)} after {settings.connect_timeout_s:g}s "
            f"({type(error).__name__}); start it with `just up` or set SB_NATS_URL") from None


_CONNECT_ERRORS = (OSError, nats.errors.NoServersError, TimeoutError)


def shown_url(urls: str) -> str:
    """Server URLs as they may appear in messages and logs: a password in them becomes ***."""
    def one(url: str) -> str:
        parts = urlsplit(url.strip())
        if parts.password is None:
            return url.strip()
        host = parts.netloc.rsplit("@", 1)[1]
        return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))

    return ",".join(one(url) for url in urls.split(","))


_last_error_log = 0.0


async def _log_nats_error(error: Exception) -> None:
    # While NATS is down nats-py reports every retry; one line per 10 s says the same.
    global _last_error_log  # noqa: PLW0603 - process-wide throttle of one log line
    if time.monotonic() - _last_error_log >= 10.0:
        _last_error_log = time.monotonic()
        log.warning("NATS connection problem (retrying)", error=repr(error)[:200])


async def _on_disconnect() -> None:
    log.info("NATS disconnected")


async def _on_reconnect() -> None:
    log.info("NATS reconnected")


def _broker(spec: WorkerSpec[S], settings: S, bus: Bus) -> NatsBroker:
    options = connect_options(settings, spec.name)
    user, password = options.pop("user", None), options.pop("password", None)
    return NatsBroker(
        **options,
        security=NatsUserPassword(user, password) if user else None,
        error_cb=_log_nats_error, disconnected_cb=_on_disconnect, reconnected_cb=_on_reconnect,
        middlewares=[runtime_middleware(bus, spec.name, settings.max_deliver)],
        graceful_timeout=settings.shutdown_timeout_s,
        logger=get_logger(f"faststream.{spec.name}"),
        log_level=logging.DEBUG,  # FastStream's per-message "Received"/"Processed" lines: debug only
    )


@contextlib.asynccontextmanager
async def running_worker(spec: WorkerSpec[S], settings: S) -> AsyncIterator[Bus]:
    """Run a worker until the block exits, then drain it. Yields its bus."""
    started = time.monotonic()
    bus = Bus(producer=spec.name, prefix=settings.subject_prefix)
    broker = _broker(spec, settings, bus)
    broker.include_router(spec.build(settings, bus))
    bus.attach(await _with_retry(settings, broker.connect))
    await provision(bus.js, STREAMS, spec.consumers, settings.subject_prefix)
    serve_metrics(settings.metrics_port)
    lifespan = spec.lifespan(settings, bus) if spec.lifespan else contextlib.nullcontext()
    async with lifespan:
        await broker.start()
        direct = [await serve_direct(bus, subscription, spec.name, settings.max_deliver)
                  for subscription in (spec.direct(settings, bus) if spec.direct else ())]
        await flush_ordered(bus.nc)  # subscriptions are live on the server before anyone is told we are ready
        service = await nats.micro.add_service(
            bus.nc, name=spec.name, version=VERSION, description=spec.description,
            metadata={"started_at": f"{time.time():.3f}", "prefix": settings.subject_prefix},
        )
        log.info("worker ready", worker=spec.name, startup_ms=round((time.monotonic() - started) * 1000, 1))
        try:
            yield bus
        finally:
            await service.stop()
            for subscription in direct:
                await subscription.drain()  # type: ignore[no-untyped-call]  # received ones are handled first
            await broker.stop()  # waits up to graceful_timeout for in-flight handlers, then drains
            log.info("worker stopped", worker=spec.name)


async def serve(spec: WorkerSpec[S], settings: S) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with running_worker(spec, settings):
        await stop.wait()
        log.info("stopping: draining in-flight work", worker=spec.name)


def main(spec: WorkerSpec[Any]) -> None:
    """Entry point of ``python -m workers.<name>``."""
    settings = load_settings(spec.settings)
    configure_logging(settings.log_level, settings.log_format, process=spec.name)
    try:
        uvloop.run(serve(spec, settings))
    except StartupError as error:
        log.error(str(error))
        raise SystemExit(1) from None
