"""Stats aggregator worker.

Consumes: what JetStream recorded, not a second instrumentation path: every session event
(SB_EVENTS), dead letters (SB_DLQ), and the headers only of audio in and out (SB_AUDIO), each
through an ordered consumer that starts ``SB_STATS_BACKFILL_S`` back, so a restarted aggregator
rebuilds its figures. Answers: stats.snapshot (StatsRequest -> StatsSnapshot; queue group).
Produces: Prometheus metrics (stage histograms, counts) on the process's metrics endpoint.
Logic: core.StatsAggregator (plain class). An event it cannot read is counted and logged, not
dead-lettered: it is only an observer, and the event's consumers dead-letter it themselves.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from prometheus_client import REGISTRY, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from pydantic import Field, ValidationError

from contracts import events as ev
from contracts import headers as h
from contracts.streams import AUDIO, DEAD_LETTERS, EVENTS
from workers.runtime import Bus, Delivery, RuntimeSettings, Worker, consumes, serves
from workers.runtime.logging import get_logger

from .core import StatsAggregator

log = get_logger("stats")

#: Seconds: voice-to-voice lives between ~0.3 s (excellent) and several seconds (broken).
STAGE_BUCKETS = (0.025, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)
STAGE_SECONDS = Histogram(
    "sb_turn_stage_seconds", "Per-turn latency of each stage (see docs/ops.md)", ("stage",), buckets=STAGE_BUCKETS
)
UNREADABLE = Counter("sb_stats_unreadable_total", "Recorded messages the aggregator could not read")


class StatsSettings(RuntimeSettings):
    stats_backfill_s: float = Field(
        default=3_600.0, ge=0, description="On start, fold in what was recorded this long ago"
    )
    stats_max_turns: int = Field(default=10_000, ge=10, description="Turns kept for percentiles and waterfalls")


class CountsCollector(Collector):
    """The aggregator's totals, read at scrape time (no second bookkeeping)."""

    def __init__(self) -> None:
        self.aggregators: dict[int, StatsAggregator] = {}  # one per running worker (tests run several)

    def collect(self) -> Iterator[Metric]:
        if not self.aggregators:
            return
        turns = CounterMetricFamily("sb_turns", "User turns", labels=["source"])
        errors = CounterMetricFamily("sb_errors", "Error events", labels=["code"])
        simple = {
            "sessions": CounterMetricFamily("sb_sessions", "Sessions started"),
            "interruptions": CounterMetricFamily("sb_interruptions", "Interrupts (barge-in, client)"),
            "dead_letters": CounterMetricFamily("sb_dead_letters", "Dead-lettered messages"),
            "tokens": CounterMetricFamily("sb_tokens", "LLM tokens used (prompt + completion)"),
        }
        audio = CounterMetricFamily("sb_audio_seconds", "Seconds of audio", labels=["direction"])
        active = GaugeMetricFamily("sb_sessions_active", "Sessions with an open socket")
        totals = [a.total for a in self.aggregators.values()]
        for source in sorted({s for t in totals for s in t.turns}):
            turns.add_metric([source], sum(t.turns[source] for t in totals))
        for code in sorted({c for t in totals for c in t.errors}):
            errors.add_metric([code], sum(t.errors[code] for t in totals))
        for name, family in simple.items():
            family.add_metric([], sum(getattr(t, name) for t in totals))
        audio.add_metric(["in"], sum(t.audio_in_s for t in totals))
        audio.add_metric(["out"], sum(t.audio_out_s for t in totals))
        active.add_metric([], sum(len(a.active) for a in self.aggregators.values()))
        yield from (turns, errors, *simple.values(), audio, active)


COLLECTOR = CountsCollector()
REGISTRY.register(COLLECTOR)


def _observe_stage(stage: str, ms: float) -> None:
    STAGE_SECONDS.labels(stage).observe(max(ms, 0.0) / 1000)


class StatsWorker(Worker[StatsSettings]):
    name = "stats"
    description = "Per-turn latency waterfalls, counts and metrics from recorded events"

    def __init__(self, settings: StatsSettings, bus: Bus) -> None:
        super().__init__(settings, bus)
        self.since = time.time() - settings.stats_backfill_s
        self.stats = StatsAggregator(max_turns=settings.stats_max_turns, on_stage=_observe_stage, since=self.since)
        COLLECTOR.aggregators[id(self)] = self.stats

    def recorded_since(self) -> float:
        return self.since  # a restarted aggregator rebuilds its figures from what was recorded

    async def stop(self) -> None:
        COLLECTOR.aggregators.pop(id(self), None)

    @consumes(delivery="recorded", stream=EVENTS, filter="ev.>")
    async def on_event(self, delivery: Delivery) -> None:
        self._fold(delivery.data)

    @consumes("deadletter", delivery="recorded", stream=DEAD_LETTERS)
    async def on_dead_letter(self, delivery: Delivery) -> None:
        self._fold(delivery.data)

    @consumes("audio.out", delivery="recorded", stream=AUDIO, headers_only=True)
    async def on_audio_out(self, delivery: Delivery) -> None:
        self._fold(delivery.meta.encode())

    @consumes("audio.in.partition", delivery="recorded", stream=AUDIO, headers_only=True)
    async def on_audio_in(self, delivery: Delivery) -> None:
        headers = delivery.headers
        if session_id := headers.get(h.SESSION):
            self.stats.observe_audio_in(session_id, int(headers.get("Nats-Msg-Size", "0")))

    @serves("stats.snapshot", queue="stats")
    async def on_snapshot(self, request: ev.StatsRequest) -> ev.StatsSnapshot:
        return self.stats.snapshot(self.bus.producer, request.session_id, request.recent_turns)

    def _fold(self, body: bytes) -> None:
        try:
            self.stats.observe(ev.parse_event(body))
        except (KeyError, ValueError, ValidationError) as error:  # JSON errors are ValueErrors
            UNREADABLE.inc()
            log.warning("unreadable recorded event", error=repr(error)[:200])


WORKER = StatsWorker
