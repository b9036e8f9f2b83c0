"""OpenAI text-to-speech through the ``openai`` package: streamed raw PCM (24 kHz, 16-bit, mono).

One request per unit (``response_format="pcm"``), audio yielded as the HTTP body arrives.
Cancelling closes the response. HTTP errors become ProviderError codes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import openai

from .base import Audio, ProviderError, TTSCapabilities, TTSProvider

SAMPLE_RATE = 24_000  # what response_format="pcm" always returns
VOICES = frozenset(
    {"alloy", "ash", "ballad", "cedar", "coral", "echo", "fable", "marin", "nova", "onyx", "sage", "shimmer", "verse"}
)
_CHUNK = 4_800  # 100 ms


class OpenAIProvider(TTSProvider):
    name = "openai"

    def __init__(self, base_url: str, api_key: str, model: str, timeout_s: float, default_voice: str = "alloy") -> None:
        super().__init__(TTSCapabilities(streaming=True, sample_rate=SAMPLE_RATE, voices=VOICES), default_voice)
        self._client = openai.AsyncOpenAI(base_url=base_url, api_key=api_key, timeout=timeout_s, max_retries=0)
        self._model = model

    async def close(self) -> None:
        await self._client.close()

    async def synthesize(self, text: str, voice: str) -> AsyncIterator[Audio]:
        speech = self._client.audio.speech.with_streaming_response.create(
            model=self._model, voice=voice, input=text, response_format="pcm"
        )
        carry = b""
        try:
            async with speech as response:
                async for chunk in response.iter_bytes(_CHUNK):
                    pcm, carry = _whole_samples(carry + chunk)
                    yield Audio(pcm, SAMPLE_RATE)
        except openai.APIStatusError as error:
            raise ProviderError(
                "tts_rejected" if error.status_code < 500 else "tts_failed", f"OpenAI TTS answered {error.status_code}"
            ) from None
        except openai.APIError as error:
            raise ProviderError("tts_failed", f"OpenAI TTS failed: {type(error).__name__}") from None
        # A body cut mid-stream raises the SDK's HTTP client's own error: SpeechStream reports it as tts_failed.


def _whole_samples(data: bytes) -> tuple[bytes, bytes]:
    cut = len(data) - len(data) % 2
    return data[:cut], data[cut:]
