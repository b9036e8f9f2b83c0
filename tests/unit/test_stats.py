"""The stats aggregator's logic without the bus: marks, stages, counts, bounds; trace context."""

from __future__ import annotations

import pytest

from contracts import events as ev
from contracts import headers as h
from contracts.envelope import Event
from workers.runtime import tracing
from workers.stats.core import StatsAggregator, percentile, stage_latency

S, T0 = "session-aaaa", 1_800_000_000.0


def spoken_turn(turn: str, start: float, session: str = S) -> list[Event]:
    """A spoken turn with known timestamps: speech ends at +1.0 s, audio starts at +1.9 s."""
    common = {"session_id": session, "turn_id": turn}
    return [
        ev.SpeechStarted(**common, producer="transcriber", audio_at=0.5, captured_at=start, published_at=start + 0.1),
        ev.SpeechStopped(
            **common, producer="transcriber", audio_at=1.5, speech_ended_at=start + 1.0, published_at=start + 1.2
        ),
        ev.TranscriptFinal(
            **common,
            producer="transcriber",
            text="hello",
            engine="e",
            audio_start=0.5,
            audio_end=1.5,
            published_at=start + 1.4,
        ),
        ev.UserTurn(
            **common,
            producer="transcriber",
            text="hello",
            source="spoken",
            speech_ended_at=start + 1.0,
            published_at=start + 1.41,
        ),
        ev.ReplyDelta(**common, producer="orchestrator", seq=0, text="Hi", agent="general", published_at=start + 1.6),
        ev.AudioOutMeta(**common, producer="voice", seq=0, published_at=start + 1.9),
        ev.ReplyDelta(**common, producer="orchestrator", seq=1, text="!", agent="general", published_at=start + 1.7),
        ev.AudioOutMeta(**common, producer="voice", seq=1, published_at=start + 2.0),
        ev.ReplyDone(
            **common,
            producer="orchestrator",
            text="Hi!",
            agent="general",
            first_token_at=start + 1.55,
            usage=ev.TokenUsage(prompt_tokens=20, completion_tokens=3),
            published_at=start + 1.8,
        ),
        ev.AudioOutDone(**common, producer="voice", frames=2, duration_ms=850.0, published_at=start + 2.1),
    ]


def test_a_spoken_turn_gives_every_stage_from_the_true_end_of_speech() -> None:
    stats = StatsAggregator()
    for event in spoken_turn("t1", T0):
        stats.observe(event)
    stages = stats.turns[(S, "t1")].stages
    assert stages == pytest.approx(
        {
            "end_of_speech_to_final": 400.0,  # from speech_ended_at (+1.0), not from the VAD's decision (+1.2)
            "final_to_first_delta": 200.0,
            "llm_time_to_first_token": 150.0,
            "first_delta_to_first_audio": 300.0,
            "voice_to_voice": 900.0,
        },
        abs=1e-3,
    )
    snap = stats.snapshot("stats", recent=5)
    assert snap.turns == 1 and snap.turns_by_source == {"spoken": 1}
    assert snap.tokens == 23 and snap.audio_out_s == pytest.approx(0.85)
    assert snap.recent[0].marks["vad_stopped"] == pytest.approx(T0 + 1.2)
    assert snap.recent[0].outcome == "stop"


def test_stages_do_not_depend_on_which_stream_arrives_first() -> None:
    in_order, audio_first = StatsAggregator(), StatsAggregator()
    events = spoken_turn("t1", T0)
    for event in events:
        in_order.observe(event)
    # Audio comes through SB_AUDIO, the rest through SB_EVENTS: each stream in order, either one first.
    for event in sorted(events, key=lambda e: not isinstance(e, ev.AudioOutMeta)):
        audio_first.observe(event)
    assert audio_first.turns[(S, "t1")].stages == in_order.turns[(S, "t1")].stages
    assert len(in_order.turns[(S, "t1")].stages) == 5


def test_a_typed_turn_has_no_speech_stages_and_counts_by_session() -> None:
    stats = StatsAggregator()
    seen: list[tuple[str, float]] = []
    stats.on_stage = lambda stage, ms: seen.append((stage, ms))
    stats.observe(ev.SessionStarted(session_id=S, producer="edge"))
    stats.observe(ev.SessionStarted(session_id="session-bbbb", producer="edge"))
    stats.observe(ev.UserTurn(session_id=S, turn_id="t1", producer="edge", text="hi", source="typed", published_at=T0))
    stats.observe(ev.ReplyDelta(session_id=S, turn_id="t1", producer="o", text="x", agent="a", published_at=T0 + 0.25))
    stats.observe(ev.Interrupt(session_id=S, turn_id="t1", producer="edge", reason="client"))
    stats.observe(ev.ErrorEvent(session_id=S, producer="o", code="llm_unavailable", message="m", source="o"))
    stats.observe(ev.ErrorEvent(session_id="session-bbbb", producer="o", code="llm_timeout", message="m", source="o"))
    stats.observe(
        ev.DeadLetter(
            producer="x",
            worker="x",
            original_subject="s",
            reason="r",
            error_type="E",
            payload_b64="",
            headers={h.SESSION: S},
        )
    )
    stats.observe(ev.SessionEnded(session_id="session-bbbb", producer="edge"))
    stats.observe_audio_in(S, 32_000 * 3)
    assert [stage for stage, _ in seen] == ["final_to_first_delta"] and seen[0][1] == pytest.approx(250.0)
    total, one = stats.snapshot("stats"), stats.snapshot("stats", session_id=S)
    assert (total.sessions_active, total.sessions_total, total.dead_letters) == (1, 2, 1)
    assert total.errors == {"llm_unavailable": 1, "llm_timeout": 1}
    assert one.errors == {"llm_unavailable": 1} and one.interruptions == 1 and one.audio_in_s == 3.0
    assert one.stages["final_to_first_delta"].count == 1 and one.stages["voice_to_voice"].count == 0
    assert stats.snapshot("stats", session_id="session-bbbb").turns == 0


def test_memory_is_bounded() -> None:
    stats = StatsAggregator(max_turns=10, max_sessions=5)
    for i in range(30):
        for event in spoken_turn(f"t{i}", T0 + i * 10, session=f"session-{i:04d}"):
            stats.observe(event)
    assert len(stats.turns) == 10 and len(stats.sessions) == 5
    assert stats.total.turns["spoken"] == 30  # totals keep counting
    assert stats.snapshot("stats").stages["voice_to_voice"].count == 10


def test_percentiles_are_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert (percentile(values, 50), percentile(values, 95), percentile(values, 99)) == (50.0, 95.0, 99.0)
    latency = stage_latency([300.0, 100.0, 200.0])
    assert (latency.count, latency.p50_ms, latency.p99_ms) == (3, 200.0, 300.0)
    assert stage_latency([]).p50_ms is None


def test_trace_context_parses_w3c_and_refuses_garbage() -> None:
    context = tracing.parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
    assert context == tracing.SpanContext("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7")
    for bad in (
        None,
        "",
        "00-xyz-00f067aa0ba902b7-01",
        "00-" + "0" * 32 + "-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-" + "0" * 16 + "-01",
    ):
        assert tracing.parse_traceparent(bad) is None


def test_published_headers_join_the_current_trace_or_the_turns() -> None:
    root: dict[str, str] = {}
    tracing.stamp(root, "turn-1")
    again: dict[str, str] = {}
    tracing.stamp(again, "turn-1")
    first, second = tracing.parse_traceparent(root[h.TRACEPARENT]), tracing.parse_traceparent(again[h.TRACEPARENT])
    assert first and second and first.trace_id == second.trace_id == tracing.turn_trace_id("turn-1")
    assert first.span_id != second.span_id and h.PARENT_SPAN not in root
    child: dict[str, str] = {}
    with tracing.handling(first):
        tracing.stamp(child, "another-turn")  # inside a handler, the incoming trace wins
    parsed = tracing.parse_traceparent(child[h.TRACEPARENT])
    assert parsed and parsed.trace_id == first.trace_id and child[h.PARENT_SPAN] == first.span_id
    assert tracing.current() is None
