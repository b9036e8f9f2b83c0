"""One session's audio, frame by frame: voice activity, streaming recognition, end of turn.

A plain synchronous class (no bus, no event loop): the worker runs it in a thread, one
session at a time per thread, and publishes what it returns. Positions are seconds on the
session's audio clock; ``captured_at`` stamps map them to wall-clock time, so the true end of
speech can be reported as a time the stats can compare with the other timestamps.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Literal

from contracts.binary import PCM_BYTES_PER_SAMPLE, PCM_SAMPLE_RATE
from contracts.envelope import new_id
from workers.speech.engines.base import Recognizer
from workers.speech.vad import VadEvent, VoiceActivity

from .endpoint import TurnEndpoint

PRE_ROLL_S = 0.3  # audio kept before a speech start so the recognizer hears the first syllable


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


class SessionPipeline:
    def __init__(
        self, vad: VoiceActivity, recognizer: Recognizer, endpoint: TurnEndpoint, partial_interval_s: float = 0.25
    ) -> None:
        self.vad = vad
        self.recognizer = recognizer
        self.endpoint = endpoint
        self.partial_interval_s = partial_interval_s
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
            outputs.extend(self._recognize(pcm))
        else:
            self._remember(pcm)
        decision = self.endpoint.poll(self.vad.position_s)
        if decision is not None and self.turn_id is not None:
            outputs.append(self._final(decision.start_s, decision.speech_end_s, decision.forced))
            if self.endpoint.in_turn:  # forced mid-speech: the speech goes on as a new turn
                self._open_turn()
        return outputs

    def flush(self) -> list[Output]:
        """The session ended: finish the turn in progress, if any."""
        if self.turn_id is None:
            return []
        output = self._final(0.0, self.vad.position_s, True)
        self.endpoint.reset()
        return [output]

    def _on_vad(self, event: VadEvent) -> list[Output]:
        self.endpoint.on_vad(event)
        if event.kind == "start":
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

    def _final(self, start_s: float, end_s: float, forced: bool) -> Output:
        assert self.turn_id is not None
        transcript = self.recognizer.final()
        output = Output(
            "final",
            self.turn_id,
            end_s,
            self.wall_time(end_s),
            text=transcript.text.strip(),
            confidence=transcript.confidence,
            audio_start=start_s,
            forced=forced,
        )
        self.turn_id = None
        return output

    def _remember(self, pcm: bytes) -> None:
        self._pre_roll.append(pcm)
        self._pre_roll_bytes += len(pcm)
        limit = int(PRE_ROLL_S * PCM_SAMPLE_RATE) * PCM_BYTES_PER_SAMPLE
        while self._pre_roll_bytes - len(self._pre_roll[0]) >= limit:
            self._pre_roll_bytes -= len(self._pre_roll.popleft())

    def _replay_pre_roll(self) -> None:
        for chunk in self._pre_roll:
            self.recognizer.accept(chunk)
        self._pre_roll.clear()
        self._pre_roll_bytes = 0
