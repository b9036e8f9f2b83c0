"""Running a worker: connect (with retry), provision streams, start it, serve its handlers, announce
health, drain on stop (with deadlines, also when the bus is gone).

A worker module defines a :class:`Worker` subclass; ``python -m workers.<name>`` calls
:func:`main`, and tests use :func:`running_worker` to run the same code in-process.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar, get_args
from urllib.parse import urlsplit, urlunsplit

import nats
import nats.micro
import uvloop
from nats.aio.client import Client
from nats.micro.request import Request
from nats.micro.service import EndpointConfig, Service

from contracts.streams import ConsumerSpec
from contracts.subjects import SERVICES

from .bus import Bus, flush_ordered
from .consumes import Consumption, consumptions
from .logging import configure_logging, get_logger
from .metrics import serve_metrics, watch_health
from .provision import provision, used_streams
from .settings import RuntimeSettings, load_settings
from .transports import PartitionedTransport, Transport, transport_for

S = TypeVar("S", bound=RuntimeSettings)
VERSION = "0.1.0"
HEALTH_ENDPOINT = "health"
OPERATOR = "ops"  # the NATS user of operators' tools
log = get_logger("runtime")


class Worker(Generic[S]):
    """A worker: its settings, its resources, and handler methods marked with ``@consumes``/``@serves``.

    The runtime constructs it once per process (after connecting and provisioning), calls
    :meth:`start`, serves every marked handler on its transport, and on stop drains the
    transports before :meth:`stop`. Its settings class is the type argument:
    ``class Keywords(Worker[RuntimeSettings])``.
    """

    name: ClassVar[str]
    description: ClassVar[str]
    settings_type: ClassVar[type[RuntimeSettings]] = RuntimeSettings

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for base in getattr(cls, "__orig_bases__", ()):
            args = get_args(base)
            if args and isinstance(args[0], type) and issubclass(args[0], RuntimeSettings):
                cls.settings_type = args[0]

    def __init__(self, settings: S, bus: Bus) -> None:
        self.settings = settings
        self.bus = bus
        self.transports: dict[str, Transport] = {}
        self.refused = ""  # the last operation the NATS server refused this worker (its permissions)

    async def start(self) -> None:
        """Open resources (models, clients, tasks) before the first message is delivered."""

    async def stop(self) -> None:
        """Finish in-flight work and close resources; subscriptions have stopped already."""

    def problems(self) -> list[str]:
        """What is broken now, in words (empty: healthy). The runtime adds its transports' problems."""
        return []

    def recorded_since(self) -> float:
        """Where ``recorded`` handlers start reading (epoch seconds); by default, now."""
        return time.time()

    def partitions(self, handler: Callable[..., Awaitable[Any]]) -> PartitionedTransport:
        """The partitioned subscription of ``handler``: ``own(partition)`` / ``release(partition)``."""
        transport = self.transports[handler.__name__]
        assert isinstance(transport, PartitionedTransport), f"{handler.__name__} is not partitioned"
        return transport

    @classmethod
    def consumptions(cls) -> list[Consumption]:
        return consumptions(cls)

    @classmethod
    def consumers(cls) -> tuple[ConsumerSpec, ...]:
        """The durable JetStream consumers its handlers read (provisioned before it starts)."""
        return tuple(c.durable for c in cls.consumptions() if c.durable is not None)

    def health(self) -> list[str]:
        refused = [f"the bus refused: {self.refused}"] if self.refused else []
        return [*self.problems(), *(p for t in self.transports.values() for p in t.problems()), *refused]


class StartupError(RuntimeError):
    pass


W = TypeVar("W", bound=Worker[Any])


def inbox_prefix(user: str) -> str:
    """Replies and JetStream deliveries to a user come here: its permissions let it read only these."""
    return f"_INBOX_{user}"


def connect_options(settings: RuntimeSettings, name: str) -> dict[str, Any]:
    options: dict[str, Any] = {
        "servers": settings.nats_servers(),
        "name": f"sb-{name}",
        "allow_reconnect": True,
        "max_reconnect_attempts": -1,  # never give up once running; the log says so each time
        "reconnect_time_wait": 1.0,
        "connect_timeout": 2,
    }
    user = settings.nats_user
    password: str | Callable[[], str] | None = (
        settings.nats_password.get_secret_value() if settings.nats_password else None
    )
    in_url = any("@" in url for url in settings.nats_servers())  # credentials in the URL come first
    if not user and not in_url and settings.nats_users_file is not None:
        user = name if name in SERVICES else OPERATOR  # a service has a user of its name; anything else is ops
        password = _password_in(settings.nats_users_file, user)
    if user:
        options["user"] = user
        options["password"] = password
        options["inbox_prefix"] = inbox_prefix(user)
    if settings.nats_creds:
        options["user_credentials"] = settings.nats_creds
    return options


def _password_in(users_file: Path, user: str) -> Callable[[], str]:
    """Read at each (re)connect: the file may be written after we start (a stack still starting) or
    rotated; until it names the user, the server refuses us and nats-py tries again."""

    def password() -> str:
        try:
            passwords = json.loads(users_file.read_text())
        except (OSError, ValueError):
            return ""
        return str(passwords.get(user, "")) if isinstance(passwords, dict) else ""

    return password


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
            f"({type(error).__name__}); start it with `just up` or set SB_NATS_URL"
        ) from None


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
    if is_refusal(error):  # a missing permission: every time, it loses messages
        log.error("NATS refused an operation (permissions)", error=str(error)[:300])
        return
    # While NATS is down nats-py reports every retry; one line per 10 s says the same.
    global _last_error_log  # noqa: PLW0603 - process-wide throttle of one log line
    if time.monotonic() - _last_error_log >= 10.0:
        _last_error_log = time.monotonic()
        log.warning("NATS connection problem (retrying)", error=repr(error)[:200])


def is_refusal(error: Exception) -> bool:
    return "permissions violation" in str(error).lower()


async def _on_disconnect() -> None:
    log.info("NATS disconnected")


async def _on_reconnect() -> None:
    log.info("NATS reconnected")


@contextlib.asynccontextmanager
async def running_worker(
    worker_type: type[W], settings: RuntimeSettings, started: Callable[[W], None] | None = None
) -> AsyncIterator[Bus]:
    """Run a worker until the block exits, then drain it. Yields its bus; ``started`` gets the worker."""
    began = time.monotonic()
    name = worker_type.name
    bus = Bus(producer=name, prefix=settings.subject_prefix)
    worker: W | None = None

    async def reconnected() -> None:
        await _on_reconnect()
        for transport in worker.transports.values() if worker else ():
            transport.on_reconnect()

    async def errored(error: Exception) -> None:
        await _log_nats_error(error)
        if is_refusal(error) and worker is not None:
            worker.refused = str(error)[:300]

    bus.attach(
        await connect_nats(settings, name, disconnected_cb=_on_disconnect, reconnected_cb=reconnected, error_cb=errored)
    )
    budget = StopBudget(bus.nc)
    try:
        # Only what it uses, and it changes no stream: its NATS user may do no more (ops/access.py).
        await provision(
            bus.js,
            used_streams(name, worker_type.consumptions()),
            worker_type.consumers(),
            settings.subject_prefix,
            replicas=settings.stream_replicas,
            update=False,
        )
        serve_metrics(settings.metrics_port, settings.metrics_host)
        worker = worker_type(settings, bus)
        for declared in worker_type.consumptions():
            consumption = declared
            if isinstance(declared.max_in_flight, str):  # named after a setting
                consumption = replace(declared, max_in_flight=int(getattr(settings, declared.max_in_flight)))
            worker.transports[consumption.method] = transport_for(
                bus,
                name,
                consumption,
                getattr(worker, consumption.method),
                settings.max_deliver,
                worker.recorded_since(),
            )
        await worker.start()  # may open partitions already; other subscriptions start after it
        try:
            for transport in worker.transports.values():
                await transport.start()
            await flush_ordered(bus.nc)  # subscriptions are live on the server before anyone is told we are ready
            service = await _announce(worker)
            await flush_ordered(bus.nc)  # discoverable (and its health answerable) once this returns
            unwatch = watch_health(settings.metrics_port, name, worker.health)  # /readyz from now on
            if started is not None:
                started(worker)
            log.info("worker ready", worker=name, startup_ms=round((time.monotonic() - began) * 1000, 1))
            try:
                yield bus
            finally:
                unwatch()
                await _bounded(service.stop(), budget.left(2.0))
        finally:
            await _stop(worker, settings.shutdown_timeout_s, budget)
    finally:
        await close_bus(bus.nc, budget)


async def close_bus(nc: Client, budget: StopBudget, service: Service | None = None) -> None:
    """The last of a process's stop: its discovery service, then a drain and a close of the connection,
    each bounded and none raising, also when the bus is already gone (the edge uses it too)."""
    if service is not None:
        await _bounded(service.stop(), budget.left(2.0))
    await _bounded(nc.drain(), budget.left(2.0))
    if not nc.is_closed:  # nats-py's close raises when the socket is already gone (bus down)
        await _bounded(nc.close(), 1.0)


BUS_GONE_STOP_S = 2.0  # all of a stop that begins or goes on while the bus is down (then SIGKILL is 10 s away)
LOCAL_STOP_S = 0.5  # what the worker's own stop gets at least even then (children, files, local servers)


class StopBudget:
    """How long each shutdown step may take: its own deadline while the bus is up; once the bus is gone,
    what is left of BUS_GONE_STOP_S for all the steps together. Nothing can be acked, published or deleted
    then, and every step that asks the server waits for its timeout: stats' four recorded consumers and
    its service took 2 s each, 8.6 s in all (issue 15, observation 6)."""

    def __init__(self, nc: Client) -> None:
        self._nc = nc
        self._gone_at: float | None = None

    def left(self, step_s: float) -> float:
        if self._gone_at is None:
            if self._nc.is_connected:
                return step_s
            self._gone_at = time.monotonic()
        return min(step_s, self._gone_at + BUS_GONE_STOP_S - time.monotonic())


async def _stop(worker: Worker[Any], timeout: float, budget: StopBudget) -> None:
    """Transports first (received messages are handled), then the worker; each with a deadline, and all
    of it within a short one when the bus is gone (nothing can be acked or published then anyway)."""
    for transport in worker.transports.values():
        await _bounded(transport.stop(), budget.left(timeout))
    await _bounded(worker.stop(), max(budget.left(timeout), LOCAL_STOP_S))
    log.info("worker stopped", worker=worker.name)


async def _bounded(step: Awaitable[Any], seconds: float) -> None:
    try:
        async with asyncio.timeout(max(seconds, 0.01)):
            await step
    except TimeoutError:
        log.warning("shutdown step timed out", seconds=seconds)
    except Exception as error:
        log.warning("shutdown step failed", error=repr(error)[:200])


async def _announce(worker: Worker[Any]) -> Service:
    """NATS service discovery: ``sb status`` finds the worker and asks its health endpoint."""
    settings = worker.settings
    service = await nats.micro.add_service(
        worker.bus.nc,
        name=worker.name,
        version=VERSION,
        description=worker.description,
        metadata={"started_at": f"{time.time():.3f}", "prefix": settings.subject_prefix, "pid": str(os.getpid())},
    )

    async def health(request: Request) -> None:
        problems = worker.health()
        await request.respond(json.dumps({"status": "degraded" if problems else "ok", "problems": problems}).encode())

    await service.add_endpoint(
        EndpointConfig(name=HEALTH_ENDPOINT, subject=f"$SRV.HEALTH.{worker.name}.{service.id}", handler=health)
    )
    return service


async def serve(worker_type: type[Worker[Any]], settings: RuntimeSettings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with running_worker(worker_type, settings):
        await stop.wait()
        log.info("stopping: draining in-flight work", worker=worker_type.name)


def main(worker_type: type[Worker[Any]]) -> None:
    """Entry point of ``python -m workers.<name>``."""
    settings = load_settings(worker_type.settings_type)
    configure_logging(settings.log_level, settings.log_format, process=worker_type.name)
    try:
        uvloop.run(serve(worker_type, settings))
    except StartupError as error:
        log.error(str(error))
        raise SystemExit(1) from None
