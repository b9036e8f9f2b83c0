"""Transcriber worker.

Consumes: audio.in.partition for the partitions this replica owns (leases in a KV bucket, see
ownership.py); turn.user, reply.done, audio.done, session.started, session.ended (every
replica, to know when the assistant is speaking and when a session ends).
Produces: speech.started, speech.stopped, transcript.partial, transcript.final, turn.user
(spoken), interrupt (barge-in).
Logic: pipeline.SessionPipeline (vad.VoiceActivity + engines.* + endpoint.TurnEndpoint), run in
child processes (shards.py) so recognition never blocks the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

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
from workers.speech.pool import PoolBroken

from .endpoint import EndpointConfig
from .ownership import Leases
from .pipeline import Output
from .shards import ShardConfig, Shards

log = get_logger("transcriber")

SPECULATIVE_FINALS = Counter(
    "sb_speculative_finals_total",
    "Final recognitions started ahead at speech stopped: used as the turn's final, or wasted by more speech",
    ("outcome",),
)
SESSION_RESTARTS = 5  # re-opens of one session's recognition task within SESSION_RESTART_WINDOW_S
SESSION_RESTART_WINDOW_S = 60.0  # past the bound, the session's audio is dropped until the window allows one


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


@dataclass
class Session:
    partition: int
    queue: asyncio.Queue[tuple[bytes, float]]
    task: asyncio.Task[None] | None = None
    last_audio: float = field(default_factory=time.monotonic)
    in_turn: bool = False
    restarts: deque[float] = field(default_factory=deque)  # monotonic times its task was re-opened, in the window
    given_up: bool = False  # its task kept ending: its audio is dropped for now (told, in health)
    unavailable: bool = False  # told recognition is down (PoolBroken); until it answers again


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
            settings.recognition_processes,
            ShardConfig(
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
                    policy=self.turn_policy,
                    smart_turn_min_silence_ms=settings.smart_turn_min_silence_ms,
                    smart_turn_max_wait_ms=settings.smart_turn_max_wait_ms,
                ),
                settings.partial_interval_s,
                smart_turn_model=str(self.turn_model_path) if self.turn_policy == "smart_turn" else None,
                smart_turn_threads=settings.smart_turn_threads,
                speculative_final=settings.speculative_final,
            ),
        )
        self.sessions: dict[str, Session] = {}
        # What the assistant is doing per session: the barge-in condition.
        self.assistant: SessionTable[TurnLedger] = SessionTable(50_000)
        self.replica = new_id()[:12]
        self._leases_stop = asyncio.Event()
        self._leases: asyncio.Task[None] | None = None
        self._lease_problem = ""

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
        self._leases = asyncio.create_task(self.keep_leases(await self.open_leases(), self._leases_stop))

    def problems(self) -> list[str]:
        given_up = sum(session.given_up for session in self.sessions.values())
        return [
            *self.shards.problems(),
            *([self._lease_problem] if self._lease_problem else []),
            *([f"{given_up} session(s) not heard: their recognition task keeps failing"] if given_up else []),
        ]

    @property
    def owned(self) -> set[int]:
        return self.partitions(self.on_audio).owned

    async def open_leases(self) -> Leases:
        """The lease bucket, after a first claim, so a started replica owns its share at once."""
        bucket = f"sb_transcriber_{self.bus.prefix}"
        kv = await self.bus.js.create_key_value(KeyValueConfig(bucket=bucket, ttl=self.settings.lease_ttl_s))
        leases = Leases(kv, self.replica, AUDIO_PARTITIONS)
        await self._tick(leases)
        return leases

    async def _tick(self, leases: Leases) -> None:
        try:
            gained, lost = await leases.tick()
            self._lease_problem = ""
        except Exception as error:  # a NATS hiccup must not end ownership handling
            log.warning("lease renewal failed; releasing partitions", error=repr(error)[:200])
            self._lease_problem = f"partition leases cannot be renewed ({type(error).__name__}): hearing no audio"
            gained, lost = set(), self.owned
        # A lease that lapsed (a busy loop) and was taken straight back never left us.
        gained, lost = gained - lost - self.owned, lost - gained
        for partition in lost:
            await self._release(partition)
        for partition in gained:
            await self._own(partition)
        await flush_ordered(self.bus.nc)

    async def keep_leases(self, leases: Leases, stop: asyncio.Event) -> None:
        try:
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.settings.lease_ttl_s / 3):
                        await stop.wait()
                if not stop.is_set():
                    await self._tick(leases)
                await self._forget_idle()
        finally:
            for partition in self.owned:
                await self._release(partition)
            with contextlib.suppress(Exception):
                await leases.release_all()

    async def stop(self) -> None:
        self._leases_stop.set()
        if self._leases is not None:
            await self._leases
        for session_id in list(self.sessions):
            await self._end_session(session_id)
        self.shards.shutdown()

    # ------------------------------------------------------------------ partitions

    async def _own(self, partition: int) -> None:
        await self.partitions(self.on_audio).own(partition)
        log.info("partition owned", partition=partition, replica=self.replica)

    async def _release(self, partition: int) -> None:
        await self.partitions(self.on_audio).release(partition)
        for session_id, session in list(self.sessions.items()):
            if session.partition == partition:
                if session.in_turn:
                    log.warning(
                        "session moved to another replica; its utterance in flight is lost",
                        session_id=session_id,
                        partition=partition,
                    )
                self._drop(session_id)
                await self.shards.close(session_id, finish=False)
        log.info("partition released", partition=partition, replica=self.replica)

    # ------------------------------------------------------------------ audio

    @consumes("audio.in.partition", delivery="partitioned")
    async def on_audio(self, meta: ev.AudioInMeta, delivery: Delivery) -> None:
        session = self.sessions.get(meta.session_id) or self._open(
            meta.session_id, int(delivery.subject.split(".")[-1])
        )
        session.last_audio = time.monotonic()
        if not await self._supervise(meta.session_id, session):
            return  # its task keeps failing: not heard until the restart window allows another
        try:
            session.queue.put_nowait((delivery.data, meta.captured_at or time.time()))
        except asyncio.QueueFull:
            # Recognition is falling behind real time: shed the oldest audio rather than grow.
            session.queue.get_nowait()
            session.queue.put_nowait((delivery.data, meta.captured_at or time.time()))
            log.warning("transcriber falling behind; oldest audio dropped", session_id=meta.session_id)

    def _open(self, session_id: str, partition: int) -> Session:
        session = Session(partition, asyncio.Queue(self.settings.session_queue_frames))
        self.sessions[session_id] = session
        session.task = self._run(session_id, session)
        return session

    def _run(self, session_id: str, session: Session) -> asyncio.Task[None]:
        task = asyncio.create_task(self._process(session_id, session), name=f"transcribe-{session_id}")
        task.add_done_callback(lambda ended: self._ended(session_id, session, ended))
        return task

    def _ended(self, session_id: str, session: Session, task: asyncio.Task[None]) -> None:
        """A session's task ended: by our hand (dropped, replaced), or not: then it is said, and the
        session's next audio re-opens it (``_supervise``)."""
        if self.sessions.get(session_id) is not session or session.task is not task:
            return
        error = None if task.cancelled() else task.exception()
        how = "cancelled" if task.cancelled() else repr(error)[:300] if error is not None else "returned"
        log.error("session recognition task ended; re-opened at its next audio", session_id=session_id, how=how)

    async def _supervise(self, session_id: str, session: Session) -> bool:
        """Re-open the session's task if it ended, up to SESSION_RESTARTS in the window; False: it
        may not run now (its audio is dropped)."""
        if session.task is not None and not session.task.done():
            return True
        now = time.monotonic()
        while session.restarts and session.restarts[0] < now - SESSION_RESTART_WINDOW_S:
            session.restarts.popleft()
        if len(session.restarts) >= SESSION_RESTARTS:
            if not session.given_up:
                session.given_up = True
                log.error(
                    "session recognition task keeps ending; its audio is dropped for now",
                    session_id=session_id,
                    restarts=len(session.restarts),
                    window_s=SESSION_RESTART_WINDOW_S,
                )
                await self._tell(session_id, "recognition_unavailable", "speech recognition keeps failing; please type")
            return False
        session.restarts.append(now)
        session.given_up, session.in_turn = False, False
        session.task = self._run(session_id, session)
        await self._tell(session_id, "recognition_lost", "what you were saying was lost; please say it again")
        return True

    async def _process(self, session_id: str, session: Session) -> None:
        """The session's audio, in order, through its recognizer. A failure never ends the session's
        hearing: it is logged and told to the user, and the next utterance starts afresh."""
        while True:
            frames = [await session.queue.get()]
            while not session.queue.empty():  # catch up in one hop to the shard
                frames.append(session.queue.get_nowait())
            try:
                outputs, session.in_turn = await self.shards.push(session_id, frames)
                session.unavailable = False
                for output in outputs:
                    await self._publish(session_id, output)
            except PoolBroken as error:  # the frames are dropped (health says why); told once, not per frame
                if not session.unavailable:
                    session.unavailable = True
                    log.error(
                        "recognition is down; this session's audio is not heard",
                        session_id=session_id,
                        error=str(error)[:300],
                    )
                    await self._tell(session_id, "recognition_unavailable", "speech recognition is down; please type")
            except Exception as error:  # ChildLost (its process died) or a bug: the next utterance starts afresh
                log.error(
                    "recognition failed; the session goes on with its next utterance",
                    session_id=session_id,
                    error=repr(error)[:300],
                )
                session.in_turn = False
                await self._tell(session_id, "recognition_lost", "what you were saying was lost; please say it again")

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
        producer, turn = self.bus.producer, out.turn_id
        if out.kind == "speech_started":
            await self.bus.publish(
                ev.SpeechStarted(
                    session_id=session_id,
                    turn_id=turn,
                    producer=producer,
                    audio_at=out.audio_at,
                    captured_at=out.wall_at,
                )
            )
            await self._barge_in(session_id)
        elif out.kind == "speech_stopped":
            await self.bus.publish(
                ev.SpeechStopped(
                    session_id=session_id,
                    turn_id=turn,
                    producer=producer,
                    audio_at=out.audio_at,
                    speech_ended_at=out.wall_at,
                    captured_at=out.wall_at,
                )
            )
        elif out.kind == "partial":
            await self.bus.publish(
                ev.TranscriptPartial(
                    session_id=session_id,
                    turn_id=turn,
                    producer=producer,
                    text=out.text,
                    engine=self.settings.stt_engine,
                )
            )
        else:
            SPECULATIVE_FINALS.labels("used").inc(out.speculative)
            SPECULATIVE_FINALS.labels("wasted").inc(out.wasted_speculations)
            await self.bus.publish(
                ev.TranscriptFinal(
                    session_id=session_id,
                    turn_id=turn,
                    producer=producer,
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
                        session_id=session_id,
                        turn_id=turn,
                        producer=producer,
                        text=out.text,
                        source="spoken",
                        speech_ended_at=out.wall_at,
                        captured_at=out.wall_at,
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
        await self._end_session(event.session_id)

    @consumes("turn.user")
    async def on_user_turn(self, turn: ev.UserTurn) -> None:
        self.ledger(turn.session_id).user_turn(turn.turn_id)

    @consumes("reply.done")
    async def on_reply_done(self, done: ev.ReplyDone) -> None:
        self.ledger(done.session_id).reply_done(done.turn_id, done.finish_reason)

    @consumes("audio.done")
    async def on_audio_done(self, done: ev.AudioOutDone) -> None:
        self.ledger(done.session_id).audio_done(done.turn_id)

    # ------------------------------------------------------------------ sessions

    async def _end_session(self, session_id: str) -> None:
        session = self.sessions.get(session_id)
        if session is None:
            return
        self._drop(session_id)
        for output in await self.shards.close(session_id, finish=True):
            await self._publish(session_id, output)

    def _drop(self, session_id: str) -> None:
        session = self.sessions.pop(session_id, None)
        if session is not None and session.task is not None:
            session.task.cancel()

    async def _forget_idle(self) -> None:
        cutoff = time.monotonic() - self.settings.session_idle_s
        for session_id, session in list(self.sessions.items()):
            if session.last_audio < cutoff and not session.in_turn:
                self._drop(session_id)
                await self.shards.close(session_id, finish=False)


WORKER = Transcriber
