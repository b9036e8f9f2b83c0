"""The one interface every text-to-speech provider implements, and the per-turn stream built on it.

A provider only knows how to say one unit of text: :meth:`TTSProvider.synthesize` yields PCM16
LE mono chunks. :class:`SpeechStream` is what the worker drives for a turn: ``start`` (open it
with a voice), ``feed`` text units as they arrive, ``end``, iterate the audio, ``cancel`` at
any time. Cancelling stops the unit being synthesised (the provider's request or process is
closed); audio already made is discarded. What a provider can do is its :class:`TTSCapabilities`.
Test double: ``tests/support/fakes.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import NamedTuple


class Audio(NamedTuple):
    pcm: bytes  # PCM16 LE mono
    sample_rate: int


class ProviderError(Exception):
    """Synthesis failed; ``code`` is the stable code of the error event the client gets."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


LATIN = frozenset({"LATIN"})


@dataclass(frozen=True)
class TTSCapabilities:
    """What a provider can do, declared by the provider."""

    streaming: bool  # a unit's audio comes in pieces while it is synthesised (else all at once, when done)
    sample_rate: int | None  # of all its audio; None: it depends on the voice (each Audio says)
    voices: frozenset[str] = frozenset()  # the voice names it accepts (empty until start() when it asks its engine)
    # The writing systems its voices read (Unicode script names); None: any. Other letters are not sent to it.
    scripts: frozenset[str] | None = None


class TTSProvider(ABC):
    name: str  # what sessions choose it by (SessionSettings.tts_provider)

    def __init__(self, capabilities: TTSCapabilities, default_voice: str) -> None:
        self.capabilities = capabilities
        self.default_voice = default_voice

    def voices(self) -> frozenset[str]:
        """The voice names this provider accepts."""
        return self.capabilities.voices

    def has_voice(self, voice: str) -> bool:
        return voice in self.voices()

    async def start(self) -> None:  # noqa: B027 - an optional hook
        """Load models or check the service (called once at worker start)."""

    async def close(self) -> None:  # noqa: B027 - an optional hook
        """Release what start opened."""

    @abstractmethod
    def synthesize(self, text: str, voice: str) -> AsyncIterator[Audio]:
        """Say one unit of text; raises ProviderError when the engine fails."""

    def stream(self, voice: str, ahead: int = 2) -> SpeechStream:
        return SpeechStream(self, voice, ahead)


_END = None


class SpeechStream:
    """One turn's speech. At most ``ahead`` chunks wait for the reader, so synthesis never runs far ahead."""

    def __init__(self, provider: TTSProvider, voice: str, ahead: int = 2) -> None:
        self.provider = provider
        self.voice = voice
        self._units: asyncio.Queue[str | None] = asyncio.Queue()
        self._audio: asyncio.Queue[Audio | BaseException | None] = asyncio.Queue(maxsize=ahead)
        self._task = asyncio.create_task(self._run(), name=f"tts-{provider.name}")

    def feed(self, text: str) -> None:
        self._units.put_nowait(text)

    def end(self) -> None:
        self._units.put_nowait(_END)

    async def cancel(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def __aiter__(self) -> AsyncIterator[Audio]:
        while (item := await self._audio.get()) is not _END:
            if isinstance(item, BaseException):
                raise item
            yield item

    async def _run(self) -> None:
        try:
            while (unit := await self._units.get()) is not _END:
                async for audio in self.provider.synthesize(unit, self.voice):
                    await self._audio.put(audio)
        except ProviderError as error:
            await self._audio.put(error)
        except Exception as error:  # a bug in a provider must end this turn, not the worker
            await self._audio.put(ProviderError("tts_failed", f"{type(error).__name__}: {error}"))
        await self._audio.put(_END)
