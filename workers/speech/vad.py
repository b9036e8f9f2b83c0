"""Voice activity per session: silero-vad over a stream of PCM16 16 kHz mono chunks.

One :class:`SileroModel` is loaded per process (:func:`load_model`) and shared by every
session. The network itself is used as a pure function ``(window, state) -> (probability,
state)``: each :class:`VoiceActivity` owns its recurrent state (LSTM ``h``/``c``, 2x1x128
floats) and the 64-sample context that silero prepends to every 512-sample window, so sessions
cannot leak into each other and the model is never mutated after loading. That makes calls
thread-safe with one session per thread at a time.

Why not the stock wrappers: silero's ``VADIterator`` and the JIT module's ``forward`` keep the
state *inside the model object* (``_state``/``_context`` attributes), so a shared model mixes
sessions, and a model per session costs 50-140 ms and ~7 MB (JIT) or ~10 MB (ONNX) each
(measured, see ``bench/vad_endpoint.py``). The JIT module exposes its 16 kHz network as ``_model`` with the
signature ``forward(x_with_context, state) -> (prob, state)``; the ONNX file takes the state
as an input and returns it. Both give the same probabilities as the stateful wrappers
(bit-identical for JIT, within 1e-7 for ONNX).

Timestamps are sample counts of the session's stream turned into seconds, not wall time:

* ``start`` is the first sample of the first 512-sample window whose probability reaches
  ``threshold``, minus ``speech_pad_ms``; it is *emitted* once the speech has lasted
  ``min_speech_ms`` (windows that stay above ``threshold - 0.15``).
* ``end`` is the first sample of the first window whose probability falls under
  ``threshold - 0.15`` (silero's hysteresis), plus ``speech_pad_ms``; it is *emitted* once the
  silence has lasted ``min_silence_ms`` from that sample.

Measured on piper speech (bench/vad_endpoint.py, defaults): starts land 43 ms before to 26 ms
after the true start, ends 55-120 ms after the true end (silero's probability stays high for
~2 windows after the last sound; the 30 ms pad adds to that). The "end" event is *decided*
185-255 ms (median 231) after the true end with ``min_silence_ms=160``.

Cost (2-core machine, one thread): Torch JIT ~0.48 ms per window, ~0.33 ms per 20 ms frame;
ONNX ~0.21 ms per window, ~0.15 ms per frame, and an ONNX-only process never imports torch
(0.17 s and ~70 MB to load instead of ~1.7 s and ~240 MB). A session's own state is ~1 KB.
"""

from __future__ import annotations

import importlib.util
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    import torch

SAMPLE_RATE = 16_000
WINDOW = 512  # samples per silero window at 16 kHz (32 ms)
CONTEXT = 64  # samples of the previous window that silero prepends to each window
STATE_SHAPE = (2, 1, 128)  # LSTM (h, c) x batch x hidden

Float32Array = npt.NDArray[np.float32]


@dataclass(frozen=True)
class VadEvent:
    """Speech started or stopped, at a position of the session's audio stream."""

    kind: Literal["start", "end"]
    at_s: float  # seconds from the start of the stream (for "end": the end of speech, not the decision time)


class SileroModel:
    """A loaded silero-vad network used as a pure function; shared by all sessions.

    Subclasses implement :meth:`step` for one backend. Nothing in the object changes after
    construction, so concurrent calls from several threads (each with its own state) are safe.
    """

    backend: Literal["jit", "onnx"]

    def initial_state(self) -> Float32Array:
        """A zero recurrent state for a new session (equal to silero's own reset state)."""
        return np.zeros(STATE_SHAPE, dtype=np.float32)

    def step(self, window: Float32Array, state: Float32Array) -> tuple[float, Float32Array]:
        """Speech probability of one window.

        ``window`` is ``(1, CONTEXT + WINDOW)`` float32 in [-1, 1): the last 64 samples of the
        previous window followed by 512 new samples. Returns the probability and the new state;
        ``state`` itself is not modified.
        """
        raise NotImplementedError


class _JitSilero(SileroModel):
    backend = "jit"

    def __init__(self, net: Any) -> None:
        import torch

        self._torch = torch
        self._net = net  # silero's inner 16 kHz network: forward(x, state) -> (prob, state)

    def step(self, window: Float32Array, state: Float32Array) -> tuple[float, Float32Array]:
        torch = self._torch
        # Grad mode is per thread: set it here, not once at load time.
        with torch.inference_mode():
            out, new_state = self._net(torch.from_numpy(window), torch.from_numpy(state))
            return float(out.item()), _as_float32(new_state)


class _OnnxSilero(SileroModel):
    backend = "onnx"

    def __init__(self, path: Path) -> None:
        import onnxruntime  # type: ignore[import-untyped,unused-ignore]

        opts = onnxruntime.SessionOptions()
        opts.inter_op_num_threads = 1
        opts.intra_op_num_threads = 1
        self._session = onnxruntime.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
        self._sr = np.array(SAMPLE_RATE, dtype=np.int64)

    def step(self, window: Float32Array, state: Float32Array) -> tuple[float, Float32Array]:
        # InferenceSession.run is thread-safe; the state goes in and comes out explicitly.
        prob, new_state = self._session.run(None, {"input": window, "state": state, "sr": self._sr})
        return float(prob[0, 0]), np.asarray(new_state, dtype=np.float32)


def _as_float32(tensor: torch.Tensor) -> Float32Array:
    return np.asarray(tensor.numpy(), dtype=np.float32)


def _silero_data_dir() -> Path:
    # find_spec on a top-level package locates it without importing it: silero_vad's
    # __init__ imports torch (~3 s, ~200 MB), which the ONNX backend does not need.
    spec = importlib.util.find_spec("silero_vad")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("silero-vad is not installed (pip install 'switchboard[speech]')")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def _load_jit() -> SileroModel:
    # Importing silero_vad sets torch.set_num_threads(1) process-wide: right for many small
    # calls from a thread pool.
    from silero_vad import load_silero_vad  # type: ignore[import-untyped,unused-ignore]

    with warnings.catch_warnings():
        # torch 2.13 deprecates torch.jit.load in favour of torch.export; silero ships TorchScript.
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.load.*deprecated", category=DeprecationWarning)
        wrapper = load_silero_vad(onnx=False)
    net = getattr(wrapper, "_model", None)
    if net is None:
        raise RuntimeError("this silero-vad JIT model has no stateless '_model' network; use load_model(onnx=True)")
    return _JitSilero(net)


def _load_onnx() -> SileroModel:
    return _OnnxSilero(_silero_data_dir() / "silero_vad.onnx")


_MODELS: dict[bool, SileroModel] = {}
_MODELS_LOCK = threading.Lock()


def load_model(onnx: bool = False) -> SileroModel:
    """The process-wide silero model (Torch JIT by default, ONNX Runtime with ``onnx=True``).

    Loaded on first call, then the same object for every caller. The first inferences are
    run here (TorchScript optimises its graph on the first calls) so no session pays for it.
    """
    with _MODELS_LOCK:
        model = _MODELS.get(onnx)
        if model is None:
            model = _load_onnx() if onnx else _load_jit()
            state = model.initial_state()
            silence = np.zeros((1, CONTEXT + WINDOW), dtype=np.float32)
            for _ in range(3):
                _, state = model.step(silence, state)
            _MODELS[onnx] = model
        return model


class VoiceActivity:
    """Per-session silero-vad state over a stream of arbitrary-size PCM16 16 kHz chunks.

    Not thread-safe by itself: one session is pushed by one thread at a time (different
    sessions may run in parallel on the shared model).
    """

    def __init__(
        self,
        model: SileroModel,
        threshold: float = 0.5,
        min_silence_ms: int = 160,
        speech_pad_ms: int = 30,
        min_speech_ms: int = 64,
    ) -> None:
        """
        threshold: probability at which a window is speech; it stops being speech under
            ``threshold - 0.15`` (silero's hysteresis).
        min_silence_ms: silence after speech before "end" is emitted. Short on purpose: it is
            the "speech stopped" / barge-in signal; the end of the *turn* waits longer
            (:mod:`workers.transcriber.endpoint`), so pauses inside a sentence are bridged
            there. 160 ms gives "end" ~230 ms (185-255) after the true end of speech
            (Pipecat's default analyser: ~270 ms); natural comma pauses then show up as
            end/start pairs, which is what a barge-in signal wants.
        speech_pad_ms: margin added before each start and after each end.
        min_speech_ms: how long speech must last before "start" is emitted (rejects
            one-window clicks; delays the event, not its timestamp).
        """
        if not 0.0 < threshold < 1.0:
            raise ValueError("threshold must be in (0, 1)")
        if min(min_silence_ms, speech_pad_ms, min_speech_ms) < 0:
            raise ValueError("durations must be >= 0")
        self._model = model
        self._threshold = threshold
        self._neg_threshold = max(threshold - 0.15, 0.01)
        self._min_silence = SAMPLE_RATE * min_silence_ms // 1000
        self._pad = SAMPLE_RATE * speech_pad_ms // 1000
        self._min_speech = SAMPLE_RATE * min_speech_ms // 1000
        self._init_stream_state()
        self._total = 0  # samples pushed since creation (the stream position)

    def _init_stream_state(self) -> None:
        self._state = self._model.initial_state()
        self._context = np.zeros(CONTEXT, dtype=np.float32)
        self._pending = np.zeros(0, dtype=np.float32)  # samples not yet in a full window
        self._odd_byte = b""  # half of a sample split across two pushes
        self._speaking = False
        self._candidate: int | None = None  # sample where unconfirmed speech began
        self._silence_from: int | None = None  # sample where silence began while speaking
        self._last_end = 0  # sample of the last emitted end (a start never goes before it)
        self._probability = 0.0

    def push(self, pcm: bytes) -> list[VadEvent]:
        """Feed little-endian PCM16 mono 16 kHz audio; returns the events this push decided."""
        data = self._odd_byte + pcm
        usable = len(data) - len(data) % 2
        self._odd_byte = data[usable:]
        if usable == 0:
            return []
        fresh = np.frombuffer(data[:usable], dtype="<i2").astype(np.float32) / 32768.0
        self._total += fresh.size
        buf = np.concatenate((self._pending, fresh)) if self._pending.size else fresh
        # Absolute sample index of buf[0]: everything pushed minus what is still buffered.
        origin = self._total - buf.size
        events: list[VadEvent] = []
        offset = 0
        while buf.size - offset >= WINDOW:
            frame = buf[offset : offset + WINDOW]
            window = np.concatenate((self._context, frame))[np.newaxis, :]
            self._probability, self._state = self._model.step(window, self._state)
            self._context = frame[-CONTEXT:].copy()
            event = self._advance(origin + offset, self._probability)
            if event is not None:
                events.append(event)
            offset += WINDOW
        self._pending = buf[offset:].copy()
        return events

    def _advance(self, start: int, prob: float) -> VadEvent | None:
        end = start + WINDOW
        if not self._speaking:
            if self._candidate is None:
                if prob >= self._threshold:
                    self._candidate = start
            elif prob < self._neg_threshold:
                self._candidate = None
            if self._candidate is not None and end - self._candidate >= self._min_speech:
                at = max(self._candidate - self._pad, self._last_end, 0)
                self._speaking = True
                self._candidate = None
                self._silence_from = None
                return VadEvent("start", at / SAMPLE_RATE)
            return None
        if prob >= self._threshold:
            self._silence_from = None
        elif prob < self._neg_threshold:
            if self._silence_from is None:
                self._silence_from = start
            if end - self._silence_from >= self._min_silence:
                at = min(self._silence_from + self._pad, end)
                self._speaking = False
                self._silence_from = None
                self._last_end = at
                return VadEvent("end", at / SAMPLE_RATE)
        return None

    @property
    def speaking(self) -> bool:
        """True between an emitted "start" and the following "end"."""
        return self._speaking

    @property
    def position_s(self) -> float:
        """Seconds of audio pushed so far (including samples waiting for a full window)."""
        return self._total / SAMPLE_RATE

    @property
    def probability(self) -> float:
        """Speech probability of the last window processed (0.0 before the first)."""
        return self._probability

    def reset(self) -> None:
        """Forget the model state, buffered samples and any speech in progress (no "end" is
        emitted for it). The stream position keeps counting: later events stay on the
        session's timeline."""
        self._init_stream_state()
        self._last_end = self._total
