"""What every speech-to-text engine offers its callers (transcriber, video): plain domain objects, no bus, no asyncio.

The worker calls these from a thread pool. Contract for thread safety, the same for every engine:

- an :class:`Engine` (the loaded model) is shared by all threads and sessions;
- a :class:`Recognizer` (one utterance stream) is used by one thread at a time; different
  recognizers of the same engine may run in different threads at the same time.

Audio is always PCM16 little-endian, mono, 16 kHz (:data:`SAMPLE_RATE`), in chunks of whole samples.

Every engine subclasses :class:`Engine` and declares its :class:`STTCapabilities` (partials or not,
when the final is decoded, languages); its recognizers have the :class:`Recognizer` methods (a
protocol: wrappers such as the benchmarks' timing one need no base). Test double: ``tests/support/fakes.py``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

SAMPLE_RATE = 16_000
SAMPLE_WIDTH = 2  # bytes per sample (PCM16)


@dataclass(frozen=True)
class Transcript:
    """The final text of one utterance; ``confidence`` in [0, 1] when the engine gives one."""

    text: str
    confidence: float | None = None


@dataclass(frozen=True)
class STTCapabilities:
    """What an engine can do, declared by the engine: callers pick and combine engines by this, not by name."""

    streaming: bool  # accept() returns partial text while the speech goes on
    # final() decodes the whole buffered utterance at once: its cost is paid after the user stops speaking
    whole_utterance: bool
    # Primary language subtags it transcribes ("en"); empty: its model's own language, which the engine cannot tell
    languages: frozenset[str]
    sample_rate: int = SAMPLE_RATE  # of the PCM16 mono audio accept() takes


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
class Speculative(Protocol):
    """A recognizer whose final is decoded from the whole utterance when asked (Whisper): worth computing
    ahead, when the speech may be over, so that the final is ready when the turn is declared over."""

    def speculate(self) -> Callable[[], Transcript] | None:
        """A job returning what :meth:`Recognizer.final` would return now, for the audio pushed so far;
        it leaves the recognizer as it is and may run in another thread (None: nothing to compute ahead)."""
        ...


class Engine(ABC):
    """A loaded model, shared by every recognizer made from it."""

    name: str  # "vosk" | "pocketsphinx" | "whisper" | "<streaming>+<accurate>"

    def __init__(self, capabilities: STTCapabilities) -> None:
        self.capabilities = capabilities

    @abstractmethod
    def recognizer(self) -> Recognizer:
        """A new utterance stream; cheap: the model is loaded once per Engine and shared."""


class EngineError(RuntimeError):
    """A model or library is missing or broken; the message says what to install or pass."""


def primary_language(tag: str) -> str:
    """``en-US`` -> ``en``: engines and models are per language, not per region."""
    return tag.split("-", maxsplit=1)[0].lower()


def check_pcm(pcm: bytes) -> None:
    """Refuse chunks that are not whole PCM16 samples (a caller bug that would shift every later sample)."""
    if len(pcm) % SAMPLE_WIDTH:
        raise ValueError(f"PCM16 audio needs an even number of bytes, got {len(pcm)}")


def clamp01(value: float) -> float:
    return min(1.0, max(0.0, value))
