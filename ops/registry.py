"""The workers this repository ships. The stack launcher and the contract documents read it.

Each entry is a package under ``workers/`` whose ``worker`` module exposes ``WORKER``
(a :class:`~workers.runtime.WorkerSpec`) and which runs with ``python -m workers.<name>``.
"""

from __future__ import annotations

import importlib
from collections.abc import Awaitable, Callable
from typing import Any

from faststream.nats import NatsRouter

from contracts.envelope import Event
from contracts.subjects import BY_NAME
from workers.runtime import Bus, WorkerSpec

WORKERS: tuple[str, ...] = ("orchestrator", "transcriber", "voice", "memory", "retriever", "keywords", "video", "stats")
#: Processes that announce themselves on the bus besides the workers.
SERVICES: tuple[str, ...] = (*WORKERS, "edge")


def load(name: str) -> WorkerSpec[Any]:
    spec: WorkerSpec[Any] = importlib.import_module(f"workers.{name}.worker").WORKER
    return spec


def declared_router(name: str) -> NatsRouter:
    """A worker's subscriptions as declared, built on an unconnected bus (nothing is published).

    Direct subscriptions (served without FastStream) are added as FastStream subscribers too,
    so the AsyncAPI document lists everything a worker consumes."""
    spec = load(name)
    settings, bus = spec.settings(), Bus(producer=name)
    router = spec.build(settings, bus)
    for direct in spec.direct(settings, bus) if spec.direct else ():
        declare = router.subscriber(BY_NAME[direct.subject].template(), queue=direct.queue, title=direct.title)
        declare(_handler_of(direct.model))
    return router


def _handler_of(model: type[Event]) -> Callable[[Any], Awaitable[None]]:
    """A handler that does nothing, typed with ``model``: FastStream takes the payload schema from it."""
    async def handler(message: Any) -> None:
        raise NotImplementedError("declared for the AsyncAPI document only")

    handler.__annotations__ = {"message": model, "return": None}
    return handler
