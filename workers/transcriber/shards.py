"""Recognition in child processes: the engines hold the GIL (pocketsphinx for ~0.3 s per final,
measured), so threads would stall the event loop and each other. Each shard is one process
with its own models; a session always goes to the same shard, which keeps its state.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import zlib
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

from workers.speech import child
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


# ------------------------------------------------------------------ inside a shard process

_config: ShardConfig | None = None
_pipelines: dict[str, SessionPipeline] = {}


def _load(config: ShardConfig) -> None:
    global _config  # noqa: PLW0603 - the process's own settings, set once
    _config = config
    child.load(config)


def _pipeline(session_id: str) -> SessionPipeline:
    pipeline = _pipelines.get(session_id)
    if pipeline is None:
        assert _config is not None
        models = child.models()
        vad = VoiceActivity(models.vad, _config.vad_threshold, _config.vad_min_silence_ms)
        pipeline = SessionPipeline(vad, models.engine.recognizer(), TurnEndpoint(_config.endpoint),
                                   _config.partial_interval_s)
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
    def __init__(self, count: int, config: ShardConfig) -> None:
        context = multiprocessing.get_context("spawn")  # never fork a process that runs an event loop
        self._pools = [ProcessPoolExecutor(1, mp_context=context, initializer=_load, initargs=(config,))
                       for _ in range(count)]

    async def start(self) -> None:
        """Wait until every shard has loaded its models (so the first frame is not slow)."""
        loop = asyncio.get_running_loop()
        await asyncio.gather(*(loop.run_in_executor(pool, child.ready) for pool in self._pools))

    def _pool(self, session_id: str) -> ProcessPoolExecutor:
        return self._pools[zlib.crc32(session_id.encode()) % len(self._pools)]

    async def push(self, session_id: str, frames: list[tuple[bytes, float]]) -> tuple[list[Output], bool]:
        """Outputs of these frames, and whether the session is in a turn afterwards."""
        return await asyncio.get_running_loop().run_in_executor(self._pool(session_id), _push, session_id, frames)

    async def close(self, session_id: str, finish: bool) -> list[Output]:
        """Forget a session; ``finish`` publishes the turn in progress as a (forced) final."""
        return await asyncio.get_running_loop().run_in_executor(self._pool(session_id), _close, session_id, finish)

    def shutdown(self) -> None:
        for pool in self._pools:
            pool.shutdown(wait=True, cancel_futures=True)
