"""The speculative final (workers/transcriber/pipeline.py): recognised ahead at speech stopped, used
when no speech follows, dropped and counted when the user goes on. Real VAD on synthetic speech; a
whole-utterance recognizer whose text says how much audio it decoded."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.support.speech import silence, synthesize
from workers.speech.engines.base import Speculative, Transcript
from workers.speech.vad import VoiceActivity, load_model
from workers.transcriber.endpoint import EndpointConfig, TurnEndpoint
from workers.transcriber.pipeline import Output, SessionPipeline

pytestmark = pytest.mark.slow  # piper speech, silero-vad

FRAME = 640  # 20 ms of PCM16 at 16 kHz


class WholeUtterance:
    """Like Whisper: nothing until the final, which 'decodes' everything pushed (its text: the byte count)."""

    def __init__(self, failing: bool = False) -> None:
        self.pushed = 0
        self.finals = 0
        self.speculations: list[int] = []  # bytes each speculation covered
        self.failing = failing

    def accept(self, pcm: bytes) -> str | None:
        self.pushed += len(pcm)
        return None

    def final(self) -> Transcript:
        self.finals += 1
        text, self.pushed = f"{self.pushed} bytes", 0
        return Transcript(text)

    def reset(self) -> None:
        self.pushed = 0

    def speculate(self) -> Callable[[], Transcript] | None:
        covered = self.pushed
        self.speculations.append(covered)

        def job() -> Transcript:
            if self.failing:
                raise RuntimeError("the engine failed")
            return Transcript(f"{covered} bytes")

        return job


@pytest.fixture
def speculator() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(1) as executor:
        yield executor


def finals(pipeline: SessionPipeline, pcm: bytes) -> list[Output]:
    outputs = [out for offset in range(0, len(pcm), FRAME) for out in pipeline.push(pcm[offset : offset + FRAME], 0.0)]
    return [out for out in outputs if out.kind == "final"]


def pipeline(
    recognizer: WholeUtterance, speculator: ThreadPoolExecutor | None, silence_ms: int = 500
) -> SessionPipeline:
    endpoint = TurnEndpoint(EndpointConfig(silence_ms=silence_ms, pause_guard_ms=0, policy="silence"))
    return SessionPipeline(VoiceActivity(load_model(onnx=True)), recognizer, endpoint, 0.25, None, speculator)


def test_the_final_is_recognised_when_the_speech_stops_and_used_when_none_follows(
    speculator: ThreadPoolExecutor,
) -> None:
    recognizer = WholeUtterance()
    assert isinstance(recognizer, Speculative)
    [final] = finals(pipeline(recognizer, speculator), synthesize("What is the weather like today?") + silence(1.0))
    assert final.speculative and final.wasted_speculations == 0
    assert recognizer.finals == 0  # nothing left to decode when the turn ended
    [covered] = recognizer.speculations
    assert final.text == f"{covered} bytes"  # the audio up to speech stopped, not the silence after it


def test_speech_after_the_stop_drops_the_speculation_and_the_final_hears_everything(
    speculator: ThreadPoolExecutor,
) -> None:
    recognizer = WholeUtterance()
    # A 400 ms pause: the VAD says stopped (after 160 ms), the turn's 1 s window does not end the turn.
    speech = synthesize("I would like", tail_silence_s=0.4) + synthesize("a cup of tea", lead_silence_s=0.0)
    [final] = finals(pipeline(recognizer, speculator, silence_ms=1000), speech + silence(1.5))
    assert len(recognizer.speculations) == 2 and final.wasted_speculations == 1
    assert final.speculative and final.text == f"{recognizer.speculations[-1]} bytes"
    assert recognizer.speculations[-1] > recognizer.speculations[0]  # the second covers both phrases


def test_a_failed_speculation_falls_back_to_the_recognizers_own_final(speculator: ThreadPoolExecutor) -> None:
    recognizer = WholeUtterance(failing=True)
    [final] = finals(pipeline(recognizer, speculator), synthesize("Turn on the lights.") + silence(1.0))
    assert not final.speculative and recognizer.finals == 1
    assert int(final.text.split()[0]) > recognizer.speculations[0]  # all the turn's audio, silence included


def test_without_a_speculator_the_final_is_decoded_when_the_turn_ends() -> None:
    recognizer = WholeUtterance()
    [final] = finals(pipeline(recognizer, None), synthesize("Turn on the lights.") + silence(1.0))
    assert not final.speculative and recognizer.finals == 1 and recognizer.speculations == []
