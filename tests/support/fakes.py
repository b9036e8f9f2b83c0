"""Fake providers for tests: one real subclass of each provider base, deterministic, no model, no I/O.

- :class:`FakeEngine` (speech-to-text): each utterance's final is the next scripted text; a
  streaming one gives partials that grow by one word per ``word_s`` of audio pushed.
- :class:`FakeTTS` (text-to-speech): a 440 Hz tone of ``seconds_per_char`` per character of each
  unit, in ``chunk_s`` pieces, optionally ``delay_s`` apart.
- :class:`FakeChatModel` (LLM): scripted chunks (default: the echo reply of ``EchoChatModel``),
  optionally ``delay_s`` apart, optionally failing after them.

Each records what it was asked (``spoken``, ``requests``). ``tests/support/harness.py`` puts the
TTS and LLM fakes in a worker in place of its own providers.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Sequence

import numpy as np

from contracts.events import TokenUsage
from workers.orchestrator.llm import ChatMessage, Chunk, EchoChatModel, LLMError, ToolDefinition
from workers.speech.engines.base import (
    SAMPLE_RATE,
    SAMPLE_WIDTH,
    Engine,
    STTCapabilities,
    Transcript,
    check_pcm,
)
from workers.voice.providers.base import Audio, ProviderError, TTSCapabilities, TTSProvider


class FakeEngine(Engine):
    """Speech-to-text that hears the scripted utterances, in order, whatever the audio (no audio: "")."""

    name = "fake"

    def __init__(self, *utterances: str, streaming: bool = True, word_s: float = 0.2) -> None:
        # Not streaming, it stands in for whisper: nothing until final(), which decodes it all.
        super().__init__(
            STTCapabilities(streaming=streaming, whole_utterance=not streaming, languages=frozenset({"en"}))
        )
        self.utterances = deque(utterances)  # finals not given yet; recognizers share them, in order
        self.word_bytes = round(word_s * SAMPLE_RATE) * SAMPLE_WIDTH  # audio per word of a partial

    def recognizer(self) -> FakeRecognizer:
        return FakeRecognizer(self)


class FakeRecognizer:
    def __init__(self, engine: FakeEngine) -> None:
        self._engine = engine
        self._pushed = 0  # bytes since the last final or reset
        self._partial = ""

    def accept(self, pcm: bytes) -> str | None:
        check_pcm(pcm)
        self._pushed += len(pcm)
        if not self._engine.capabilities.streaming or not self._engine.utterances:
            return None
        partial = " ".join(self._engine.utterances[0].split()[: self._pushed // self._engine.word_bytes])
        if partial == self._partial:
            return None
        self._partial = partial
        return partial

    def final(self) -> Transcript:
        pushed = self._pushed
        self.reset()
        if not pushed or not self._engine.utterances:
            return Transcript(text="")
        return Transcript(text=self._engine.utterances.popleft(), confidence=1.0)

    def reset(self) -> None:
        self._pushed = 0
        self._partial = ""


class FakeTTS(TTSProvider):
    """A tone whose length is proportional to the text: frame counts and durations are predictable.

    ``name``: the provider it stands in for (the voice worker's default is piper).
    """

    def __init__(
        self,
        name: str = "piper",
        *,
        voice: str = "fake",
        seconds_per_char: float = 0.005,
        sample_rate: int = 16_000,
        chunk_s: float = 0.05,
        delay_s: float = 0.0,
        scripts: frozenset[str] | None = None,
    ) -> None:
        super().__init__(
            TTSCapabilities(streaming=True, sample_rate=sample_rate, voices=frozenset({voice}), scripts=scripts), voice
        )
        self.name = name
        self.seconds_per_char = seconds_per_char
        self.chunk_s = chunk_s
        self.delay_s = delay_s
        self.spoken: list[str] = []  # every unit synthesised, in order

    def duration_s(self, text: str) -> float:
        """How long the audio of ``text`` is."""
        return self._samples(text) / self._rate

    async def synthesize(self, text: str, voice: str) -> AsyncIterator[Audio]:
        if not self.has_voice(voice):
            raise ProviderError("tts_unknown_voice", f"{self.name} (fake) has no voice {voice!r}")
        self.spoken.append(text)
        samples, chunk = self._samples(text), max(1, round(self.chunk_s * self._rate))
        for start in range(0, samples, chunk):
            await asyncio.sleep(self.delay_s)  # also a point where a cancel lands, as with a real engine
            t = np.arange(start, min(start + chunk, samples)) / self._rate
            yield Audio((np.sin(2 * np.pi * 440.0 * t) * 8_000).astype("<i2").tobytes(), self._rate)

    @property
    def _rate(self) -> int:
        assert self.capabilities.sample_rate is not None
        return self.capabilities.sample_rate

    def _samples(self, text: str) -> int:
        return round(len(text) * self.seconds_per_char * self._rate)


class FakeChatModel(EchoChatModel):
    """Every reply is ``chunks`` (None: the echo reply), each after ``delay_s``; then ``error`` is raised if given."""

    name = "fake"

    def __init__(
        self, chunks: Sequence[str] | None = None, *, delay_s: float = 0.0, error: LLMError | None = None
    ) -> None:
        super().__init__()
        self.chunks = chunks
        self.delay_s = delay_s
        self.error = error
        self.requests: list[list[ChatMessage]] = []  # the messages of every stream() call

    async def stream(
        self,
        messages: list[ChatMessage],
        model: str | None,
        max_tokens: int,
        tools: list[ToolDefinition] | None = None,
        required_tool: str | None = None,
        allowed: frozenset[str] | None = None,
    ) -> AsyncIterator[Chunk]:
        self.requests.append(messages)
        chunks = super().stream(messages, model, max_tokens) if self.chunks is None else self._scripted(self.chunks)
        async for chunk in chunks:
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
            yield chunk
        if self.error is not None:
            raise self.error

    @staticmethod
    async def _scripted(texts: Sequence[str]) -> AsyncIterator[Chunk]:
        for text in texts:
            yield Chunk(text)
        yield Chunk(usage=TokenUsage(completion_tokens=len(texts)), finish_reason="stop")
