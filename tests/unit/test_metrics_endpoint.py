"""Prometheus endpoints listen on loopback unless told otherwise (issue 16, observation 3)."""

from __future__ import annotations

import socket
from pathlib import Path

import httpx

from ops.servers import free_port
from workers.runtime.metrics import serve_metrics
from workers.runtime.settings import RuntimeSettings


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
