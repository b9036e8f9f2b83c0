"""Recognition in child processes: the engines hold the GIL (pocketsphinx for ~0.3 s per final,
measured), so threads would stall the event loop and each other. Each shard is one process
with its own models; a session always goes to the same shard, which keeps its state. A shard
that dies is respawned (workers/speech/pool.py); the sessions it held start afresh.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from workers.speech import child
from workers.speech.pool import ChildLost, ChildPool, PoolBroken
from workers.speech.vad import VoiceActivity

from .endpoint import EndpointConfig, TurnEndpoint
from .pipeline import Output, SessionPipeline


@dataclass(frozen=True)
class ShardConfig:
    engine: str
    model_path: str | None
    language: str
    vad_onnx: bool
    vad_threshold: float
    vad_min_silence_ms: int
    endpoint: EndpointConfig
    partial_interval_s: float
    smart_turn_model: str | None = None  # loaded once per process when set (endpoint.policy smart_turn)
    smart_turn_threads: int = 1
    speculative_final: bool = False  # recognise ahead at speech stopped (pipeline.SessionPipeline)


# ------------------------------------------------------------------ inside a shard process

_pipelines: dict[str, SessionPipeline] = {}
_speculator: ThreadPoolExecutor | None = None  # one thread per process: recognitions ahead, one at a time


def _speculator_of(config: ShardConfig) -> ThreadPoolExecutor | None:
    global _speculator  # noqa: PLW0603 - this process's own thread, made once
    if config.speculative_final and _speculator is None:
        _speculator = ThreadPoolExecutor(1, thread_name_prefix="speculative-final")
    return _speculator


def _pipeline(session_id: str) -> SessionPipeline:
    pipeline = _pipelines.get(session_id)
    if pipeline is None:
        config, models = child.settings(ShardConfig), child.models()
        vad = VoiceActivity(models.vad, config.vad_threshold, config.vad_min_silence_ms)
        turn_model = None
        if config.endpoint.policy == "smart_turn":
            if models.smart_turn is None:
                raise RuntimeError("turn_policy smart_turn, but this process has no end-of-turn model loaded")
            turn_model = models.smart_turn.predict
        pipeline = SessionPipeline(
            vad,
            models.engine.recognizer(),
            TurnEndpoint(config.endpoint),
            config.partial_interval_s,
            turn_model,
            _speculator_of(config),
        )
        _pipelines[session_id] = pipeline
    return pipeline


def _push(session_id: str, frames: list[tuple[bytes, float]]) -> tuple[list[Output], bool]:
    pipeline = _pipeline(session_id)
    outputs = [out for pcm, captured_at in frames for out in pipeline.push(pcm, captured_at)]
    return outputs, pipeline.in_turn


def _close(session_id: str, finish: bool) -> list[Output]:
    pipeline = _pipelines.pop(session_id, None)
    return pipeline.flush() if pipeline is not None and finish else []


# ------------------------------------------------------------------ in the worker


class Shards:
    """The recognition processes (workers/speech/pool.py), a session pinned to one by its id.

    ``push`` raises :class:`ChildLost` when the session's process died and took its state (see
    ChildPool for when, and how the worker handles it), :class:`PoolBroken` when recognition is
    down for good. ``close`` never raises either: a session whose state is gone has nothing to finish.
    """

    def __init__(self, count: int, config: ShardConfig) -> None:
        self._pool = ChildPool("transcriber", count, child.load, config)

    async def start(self) -> None:
        """Wait until every shard has loaded its models (so the first frame is not slow)."""
        await self._pool.start()

    async def push(self, session_id: str, frames: list[tuple[bytes, float]]) -> tuple[list[Output], bool]:
        """Outputs of these frames, and whether the session is in a turn afterwards."""
        return await self._pool.call(session_id, _push, session_id, frames)

    async def close(self, session_id: str, finish: bool) -> list[Output]:
        """Forget a session; ``finish`` publishes the turn in progress as a (forced) final."""
        try:
            return await self._pool.call(session_id, _close, session_id, finish)
        except (ChildLost, PoolBroken):
            return []
        finally:
            self._pool.forget(session_id)

    def problems(self) -> list[str]:
        """Why recognition is degraded or down, for health; empty when fine."""
        return self._pool.problems()

    def shutdown(self) -> None:
        self._pool.shutdown()
