"""Credentials on the bus: nobody connects without them, each service publishes and reads only its own.

The session's NATS server (tests/conftest.py) runs with the users ops/access.py derives from the
contracts; every worker and edge of the test suite connects as its own service user.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import nats.errors
import pytest
from nats.aio.client import Client

from contracts import events as ev
from contracts.envelope import new_id
from contracts.subjects import BY_NAME
from ops import access
from ops.servers import RunningServer, free_port, nats_command, wait_for_port
from ops.stack import NATS_CONF
from tests.support.waiting import eventually
from workers.keywords.worker import WORKER as KEYWORDS
from workers.keywords.worker import KeywordsWorker
from workers.runtime import Bus, running_worker
from workers.runtime.settings import RuntimeSettings
from workers.runtime.worker import connect_nats, connect_options, inbox_prefix

PREFIX = "access"


def plain_url(server: RunningServer) -> str:
    return f"nats://127.0.0.1:{server.port}"


class Refusals:
    """What the server refused a connection (nats-py reports it in lower case)."""

    def __init__(self) -> None:
        self.errors: list[str] = []

    async def on_error(self, error: Exception) -> None:
        self.errors.append(str(error).lower())

    async def until(self, text: str, within: float = 5.0) -> str:
        await eventually(lambda: any(text.lower() in e for e in self.errors), within)
        return next(e for e in self.errors if text.lower() in e)


async def connect_as(server: RunningServer, users: Path, user: str, refusals: Refusals) -> Client:
    settings = RuntimeSettings(nats_url=plain_url(server), nats_users_file=users / access.CREDENTIALS)
    options = connect_options(settings, user) | {"error_cb": refusals.on_error, "allow_reconnect": False}
    return await nats.connect(**options)


@pytest.fixture
async def watcher(nats_url: str) -> AsyncIterator[Client]:
    client = await nats.connect(nats_url)  # the operator sees everything
    yield client
    await client.drain()


async def test_a_client_without_credentials_or_with_wrong_ones_is_refused(
    nats_server: RunningServer, bus_users: Path
) -> None:
    for url in (plain_url(nats_server), f"nats://edge:not-the-password@127.0.0.1:{nats_server.port}"):
        with pytest.raises(nats.errors.Error, match="Authorization Violation"):
            await nats.connect(url, allow_reconnect=False, max_reconnect_attempts=0, connect_timeout=2)


async def test_the_edge_publishes_turns_but_cannot_forge_a_reply(
    nats_server: RunningServer, bus_users: Path, watcher: Client
) -> None:
    session = new_id()
    seen = await watcher.subscribe(f"{PREFIX}.ev.{session}.>")
    await watcher.flush()
    refusals = Refusals()
    edge = await connect_as(nats_server, bus_users, "edge", refusals)
    forged = ev.ReplyDone(session_id=session, turn_id="t1", producer="edge", text="forged", agent="general")
    await edge.publish(BY_NAME["reply.done"].subject(session, PREFIX), forged.model_dump_json().encode())
    turn = ev.UserTurn(session_id=session, turn_id="t1", producer="edge", text="hello", source="typed")
    await edge.publish(BY_NAME["turn.user"].subject(session, PREFIX), turn.model_dump_json().encode())
    await edge.flush()
    assert "turn.reply" in await refusals.until("permissions violation for publish")
    arrived = await seen.next_msg(timeout=2)
    assert arrived.subject.endswith(".turn.user")  # the turn came; the forged reply never did
    with pytest.raises(nats.errors.TimeoutError):
        await seen.next_msg(timeout=0.3)
    await edge.close()


async def test_a_worker_reads_neither_everything_nor_another_services_inbox(
    nats_server: RunningServer, bus_users: Path
) -> None:
    refusals = Refusals()
    orchestrator = await connect_as(nats_server, bus_users, "orchestrator", refusals)
    await orchestrator.subscribe(">")
    await orchestrator.subscribe(f"{inbox_prefix('edge')}.>")
    await orchestrator.flush()
    await refusals.until('subscription to ">"')
    await refusals.until(f'subscription to "{inbox_prefix("edge")}.>"')
    # what it may do: publish replies, ask the memory service (no responder here, and that is all)
    with pytest.raises(nats.errors.NoRespondersError):
        await orchestrator.request(BY_NAME["memory.context"].subject(prefix=PREFIX), b"{}", timeout=2)
    await orchestrator.close()


async def test_a_worker_with_the_wrong_user_says_so_in_its_health(nats_url: str, bus_users: Path, nc: Client) -> None:
    """An operator's mistake: the keywords worker started as the edge's user; what it publishes is
    refused by the server, and its health says which operation (sb status shows it degraded)."""
    passwords = json.loads((bus_users / access.CREDENTIALS).read_text())
    settings = KEYWORDS.settings_type(
        nats_url=nats_url, subject_prefix=PREFIX, nats_user="edge", nats_password=passwords["edge"]
    )
    started: list[KeywordsWorker] = []
    async with running_worker(KEYWORDS, settings, started=started.append):
        session = new_id()
        turn = ev.UserTurn(session_id=session, turn_id="t1", producer="test", text="I love this", source="typed")
        test_bus = Bus(producer="test", prefix=PREFIX)
        test_bus.attach(nc)
        await test_bus.publish(turn)
        await eventually(lambda: bool(started[0].health()), 10)
        [problem] = started[0].health()
        assert "the bus refused" in problem and "annot.keywords" in problem


def test_the_monitoring_port_listens_on_loopback_only(tmp_path: Path) -> None:
    port, monitor = free_port(), free_port()
    config = access.server_config(NATS_CONF, tmp_path / "auth")
    command = [*nats_command(tmp_path / "store", port, config), "-m", str(monitor)]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port("127.0.0.1", monitor, 10.0, server)
        varz = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{monitor}/varz", timeout=5).read())
        assert varz["http_host"] == "127.0.0.1" and varz["host"] == "127.0.0.1"
        assert varz["auth_required"] is True
    finally:
        server.terminate()
        server.wait(5)


async def test_a_users_file_written_after_the_start_is_read_when_it_appears(
    nats_server: RunningServer, bus_users: Path, tmp_path: Path
) -> None:
    """`sb status --wait` run beside a `just up` that has not written its credentials yet (an e2e flake):
    the password is read at each connection attempt, so the tool gets in once the file is there."""
    later = tmp_path / access.CREDENTIALS
    settings = RuntimeSettings(nats_url=plain_url(nats_server), nats_users_file=later, connect_timeout_s=20)
    connecting = asyncio.create_task(connect_nats(settings, "cli"))
    await asyncio.sleep(1.5)
    assert not connecting.done()  # refused so far: no password to give
    later.write_text((bus_users / access.CREDENTIALS).read_text())
    client = await asyncio.wait_for(connecting, 15)
    assert client.is_connected
    await client.close()
