"""Speech models held by a recognition child process, loaded once by its pool's initializer (pool.py).

The engines hold the GIL while they decode and each costs hundreds of MB, so workers run them
in spawned child processes that load their own models at start and keep them for life.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, TypeVar

from . import smart_turn
from .engines import load_engine
from .engines.base import Engine
from .smart_turn import SmartTurn
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
    smart_turn: SmartTurn | None = None  # the end-of-turn model, when the choice names one


C = TypeVar("C")

_choice: ModelChoice | None = None
_models: Models | None = None


def load(choice: ModelChoice) -> None:
    """The pool's initializer: load this process's models, and keep ``choice`` for :func:`settings`."""
    global _choice, _models  # noqa: PLW0603 - this process's own models, loaded once
    # Optional attributes of the choice (the transcriber's ShardConfig has them, the video worker's not):
    # ``smart_turn_model`` (a path; None: no end-of-turn model) and ``smart_turn_threads``.
    turn_model_path: str | None = getattr(choice, "smart_turn_model", None)
    turn_model = smart_turn.load(turn_model_path, getattr(choice, "smart_turn_threads", 1)) if turn_model_path else None
    _models = Models(
        load_model(choice.vad_onnx), load_engine(choice.engine, choice.model_path, choice.language), turn_model
    )
    _choice = choice


def settings(kind: type[C]) -> C:
    """The worker's settings that loaded this process's models (its ``ModelChoice``), as its own type."""
    if not isinstance(_choice, kind):
        raise RuntimeError(f"this process's models were not loaded with {kind.__name__}")
    return _choice


def models() -> Models:
    if _models is None:
        raise RuntimeError("the speech models are not loaded in this process")
    return _models
