"""The workers this repository ships. The stack launcher and the contract documents read it.

Each entry is a package under ``workers/`` whose ``worker`` module exposes ``WORKER`` (a
:class:`~workers.runtime.Worker` subclass) and which runs with ``python -m workers.<name>``.
"""

from __future__ import annotations

import importlib
from typing import Any

from contracts.subjects import SERVICES, WORKERS
from workers.runtime import Worker

__all__ = ["SERVICES", "WORKERS", "load"]


def load(name: str) -> type[Worker[Any]]:
    worker: type[Worker[Any]] = importlib.import_module(f"workers.{name}.worker").WORKER
    return worker
