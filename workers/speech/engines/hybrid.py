"""Streaming partials from one engine, the final from a more accurate one.

The embedded English default pairs pocketsphinx (partials after ~0.23 s, WER ~0.11-0.72) with
Whisper-base (no partials, WER ~0.02-0.18, final ~0.55 s): the user sees words as they speak
and the turn gets Whisper's text. Measurements: docs/speech.md.
"""

from __future__ import annotations

from collections.abc import Callable

from .base import Engine, Recognizer, Speculative, STTCapabilities, Transcript


class HybridRecognizer:
    def __init__(self, streaming: Recognizer, accurate: Recognizer) -> None:
        self._streaming = streaming
        self._accurate = accurate
        self._streaming_stale = False

    def accept(self, pcm: bytes) -> str | None:
        if self._streaming_stale:
            # Closing the streaming engine's utterance costs ~0.1-0.3 s: paid here, at the next
            # utterance's first frame, not on the path to the final.
            self._streaming.reset()
            self._streaming_stale = False
        self._accurate.accept(pcm)
        return self._streaming.accept(pcm)

    def final(self) -> Transcript:
        self._streaming_stale = True
        return self._accurate.final()

    def reset(self) -> None:
        self._streaming_stale = True
        self._accurate.reset()

    def speculate(self) -> Callable[[], Transcript] | None:
        return self._accurate.speculate() if isinstance(self._accurate, Speculative) else None


class HybridEngine(Engine):
    def __init__(self, streaming: Engine, accurate: Engine) -> None:
        # Partials are the streaming engine's; the final (the turn's text, and its language) the accurate one's.
        super().__init__(
            STTCapabilities(
                streaming=streaming.capabilities.streaming,
                whole_utterance=accurate.capabilities.whole_utterance,
                languages=accurate.capabilities.languages,
                sample_rate=accurate.capabilities.sample_rate,
            )
        )
        self.name = f"{streaming.name}+{accurate.name}"
        self._streaming = streaming
        self._accurate = accurate

    def recognizer(self) -> Recognizer:
        return HybridRecognizer(self._streaming.recognizer(), self._accurate.recognizer())
