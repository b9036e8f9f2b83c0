"""One session's audio, frame by frame: voice activity, streaming recognition, end of turn.

A plain synchronous class (no bus, no event loop): the worker runs it in a thread, one
session at a time per thread, and publishes what it returns. Positions are seconds on the
session's audio clock; ``captured_at`` stamps map them to wall-clock time, so the true end of
speech can be reported as a time the stats can compare with the other timestamps.

With an end-of-turn model (``turn_model``, Smart Turn v3.2 under ``turn_policy=smart_turn``),
the pipeline keeps the turn's audio (the pre-roll, then every frame; the last 8 s only, what the
model sees) and, on the frame where the VAD says speech stopped, runs the model on it and hands
the verdict to the endpoint. The call is synchronous: the pipeline already runs in a recognition
child process, off the worker's event loop.

Speculative final (``speculator``, an executor): with an engine that decodes the whole utterance
for its final (Whisper, :class:`~workers.speech.engines.base.Speculative`), the final recognition
starts on the audio so far as soon as the VAD says speech stopped, in the executor's thread, while
the end-of-turn model (in this thread) and the turn's silence run. When the turn ends with no
speech since, the final is that result, ready or nearly; when the user goes on, it is dropped
(counted as wasted on the turn's final) and the final is decoded from all the turn's audio as
before.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from typing import Literal

from contracts.binary import PCM_BYTES_PER_SAMPLE, PCM_SAMPLE_RATE
from contracts.envelope import new_id
from workers.speech.engines.base import Recognizer, Speculative, Transcript
from workers.speech.smart_turn import WINDOW_S, Float32Array, pcm16_to_float
from workers.speech.vad import VadEvent, VoiceActivity

from .endpoint import TurnEndpoint

PRE_ROLL_S = 0.3  # audio kept before a speech start so the recognizer hears the first syllable
TURN_AUDIO_BYTES = WINDOW_S * PCM_SAMPLE_RATE * PCM_BYTES_PER_SAMPLE  # what the end-of-turn model sees

#: (complete, probability) for a turn's audio so far (16 kHz float32): SmartTurn.predict.
TurnModel = Callable[[Float32Array], tuple[bool, float]]


@dataclass(frozen=True)
class Output:
    kind: Literal["speech_started", "speech_stopped", "partial", "final"]
    turn_id: str
    audio_at: float = 0.0
    wall_at: float = 0.0  # wall-clock time of audio_at (epoch s)
    text: str = ""
    confidence: float | None = None
    audio_start: float = 0.0
    forced: bool = False
    decided_at: float = 0.0  # final: the audio position at which the turn was declared over
    turn_probability: float | None = None  # final: the end-of-turn model's last probability, if it ran
    speculative: bool = False  # final: its text was recognised ahead, when the speech stopped
    wasted_speculations: int = 0  # final: recognitions ahead that the turn's later speech made useless


class SessionPipeline:
    def __init__(
        self,
        vad: VoiceActivity,
        recognizer: Recognizer,
        endpoint: TurnEndpoint,
        partial_interval_s: float = 0.25,
        turn_model: TurnModel | None = None,
        speculator: Executor | None = None,
    ) -> None:
        self.vad = vad
        self.recognizer = recognizer
        self.endpoint = endpoint
        self.partial_interval_s = partial_interval_s
        self.turn_model = turn_model
        # Where and of what the final is recognised ahead: only a recognizer that can, with an executor.
        self._ahead = (speculator, recognizer) if speculator and isinstance(recognizer, Speculative) else None
        self._speculation: Future[Transcript] | None = None  # the final of the audio up to speech stopped
        self._wasted = 0
        self._turn_audio: deque[bytes] = deque()  # the turn's audio, last TURN_AUDIO_BYTES (with turn_model)
        self._turn_audio_bytes = 0
        self._probability: float | None = None
        self.turn_id: str | None = None
        self._pre_roll: deque[bytes] = deque()
        self._pre_roll_bytes = 0
        self._last_partial_at = -1.0
        self._pending_partial: str | None = None
        self._clock: tuple[float, float] = (0.0, 0.0)  # (audio position, captured_at) of the latest frame

    @property
    def in_turn(self) -> bool:
        return self.turn_id is not None

    def wall_time(self, position_s: float) -> float:
        audio_at, captured_at = self._clock
        return captured_at + (position_s - audio_at)

    def push(self, pcm: bytes, captured_at: float) -> list[Output]:
        self._clock = (self.vad.position_s, captured_at)
        outputs: list[Output] = []
        for event in self.vad.push(pcm):
            outputs.extend(self._on_vad(event))
        if self.turn_id is not None:
            self._keep(pcm)
            outputs.extend(self._recognize(pcm))
        else:
            self._remember(pcm)
        stopped_now = any(output.kind == "speech_stopped" for output in outputs)
        if stopped_now and self._ahead is not None and self.turn_id is not None:
            executor, recognizer = self._ahead
            if (job := recognizer.speculate()) is not None:
                self._speculation = executor.submit(job)
        # The model (~0.3 s of CPU) runs on the next push: "speech stopped" goes out without waiting for it.
        if self.turn_model is not None and self.endpoint.wants_verdict and self._turn_audio and not stopped_now:
            complete, self._probability = self.turn_model(pcm16_to_float(b"".join(self._turn_audio)))
            self.endpoint.on_turn_verdict(complete, self.vad.position_s)
        decision = self.endpoint.poll(self.vad.position_s)
        if decision is not None and self.turn_id is not None:
            outputs.append(self._final(decision.start_s, decision.speech_end_s, decision.forced, decision.decided_at_s))
            if self.endpoint.in_turn:  # forced mid-speech: the speech goes on as a new turn
                self._open_turn()
        return outputs

    def flush(self) -> list[Output]:
        """The session ended: finish the turn in progress, if any."""
        if self.turn_id is None:
            return []
        output = self._final(0.0, self.vad.position_s, True, self.vad.position_s)
        self.endpoint.reset()
        return [output]

    def _on_vad(self, event: VadEvent) -> list[Output]:
        self.endpoint.on_vad(event)
        if event.kind == "start":
            if self._speculation is not None:  # the user goes on: the audio so far is not the turn
                self._speculation.cancel()  # if it has not started yet, it never costs the CPU
                self._speculation, self._wasted = None, self._wasted + 1
            outputs = []
            if self.turn_id is None:
                self._open_turn()
                self._replay_pre_roll()
            assert self.turn_id is not None
            outputs.append(Output("speech_started", self.turn_id, event.at_s, self.wall_time(event.at_s)))
            return outputs
        if self.turn_id is None:
            return []
        return [Output("speech_stopped", self.turn_id, event.at_s, self.wall_time(event.at_s))]

    def _open_turn(self) -> None:
        self.turn_id = new_id()
        self._last_partial_at = -1.0
        self._pending_partial = None
        self._turn_audio.clear()
        self._turn_audio_bytes = 0
        self._probability = None

    def _recognize(self, pcm: bytes) -> list[Output]:
        partial = self.recognizer.accept(pcm)
        if partial is not None:
            self.endpoint.on_partial(partial)
            self._pending_partial = partial
        now = self.vad.position_s
        if self._pending_partial is not None and now - self._last_partial_at >= self.partial_interval_s:
            assert self.turn_id is not None
            text, self._pending_partial, self._last_partial_at = self._pending_partial, None, now
            return [Output("partial", self.turn_id, now, self.wall_time(now), text=text)]
        return []

    def _transcript(self) -> tuple[Transcript, bool]:
        """The turn's final text, and whether it was recognised ahead (no speech since it started)."""
        speculation, self._speculation = self._speculation, None
        if speculation is not None:
            try:
                transcript = speculation.result()
            except Exception:  # the recognizer still holds the audio: decode it here instead
                return self.recognizer.final(), False
            self.recognizer.reset()
            return transcript, True
        return self.recognizer.final(), False

    def _final(self, start_s: float, end_s: float, forced: bool, decided_at: float) -> Output:
        assert self.turn_id is not None
        transcript, speculative = self._transcript()
        output = Output(
            "final",
            self.turn_id,
            end_s,
            self.wall_time(end_s),
            text=transcript.text.strip(),
            confidence=transcript.confidence,
            audio_start=start_s,
            forced=forced,
            decided_at=decided_at,
            turn_probability=self._probability,
            speculative=speculative,
            wasted_speculations=self._wasted,
        )
        self._wasted = 0
        self.turn_id = None
        self._turn_audio.clear()
        self._turn_audio_bytes = 0
        return output

    def _keep(self, pcm: bytes) -> None:
        """The turn's audio for the end-of-turn model: the last TURN_AUDIO_BYTES."""
        if self.turn_model is None:
            return
        self._turn_audio.append(pcm)
        self._turn_audio_bytes += len(pcm)
        while self._turn_audio_bytes - len(self._turn_audio[0]) >= TURN_AUDIO_BYTES:
            self._turn_audio_bytes -= len(self._turn_audio.popleft())

    def _remember(self, pcm: bytes) -> None:
        self._pre_roll.append(pcm)
        self._pre_roll_bytes += len(pcm)
        limit = int(PRE_ROLL_S * PCM_SAMPLE_RATE) * PCM_BYTES_PER_SAMPLE
        while self._pre_roll_bytes - len(self._pre_roll[0]) >= limit:
            self._pre_roll_bytes -= len(self._pre_roll.popleft())

    def _replay_pre_roll(self) -> None:
        for chunk in self._pre_roll:
            self.recognizer.accept(chunk)
            self._keep(chunk)
        self._pre_roll.clear()
        self._pre_roll_bytes = 0
