"""Prometheus metrics every process shares, and its scrape endpoint (``SB_METRICS_PORT``; 0: none).

Handled messages are timed by the runtime's handling scope (per worker, message kind and
outcome ok/error, :func:`observe_handled`), published events are counted by the bus (per
producer and kind); a worker adds its own metrics with ``prometheus_client`` as usual and
they appear on the same endpoint. Labels only take declared values (unknown kinds count as
"other"), so their number stays bounded.
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram, start_http_server

from contracts.events import EVENTS_BY_KIND

#: Seconds; from sub-millisecond handlers to a slow LLM stream.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

HANDLED = Histogram(
    "sb_handler_seconds",
    "Time a worker spent handling one message",
    ("worker", "kind", "outcome"),
    buckets=LATENCY_BUCKETS,
)
PUBLISHED = Counter("sb_published_total", "Events published", ("producer", "kind"))

_serving: set[int] = set()


def serve_metrics(port: int, host: str = "127.0.0.1") -> None:
    """Start the scrape endpoint once per port (several in-process workers share one registry)."""
    if port and port not in _serving:
        start_http_server(port, addr=host)
        _serving.add(port)


def observe_handled(worker: str, kind: str, outcome: str, seconds: float) -> None:
    kind = kind if kind in EVENTS_BY_KIND else "other"  # a label never takes arbitrary values
    HANDLED.labels(worker, kind, outcome).observe(seconds)
