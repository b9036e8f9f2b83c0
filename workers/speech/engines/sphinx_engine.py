"""PocketSphinx streaming recognizer with the en-us model inside the pocketsphinx wheel.

Thread safety and sharing: a PocketSphinx ``Decoder`` owns its acoustic model, language model and
dictionary (about 95 MB and 0.5 s to build each); pocketsphinx offers no way to share them between
decoders, and a decoder is one utterance stream. So the engine builds one decoder at load time
(which also checks the model) and keeps a pool of idle decoders: ``recognizer()`` takes one from
the pool (and builds a new one only when every decoder is in use), and the decoder goes back to
the pool when its recognizer is garbage-collected. A decoder is only ever used by one recognizer.
So ``recognizer()`` is cheap while a decoder is idle, and costs one decoder build when more
recognizers are alive at once than ever before: keep one recognizer per session, drop it after.

GIL: pocketsphinx's Python binding keeps the GIL while it decodes (``process_raw`` and
``end_utt`` have no ``nogil``), so the worker's thread pool gives no parallelism for this engine
and every call pauses the event loop for its duration: a few ms per 20 ms frame, but ``end_utt``
(the second decoding passes that make the final) holds it for 0.1-0.4 s. ``second_pass=False``
skips those passes (faster, GIL-friendlier finals, somewhat lower accuracy: see
bench/stt_engines.py).
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from workers.runtime.assets import package_dir

from .base import Engine, EngineError, STTCapabilities, Transcript, check_pcm, clamp01, primary_language

INSTALL_HINT = "`pip install pocketsphinx` (its wheel carries the en-us model)"
# Words of the hypothesis that are no words: sentence marks, silence and filler/noise units.
_NON_WORDS = frozenset({"<s>", "</s>", "<sil>"})


def bundled_model_dir() -> Path:
    folder = package_dir("pocketsphinx")
    if folder is None:
        raise EngineError(f"the pocketsphinx engine needs the pocketsphinx package: {INSTALL_HINT}")
    return folder / "model" / "en-us"


def model_files(model_dir: Path) -> dict[str, str]:
    """Config entries for a model folder laid out like pocketsphinx's own ``model/en-us``:
    an acoustic model sub-folder (with ``mdef``), a ``*.lm.bin`` (or ``*.lm``/``*.arpa``) and a ``*.dict``."""
    if not model_dir.is_dir():
        raise EngineError(f"pocketsphinx model directory {str(model_dir)!r} does not exist: {INSTALL_HINT}")
    hmm = sorted(p for p in model_dir.iterdir() if (p / "mdef").is_file())
    lms = sorted(
        p for pattern in ("*.lm.bin", "*.lm", "*.arpa") for p in model_dir.glob(pattern) if "-phone." not in p.name
    )
    dicts = sorted(model_dir.glob("*.dict"))
    missing = [
        what
        for what, found in (("acoustic model folder", hmm), ("language model", lms), ("dictionary", dicts))
        if not found
    ]
    if missing:
        raise EngineError(
            f"{str(model_dir)!r} is not a pocketsphinx model directory (missing {', '.join(missing)}): {INSTALL_HINT}"
        )
    return {"hmm": str(hmm[0]), "lm": str(lms[0]), "dict": str(dicts[0])}


class _DecoderPool:
    """Idle decoders, shared by the recognizers of one engine; thread-safe."""

    def __init__(self, build: Any) -> None:
        self._build = build
        self._idle: list[_Slot] = []
        self._lock = threading.Lock()
        self.built = 0

    def take(self) -> _Slot:
        with self._lock:
            if self._idle:
                return self._idle.pop()
        slot = _Slot(self._build())  # outside the lock: 0.5 s
        with self._lock:
            self.built += 1
        return slot

    def give_back(self, slot: _Slot) -> None:
        with self._lock:
            self._idle.append(slot)


class _Slot:
    """A decoder and whether it is inside an utterance (start_utt called, end_utt not yet)."""

    def __init__(self, decoder: Any) -> None:
        self.decoder = decoder
        self.in_utt = False

    def end(self) -> None:
        if self.in_utt:
            self.in_utt = False
            self.decoder.end_utt()


class PocketSphinxEngine(Engine):
    name = "pocketsphinx"

    def __init__(
        self,
        model_path: str | Path | None = None,
        language: str = "en",
        *,
        second_pass: bool = True,
        options: Mapping[str, Any] | None = None,
    ) -> None:
        if model_path is None and primary_language(language) != "en":
            raise EngineError(
                f"pocketsphinx only bundles an en-us model; for language {language!r} pass the path of a "
                "pocketsphinx model directory (acoustic model folder, *.lm.bin and *.dict)"
            )
        try:
            from pocketsphinx import Config, Decoder
        except ImportError as exc:  # pragma: no cover - depends on the installation
            raise EngineError(f"the pocketsphinx engine needs the pocketsphinx package: {INSTALL_HINT}") from exc
        # The first pass decodes as audio arrives; end_utt's second passes only refine it.
        super().__init__(
            STTCapabilities(streaming=True, whole_utterance=False, languages=frozenset({primary_language(language)}))
        )
        self.model_path = Path(model_path) if model_path is not None else bundled_model_dir()
        settings: dict[str, Any] = {**model_files(self.model_path), "loglevel": "FATAL"}
        if not second_pass:
            settings.update(fwdflat=False, bestpath=False)
        settings.update(options or {})
        self._settings = settings

        def build() -> Any:
            try:
                return Decoder(Config(**settings))
            except (RuntimeError, ValueError) as exc:
                raise EngineError(f"pocketsphinx could not load {settings} ({exc}): {INSTALL_HINT}") from exc

        self._pool = _DecoderPool(build)
        self._pool.give_back(self._pool.take())  # load (and check) the model now, not at the first session

    @property
    def decoders_built(self) -> int:
        """How many decoders exist: the largest number of recognizers that were alive at once."""
        return self._pool.built

    def recognizer(self) -> PocketSphinxRecognizer:
        slot = self._pool.take()
        recognizer = PocketSphinxRecognizer(slot)
        weakref.finalize(recognizer, _release, self._pool, slot).atexit = False
        return recognizer


def _release(pool: _DecoderPool, slot: _Slot) -> None:
    # Runs in whichever thread drops the recognizer (maybe the event loop's): no decoding here. A
    # decoder given back mid-utterance is closed by its next recognizer, on that one's first call.
    pool.give_back(slot)


class PocketSphinxRecognizer:
    def __init__(self, slot: _Slot) -> None:
        self._slot = slot
        self._decoder = slot.decoder
        self._partial = ""
        self._posteriors = bool(self._decoder.config["bestpath"])
        self._claimed = False  # False until the first call: see _claim

    def _claim(self) -> None:
        """Close an utterance a previous owner of the decoder left open (in the caller's thread)."""
        if not self._claimed:
            self._claimed = True
            self._slot.end()

    def accept(self, pcm: bytes) -> str | None:
        check_pcm(pcm)
        self._claim()
        if not pcm:
            return None
        if not self._slot.in_utt:
            self._decoder.start_utt()
            self._slot.in_utt = True
        self._decoder.process_raw(pcm, False, False)
        hyp = self._decoder.hyp()
        partial = hyp.hypstr if hyp is not None else ""
        if partial == self._partial:
            return None
        self._partial = partial
        return str(partial)

    def final(self) -> Transcript:
        self._claim()
        self._partial = ""
        if not self._slot.in_utt:
            return Transcript(text="")
        self._slot.end()
        hyp = self._decoder.hyp()
        if hyp is None or not hyp.hypstr:
            return Transcript(text="")
        return Transcript(text=str(hyp.hypstr), confidence=self._confidence())

    def reset(self) -> None:
        self._claimed = True
        self._partial = ""
        self._slot.end()  # pocketsphinx cannot abandon an utterance: end it (0.1-0.8 s) and ignore its result

    def _confidence(self) -> float | None:
        """Mean posterior probability of the recognised words (only the best-path pass computes them)."""
        if not self._posteriors:
            return None
        probs = [
            float(seg.prob)
            for seg in self._decoder.seg()
            if seg.word not in _NON_WORDS and not seg.word.startswith(("[", "++"))
        ]
        return clamp01(sum(probs) / len(probs)) if probs else None
