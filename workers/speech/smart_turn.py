"""Smart Turn v3.2: an audio model that says whether the user's turn sounds finished.

Where it comes from: Smart Turn v3.2 is Daily's end-of-turn classifier (a Whisper-tiny encoder
with a linear head, 8.7 MB, int8, CPU build). It ships inside the PyPI wheel
``pipecat-ai==1.14.0`` (BSD-2-Clause, Copyright (c) 2024-2026 Daily) as
``pipecat/audio/turn/smart_turn/data/smart-turn-v3.2-cpu.onnx``; ``infra/setup.sh``
(``python -m ops.models ensure smart-turn``) downloads that wheel with ``pip download --no-deps``,
extracts only this file into the model cache and checks the SHA-256 pinned there. The framework
itself is never installed.

The way the model is run follows pipecat's own analyser in the same wheel
(``pipecat/audio/turn/smart_turn/local_smart_turn_v3.py`` and ``_whisper_features.py``,
BSD-2-Clause; the feature code there is in turn derived from Hugging Face ``transformers``'
``WhisperFeatureExtractor``, Apache-2.0):

* 16 kHz mono float32 audio of the turn so far, the last 8 s only; shorter audio is padded
  with zeros *at the beginning* to exactly 8 s (128,000 samples);
* zero-mean unit-variance normalisation of those 8 s, then Whisper's log-mel spectrogram
  (n_fft 400, hop 160, 80 Slaney mel bands, periodic Hann window, reflect-padded centre frames,
  log10 with a 1e-10 floor, the last frame dropped, clamped to max - 8, then (x + 4) / 4): the
  same as ``WhisperFeatureExtractor(chunk_length=8)`` with ``do_normalize=True``, shape (80, 800);
* input ``input_features`` of shape (1, 80, 800); the first output is the probability that the
  turn is complete (already a sigmoid); complete when it is above 0.5.

onnxruntime runs it with one intra-op thread by default (``SB_SMART_TURN_THREADS``): the model
shares two cores with VAD, recognition, TTS and the LLM. Measured latency: docs/benchmarks.md
("Smart Turn v3.2"), ``bench/smart_turn_bench.py``.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

SAMPLE_RATE = 16_000
WINDOW_S = 8  # the model sees the last 8 s of the turn
WINDOW_SAMPLES = WINDOW_S * SAMPLE_RATE
THRESHOLD = 0.5  # probability above which the turn is complete (pipecat's)

# The file in the model cache; ops/models.py (SMART_TURN) pins its wheel, size and SHA-256.
MODEL_FILE = "smart-turn-v3.2-cpu.onnx"

_N_FFT = 400
_HOP = 160
_N_MELS = 80
_MEL_FLOOR = 1e-10
_NORM_EPS = 1e-7

Float32Array = npt.NDArray[np.float32]
Float64Array = npt.NDArray[np.float64]


def default_path() -> Path:
    """The model in the cache setup fills (``SB_MODELS_DIR``, default ``~/.cache/switchboard/models``)."""
    return Path(os.environ.get("SB_MODELS_DIR") or Path.home() / ".cache" / "switchboard" / "models") / MODEL_FILE


# ------------------------------------------------------------------ Whisper log-mel front end


def _hz_to_mel(hz: Float64Array) -> Float64Array:
    """Slaney mel scale: linear below 1 kHz, logarithmic above."""
    mel = 3.0 * hz / 200.0
    log_region = hz >= 1000.0
    mel[log_region] = 15.0 + np.log(hz[log_region] / 1000.0) * (27.0 / np.log(6.4))
    return mel


def _mel_to_hz(mel: Float64Array) -> Float64Array:
    hz = 200.0 * mel / 3.0
    log_region = mel >= 15.0
    hz[log_region] = 1000.0 * np.exp((np.log(6.4) / 27.0) * (mel[log_region] - 15.0))
    return hz


def _mel_filters() -> Float64Array:
    """(80, 201) Slaney-normalised triangular filters from 0 Hz to 8 kHz, like Whisper's."""
    fft_hz = np.linspace(0.0, SAMPLE_RATE // 2, _N_FFT // 2 + 1)
    low, high = _hz_to_mel(np.array([0.0, SAMPLE_RATE / 2.0]))
    edges_mel = np.linspace(float(low), float(high), _N_MELS + 2)
    edges_hz = _mel_to_hz(edges_mel)
    widths = np.diff(edges_hz)
    slopes = edges_hz[np.newaxis, :] - fft_hz[:, np.newaxis]
    down = -slopes[:, :-2] / widths[:-1]
    up = slopes[:, 2:] / widths[1:]
    filters = np.maximum(0.0, np.minimum(down, up))
    filters *= 2.0 / (edges_hz[2 : _N_MELS + 2] - edges_hz[:_N_MELS])
    return np.ascontiguousarray(filters.T)


_FILTERS = _mel_filters()
_HANN = np.hanning(_N_FFT + 1)[:-1]  # periodic, like torch.hann_window


def log_mel(audio: Float32Array) -> Float32Array:
    """Whisper's normalised log-mel features of exactly 8 s of 16 kHz audio: (80, 800) float32."""
    if audio.shape != (WINDOW_SAMPLES,):
        raise ValueError(f"expected {WINDOW_SAMPLES} samples, got shape {audio.shape}")
    x = audio.astype(np.float32)
    x = (x - x.mean()) / np.sqrt(x.var() + _NORM_EPS)  # in float32, as the reference does
    padded = np.pad(x.astype(np.float64), _N_FFT // 2, mode="reflect")
    frames = np.lib.stride_tricks.sliding_window_view(padded, _N_FFT)[::_HOP]
    power = np.abs(np.fft.rfft(frames * _HANN, axis=-1)) ** 2  # (801, 201)
    mel = np.log10(np.maximum(_MEL_FLOOR, _FILTERS @ power.T))[:, :-1]  # (80, 800)
    mel = np.maximum(mel, mel.max() - 8.0)
    features: Float32Array = ((mel + 4.0) / 4.0).astype(np.float32)
    return features


def last_window(audio: Float32Array) -> Float32Array:
    """The last 8 s of ``audio``, or all of it zero-padded at the beginning to 8 s."""
    if len(audio) >= WINDOW_SAMPLES:
        return np.ascontiguousarray(audio[-WINDOW_SAMPLES:], dtype=np.float32)
    return np.pad(audio.astype(np.float32), (WINDOW_SAMPLES - len(audio), 0))


def pcm16_to_float(pcm: bytes) -> Float32Array:
    """PCM16 LE bytes as float32 in [-1, 1) (divided by 32768, as pipecat does)."""
    return np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0


# ------------------------------------------------------------------ the model


class SmartTurn:
    """The loaded model: one ONNX session per process, shared by every session of the process.

    ``predict`` is a pure function of its input; onnxruntime's ``run`` may be called from
    several threads at once, but the transcriber calls it from one thread per process.
    """

    def __init__(self, path: str | Path | None = None, threads: int = 1) -> None:
        import onnxruntime as ort

        self.path = Path(path) if path is not None else default_path()
        if not self.path.is_file():
            raise FileNotFoundError(
                f"{self.path} is missing: run `bash infra/setup.sh` "
                "(or `.venv/bin/python -m ops.models ensure smart-turn`)"
            )
        options = ort.SessionOptions()
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.inter_op_num_threads = 1
        options.intra_op_num_threads = threads
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self._session: Any = ort.InferenceSession(
            str(self.path), sess_options=options, providers=["CPUExecutionProvider"]
        )
        self._input = self._session.get_inputs()[0].name  # "input_features"
        self._lock = threading.Lock()

    def probability(self, audio: Float32Array) -> float:
        """Probability that the turn whose audio (16 kHz float32, any length) ends here is complete."""
        features = log_mel(last_window(np.asarray(audio, dtype=np.float32)))[np.newaxis]
        with self._lock:
            outputs = self._session.run(None, {self._input: features})
        return float(np.asarray(outputs[0]).reshape(-1)[0])

    def predict(self, audio: Float32Array) -> tuple[bool, float]:
        """(complete, probability) for the turn so far; complete when the probability is above 0.5."""
        probability = self.probability(audio)
        return probability > THRESHOLD, probability


_loaded: dict[tuple[Path, int], SmartTurn] = {}
_loaded_lock = threading.Lock()


def load(path: str | Path | None = None, threads: int = 1) -> SmartTurn:
    """The model at ``path`` (default: the setup's cache), loaded once per process and thread count."""
    key = (Path(path) if path is not None else default_path(), threads)
    with _loaded_lock:
        model = _loaded.get(key)
        if model is None:
            model = _loaded[key] = SmartTurn(key[0], threads)
        return model
