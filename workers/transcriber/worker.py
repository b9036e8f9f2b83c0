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
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Literal

from faststream.nats import NatsRouter
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.api import KeyValueConfig
from pydantic import Field, ValidationError

from contracts import events as ev
from contracts import headers as h
from contracts.envelope import new_id
from contracts.subjects import AUDIO_PARTITIONS, BY_NAME
from workers.runtime import Bus, RuntimeSettings, WorkerSpec
from workers.runtime.bus import flush_ordered
from workers.runtime.logging import get_logger

from .endpoint import EndpointConfig
from .ownership import Leases
from .pipeline import Output
from .shards import ShardConfig, Shards

log = get_logger("transcriber")


class TranscriberSettings(RuntimeSettings):
    stt_engine: Literal["pocketsphinx+whisper", "pocketsphinx", "whisper", "vosk", "vosk+whisper"] = Field(
        default="pocketsphinx+whisper",
        description="Speech-to-text engine; a+b: partials from a, final from b (docs/speech.md)")
    stt_model_path: str | None = Field(
        default=None, description="Model directory of the (final) engine; vosk: the language's model")
    stt_language: str = Field(default="en", description="Language of the speech")
    vad_onnx: bool = Field(default=False, description="Run silero-vad through onnxruntime instead of torch")
    vad_threshold: float = Field(default=0.5, gt=0, lt=1, description="Speech probability threshold")
    vad_min_silence_ms: int = Field(default=160, ge=0, description="Silence before 'speech stopped'")
    turn_silence_ms: int = Field(default=EndpointConfig().silence_ms, ge=0, description="Silence that ends a turn")
    turn_pause_guard_ms: int = Field(default=EndpointConfig().pause_guard_ms, ge=0,
                                     description="Extra wait when the words clearly go on")
    turn_max_utterance_s: float = Field(default=30.0, gt=0, description="Longest utterance before a forced final")
    partial_interval_s: float = Field(default=0.25, ge=0, description="Least time between two partials")
    recognition_processes: int = Field(default=2, ge=1, le=32,
                                       description="Processes running VAD and recognition (each loads the models)")
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


@dataclass
class Assistant:
    """What the assistant is doing for one session: the barge-in condition."""

    audio_out: bool = False
    generating: str | None = None  # turn whose reply is being generated
    playing: str | None = None  # turn whose audio may still be playing
    playing_until: float = 0.0

    def active_turn(self) -> str | None:
        if self.generating:
            return self.generating
        if self.playing and time.monotonic() < self.playing_until:
            return self.playing
        return None


class Transcriber:
    def __init__(self, settings: TranscriberSettings, bus: Bus) -> None:
        self.settings = settings
        self.bus = bus
        self.shards = Shards(settings.recognition_processes, ShardConfig(
            settings.stt_engine, settings.stt_model_path, settings.stt_language, settings.vad_onnx,
            settings.vad_threshold, settings.vad_min_silence_ms,
            EndpointConfig(settings.turn_silence_ms, settings.turn_max_utterance_s, settings.turn_pause_guard_ms),
            settings.partial_interval_s))
        self.sessions: dict[str, Session] = {}
        self.assistant: OrderedDict[str, Assistant] = OrderedDict()
        self.subscriptions: dict[int, Subscription] = {}
        self.replica = new_id()[:12]

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        await self.shards.start()
        log.info("models loaded", engine=self.settings.stt_engine, vad="onnx" if self.settings.vad_onnx else "torch",
                 processes=self.settings.recognition_processes)

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
        except Exception as error:  # a NATS hiccup must not end ownership handling
            log.warning("lease renewal failed; releasing partitions", error=repr(error)[:200])
            gained, lost = set(), set(self.subscriptions)
        # A lease that lapsed (a busy loop) and was taken straight back never left us.
        gained, lost = gained - lost - set(self.subscriptions), lost - gained
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
            for partition in list(self.subscriptions):
                await self._release(partition)
            with contextlib.suppress(Exception):
                await leases.release_all()

    async def stop(self) -> None:
        for session_id in list(self.sessions):
            await self._end_session(session_id)
        self.shards.shutdown()

    # ------------------------------------------------------------------ partitions

    async def _own(self, partition: int) -> None:
        subject = BY_NAME["audio.in.partition"].subject("*", self.bus.prefix, partition=str(partition))
        self.subscriptions[partition] = await self.bus.nc.subscribe(subject, cb=self._on_audio)
        log.info("partition owned", partition=partition, replica=self.replica)

    async def _release(self, partition: int) -> None:
        sub = self.subscriptions.pop(partition, None)
        if sub is not None:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        for session_id, session in list(self.sessions.items()):
            if session.partition == partition:
                if session.in_turn:
                    log.warning("session moved to another replica; its utterance in flight is lost",
                                session_id=session_id, partition=partition)
                self._drop(session_id)
                await self.shards.close(session_id, finish=False)
        log.info("partition released", partition=partition, replica=self.replica)

    # ------------------------------------------------------------------ audio

    async def _on_audio(self, msg: Msg) -> None:
        try:
            meta = ev.AudioInMeta.model_validate_json((msg.headers or {}).get(h.META, ""))
        except ValidationError as error:
            log.warning("audio frame without valid meta dropped", subject=msg.subject, error=str(error)[:200])
            return
        session = self.sessions.get(meta.session_id) or self._open(meta.session_id, int(msg.subject.split(".")[-1]))
        session.last_audio = time.monotonic()
        try:
            session.queue.put_nowait((msg.data, meta.captured_at or time.time()))
        except asyncio.QueueFull:
            # Recognition is falling behind real time: shed the oldest audio rather than grow.
            session.queue.get_nowait()
            session.queue.put_nowait((msg.data, meta.captured_at or time.time()))
            log.warning("transcriber falling behind; oldest audio dropped", session_id=meta.session_id)

    def _open(self, session_id: str, partition: int) -> Session:
        session = Session(partition, asyncio.Queue(self.settings.session_queue_frames))
        session.task = asyncio.create_task(self._process(session_id, session), name=f"transcribe-{session_id}")
        self.sessions[session_id] = session
        return session

    async def _process(self, session_id: str, session: Session) -> None:
        while True:
            frames = [await session.queue.get()]
            while not session.queue.empty():  # catch up in one hop to the shard
                frames.append(session.queue.get_nowait())
            outputs, session.in_turn = await self.shards.push(session_id, frames)
            for output in outputs:
                await self._publish(session_id, output)

    async def _publish(self, session_id: str, out: Output) -> None:
        producer, turn = self.bus.producer, out.turn_id
        if out.kind == "speech_started":
            await self.bus.publish(ev.SpeechStarted(session_id=session_id, turn_id=turn, producer=producer,
                                                    audio_at=out.audio_at, captured_at=out.wall_at))
            await self._barge_in(session_id)
        elif out.kind == "speech_stopped":
            await self.bus.publish(ev.SpeechStopped(session_id=session_id, turn_id=turn, producer=producer,
                                                    audio_at=out.audio_at, speech_ended_at=out.wall_at,
                                                    captured_at=out.wall_at))
        elif out.kind == "partial":
            await self.bus.publish(ev.TranscriptPartial(session_id=session_id, turn_id=turn, producer=producer,
                                                        text=out.text, engine=self.settings.stt_engine))
        else:
            await self.bus.publish(ev.TranscriptFinal(
                session_id=session_id, turn_id=turn, producer=producer, text=out.text,
                engine=self.settings.stt_engine, confidence=out.confidence, audio_start=out.audio_start,
                audio_end=out.audio_at, forced=out.forced, captured_at=out.wall_at))
            if out.text:
                await self.bus.publish(ev.UserTurn(session_id=session_id, turn_id=turn, producer=producer,
                                                   text=out.text, source="spoken", speech_ended_at=out.wall_at,
                                                   captured_at=out.wall_at))

    async def _barge_in(self, session_id: str) -> None:
        state = self.assistant.get(session_id)
        interrupted = state.active_turn() if state else None
        if state is None or interrupted is None:
            return
        state.generating = state.playing = None
        log.info("barge-in", session_id=session_id, turn_id=interrupted)
        await self.bus.publish(ev.Interrupt(session_id=session_id, turn_id=interrupted, producer=self.bus.producer,
                                            reason="barge_in"))

    # ------------------------------------------------------------------ what the assistant does

    def state(self, session_id: str) -> Assistant:
        state = self.assistant.get(session_id)
        if state is None:
            state = self.assistant[session_id] = Assistant()
            if len(self.assistant) > 50_000:
                self.assistant.popitem(last=False)
        return state

    def on_session_started(self, event: ev.SessionStarted) -> None:
        self.state(event.session_id).audio_out = "audio_out" in event.capabilities

    async def on_session_ended(self, event: ev.SessionEnded) -> None:
        self.assistant.pop(event.session_id, None)
        await self._end_session(event.session_id)

    def on_user_turn(self, turn: ev.UserTurn) -> None:
        self.state(turn.session_id).generating = turn.turn_id

    def on_reply_done(self, done: ev.ReplyDone) -> None:
        state = self.state(done.session_id)
        if state.generating == done.turn_id:
            state.generating = None
        if state.audio_out and done.finish_reason in ("stop", "length"):
            state.playing, state.playing_until = done.turn_id, time.monotonic() + self.settings.playback_grace_s

    def on_audio_done(self, done: ev.AudioOutDone) -> None:
        state = self.state(done.session_id)
        if state.playing == done.turn_id:
            state.playing = None

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


_transcribers: dict[int, Transcriber] = {}


def build(settings: TranscriberSettings, bus: Bus) -> NatsRouter:
    transcriber = _transcribers[id(bus)] = Transcriber(settings, bus)
    router = NatsRouter()
    prefix = bus.prefix

    @router.subscriber(BY_NAME["session.started"].template(prefix), title="transcriber.session_started")
    async def on_started(event: ev.SessionStarted) -> None:
        transcriber.on_session_started(event)

    @router.subscriber(BY_NAME["session.ended"].template(prefix), title="transcriber.session_ended")
    async def on_ended(event: ev.SessionEnded) -> None:
        await transcriber.on_session_ended(event)

    @router.subscriber(BY_NAME["turn.user"].template(prefix), title="transcriber.turn")
    async def on_turn(turn: ev.UserTurn) -> None:
        transcriber.on_user_turn(turn)

    @router.subscriber(BY_NAME["reply.done"].template(prefix), title="transcriber.reply_done")
    async def on_done(done: ev.ReplyDone) -> None:
        transcriber.on_reply_done(done)

    @router.subscriber(BY_NAME["audio.done"].template(prefix), title="transcriber.audio_done")
    async def on_audio_done(done: ev.AudioOutDone) -> None:
        transcriber.on_audio_done(done)

    return router


@contextlib.asynccontextmanager
async def lifespan(settings: TranscriberSettings, bus: Bus) -> AsyncIterator[None]:
    transcriber = _transcribers[id(bus)]
    await transcriber.start()
    stop = asyncio.Event()
    leases = asyncio.create_task(transcriber.keep_leases(await transcriber.open_leases(), stop))
    try:
        yield
    finally:
        stop.set()
        await leases
        await transcriber.stop()
        _transcribers.pop(id(bus), None)


WORKER = WorkerSpec(name="transcriber", description="Voice activity, streaming speech-to-text, turn detection",
                    settings=TranscriberSettings, build=build, lifespan=lifespan)
