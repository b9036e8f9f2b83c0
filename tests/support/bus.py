"""A test's own handle on the bus, beside the workers it runs.

A worker's bus publishes only what the contracts give that worker (and the NATS server, where it
connects as that worker's user, refuses the rest), so a test that plays the other services (an
edge submitting jobs, a client's turns) publishes through its own, as the operators' user.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import nats

from workers.runtime import Bus, Worker, running_worker
from workers.runtime.settings import RuntimeSettings

W = TypeVar("W", bound=Worker[Any])


@asynccontextmanager
async def client_bus(nats_url: str, prefix: str, producer: str = "test") -> AsyncIterator[Bus]:
    bus = Bus(producer=producer, prefix=prefix)
    bus.attach(await nats.connect(nats_url))
    try:
        yield bus
    finally:
        await bus.nc.drain()


@asynccontextmanager
async def serving(
    worker_type: type[W], settings: RuntimeSettings, started: Callable[[W], None] | None = None
) -> AsyncIterator[Bus]:
    """Run the worker; yields the test's bus on the same server and prefix."""
    async with (
        running_worker(worker_type, settings, started=started),
        client_bus(settings.nats_url, settings.subject_prefix) as bus,
    ):
        yield bus
