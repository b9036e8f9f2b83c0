"""Prometheus endpoints listen on loopback unless told otherwise (issue 16, observation 3); the same port answers
the liveness and readiness probes of the workers on it."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import httpx

from ops.servers import free_port
from workers.runtime import running_worker
from workers.runtime.metrics import serve_metrics, watch_health
from workers.runtime.settings import RuntimeSettings
from workers.tools.worker import WORKER as TOOLS


def listening_addresses(port: int) -> set[str]:
    """IPv4 addresses with a socket listening on ``port`` (from /proc/net/tcp: state 0A is LISTEN)."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, hex_port = local.split(":")
        if state == "0A" and int(hex_port, 16) == port:
            found.add(socket.inet_ntoa(bytes.fromhex(address)[::-1]))
    return found


def test_the_metrics_endpoint_listens_on_loopback_by_default() -> None:
    port = free_port()
    serve_metrics(port, RuntimeSettings().metrics_host)
    assert listening_addresses(port) == {"127.0.0.1"}
    assert "sb_published_total" in httpx.get(f"http://127.0.0.1:{port}/metrics").text


async def test_the_probes_say_whether_the_workers_on_the_port_are_live_and_ready() -> None:
    port = free_port()
    serve_metrics(port)
    url = f"http://127.0.0.1:{port}"

    async def get(path: str) -> httpx.Response:  # from another thread, as a kubelet would: the loop stays free
        return await asyncio.to_thread(httpx.get, url + path, timeout=10)

    assert (await get("/readyz")).json()["status"] == "starting"
    problems = ["orders consumer: not subscribed"]
    unwatch = watch_health(port, "orders", lambda: problems)
    ready = await get("/readyz")
    assert ready.status_code == 503 and ready.json() == {"status": "degraded", "problems": {"orders": problems}}
    assert (await get("/healthz")).status_code == 200  # alive, though not ready
    problems.clear()
    assert (await get("/readyz")).status_code == 200
    # A blocked event loop (here: this test waiting synchronously) is neither live nor ready.
    stuck = httpx.get(url + "/healthz", timeout=10)  # noqa: ASYNC210 - blocking the loop is the point
    assert stuck.status_code == 503 and "did not answer" in stuck.json()["problems"]["orders"][0]
    unwatch()
    assert (await get("/readyz")).json()["status"] == "starting"


async def test_a_started_worker_is_ready_on_its_metrics_port(nats_url: str) -> None:
    port = free_port()
    settings = RuntimeSettings(nats_url=nats_url, subject_prefix="probes", metrics_port=port)
    async with running_worker(TOOLS, settings):
        ready = await asyncio.to_thread(httpx.get, f"http://127.0.0.1:{port}/readyz", timeout=10)
        assert ready.status_code == 200 and ready.json() == {"status": "ok", "problems": {}}
    after = await asyncio.to_thread(httpx.get, f"http://127.0.0.1:{port}/readyz", timeout=10)
    assert after.status_code == 503  # stopped: not ready
