"""Prometheus metrics every process shares, and its HTTP endpoint (``SB_METRICS_PORT``; 0: none).

The same port answers the probes of an orchestrator such as Kubernetes: ``/healthz`` (live: the
event loop of every worker registered there answers within PROBE_TIMEOUT_S) and ``/readyz`` (ready:
every worker started, announced and without problems, the ones ``sb status`` shows; 503 with them
in JSON otherwise, and while none has started yet).

Handled messages are timed by the runtime's handling scope (per worker, message kind and
outcome ok/error, :func:`observe_handled`), published events are counted by the bus (per
producer and kind); a worker adds its own metrics with ``prometheus_client`` as usual and
they appear on the same endpoint. Labels only take declared values (unknown kinds count as
"other"), so their number stays bounded.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import Counter, Histogram, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer

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

PROBE_TIMEOUT_S = 2.0

_serving: set[int] = set()
# Per port, the workers that answer its probes: name -> (their event loop, their problems()).
_watched: dict[int, dict[str, tuple[asyncio.AbstractEventLoop, Callable[[], list[str]]]]] = {}


def serve_metrics(port: int, host: str = "127.0.0.1") -> None:
    """Start the endpoint once per port (several in-process workers share one registry): /metrics,
    /healthz, /readyz."""
    if port and port not in _serving:
        metrics = make_wsgi_app()

        def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
            path = environ.get("PATH_INFO", "")
            if path not in ("/healthz", "/readyz"):
                return list(metrics(environ, start_response))
            ok, body = probe(port, ready=path == "/readyz")
            start_response("200 OK" if ok else "503 Service Unavailable", [("Content-Type", "application/json")])
            return [json.dumps(body).encode()]

        server = make_server(host, port, app, ThreadingWSGIServer, handler_class=_Quiet)
        threading.Thread(target=server.serve_forever, name=f"metrics-{port}", daemon=True).start()
        _serving.add(port)


def watch_health(port: int, name: str, problems: Callable[[], list[str]]) -> Callable[[], None]:
    """Let ``port``'s probes ask worker ``name`` (``problems()`` runs on the caller's event loop);
    returns the call that stops it (a stopping worker is not ready)."""
    if not port:
        return lambda: None
    _watched.setdefault(port, {})[name] = (asyncio.get_running_loop(), problems)

    def unwatch() -> None:
        _watched.get(port, {}).pop(name, None)

    return unwatch


def probe(port: int, ready: bool) -> tuple[bool, dict[str, Any]]:
    """(healthy, the JSON answer) of /readyz (``ready``) or /healthz, from the HTTP server's thread."""
    workers = dict(_watched.get(port, {}))
    if ready and not workers:
        return False, {"status": "starting", "problems": {}}
    found: dict[str, list[str]] = {}
    for name, (loop, problems) in workers.items():
        try:
            future = asyncio.run_coroutine_threadsafe(_ask(problems if ready else list), loop)
            found[name] = future.result(PROBE_TIMEOUT_S)
        except TimeoutError:
            future.cancel()
            found[name] = [f"the event loop did not answer within {PROBE_TIMEOUT_S:g} s"]
        except RuntimeError as error:  # the loop is closed: the worker is gone
            found[name] = [f"not running: {error}"]
    broken = {name: listed for name, listed in found.items() if listed}
    return not broken, {"status": "degraded" if broken else "ok", "problems": broken}


async def _ask(problems: Callable[[], list[str]]) -> list[str]:
    return problems()


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Probes every few seconds: not worth a line each."""


def observe_handled(worker: str, kind: str, outcome: str, seconds: float) -> None:
    kind = kind if kind in EVENTS_BY_KIND else "other"  # a label never takes arbitrary values
    HANDLED.labels(worker, kind, outcome).observe(seconds)
