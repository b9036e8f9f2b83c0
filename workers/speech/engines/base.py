"""What every speech-to-text engine offers its callers (transcriber, video): plain domain objects, no bus, no asyncio.

The worker calls these from a thread pool. Contract for thread safety, the same for every engine:

- an :class:`Engine` (the loaded model) is shared by all threads and sessions;
- a :class:`Recognizer` (one utterance stream) is used by one thread at a time; different
  recognizers of the same engine may run in different threads at the same time.

Audio is always PCM16 little-endian, mono, 16 kHz (:data:`SAMPLE_RATE`), in chunks of whole samples.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

SAMPLE_RATE = 16_000
SAMPLE_WIDTH = 2  # bytes per sample (PCM16)


@dataclass(frozen=True)
class Transcript:
    """The final text of one utterance; ``confidence`` in [0, 1] when the engine gives one."""

    text: str
    confidence: float | None = None


@runtime_checkable
class Recognizer(Protocol):
    """One utterance stream: push audio, get partials, flush for the final."""

    def accept(self, pcm: bytes) -> str | None:
        """Push PCM16 LE mono 16 kHz; return the new partial text when it changed, else None."""
        ...

    def final(self) -> Transcript:
        """The final text of everything pushed since the last final/reset, then reset."""
        ...

    def reset(self) -> None:
        """Drop what was pushed."""
        ...


@runtime_checkable
class Engine(Protocol):
    name: str  # "vosk" | "pocketsphinx" | "whisper"
    streaming: bool  # True when accept() yields partials (whisper: False, partials always None)

    def recognizer(self) -> Recognizer:
        """A new utterance stream; cheap: the model is loaded once per Engine and shared."""
        ...


class EngineError(RuntimeError):
    """A model or library is missing or broken; the message says what to install or pass."""


def check_pcm(pcm: bytes) -> None:
    """Refuse chunks that are not whole PCM16 samples (a caller bug that would shift every later sample)."""
    if len(pcm) % SAMPLE_WIDTH:
        raise ValueError(f"PCM16 audio needs an even number of bytes, got {len(pcm)}")


def clamp01(value: float) -> float:
    return min(1.0, max(0.0, value))
