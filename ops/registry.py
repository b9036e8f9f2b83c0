"""The workers this repository ships. The stack launcher and the contract documents read it.

Each entry is a package under ``workers/`` whose ``worker`` module exposes ``WORKER``
(a :class:`~workers.runtime.WorkerSpec`) and which runs with ``python -m workers.<name>``.
"""

from __future__ import annotations

import importlib
from typing import Any

from faststream.nats import NatsRouter

from workers.runtime import Bus, WorkerSpec

WORKERS: tuple[str, ...] = ("orchestrator", "transcriber", "voice", "memory", "retriever", "keywords", "video", "stats")
#: Processes that announce themselves on the bus besides the workers.
SERVICES: tuple[str, ...] = (*WORKERS, "edge")


def load(name: str) -> WorkerSpec[Any]:
    spec: WorkerSpec[Any] = importlib.import_module(f"workers.{name}.worker").WORKER
    return spec


def declared_router(name: str) -> NatsRouter:
    """A worker's subscriptions as declared, built on an unconnected bus (nothing is published)."""
    spec = load(name)
    return spec.build(spec.settings(), Bus(producer=name))
