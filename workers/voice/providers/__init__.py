"""Text-to-speech providers behind one interface (base.TTSProvider); which ones this process offers."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .base import TTSProvider
from .espeak import EspeakProvider, find_espeak
from .openai_tts import OpenAIProvider
from .piper_tts import PiperProvider


def available(
    pool: ThreadPoolExecutor,
    piper_voices_dir: Path | None,
    openai_base_url: str,
    openai_api_key: str | None,
    openai_model: str,
    openai_timeout_s: float,
) -> dict[str, TTSProvider]:
    """piper always (it may lack a voice: start() says so); espeak when its binary is on PATH; openai with a key."""
    providers: list[TTSProvider] = [PiperProvider(pool, piper_voices_dir)]
    if (exe := find_espeak()) is not None:
        providers.append(EspeakProvider(exe))
    if openai_api_key:
        providers.append(OpenAIProvider(openai_base_url, openai_api_key, openai_model, openai_timeout_s))
    return {p.name: p for p in providers}
