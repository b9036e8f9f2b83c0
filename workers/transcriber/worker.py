"""Transcriber worker.

Consumes: audio.in.partition for the partitions this replica owns (leases in a KV bucket, see
ownership.py); turn.user, reply.done, audio.done, session.started, session.ended (every
replica, to know when the assistant is speaking and when a session ends).
Produces: speech.started, speech.stopped, transcript.partial, transcript.final, turn.user
(spoken), interrupt (barge-in).
Logic: partitions.PartitionKeeper (which partitions this replica hears), sessions.SessionTasks (a
supervised task per session feeding its audio to recognition), pipeline.SessionPipeline
(vad.VoiceActivity + engines.* + endpoint.TurnEndpoint) run in child processes (shards.py) so
recognition never blocks the event loop.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Literal, TypedDict

from nats.js.api import KeyValueConfig
from prometheus_client import Counter
from pydantic import Field

from contracts import events as ev
from contracts.envelope import new_id
from contracts.subjects import AUDIO_PARTITIONS
from workers.runtime import Bus, Delivery, RuntimeSettings, Worker, consumes
from workers.runtime.bus import flush_ordered
from workers.runtime.logging import get_logger
from workers.runtime.turns import SessionTable, TurnLedger
from workers.speech import smart_turn

from .endpoint import EndpointConfig
from .ownership import Leases
from .partitions import PartitionKeeper
from .pipeline import Output
from .sessions import SessionTasks
from .shards import ShardConfig, Shards

log = get_logger("transcriber")

SPECULATIVE_FINALS = Counter(
    "sb_speculative_finals_total",
    "Final recognitions started ahead at speech stopped: used as the turn's final, or wasted by more speech",
    ("outcome",),
)


class TranscriberSettings(RuntimeSettings):
    stt_engine: Literal["pocketsphinx+whisper", "pocketsphinx", "whisper", "vosk", "vosk+whisper"] = Field(
        default="pocketsphinx+whisper",
        description="Speech-to-text engine; a+b: partials from a, final from b (docs/speech.md)",
    )
    stt_model_path: str | None = Field(
        default=None, description="Model directory of the (final) engine; vosk: the language's model"
    )
    stt_language: str = Field(default="en", description="Language of the speech")
    vad_onnx: bool = Field(default=False, description="Run silero-vad through onnxruntime instead of torch")
    vad_threshold: float = Field(default=0.5, gt=0, lt=1, description="Speech probability threshold")
    vad_min_silence_ms: int = Field(default=160, ge=0, description="Silence before 'speech stopped'")
    turn_silence_ms: int = Field(default=EndpointConfig().silence_ms, ge=0, description="Silence that ends a turn")
    turn_pause_guard_ms: int = Field(
        default=EndpointConfig().pause_guard_ms, ge=0, description="Extra wait when the words clearly go on"
    )
    turn_max_utterance_s: float = Field(default=30.0, gt=0, description="Longest utterance before a forced final")
    turn_policy: Literal["smart_turn", "silence"] | None = Field(
        default=None,
        description="End of turn: smart_turn (audio model at each pause, silence window as fallback) or silence; "
        "unset: smart_turn when its model file is installed, else silence (docs/speech.md)",
    )
    smart_turn_model_path: str | None = Field(
        default=None, description="Smart Turn v3.2 ONNX file; unset: smart-turn-v3.2-cpu.onnx in the model cache"
    )
    smart_turn_min_silence_ms: int = Field(
        default=EndpointConfig().smart_turn_min_silence_ms, ge=0, description="Silence that ends a turn judged complete"
    )
    smart_turn_max_wait_ms: int = Field(
        default=EndpointConfig().smart_turn_max_wait_ms,
        ge=0,
        description="Cap on the wait after a pause judged incomplete (then the turn ends anyway)",
    )
    smart_turn_threads: int = Field(default=1, ge=1, le=8, description="onnxruntime threads of the end-of-turn model")
    speculative_final: bool = Field(
        default=True,
        description="Start the final recognition when speech stops, beside the end-of-turn model and the "
        "silence, and use it if no speech follows (engines that decode the whole utterance: whisper)",
    )
    partial_interval_s: float = Field(default=0.25, ge=0, description="Least time between two partials")
    recognition_processes: int = Field(
        default=2, ge=1, le=32, description="Processes running VAD and recognition (each loads the models)"
    )
    session_queue_frames: int = Field(default=500, ge=10, description="Frames buffered per session (20 ms each)")
    session_idle_s: float = Field(default=300.0, gt=0, description="Forget a session after this long without audio")
    lease_ttl_s: float = Field(default=3.0, gt=0, description="A dead replica's partitions move after this")
    playback_grace_s: float = Field(default=60.0, gt=0, description="Longest wait for audio.done after a reply")


def shard_config(
    settings: TranscriberSettings, turn_policy: Literal["smart_turn", "silence"], turn_model_path: Path
) -> ShardConfig:
    """What each recognition process loads and runs."""
    return ShardConfig(
        settings.stt_engine,
        settings.stt_model_path,
        settings.stt_language,
        settings.vad_onnx,
        settings.vad_threshold,
        settings.vad_min_silence_ms,
        EndpointConfig(
            settings.turn_silence_ms,
            settings.turn_max_utterance_s,
            settings.turn_pause_guard_ms,
            policy=turn_policy,
            smart_turn_min_silence_ms=settings.smart_turn_min_silence_ms,
            smart_turn_max_wait_ms=settings.smart_turn_max_wait_ms,
        ),
        settings.partial_interval_s,
        smart_turn_model=str(turn_model_path) if turn_policy == "smart_turn" else None,
        smart_turn_threads=settings.smart_turn_threads,
        speculative_final=settings.speculative_final,
    )


class _Ids(TypedDict):
    session_id: str
    turn_id: str
    producer: str


class Transcriber(Worker[TranscriberSettings]):
    name = "transcriber"
    description = "Voice activity, streaming speech-to-text, turn detection"

    def __init__(self, settings: TranscriberSettings, bus: Bus) -> None:
        super().__init__(settings, bus)
        self.turn_model_path = Path(settings.smart_turn_model_path or smart_turn.default_path())
        self.turn_policy: Literal["smart_turn", "silence"] = settings.turn_policy or (
            "smart_turn" if self.turn_model_path.is_file() else "silence"
        )
        self.shards = Shards(
            settings.recognition_processes, shard_config(settings, self.turn_policy, self.turn_model_path)
        )
        self.sessions = SessionTasks(
            self.shards,
            self._publish,
            self._tell,
            queue_frames=settings.session_queue_frames,
            idle_s=settings.session_idle_s,
        )
        # What the assistant is doing per session: the barge-in condition.
        self.assistant: SessionTable[TurnLedger] = SessionTable(50_000)
        self.replica = new_id()[:12]
        self.keeper: PartitionKeeper | None = None

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        await self.shards.start()
        log.info(
            "models loaded",
            engine=self.settings.stt_engine,
            vad="onnx" if self.settings.vad_onnx else "torch",
            processes=self.settings.recognition_processes,
            turn_policy=self.turn_policy,
            turn_policy_set=self.settings.turn_policy is not None,
            turn_model=str(self.turn_model_path) if self.turn_policy == "smart_turn" else None,
        )
        self.keeper = PartitionKeeper(
            await self.open_leases(),
            self.partitions(self.on_audio),
            self.settings.lease_ttl_s,
            released=self.sessions.release,
            flush=lambda: flush_ordered(self.bus.nc),
            every_tick=self.sessions.forget_idle,
        )
        await self.keeper.start()

    async def open_leases(self) -> Leases:
        """This replica's partition leases, in the transcribers' KV bucket."""
        bucket = f"sb_transcriber_{self.bus.prefix}"
        # Replicated like the streams that must survive a node: leases on a lost node could not be renewed.
        config = KeyValueConfig(bucket=bucket, ttl=self.settings.lease_ttl_s, replicas=self.settings.stream_replicas)
        kv = await self.bus.js.create_key_value(config)
        return Leases(kv, self.replica, AUDIO_PARTITIONS)

    async def stop(self) -> None:
        try:
            if self.keeper is not None:
                await self.keeper.stop()
            await self.sessions.end_all()
        finally:  # also when the stop's deadline cut the rest short: the recognition children end
            self.shards.shutdown()

    def problems(self) -> list[str]:
        keeper = self.keeper.problems() if self.keeper is not None else []
        return [*self.shards.problems(), *keeper, *self.sessions.problems()]

    @property
    def owned(self) -> set[int]:
        return self.partitions(self.on_audio).owned

    # ------------------------------------------------------------------ audio

    @consumes("audio.in.partition", delivery="partitioned")
    async def on_audio(self, meta: ev.AudioInMeta, delivery: Delivery) -> None:
        partition = int(delivery.subject.split(".")[-1])
        await self.sessions.feed(meta.session_id, partition, delivery.data, meta.captured_at or time.time())

    async def _tell(self, session_id: str, code: str, message: str) -> None:
        with contextlib.suppress(Exception):
            await self.bus.publish(
                ev.ErrorEvent(
                    session_id=session_id,
                    producer=self.bus.producer,
                    code=code,
                    message=message,
                    source="transcriber",
                    retryable=True,
                )
            )

    async def _publish(self, session_id: str, out: Output) -> None:
        """What recognition heard: voice activity, partial and final transcripts, the spoken user turn."""
        ids = _Ids(session_id=session_id, turn_id=out.turn_id, producer=self.bus.producer)
        if out.kind == "speech_started":
            await self.bus.publish(ev.SpeechStarted(**ids, audio_at=out.audio_at, captured_at=out.wall_at))
            await self._barge_in(session_id)
        elif out.kind == "speech_stopped":
            await self.bus.publish(
                ev.SpeechStopped(**ids, audio_at=out.audio_at, speech_ended_at=out.wall_at, captured_at=out.wall_at)
            )
        elif out.kind == "partial":
            await self.bus.publish(ev.TranscriptPartial(**ids, text=out.text, engine=self.settings.stt_engine))
        else:
            SPECULATIVE_FINALS.labels("used").inc(out.speculative)
            SPECULATIVE_FINALS.labels("wasted").inc(out.wasted_speculations)
            await self.bus.publish(
                ev.TranscriptFinal(
                    **ids,
                    text=out.text,
                    engine=self.settings.stt_engine,
                    confidence=out.confidence,
                    audio_start=out.audio_start,
                    audio_end=out.audio_at,
                    forced=out.forced,
                    captured_at=out.wall_at,
                )
            )
            if out.text:
                await self.bus.publish(
                    ev.UserTurn(
                        **ids, text=out.text, source="spoken", speech_ended_at=out.wall_at, captured_at=out.wall_at
                    )
                )

    async def _barge_in(self, session_id: str) -> None:
        ledger = self.assistant.get(session_id)
        interrupted = ledger.active() if ledger else None
        if ledger is None or interrupted is None:
            return
        ledger.interrupt(interrupted)
        log.info("barge-in", session_id=session_id, turn_id=interrupted)
        await self.bus.publish(
            ev.Interrupt(session_id=session_id, turn_id=interrupted, producer=self.bus.producer, reason="barge_in")
        )

    # ------------------------------------------------------------------ what the assistant does

    def ledger(self, session_id: str) -> TurnLedger:
        return self.assistant.setdefault(
            session_id, lambda: TurnLedger(playback_grace_s=self.settings.playback_grace_s)
        )

    @consumes("session.started")
    async def on_session_started(self, event: ev.SessionStarted) -> None:
        self.ledger(event.session_id).audio_out = "audio_out" in event.capabilities

    @consumes("session.ended")
    async def on_session_ended(self, event: ev.SessionEnded) -> None:
        self.assistant.pop(event.session_id)
        await self.sessions.end(event.session_id)

    @consumes("turn.user")
    async def on_user_turn(self, turn: ev.UserTurn) -> None:
        self.ledger(turn.session_id).user_turn(turn.turn_id)

    @consumes("reply.done")
    async def on_reply_done(self, done: ev.ReplyDone) -> None:
        self.ledger(done.session_id).reply_done(done.turn_id, done.finish_reason)

    @consumes("audio.done")
    async def on_audio_done(self, done: ev.AudioOutDone) -> None:
        self.ledger(done.session_id).audio_done(done.turn_id)


WORKER = Transcriber
