"""Credentials on the bus: nobody connects without them, each service publishes and reads only its own.

The session's NATS server (tests/conftest.py) runs with the users ops/access.py derives from the
contracts; every worker and edge of the test suite connects as its own service user. The JetStream
tests start a server of their own pinned to one subject prefix (the shared one allows any prefix's
stream names), so they test the permissions a deployment really gets.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
import nats.errors
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, RePublish, StreamConfig
from nats.js.errors import NotFoundError
from structlog.testing import capture_logs

from contracts import events as ev
from contracts.envelope import new_id
from contracts.streams import EVENTS, STREAMS
from contracts.subjects import BY_NAME
from ops import access
from ops.servers import RunningServer, free_port, nats_command, start_nats, wait_for_port
from ops.stack import NATS_CONF
from tests.support.waiting import eventually
from workers.keywords.worker import WORKER as KEYWORDS
from workers.keywords.worker import KeywordsWorker
from workers.runtime import Bus, Worker, running_worker
from workers.runtime.provision import provision, stream_name
from workers.runtime.settings import RuntimeSettings
from workers.runtime.worker import connect_nats, connect_options, inbox_prefix
from workers.stats.worker import WORKER as STATS
from workers.stats.worker import StatsSettings

PREFIX = "access"
ROOT = Path(__file__).resolve().parents[2]
PINNED = "pinned"  # the one prefix of the JetStream tests' own server
REFUSED_WITHIN = 1.0  # a refused API request is never answered: it times out


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


# ---------------------------------------------------------------------- JetStream, on a server pinned to one prefix


@dataclass
class Pinned:
    server: RunningServer
    users: Path
    operator: Client
    session: str  # whose turn is recorded in the events stream


@pytest.fixture(scope="module")
def pinned_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningServer, Path]]:
    users = tmp_path_factory.mktemp("pinned-auth")
    config = access.server_config(NATS_CONF, users, prefixes=(PINNED,))
    server = start_nats(tmp_path_factory.mktemp("pinned") / "store", config=config)
    yield server, users
    server.stop()


@pytest.fixture
async def pinned(pinned_server: tuple[RunningServer, Path]) -> AsyncIterator[Pinned]:
    """The pinned server with its streams (provisioned as ops) and one session's turn recorded."""
    server, users = pinned_server
    operator = await nats.connect(access.url_with_user(plain_url(server), users))
    await provision(operator.jetstream(), STREAMS, prefix=PINNED)
    session = new_id()
    turn = ev.UserTurn(session_id=session, turn_id="t1", producer="edge", text="my secret", source="typed")
    await operator.jetstream().publish(BY_NAME["turn.user"].subject(session, PINNED), turn.model_dump_json().encode())
    yield Pinned(server, users, operator, session)
    await operator.drain()


async def refused(request: Awaitable[object]) -> None:
    """The server refuses the request's publish: nats-py reports it to the error callback, the request waits."""
    with pytest.raises(nats.errors.TimeoutError):
        await request


async def test_a_worker_cannot_read_every_sessions_turns_through_a_consumer_of_its_own(pinned: Pinned) -> None:
    """Audit (a): the keywords worker reads no stream; an ordered, ephemeral, durable or named consumer on
    the events stream, or a message fetched from it, is refused, and the recorded turn never reaches it."""
    refusals = Refusals()
    keywords = await connect_as(pinned.server, pinned.users, "keywords", refusals)
    js = keywords.jetstream(timeout=REFUSED_WITHIN)
    stream = stream_name(EVENTS, PINNED)
    everything = f"{PINNED}.ev.>"
    read: list[bytes] = []

    async def spy(msg: Msg) -> None:
        read.append(msg.data)

    await refused(js.subscribe(everything, stream=stream, ordered_consumer=True, cb=spy))
    await refused(js.add_consumer(stream, ConsumerConfig(ack_policy=AckPolicy.NONE, filter_subject=everything)))
    await refused(js.add_consumer(stream, ConsumerConfig(durable_name="spy", filter_subject=everything)))
    await refused(js.add_consumer(stream, ConsumerConfig(name="spy", filter_subject=everything)))
    await refused(js.get_msg(stream, seq=1))
    await refused(js.get_last_msg(stream, BY_NAME["turn.user"].subject(pinned.session, PINNED)))
    api = "$js.api"
    await refusals.until(f'publish to "{api}.consumer.create.{stream.lower()}"')
    await refusals.until(f'publish to "{api}.consumer.durable.create.{stream.lower()}.spy"')
    await refusals.until(f'publish to "{api}.consumer.create.{stream.lower()}.spy.{PINNED}.ev.>"')
    await refusals.until(f'publish to "{api}.stream.msg.get.{stream.lower()}"')
    await asyncio.sleep(0.3)
    assert read == []
    assert [c.name for c in await pinned.operator.jetstream().consumers_info(stream)] == []
    await keywords.close()


async def test_a_worker_cannot_delete_purge_or_change_a_stream(pinned: Pinned) -> None:
    """Audit (b): deleting, purging or updating the events stream (or deleting a consumer of another
    worker) is refused; the stream keeps its config and what it recorded."""
    refusals = Refusals()
    keywords = await connect_as(pinned.server, pinned.users, "keywords", refusals)
    js = keywords.jetstream(timeout=REFUSED_WITHIN)
    stream = stream_name(EVENTS, PINNED)
    before = await pinned.operator.jetstream().stream_info(stream)
    await refused(js.delete_stream(stream))
    await refused(js.purge_stream(stream))
    await refused(js.update_stream(StreamConfig(name=stream, subjects=before.config.subjects, max_age=1.0)))
    await refused(js.delete_consumer(stream, "memory-writer"))
    await refusals.until(f'publish to "$js.api.stream.delete.{stream.lower()}"')
    await refusals.until(f'publish to "$js.api.stream.purge.{stream.lower()}"')
    await refusals.until(f'publish to "$js.api.stream.update.{stream.lower()}"')
    after = await pinned.operator.jetstream().stream_info(stream)
    assert after.state.messages >= before.state.messages >= 1
    assert after.config.max_age == before.config.max_age
    await keywords.close()


async def test_a_worker_cannot_forge_a_reply_through_a_stream_that_republishes(pinned: Pinned) -> None:
    """Audit (c): the keywords worker may publish its own ``turn.keywords`` under any prefix; a stream of
    its making that stores them and republishes each as the session's ``reply.done`` is refused, and no
    forged reply reaches the session."""
    session = pinned.session
    seen = await pinned.operator.subscribe(f"{PINNED}.ev.{session}.reply.>")
    await pinned.operator.flush()
    refusals = Refusals()
    keywords = await connect_as(pinned.server, pinned.users, "keywords", refusals)
    js = keywords.jetstream(timeout=REFUSED_WITHIN)
    own = BY_NAME["turn.keywords"].subject(session, "evil")
    forge = StreamConfig(
        name="FORGE",
        subjects=[own],
        republish=RePublish(src=own, dest=BY_NAME["reply.done"].subject(session, PINNED)),
    )
    await refused(js.add_stream(forge))
    await refusals.until('publish to "$js.api.stream.create.forge"')
    forged = ev.ReplyDone(session_id=session, turn_id="t1", producer="orchestrator", text="forged", agent="general")
    await keywords.publish(own, forged.model_dump_json().encode())
    await keywords.flush()
    with pytest.raises(nats.errors.TimeoutError):
        await seen.next_msg(timeout=0.5)
    with pytest.raises(NotFoundError):
        await pinned.operator.jetstream().stream_info("FORGE")
    await keywords.close()


async def test_workers_on_a_pinned_server_provision_read_and_publish_what_they_declare(pinned: Pinned) -> None:
    """What the permissions allow is enough: on a fresh prefix's streams the keywords worker annotates a
    turn and the stats worker (ephemeral readers of three streams) answers; neither is refused anything."""
    settings = RuntimeSettings(nats_url=plain_url(pinned.server), subject_prefix=PINNED, connect_timeout_s=5)
    settings = settings.model_copy(update={"nats_users_file": pinned.users / access.CREDENTIALS})
    started: list[Worker[Any]] = []
    stats_settings = StatsSettings(**settings.model_dump())
    async with (
        running_worker(KEYWORDS, settings, started=started.append),
        running_worker(STATS, stats_settings, started=started.append),
    ):
        bus = Bus(producer="test", prefix=PINNED)
        bus.attach(pinned.operator)
        tags = await pinned.operator.subscribe(f"{PINNED}.ev.*.annot.keywords")
        await pinned.operator.flush()
        session = new_id()
        await bus.publish(
            ev.UserTurn(session_id=session, turn_id="t1", producer="test", text="I love this", source="typed"),
            durable=True,
        )
        assert (await tags.next_msg(timeout=5)).subject == BY_NAME["turn.keywords"].subject(session, PINNED)
        request = ev.StatsRequest(producer="test", session_id=session, recent_turns=5)
        snapshot = await bus.request("stats.snapshot", request, ev.StatsSnapshot, timeout=5)
        assert snapshot.producer == "stats"
        assert [w.health() for w in started] == [[], []]


async def test_a_worker_leaves_a_stream_that_differs_to_the_operator(pinned: Pinned) -> None:
    """A stream whose limits differ from the contracts: the worker, whose user may not update it, starts
    (a refused update would have failed its start after the request's timeout) and names the difference;
    `sb provision` (as ops) applies it."""
    stream = stream_name(EVENTS, PINNED)
    js = pinned.operator.jetstream()
    await provision(js, (EVENTS,), prefix=PINNED, max_age_overrides={EVENTS.name: 3_600.0})
    settings = RuntimeSettings(
        nats_url=plain_url(pinned.server),
        subject_prefix=PINNED,
        nats_users_file=pinned.users / access.CREDENTIALS,
        connect_timeout_s=5,
    )
    started: list[Worker[Any]] = []
    with capture_logs() as logs:
        async with running_worker(KEYWORDS, settings, started=started.append):
            pass
    [warned] = [e for e in logs if str(e["event"]).startswith("stream differs from the contracts")]
    assert warned["stream"] == stream and set(warned["differences"]) == {"max_age"}
    assert started[0].health() == []
    assert (await js.stream_info(stream)).config.max_age == 3_600.0
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "SB_NATS_URL": plain_url(pinned.server),
        "SB_NATS_USERS_FILE": str(pinned.users / access.CREDENTIALS),
        "SB_SUBJECT_PREFIX": PINNED,
    }
    done = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "ops.cli", "provision"], env=env, capture_output=True, timeout=60
    )
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert (await js.stream_info(stream)).config.max_age == EVENTS.max_age_s
