"""TurnEndpoint: synthetic VAD event sequences on the audio clock, then real speech end to end."""

from __future__ import annotations

import numpy as np
import pytest

from tests.support.speech import silence, synthesize
from workers.speech.vad import SAMPLE_RATE, VadEvent, VoiceActivity, load_model
from workers.transcriber.endpoint import Decision, EndpointConfig, TurnEndpoint, continues

STEP_S = 0.02  # polled after each 20 ms frame
EPS = 1e-9

# A script entry: (position at which it is delivered, a VAD event or a partial transcript).
Script = list[tuple[float, VadEvent | str]]


def start(at: float) -> VadEvent:
    return VadEvent("start", at)


def end(at: float) -> VadEvent:
    return VadEvent("end", at)


def drive(endpoint: TurnEndpoint, script: Script, until_s: float, from_s: float = 0.0) -> list[Decision]:
    """Deliver each entry at its position (VAD events are decided after their at_s), poll every frame."""
    pending = sorted(script, key=lambda item: item[0])
    decisions: list[Decision] = []
    for frame in range(round(from_s / STEP_S) + 1, round(until_s / STEP_S) + 1):
        position = round(frame * STEP_S, 6)
        while pending and pending[0][0] <= position + EPS:
            _, item = pending.pop(0)
            if isinstance(item, VadEvent):
                endpoint.on_vad(item)
            else:
                endpoint.on_partial(item)
        decision = endpoint.poll(position)
        if decision is not None:
            decisions.append(decision)
    return decisions


CONFIG = EndpointConfig(silence_ms=500, max_utterance_s=30.0, pause_guard_ms=600)


def test_defaults_are_the_measured_ones() -> None:
    assert EndpointConfig() == EndpointConfig(silence_ms=500, max_utterance_s=30.0, pause_guard_ms=600)


def test_final_comes_when_the_silence_window_is_over_not_before() -> None:
    decisions = drive(TurnEndpoint(CONFIG), [(0.6, start(0.5)), (2.2, end(2.0))], until_s=4.0)
    assert len(decisions) == 1
    [decision] = decisions
    assert decision.kind == "final"
    assert not decision.forced
    assert decision.speech_end_s == 2.0
    assert decision.start_s == 0.5
    assert decision.decided_at_s == pytest.approx(2.5)  # 2.0 + 500 ms, the first frame that reaches it


def test_pause_shorter_than_the_window_does_not_split_the_turn() -> None:
    # The VAD says "end" then "start" again (a 400 ms pause inside a sentence).
    script: Script = [(0.6, start(0.5)), (1.7, end(1.5)), (2.0, start(1.9)), (3.2, end(3.0))]
    decisions = drive(TurnEndpoint(CONFIG), script, until_s=5.0)
    assert [(d.start_s, d.speech_end_s) for d in decisions] == [(0.5, 3.0)]


def test_pause_longer_than_the_window_ends_the_turn() -> None:
    script: Script = [(0.6, start(0.5)), (1.7, end(1.5)), (2.2, start(2.1)), (3.2, end(3.0))]
    decisions = drive(TurnEndpoint(CONFIG), script, until_s=5.0)
    assert [(d.start_s, d.speech_end_s) for d in decisions] == [(0.5, 1.5), (2.1, 3.0)]


def test_guard_extends_the_wait_when_the_partial_ends_with_and() -> None:
    base: Script = [(0.6, start(0.5)), (1.7, end(1.5))]
    plain = drive(TurnEndpoint(CONFIG), [*base, (1.8, "I need milk and eggs.")], until_s=4.0)
    guarded = drive(TurnEndpoint(CONFIG), [*base, (1.8, "I need milk, eggs and")], until_s=4.0)
    assert plain[0].decided_at_s == pytest.approx(2.0)
    assert guarded[0].decided_at_s == pytest.approx(2.6)  # 1.5 + 0.5 + 0.6
    assert guarded[0].speech_end_s == 1.5


def test_guard_bridges_a_hesitation_that_the_plain_window_would_split() -> None:
    # "... and" then 800 ms of silence then the rest of the sentence.
    script: Script = [
        (0.6, start(0.5)),
        (1.7, end(1.5)),
        (1.75, "I need to buy milk, eggs and"),
        (2.4, start(2.3)),
        (3.5, "I need to buy milk, eggs and some bread."),
        (3.7, end(3.5)),
    ]
    with_guard = drive(TurnEndpoint(CONFIG), script, until_s=6.0)
    without = drive(TurnEndpoint(EndpointConfig(silence_ms=500, pause_guard_ms=0)), script, until_s=6.0)
    assert [d.speech_end_s for d in with_guard] == [3.5]
    assert with_guard[0].decided_at_s == pytest.approx(4.0)  # the complete sentence gets no guard
    assert [d.speech_end_s for d in without] == [1.5, 3.5]


def test_a_partial_arriving_late_still_extends_a_running_window() -> None:
    # The recogniser's partial lands 300 ms after the VAD end, inside the 500 ms window.
    script: Script = [(0.6, start(0.5)), (1.7, end(1.5)), (1.8, "send a message to")]
    assert drive(TurnEndpoint(CONFIG), script, until_s=4.0)[0].decided_at_s == pytest.approx(2.6)


@pytest.mark.parametrize(
    "partial",
    [
        "I want to go to the store and",
        "send it to",
        "book a table for the",
        "we should leave early because",
        "I'd like a table for four,",
        "  AND  ",
        "so um",
        "I think that —",
        "call my",
    ],
)
def test_partials_that_continue(partial: str) -> None:
    assert continues(partial)


@pytest.mark.parametrize(
    "partial",
    ["", "I want to go to the store.", "what's the plan?", "turn it on", "play the band", "call her", "and?"],
)
def test_partials_that_may_end(partial: str) -> None:
    assert not continues(partial)


def test_max_utterance_forces_a_final_and_the_rest_is_the_next_turn() -> None:
    config = EndpointConfig(silence_ms=500, max_utterance_s=5.0, pause_guard_ms=600)
    script: Script = [(0.6, start(0.5)), (7.2, end(7.0))]
    decisions = drive(TurnEndpoint(config), script, until_s=9.0)
    assert len(decisions) == 2
    forced, rest = decisions
    assert forced.forced
    assert forced.decided_at_s == pytest.approx(5.5)
    assert forced.speech_end_s == pytest.approx(5.5)  # cut mid-speech: the cut is the end
    assert not rest.forced
    assert rest.start_s == pytest.approx(5.5)
    assert rest.speech_end_s == 7.0
    assert rest.decided_at_s == pytest.approx(7.5)


def test_max_utterance_counts_pauses_inside_the_turn() -> None:
    config = EndpointConfig(silence_ms=500, max_utterance_s=3.0, pause_guard_ms=0)
    # Speech with 300 ms pauses never leaves a 500 ms silence; 3 s after the start it is cut.
    script: Script = []
    for k in range(6):
        script += [(0.1 + k + 0.1, start(0.1 + k)), (0.8 + k + 0.2, end(0.8 + k))]
    decisions = drive(TurnEndpoint(config), script, until_s=4.0)
    assert decisions[0].forced
    assert decisions[0].decided_at_s == pytest.approx(3.1)


def test_no_decision_without_speech_and_only_one_per_turn() -> None:
    endpoint = TurnEndpoint(CONFIG)
    assert drive(endpoint, [], until_s=5.0) == []
    assert not endpoint.in_turn
    decisions = drive(endpoint, [(0.6, start(0.5)), (1.2, end(1.0))], until_s=10.0)
    assert len(decisions) == 1
    assert not endpoint.in_turn
    assert endpoint.poll(20.0) is None


def test_no_decision_while_speaking() -> None:
    endpoint = TurnEndpoint(CONFIG)
    assert drive(endpoint, [(0.6, start(0.5))], until_s=20.0) == []
    assert endpoint.in_turn


def test_partial_of_a_finished_turn_does_not_guard_the_next_one() -> None:
    endpoint = TurnEndpoint(CONFIG)
    first = drive(endpoint, [(0.6, start(0.5)), (1.2, end(1.0)), (1.3, "and")], until_s=3.0)
    assert first[0].decided_at_s == pytest.approx(2.1)  # guarded
    assert endpoint.partial == ""
    endpoint.on_partial("to")  # a late partial of the finished turn
    # Next turn on the same clock: its start clears the stale partial, so no guard.
    second = drive(endpoint, [(3.1, start(3.0)), (4.2, end(4.0))], until_s=6.0, from_s=3.0)
    assert [d.decided_at_s for d in second] == [pytest.approx(4.5)]


def test_config_is_validated() -> None:
    with pytest.raises(ValueError):
        EndpointConfig(silence_ms=-1)
    with pytest.raises(ValueError):
        EndpointConfig(max_utterance_s=0)


# --- real speech: short VAD silence for "speech stopped", longer turn window ----------------------

VOICED = 0.01 * 32768


def voiced(text: str) -> bytes:
    """``text`` spoken by piper, cut to its first and last voiced sample (pauses are then exact)."""
    pcm = synthesize(text, lead_silence_s=0.0, tail_silence_s=0.0)
    samples = np.frombuffer(pcm, dtype="<i2")
    loud = np.flatnonzero(np.abs(samples.astype(np.int32)) > VOICED)
    return samples[loud[0] : loud[-1] + 1].tobytes()


def seconds(pcm: bytes) -> float:
    return len(pcm) / 2 / SAMPLE_RATE


def run_turns(pcm: bytes, config: EndpointConfig, partials: list[tuple[float, str]]) -> tuple[int, list[Decision]]:
    """Push 20 ms frames through the real VAD and the endpoint; returns (VAD ends, decisions)."""
    vad = VoiceActivity(load_model())
    endpoint = TurnEndpoint(config)
    vad_ends = 0
    decisions: list[Decision] = []
    todo = sorted(partials)
    for offset in range(0, len(pcm), 640):
        for event in vad.push(pcm[offset : offset + 640]):
            vad_ends += event.kind == "end"
            endpoint.on_vad(event)
        while todo and todo[0][0] <= vad.position_s:
            endpoint.on_partial(todo.pop(0)[1])
        decision = endpoint.poll(vad.position_s)
        if decision is not None:
            decisions.append(decision)
    return vad_ends, decisions


@pytest.mark.slow
def test_real_speech_pause_inside_a_sentence_is_one_turn() -> None:
    first, second = voiced("I'd like to book a table for four,"), voiced("at around seven tonight.")
    lead = silence(0.7)
    pcm = lead + first + silence(0.45) + second + silence(1.5)
    true_end = seconds(lead + first + silence(0.45) + second)

    vad_ends, decisions = run_turns(pcm, EndpointConfig(), partials=[])

    assert vad_ends >= 2  # the VAD reports the pause ("speech stopped", then started again)
    assert len(decisions) == 1  # the turn is not split there
    assert not decisions[0].forced
    assert abs(decisions[0].speech_end_s - true_end) <= 0.15
    assert 0.5 <= decisions[0].decided_at_s - true_end <= 0.8


@pytest.mark.slow
def test_real_speech_hesitation_after_and_is_bridged_only_by_the_guard() -> None:
    head, tail = "I need to buy milk, eggs and", "some bread for the weekend."
    first, second = voiced(head), voiced(tail)
    lead = silence(0.7)
    pcm = lead + first + silence(0.8) + second + silence(2.0)
    # The recogniser's partial "... and" arrives 250 ms after the words.
    partials = [(seconds(lead + first) + 0.25, head), (seconds(pcm) - 1.75, f"{head} {tail}")]

    _, guarded = run_turns(pcm, EndpointConfig(), partials)
    _, unguarded = run_turns(pcm, EndpointConfig(pause_guard_ms=0), partials)

    assert len(guarded) == 1
    assert len(unguarded) == 2
