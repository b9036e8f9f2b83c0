"""Per-turn latency waterfalls and counts from the recorded events, testable without the bus.

Every event is a mark on its turn's timeline (the producers' own timestamps, epoch s):

==================  ==================================================================
speech_started      vad.speech_started ``captured_at``: where speech began in the audio
speech_ended        vad.speech_stopped ``speech_ended_at`` (or turn.user's): the *true*
                    end of speech in the audio, not the VAD's later decision
vad_stopped         vad.speech_stopped published: the VAD's decision
turn_final          the user's words are final: transcript.final (spoken) or turn.user (typed)
llm_first_token     reply.done ``first_token_at``
first_delta         the first reply.delta published
reply_done          reply.done published
first_audio         the first audio.out frame published (the voice worker sends it to the edge)
audio_done          audio.done published
interrupted         ctl.interrupt naming the turn
==================  ==================================================================

A stage is the time between two marks (:data:`STAGES`); it is computed once both are known,
whatever order the events arrive in (audio and events come through different streams).
"""

from __future__ import annotations

import math
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Literal

from contracts import events as ev
from contracts import headers as h
from contracts.envelope import Event, SessionEvent

#: stage name -> (from mark, to mark)
STAGES: dict[str, tuple[str, str]] = {
    "end_of_speech_to_final": ("speech_ended", "turn_final"),
    "final_to_first_delta": ("turn_final", "first_delta"),
    "llm_time_to_first_token": ("turn_final", "llm_first_token"),
    "first_delta_to_first_audio": ("first_delta", "first_audio"),
    "voice_to_voice": ("speech_ended", "first_audio"),
}
PCM_BYTES_PER_S = 16_000 * 2  # audio.in is PCM16 mono at 16 kHz (contracts/binary.py)

Source = Literal["typed", "spoken", "unknown"]
StageObserver = Callable[[str, float], None]


@dataclass
class Counts:
    sessions: int = 0
    turns: Counter[str] = field(default_factory=Counter)  # by source
    interruptions: int = 0
    errors: Counter[str] = field(default_factory=Counter)  # by code
    dead_letters: int = 0
    tokens: int = 0
    audio_in_s: float = 0.0
    audio_out_s: float = 0.0


@dataclass
class Turn:
    session_id: str
    turn_id: str
    source: Source = "unknown"
    marks: dict[str, float] = field(default_factory=dict)
    stages: dict[str, float] = field(default_factory=dict)  # ms
    outcome: str = ""

    def timeline(self) -> ev.TurnTimeline:
        return ev.TurnTimeline(
            session_id=self.session_id,
            turn_id=self.turn_id,
            source=self.source,
            marks=dict(self.marks),
            stages=dict(self.stages),
            outcome=self.outcome,
        )


def percentile(ordered: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending, non-empty list."""
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def stage_latency(values: Iterable[float]) -> ev.StageLatency:
    ordered = sorted(values)
    if not ordered:
        return ev.StageLatency()
    return ev.StageLatency(
        count=len(ordered),
        p50_ms=percentile(ordered, 50),
        p95_ms=percentile(ordered, 95),
        p99_ms=percentile(ordered, 99),
    )


class StatsAggregator:
    """Folds events into turns and counts; bounded (oldest turns and sessions are forgotten)."""

    def __init__(
        self,
        max_turns: int = 10_000,
        max_sessions: int = 10_000,
        on_stage: StageObserver | None = None,
        since: float | None = None,
    ) -> None:
        self.max_turns = max_turns
        self.max_sessions = max_sessions
        self.on_stage = on_stage
        self.since = since
        self.total = Counts()
        self.active: set[str] = set()
        self.turns: OrderedDict[tuple[str, str], Turn] = OrderedDict()
        self.sessions: OrderedDict[str, Counts] = OrderedDict()

    # ------------------------------------------------------------------ input

    def observe(self, event: Event) -> None:
        """Fold one event of any kind in (kinds that carry no figure are ignored)."""
        if isinstance(event, ev.DeadLetter):
            self.total.dead_letters += 1
            if session_id := event.headers.get(h.SESSION):
                self._counts(session_id).dead_letters += 1
            return
        if not isinstance(event, SessionEvent):
            return
        counts = self._counts(event.session_id)
        match event:
            case ev.SessionStarted():
                self.active.add(event.session_id)
                for c in (self.total, counts):
                    c.sessions += 1
            case ev.SessionEnded():
                self.active.discard(event.session_id)
            case ev.UserTurn():
                for c in (self.total, counts):
                    c.turns[event.source] += 1
                turn = self._turn(event)
                turn.source = event.source
                self._mark(turn, "turn_final", event.published_at)
                if event.speech_ended_at is not None:
                    self._mark(turn, "speech_ended", event.speech_ended_at)
            case ev.SpeechStarted():
                self._mark(self._turn(event), "speech_started", event.captured_at or event.published_at)
            case ev.SpeechStopped():
                turn = self._turn(event)
                self._mark(turn, "speech_ended", event.speech_ended_at)
                self._mark(turn, "vad_stopped", event.published_at)
            case ev.TranscriptFinal():
                self._mark(self._turn(event), "turn_final", event.published_at)
            case ev.ReplyDelta():
                self._mark(self._turn(event), "first_delta", event.published_at)
            case ev.ReplyDone():
                turn = self._turn(event)
                turn.outcome = event.finish_reason
                if event.first_token_at is not None:
                    self._mark(turn, "llm_first_token", event.first_token_at)
                self._mark(turn, "reply_done", event.published_at)
                for c in (self.total, counts):
                    c.tokens += event.usage.prompt_tokens + event.usage.completion_tokens
            case ev.AudioOutMeta():
                self._mark(self._turn(event), "first_audio", event.published_at)
            case ev.AudioOutDone():
                self._mark(self._turn(event), "audio_done", event.published_at)
                for c in (self.total, counts):
                    c.audio_out_s += event.duration_ms / 1000
            case ev.Interrupt():
                for c in (self.total, counts):
                    c.interruptions += 1
                if event.turn_id:
                    self._mark(self._turn(event), "interrupted", event.published_at)
            case ev.ErrorEvent():
                for c in (self.total, counts):
                    c.errors[event.code] += 1

    def observe_audio_in(self, session_id: str, payload_bytes: int) -> None:
        seconds = payload_bytes / PCM_BYTES_PER_S
        self.total.audio_in_s += seconds
        self._counts(session_id).audio_in_s += seconds

    def _turn(self, event: SessionEvent) -> Turn:
        assert event.turn_id is not None
        key = (event.session_id, event.turn_id)
        turn = self.turns.get(key)
        if turn is None:
            turn = self.turns[key] = Turn(event.session_id, event.turn_id)
            if len(self.turns) > self.max_turns:
                self.turns.popitem(last=False)
        return turn

    def _mark(self, turn: Turn, name: str, at: float) -> None:
        if name in turn.marks:
            return  # the first occurrence counts (first delta, first audio frame)
        turn.marks[name] = at
        for stage, (start, end) in STAGES.items():
            if name in (start, end) and start in turn.marks and end in turn.marks and stage not in turn.stages:
                turn.stages[stage] = ms = (turn.marks[end] - turn.marks[start]) * 1000
                if self.on_stage is not None:
                    self.on_stage(stage, ms)

    def _counts(self, session_id: str) -> Counts:
        counts = self.sessions.get(session_id)
        if counts is None:
            counts = self.sessions[session_id] = Counts()
            if len(self.sessions) > self.max_sessions:
                self.sessions.popitem(last=False)
        return counts

    # ------------------------------------------------------------------ output

    def snapshot(self, producer: str, session_id: str | None = None, recent: int = 0) -> ev.StatsSnapshot:
        if session_id is None:
            counts, turns, active = self.total, list(self.turns.values()), len(self.active)
        else:
            counts = self.sessions.get(session_id, Counts())
            turns = [t for t in self.turns.values() if t.session_id == session_id]
            active = int(session_id in self.active)
        return ev.StatsSnapshot(
            producer=producer,
            sessions_active=active,
            sessions_total=counts.sessions,
            turns=sum(counts.turns.values()),
            turns_by_source=dict(counts.turns),
            interruptions=counts.interruptions,
            errors=dict(counts.errors),
            dead_letters=counts.dead_letters,
            tokens=counts.tokens,
            audio_in_s=round(counts.audio_in_s, 3),
            audio_out_s=round(counts.audio_out_s, 3),
            stages={name: stage_latency(t.stages[name] for t in turns if name in t.stages) for name in STAGES},
            since=self.since,
            recent=[t.timeline() for t in turns[-recent:]] if recent else [],
        )
