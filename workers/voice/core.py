"""The voice worker's logic, testable without the bus: per session, one turn spoken at a time.

A turn's speech starts with its first reply delta and ends after its reply.done; text goes
through :class:`~.text.Chunker` and :func:`~.text.speakable` into the session's provider.
Frames are paced: at most ``lead_s`` of audio ahead of real-time playback, so an interrupt
leaves little buffered at the client and synthesis never runs far ahead. ``audio.done`` of a
turn is published once, when its audio would have finished playing (``cancelled`` when it
was stopped or failed), also for a turn with nothing to say: the transcriber's barge-in
waits for it.

Only sessions whose client declared the ``audio_out`` capability are voiced. A new user
turn, an interrupt, or a cancelled or superseded reply stops the turn being spoken. Which turn
is spoken, and which are over (spoken or stopped: late text of them is not voiced), is the
session's :class:`~workers.runtime.turns.TurnLedger`; ``Session.speech`` is the speech of the
ledger's speaking turn.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

from contracts import events as ev
from contracts.envelope import Event
from workers.runtime import tracing
from workers.runtime.logging import get_logger
from workers.runtime.turns import SessionTable, TurnLedger

from .providers.base import ProviderError, TTSProvider
from .text import Chunker, has_letters, speakable

log = get_logger("voice")
SOURCE = "voice"


class Publisher(Protocol):
    producer: str

    async def publish(self, event: Event, *, durable: bool = False) -> None: ...

    async def publish_binary(self, meta: Event, payload: bytes) -> None: ...


@dataclass(frozen=True)
class SpeechConfig:
    default_provider: str = "piper"
    frame_ms: int = 100
    lead_s: float = 1.0
    first_words: int = 6
    max_unit_chars: int = 300
    max_chars: int = 4_000  # per turn; the rest is not read aloud


@dataclass
class Session:
    ready: asyncio.Task[None] | None = None  # loading what the bus recorded about it
    speaks: bool = False  # the client declared audio_out
    settings: ev.SessionSettings | None = None
    # speaking: the turn whose speech runs, until its audio.done (no grace: this worker sends that)
    turns: TurnLedger = field(default_factory=lambda: TurnLedger(audio_out=True, playback_grace_s=math.inf))
    speech: TurnSpeech | None = None  # of turns.speaking


Recorded = Callable[[str], Awaitable[tuple[ev.SessionStarted | None, ev.SessionSettings | None]]]


async def publish_error(pub: Publisher, session_id: str, turn_id: str | None, code: str, message: str) -> None:
    await pub.publish(
        ev.ErrorEvent(
            session_id=session_id,
            turn_id=turn_id,
            producer=pub.producer,
            code=code,
            message=message[:500],
            source=SOURCE,
            retryable=code == "tts_failed",
        )
    )


class VoiceService:
    def __init__(
        self,
        publisher: Publisher,
        providers: dict[str, TTSProvider],
        config: SpeechConfig,
        recorded: Recorded,
        max_sessions: int = 100_000,
    ) -> None:
        self._pub = publisher
        self._providers = providers
        self._config = config
        self._recorded = recorded
        # A session that speaks or is still loading stays; the least recently used idle one goes first.
        self._sessions: SessionTable[Session] = SessionTable(
            max_sessions, busy=lambda s: s.speech is not None or s.ready is not None
        )

    # ------------------------------------------------------------------ inputs

    async def on_session_started(self, started: ev.SessionStarted) -> None:
        session = await self._session(started.session_id)
        session.speaks = "audio_out" in started.capabilities

    async def on_session_ended(self, ended: ev.SessionEnded) -> None:
        session = self._sessions.pop(ended.session_id)
        if session is not None:
            await self._stop(session)

    async def on_settings(self, settings: ev.SessionSettings) -> None:
        session = await self._session(settings.session_id)
        merged = session.settings.updated(settings) if session.settings else settings
        problem = self._choose(merged, asked_voice=settings.voice is not None)[2]
        if problem is not None:
            code, message = problem
            log.info("voice settings refused", session_id=settings.session_id, code=code, reason=message)
            await publish_error(self._pub, settings.session_id, None, code, message)
            return  # the previous choice stays
        session.settings = merged

    async def on_user_turn(self, turn: ev.UserTurn) -> None:
        session = self._sessions.get(turn.session_id)
        if session is not None and session.turns.speaking not in (None, turn.turn_id):
            await self._stop(session)  # the user moved on: a new turn supersedes the old speech

    async def on_delta(self, delta: ev.ReplyDelta) -> None:
        session = await self._session(delta.session_id)
        turn = await self._turn(session, delta)
        if turn is not None:
            turn.feed(delta.text)

    async def on_reply_done(self, done: ev.ReplyDone) -> None:
        session = await self._session(done.session_id)
        if done.finish_reason in ("cancelled", "superseded"):
            if session.turns.speaking == done.turn_id:
                await self._stop(session)
            return
        turn = await self._turn(session, done)
        if turn is not None:
            turn.finish(done.text)

    async def on_interrupt(self, interrupt: ev.Interrupt) -> None:
        session = self._sessions.get(interrupt.session_id)
        if session is None:
            return
        speaking = session.turns.speaking
        # The interrupted turn (None: the one speaking) is over: its late text is not voiced either.
        if speaking in session.turns.interrupt(interrupt.turn_id):
            await self._stop(session)

    async def close(self) -> None:
        await asyncio.gather(*(self._stop(s) for _, s in self._sessions.items()))

    # ------------------------------------------------------------------ turns

    async def _turn(self, session: Session, event: ev.ReplyDelta | ev.ReplyDone) -> TurnSpeech | None:
        """The turn this event belongs to, started on its first event; None when it is not to be voiced."""
        turns = session.turns
        if session.speech is not None and turns.speaking == event.turn_id:
            return session.speech
        if not session.speaks or turns.over(event.turn_id):
            return None  # not voiced, or late text of a turn already spoken or stopped
        provider, voice, _ = self._choose(session.settings, asked_voice=False)
        turn = TurnSpeech(
            self._pub, event, provider, voice, self._config, on_end=lambda: self._ended(session, event.turn_id)
        )
        previous, session.speech = session.speech, turn
        turns.speaking_now(event.turn_id)
        if previous is not None:
            turns.interrupt(previous.turn_id)
            await previous.stop()  # a new reply supersedes the speech of the previous one
        return turn

    def _ended(self, session: Session, turn_id: str) -> None:
        """The turn's audio.done was sent (spoken to the end, or stopped): it is over."""
        session.turns.audio_done(turn_id)
        if session.speech is not None and session.speech.turn_id == turn_id:
            session.speech = None

    async def _stop(self, session: Session) -> None:
        if session.speech is not None:
            await session.speech.stop()

    def _choose(
        self, settings: ev.SessionSettings | None, asked_voice: bool
    ) -> tuple[TTSProvider, str, tuple[str, str] | None]:
        """The provider and voice to use, and what was wrong with the asked ones (they are then not used)."""
        default = self._providers[self._config.default_provider]
        name = settings.tts_provider if settings else None
        provider = self._providers.get(name or default.name)
        if provider is None:
            return (
                default,
                default.default_voice,
                (
                    "tts_unknown_provider",
                    f"No text-to-speech provider {name!r} here; available: {', '.join(sorted(self._providers))}.",
                ),
            )
        voice = settings.voice if settings else None
        if voice is None or provider.has_voice(voice):
            return provider, voice or provider.default_voice, None
        problem = ("tts_unknown_voice", f"{provider.name} has no voice {voice!r}.") if asked_voice else None
        return provider, provider.default_voice, problem

    # ------------------------------------------------------------------ sessions

    async def _session(self, session_id: str) -> Session:
        def new() -> Session:
            session = Session()
            session.ready = asyncio.create_task(self._load(session_id, session))
            return session

        session = self._sessions.setdefault(session_id, new)
        if session.ready is not None:
            await session.ready
        return session

    async def _load(self, session_id: str, session: Session) -> None:
        """A session this replica never saw start: what the bus recorded about it."""
        try:
            started, settings = await self._recorded(session_id)
        except Exception as error:  # JetStream unreachable: the session's live events will tell
            log.warning("could not read the session's recorded events", session_id=session_id, error=repr(error))
            started, settings = None, None
        session.speaks = started is not None and "audio_out" in started.capabilities
        session.settings = settings
        session.ready = None


class TurnSpeech:
    """One turn: text in (``feed``, ``finish``), paced audio frames and one ``audio.done`` out."""

    def __init__(
        self,
        publisher: Publisher,
        first: ev.ReplyDelta | ev.ReplyDone,
        provider: TTSProvider,
        voice: str,
        config: SpeechConfig,
        on_end: Callable[[], None],
    ) -> None:
        self.session_id, self.turn_id = first.session_id, first.turn_id
        self._captured_at = first.captured_at
        self._pub = publisher
        self._config = config
        self._chunker = Chunker(config.first_words, config.max_unit_chars)
        self._stream = provider.stream(voice)
        self._scripts = provider.capabilities.scripts
        self._unreadable = False  # some text was in a script the voice does not read
        self._received = ""
        self._spoken_chars = 0
        self._truncated = False
        self._finished = False
        self._frames = 0
        self._seconds = 0.0
        self._done_sent = False
        self._on_end = on_end
        self._trace = tracing.current()  # the turn's trace, also when another turn's message stops this one
        self._task = asyncio.create_task(self._play(), name=f"voice-{self.turn_id}")

    def feed(self, text: str) -> None:
        if self._finished:
            return
        self._received += text
        for unit in self._chunker.feed(text):
            self._say(unit)

    def finish(self, full_text: str) -> None:
        """The reply is complete; its full text covers deltas this worker may not have seen."""
        if self._finished:
            return
        if full_text.startswith(self._received):
            self.feed(full_text[len(self._received) :])
        for unit in self._chunker.flush():
            self._say(unit)
        self._finished = True
        self._stream.end()

    async def stop(self) -> None:
        """Stop at once: synthesis is cancelled, no frame follows, ``audio.done`` says cancelled."""
        self._finished = True
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        await self._stream.cancel()
        await self._done(cancelled=True)

    def _say(self, unit: str) -> None:
        text = speakable(unit, self._scripts)
        if self._scripts is not None and has_letters(unit) and text != speakable(unit):
            self._unreadable = True
        if not text or self._truncated:
            return
        if self._spoken_chars + len(text) > self._config.max_chars:
            self._truncated = True
            return
        self._spoken_chars += len(text)
        self._stream.feed(text)

    async def _play(self) -> None:
        playhead = 0.0  # monotonic time at which the client will have played everything sent
        carry = b""
        rate = 0
        try:
            async for audio in self._stream:
                rate = audio.sample_rate
                frame_bytes = rate * self._config.frame_ms // 1000 * 2
                carry += audio.pcm
                while len(carry) >= frame_bytes:
                    playhead = await self._send(carry[:frame_bytes], rate, playhead)
                    carry = carry[frame_bytes:]
            if carry:
                playhead = await self._send(carry, rate, playhead)
        except ProviderError as error:
            log.warning(
                "synthesis failed",
                session_id=self.session_id,
                turn_id=self.turn_id,
                code=error.code,
                error=str(error)[:300],
            )
            await publish_error(
                self._pub,
                self.session_id,
                self.turn_id,
                error.code,
                "Speech stopped: the voice failed. The text reply is complete.",
            )
            await self._done(cancelled=True)
            return
        if self._unreadable:
            await publish_error(
                self._pub,
                self.session_id,
                self.turn_id,
                "tts_unsupported_script",
                "This voice reads Latin script only: text in other scripts was not read aloud.",
            )
        if self._truncated:
            await publish_error(
                self._pub,
                self.session_id,
                self.turn_id,
                "tts_truncated",
                f"Only the first {self._config.max_chars} characters were read aloud.",
            )
        await asyncio.sleep(max(0.0, playhead - time.monotonic()))
        await self._done(cancelled=False)

    async def _send(self, pcm: bytes, rate: int, playhead: float) -> float:
        now = time.monotonic()
        await self._pub.publish_binary(
            ev.AudioOutMeta(
                session_id=self.session_id,
                turn_id=self.turn_id,
                producer=self._pub.producer,
                seq=self._frames,
                sample_rate=rate,
                captured_at=self._captured_at,
            ),
            pcm,
        )
        self._frames += 1
        seconds = len(pcm) / 2 / rate
        self._seconds += seconds
        playhead = max(playhead, now) + seconds
        await asyncio.sleep(max(0.0, playhead - self._config.lead_s - time.monotonic()))
        return playhead

    async def _done(self, cancelled: bool) -> None:
        if self._done_sent:
            return
        self._done_sent = True
        self._on_end()
        with tracing.handling(self._trace):
            await self._pub.publish(
                ev.AudioOutDone(
                    session_id=self.session_id,
                    turn_id=self.turn_id,
                    producer=self._pub.producer,
                    frames=self._frames,
                    duration_ms=round(self._seconds * 1000, 1),
                    cancelled=cancelled,
                    captured_at=self._captured_at,
                )
            )
