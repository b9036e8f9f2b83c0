"""Speech models held by a recognition child process, loaded once by its pool's initializer.

The engines hold the GIL while they decode and each costs hundreds of MB, so workers run them
in spawned child processes that load their own models at start and keep them for life.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from .engines import load_engine
from .engines.base import Engine
from .vad import SileroModel, load_model


class ModelChoice(Protocol):
    @property
    def engine(self) -> str: ...
    @property
    def model_path(self) -> str | None: ...
    @property
    def language(self) -> str: ...
    @property
    def vad_onnx(self) -> bool: ...


@dataclass(frozen=True)
class Models:
    vad: SileroModel
    engine: Engine


_models: Models | None = None


def load(choice: ModelChoice) -> None:
    global _models  # noqa: PLW0603 - this process's own models, loaded once
    _models = Models(load_model(choice.vad_onnx), load_engine(choice.engine, choice.model_path, choice.language))


def ready() -> bool:
    return _models is not None


def models() -> Models:
    if _models is None:
        raise RuntimeError("the speech models are not loaded in this process")
    return _models
