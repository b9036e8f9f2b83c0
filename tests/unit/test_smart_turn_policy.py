"""The smart_turn end-of-turn policy: synthetic VAD events and model verdicts on the audio clock
(no model), then the pipeline with the real VAD and a scripted verdict."""

from __future__ import annotations

import numpy as np
import pytest

from tests.support.fakes import FakeEngine
from tests.support.speech import silence, synthesize
from workers.speech.smart_turn import WINDOW_SAMPLES
from workers.speech.vad import SAMPLE_RATE, VadEvent, VoiceActivity, load_model
from workers.transcriber.endpoint import Decision, EndpointConfig, TurnEndpoint
from workers.transcriber.pipeline import SessionPipeline

STEP_S = 0.02
EPS = 1e-9

SMART = EndpointConfig(
    silence_ms=500, pause_guard_ms=600, policy="smart_turn", smart_turn_min_silence_ms=150, smart_turn_max_wait_ms=2000
)
SILENCE = EndpointConfig(silence_ms=500, pause_guard_ms=600, policy="silence")

# (position at which it is delivered, a VAD event, a partial transcript, or a verdict: True complete)
Script = list[tuple[float, VadEvent | str | bool]]


def start(at: float) -> VadEvent:
    return VadEvent("start", at)


def end(at: float) -> VadEvent:
    return VadEvent("end", at)


def drive(endpoint: TurnEndpoint, script: Script, until_s: float) -> list[Decision]:
    """Deliver each entry at its position, poll every 20 ms frame (verdicts only when wanted, like the pipeline)."""
    pending = sorted(script, key=lambda item: item[0])
    decisions: list[Decision] = []
    for frame in range(1, round(until_s / STEP_S) + 1):
        position = round(frame * STEP_S, 6)
        while pending and pending[0][0] <= position + EPS:
            _, item = pending.pop(0)
            if isinstance(item, VadEvent):
                endpoint.on_vad(item)
            elif isinstance(item, bool):
                endpoint.on_turn_verdict(item, position)
            else:
                endpoint.on_partial(item)
        decision = endpoint.poll(position)
        if decision is not None:
            decisions.append(decision)
    return decisions


# VAD end dated 2.0 s (the end of speech), decided 160 ms later: the pipeline asks the model then.
TURN: Script = [(0.6, start(0.5)), (2.16, end(2.0))]


def test_complete_verdict_ends_the_turn_sooner_than_the_silence_window() -> None:
    [smart] = drive(TurnEndpoint(SMART), [*TURN, (2.16, True)], until_s=4.0)
    [plain] = drive(TurnEndpoint(SILENCE), [*TURN, (2.16, True)], until_s=4.0)
    assert smart.decided_at_s == pytest.approx(2.16)  # 150 ms had passed when the verdict came
    assert smart.speech_end_s == 2.0 and smart.start_s == 0.5 and not smart.forced
    assert smart.verdict is True
    assert plain.decided_at_s == pytest.approx(2.5)  # policy silence: the verdict is ignored
    assert plain.verdict is None


def test_complete_verdict_waits_for_the_short_minimum_silence() -> None:
    config = EndpointConfig(policy="smart_turn", smart_turn_min_silence_ms=300)
    [decision] = drive(TurnEndpoint(config), [*TURN, (2.16, True)], until_s=4.0)
    assert decision.decided_at_s == pytest.approx(2.3)


def test_incomplete_verdict_waits_up_to_the_cap_then_ends_the_turn() -> None:
    endpoint = TurnEndpoint(SMART)
    assert drive(endpoint, [*TURN, (2.16, False)], until_s=3.98) == []  # well past the 500 ms window
    [decision] = drive(endpoint, [], until_s=4.5)
    assert decision.decided_at_s == pytest.approx(4.0)  # 2.0 + the 2000 ms cap: the silence fallback
    assert decision.verdict is False and not decision.forced


def test_incomplete_verdict_bridges_a_long_pause_and_the_next_pause_is_judged_again() -> None:
    script: Script = [
        *TURN,
        (2.16, False),  # "I'd like to book a table for..." (1.2 s of silence)
        (3.3, start(3.2)),
        (4.46, end(4.3)),
        (4.46, True),
    ]
    [decision] = drive(TurnEndpoint(SMART), script, until_s=7.0)
    assert decision.start_s == 0.5 and decision.speech_end_s == 4.3
    assert decision.decided_at_s == pytest.approx(4.46)


def test_without_a_verdict_the_silence_window_still_ends_the_turn() -> None:
    [decision] = drive(TurnEndpoint(SMART), TURN, until_s=4.0)
    assert decision.decided_at_s == pytest.approx(2.5)
    assert decision.verdict is None


def test_a_late_complete_verdict_ends_the_turn_when_it_comes() -> None:
    [decision] = drive(TurnEndpoint(SMART), [*TURN, (2.3, True)], until_s=4.0)
    assert decision.decided_at_s == pytest.approx(2.3)


def test_complete_verdict_does_not_override_a_partial_that_clearly_goes_on() -> None:
    script: Script = [*TURN, (1.9, "I need milk, eggs and"), (2.16, True)]
    [decision] = drive(TurnEndpoint(SMART), script, until_s=5.0)
    assert decision.decided_at_s == pytest.approx(3.1)  # 500 ms window + 600 ms guard


def test_incomplete_verdict_never_shortens_a_longer_guarded_window() -> None:
    config = EndpointConfig(policy="smart_turn", smart_turn_max_wait_ms=800)
    script: Script = [*TURN, (1.9, "book a table for"), (2.16, False)]
    [decision] = drive(TurnEndpoint(config), script, until_s=5.0)
    assert decision.decided_at_s == pytest.approx(3.1)  # max(1100 ms guarded window, 800 ms cap)


def test_one_verdict_per_pause_and_none_while_speaking() -> None:
    endpoint = TurnEndpoint(SMART)
    assert not endpoint.wants_verdict  # no turn
    endpoint.on_vad(start(0.5))
    assert not endpoint.wants_verdict  # speaking
    endpoint.on_turn_verdict(True, 1.0)  # ignored
    endpoint.on_vad(end(2.0))
    assert endpoint.wants_verdict
    endpoint.on_turn_verdict(False, 2.16)
    assert not endpoint.wants_verdict
    endpoint.on_turn_verdict(True, 2.2)  # a second verdict on the same pause is ignored
    assert endpoint.poll(2.6) is None
    endpoint.on_vad(start(2.7))
    assert not endpoint.wants_verdict
    endpoint.on_vad(end(3.0))
    assert endpoint.wants_verdict  # the new pause is judged again
    assert not TurnEndpoint(SILENCE).wants_verdict


def test_a_verdict_dated_before_the_pause_is_ignored() -> None:
    endpoint = TurnEndpoint(SMART)
    endpoint.on_vad(start(0.5))
    endpoint.on_vad(end(2.0))
    endpoint.on_turn_verdict(True, 1.9)
    assert endpoint.wants_verdict


def test_max_utterance_still_forces_a_final_under_smart_turn() -> None:
    config = EndpointConfig(max_utterance_s=3.0, policy="smart_turn")
    [decision] = drive(TurnEndpoint(config), [(0.6, start(0.5))], until_s=4.0)
    assert decision.forced and decision.decided_at_s == pytest.approx(3.5)


def test_smart_turn_config_is_validated() -> None:
    with pytest.raises(ValueError):
        EndpointConfig(smart_turn_min_silence_ms=-1)
    with pytest.raises(ValueError):
        EndpointConfig(smart_turn_max_wait_ms=-1)
    with pytest.raises(ValueError):
        EndpointConfig(policy="model")  # type: ignore[arg-type]


# --- the pipeline: real VAD, fake recognizer, a scripted model ---------------------------------


class ScriptedModel:
    """Says ``verdicts`` in order, then ``then``; records how much audio it was given."""

    def __init__(self, *verdicts: bool, then: bool = True) -> None:
        self.verdicts, self.then = list(verdicts), then
        self.seen: list[int] = []  # samples per call

    def __call__(self, audio: np.ndarray) -> tuple[bool, float]:
        assert audio.dtype == np.float32 and audio.ndim == 1
        self.seen.append(len(audio))
        complete = self.verdicts.pop(0) if self.verdicts else self.then
        return complete, 0.9 if complete else 0.1


def run(pcm: bytes, config: EndpointConfig, model: ScriptedModel | None) -> list[tuple[str, float, float]]:
    """(kind, audio_at, decided_at) of the pipeline's outputs over 20 ms frames."""
    pipeline = SessionPipeline(
        VoiceActivity(load_model(onnx=True)), FakeEngine("one", "two").recognizer(), TurnEndpoint(config), 0.25, model
    )
    outputs: list[tuple[str, float, float]] = []
    for offset in range(0, len(pcm), 640):
        for out in pipeline.push(pcm[offset : offset + 640], 1_700_000_000.0):
            if out.kind in ("speech_stopped", "final"):
                outputs.append((out.kind, out.audio_at, out.decided_at))
    return outputs


@pytest.mark.slow
def test_pipeline_asks_the_model_at_speech_stopped_and_ends_a_complete_turn_at_once() -> None:
    pcm = synthesize("What is the weather like today?") + silence(1.5)
    model = ScriptedModel(True)
    smart = run(pcm, SMART, model)
    plain = run(pcm, SILENCE, None)
    assert [kind for kind, *_ in smart] == ["speech_stopped", "final"]
    assert len(model.seen) == 1
    stopped_frame = next(at for kind, at, _ in smart if kind == "speech_stopped")
    smart_final = next(decided for kind, _, decided in smart if kind == "final")
    plain_final = next(decided for kind, _, decided in plain if kind == "final")
    assert smart_final - stopped_frame <= 0.2  # same frame as the VAD's decision, or 150 ms after the end
    assert plain_final - smart_final >= 0.3
    # The model heard the turn from its pre-roll to the VAD's decision: speech + ~0.3 s + ~0.2 s.
    assert 1.5 * SAMPLE_RATE < model.seen[0] < WINDOW_SAMPLES


@pytest.mark.slow
def test_pipeline_keeps_only_the_last_8_s_for_the_model_and_waits_when_incomplete() -> None:
    long_turn = synthesize(
        "I would like to book a table for four people at around seven tonight, somewhere quiet near the river "
        "with a view of the bridge, if that is at all possible, and maybe a dessert menu too.",
        tail_silence_s=3.0,
    )
    model = ScriptedModel(then=False)
    outputs = run(long_turn, SMART, model)
    assert max(model.seen) == WINDOW_SAMPLES  # bounded: never more than 8 s
    finals = [(at, decided) for kind, at, decided in outputs if kind == "final"]
    assert len(finals) == 1
    speech_end, decided = finals[0]
    # The last pause was judged incomplete: the turn waited for the 2 s cap, not the 500 ms window.
    assert decided - speech_end == pytest.approx(2.0, abs=0.03)


@pytest.mark.slow
def test_speech_stopped_goes_out_before_the_model_runs_which_it_does_on_the_next_frame() -> None:
    pcm = synthesize("What is the weather like today?") + silence(1.0)
    model = ScriptedModel(True)
    pipeline = SessionPipeline(
        VoiceActivity(load_model(onnx=True)), FakeEngine("one", "two").recognizer(), TurnEndpoint(SMART), 0.25, model
    )
    pushes: list[tuple[set[str], int]] = []  # per push: the kinds it gave, the model's calls so far
    for offset in range(0, len(pcm), 640):
        kinds: set[str] = {out.kind for out in pipeline.push(pcm[offset : offset + 640], 1_700_000_000.0)}
        pushes.append((kinds, len(model.seen)))
    stopped = next(i for i, (kinds, _) in enumerate(pushes) if "speech_stopped" in kinds)
    assert pushes[stopped][1] == 0 and pushes[stopped + 1][1] == 1
    assert any("final" in kinds for kinds, _ in pushes[stopped + 1 :]) and len(model.seen) == 1
