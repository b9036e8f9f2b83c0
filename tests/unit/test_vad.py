"""VoiceActivity on real silero-vad and real (piper) speech."""

from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from tests.support.speech import silence, synthesize
from workers.speech.vad import SAMPLE_RATE, SileroModel, VadEvent, VoiceActivity, load_model

pytestmark = pytest.mark.slow

FRAME_BYTES = SAMPLE_RATE // 50 * 2  # 20 ms of PCM16
TOLERANCE_S = 0.15
VOICED = 0.01 * 32768  # a sample above this is speech, for the "true" boundaries

SENTENCE = "Please book a table for two at eight tonight."
OTHER = "What is the weather like in Paris tomorrow?"


@pytest.fixture(scope="module")
def model() -> SileroModel:
    return load_model()


def voiced_runs(pcm: bytes, min_gap_s: float = 0.5) -> list[tuple[float, float]]:
    """True speech runs: first/last sample above VOICED, runs split by >= min_gap_s of quiet."""
    samples = np.abs(np.frombuffer(pcm, dtype="<i2").astype(np.int32))
    loud = np.flatnonzero(samples > VOICED)
    assert loud.size, "no speech in the audio"
    breaks = np.flatnonzero(np.diff(loud) > min_gap_s * SAMPLE_RATE)
    starts = [loud[0], *loud[breaks + 1]]
    ends = [*loud[breaks], loud[-1]]
    return [(s / SAMPLE_RATE, (e + 1) / SAMPLE_RATE) for s, e in zip(starts, ends, strict=True)]


def push_all(vad: VoiceActivity, pcm: bytes, chunk: int = FRAME_BYTES) -> list[VadEvent]:
    events: list[VadEvent] = []
    for offset in range(0, len(pcm), chunk):
        events.extend(vad.push(pcm[offset : offset + chunk]))
    return events


def kinds(events: list[VadEvent]) -> list[str]:
    return [e.kind for e in events]


def test_load_model_is_shared() -> None:
    assert load_model() is load_model()
    assert load_model().backend == "jit"


def test_start_and_end_within_150_ms_of_true_boundaries(model: SileroModel) -> None:
    pcm = synthesize(SENTENCE, lead_silence_s=0.8, tail_silence_s=1.0)
    [(true_start, true_end)] = voiced_runs(pcm)
    vad = VoiceActivity(model)
    events = push_all(vad, pcm)

    assert kinds(events) == ["start", "end"]
    assert abs(events[0].at_s - true_start) <= TOLERANCE_S
    # "end" is where the speech ended, not when the VAD decided it (~min_silence later).
    assert abs(events[1].at_s - true_end) <= TOLERANCE_S
    assert not vad.speaking
    assert vad.position_s == pytest.approx(len(pcm) / 2 / SAMPLE_RATE)


def test_end_is_decided_after_min_silence_but_dated_at_the_speech_end(model: SileroModel) -> None:
    pcm = synthesize(SENTENCE, lead_silence_s=0.5, tail_silence_s=1.0)
    vad = VoiceActivity(model, min_silence_ms=300)
    decided: list[tuple[VadEvent, float]] = []
    for offset in range(0, len(pcm), FRAME_BYTES):
        decided.extend((e, vad.position_s) for e in vad.push(pcm[offset : offset + FRAME_BYTES]))
    end, decided_at = decided[-1]
    assert end.kind == "end"
    assert decided_at - end.at_s >= 0.3 - 0.03  # minus the 30 ms pad
    assert decided_at - end.at_s < 0.3 + 0.1


def test_silence_and_low_noise_give_no_events(model: SileroModel) -> None:
    noise = np.random.default_rng(1).normal(0, 100, 3 * SAMPLE_RATE)  # about -50 dBFS
    pcm = silence(3.0) + noise.astype("<i2").tobytes()
    vad = VoiceActivity(model)
    assert push_all(vad, pcm) == []
    assert not vad.speaking
    assert vad.position_s == pytest.approx(6.0)
    assert vad.probability < 0.5


def test_two_utterances_apart_give_two_start_end_pairs(model: SileroModel) -> None:
    pcm = (
        synthesize(SENTENCE, lead_silence_s=0.5, tail_silence_s=0.0)
        + silence(1.5)
        + synthesize(OTHER, lead_silence_s=0.0, tail_silence_s=1.0)
    )
    runs = voiced_runs(pcm, min_gap_s=1.0)
    assert len(runs) == 2
    events = push_all(VoiceActivity(model), pcm)

    assert kinds(events) == ["start", "end", "start", "end"]
    for (true_start, true_end), start, end in zip(runs, events[0::2], events[1::2], strict=True):
        assert abs(start.at_s - true_start) <= TOLERANCE_S
        assert abs(end.at_s - true_end) <= TOLERANCE_S


def test_min_silence_decides_whether_a_short_pause_ends_speech(model: SileroModel) -> None:
    # speech.py puts 0.25 s between sentences; piper adds its own quiet edges.
    pcm = synthesize("Turn on the lights. Then lock the door.", lead_silence_s=0.5, tail_silence_s=1.0)
    short = push_all(VoiceActivity(model, min_silence_ms=100), pcm)
    long = push_all(VoiceActivity(model, min_silence_ms=700), pcm)
    assert kinds(short) == ["start", "end", "start", "end"]
    assert kinds(long) == ["start", "end"]
    assert long[1].at_s == pytest.approx(short[3].at_s)


def test_chunk_sizes_do_not_change_the_events(model: SileroModel) -> None:
    pcm = synthesize(SENTENCE, lead_silence_s=0.6, tail_silence_s=0.8)
    reference = push_all(VoiceActivity(model), pcm, chunk=len(pcm))
    assert kinds(reference) == ["start", "end"]

    rng = random.Random(3)
    vad = VoiceActivity(model)
    events: list[VadEvent] = []
    offset = 0
    while offset < len(pcm):
        size = rng.randint(1, 2001)  # odd sizes split samples across pushes
        events.extend(vad.push(pcm[offset : offset + size]))
        offset += size
    assert events == reference
    assert push_all(VoiceActivity(model), pcm, chunk=FRAME_BYTES) == reference
    assert vad.position_s == pytest.approx(len(pcm) / 2 / SAMPLE_RATE)


def run_with_probabilities(vad: VoiceActivity, pcm: bytes) -> tuple[list[VadEvent], list[float]]:
    events: list[VadEvent] = []
    probabilities: list[float] = []
    for offset in range(0, len(pcm), FRAME_BYTES):
        events.extend(vad.push(pcm[offset : offset + FRAME_BYTES]))
        probabilities.append(vad.probability)
    return events, probabilities


def test_interleaved_sessions_on_one_model_match_each_alone(model: SileroModel) -> None:
    # Speech in one session while the other is silent, and the other way round: any state
    # shared through the model would move the other session's probabilities and events.
    a = synthesize(SENTENCE, lead_silence_s=0.3, tail_silence_s=3.0)
    b = synthesize(OTHER, lead_silence_s=2.5, tail_silence_s=0.5)
    n = min(len(a), len(b))
    a, b = a[:n], b[:n]
    alone_a = run_with_probabilities(VoiceActivity(model), a)
    alone_b = run_with_probabilities(VoiceActivity(model), b)
    assert kinds(alone_a[0]) == ["start", "end"]
    assert kinds(alone_b[0]) == ["start", "end"]
    assert alone_a[0] != alone_b[0]

    vad_a, vad_b = VoiceActivity(model), VoiceActivity(model)
    events_a: list[VadEvent] = []
    events_b: list[VadEvent] = []
    probs_a: list[float] = []
    probs_b: list[float] = []
    for offset in range(0, n, FRAME_BYTES):
        events_a.extend(vad_a.push(a[offset : offset + FRAME_BYTES]))
        probs_a.append(vad_a.probability)
        events_b.extend(vad_b.push(b[offset : offset + FRAME_BYTES]))
        probs_b.append(vad_b.probability)

    assert (events_a, probs_a) == alone_a
    assert (events_b, probs_b) == alone_b


def test_sessions_in_a_thread_pool_match_each_alone(model: SileroModel) -> None:
    clips = [
        synthesize(SENTENCE, lead_silence_s=0.3 + 0.4 * i, tail_silence_s=0.8)
        if i % 2
        else synthesize(OTHER, lead_silence_s=0.3 + 0.4 * i, tail_silence_s=0.8)
        for i in range(4)
    ]
    alone = [run_with_probabilities(VoiceActivity(model), clip) for clip in clips]
    with ThreadPoolExecutor(max_workers=2) as pool:
        pooled = list(pool.map(lambda clip: run_with_probabilities(VoiceActivity(model), clip), clips))
    assert pooled == alone


def test_onnx_backend_agrees_with_jit(model: SileroModel) -> None:
    onnx = load_model(onnx=True)
    assert onnx is load_model(onnx=True)
    assert onnx.backend == "onnx"
    pcm = synthesize(SENTENCE, lead_silence_s=0.8, tail_silence_s=1.0)
    jit_events = push_all(VoiceActivity(model), pcm)
    onnx_events = push_all(VoiceActivity(onnx), pcm)
    assert kinds(onnx_events) == kinds(jit_events) == ["start", "end"]
    for j, o in zip(jit_events, onnx_events, strict=True):
        assert abs(j.at_s - o.at_s) <= 0.032  # at most one window apart


def test_reset_drops_speech_but_keeps_the_stream_clock(model: SileroModel) -> None:
    pcm = synthesize(SENTENCE, lead_silence_s=0.5, tail_silence_s=0.0)
    vad = VoiceActivity(model)
    half = len(pcm) // 2 // 2 * 2
    assert kinds(push_all(vad, pcm[:half])) == ["start"]
    assert vad.speaking
    vad.reset()
    assert not vad.speaking
    assert vad.position_s == pytest.approx(half / 2 / SAMPLE_RATE)
    assert push_all(vad, silence(1.0)) == []  # no "end" for the speech that was dropped
    again = push_all(vad, synthesize(SENTENCE, lead_silence_s=0.2, tail_silence_s=1.0))
    assert kinds(again) == ["start", "end"]
    assert again[0].at_s >= half / 2 / SAMPLE_RATE + 1.0


def test_rejects_bad_parameters(model: SileroModel) -> None:
    with pytest.raises(ValueError):
        VoiceActivity(model, threshold=1.5)
    with pytest.raises(ValueError):
        VoiceActivity(model, min_silence_ms=-1)
