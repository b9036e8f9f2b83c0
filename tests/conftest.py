"""Shared fixtures: one real NATS server (JetStream, temporary store) per test session."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client

from ops import access
from ops.servers import RunningServer, start_nats
from ops.stack import NATS_CONF
from tests.contract_tap import ContractTap
from tests.support.scripted_llm import ScriptedLLM
from workers.runtime.logging import configure_logging

configure_logging("warning", "json")


@pytest.fixture(scope="session")
def bus_users(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The NATS users of the session's server (ops/access.py). Every worker and edge a test runs in
    this process connects as its own service user, with its real permissions; other clients
    (tests, tools, test-only workers) as ``ops``."""
    folder = tmp_path_factory.mktemp("nats-auth")
    access.credentials(folder)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SB_NATS_USERS_FILE", str(folder / access.CREDENTIALS))
        yield folder


def many_prefixes_config(folder: Path) -> Path:
    """infra/nats.conf with room for the suite's many subject prefixes: each prefix's streams reserve
    their max_bytes (~2.5 GB) against max_file_store, which is accounting, not disk used."""
    path = folder / "nats-tests.conf"
    path.write_text(NATS_CONF.read_text().replace("max_file_store: 64GB", "max_file_store: 4TB"))
    return path


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory, bus_users: Path) -> Iterator[RunningServer]:
    """A real nats-server -js on a free loopback port with a temporary store, requiring credentials."""
    # The suite's many random prefixes name their own streams (SB_EVENTS_<PREFIX>): the services' JetStream
    # grants take any stream token here (ops/access.py, prefixes=None); tests/integration/test_bus_access.py
    # starts a server pinned to one prefix.
    config = access.server_config(many_prefixes_config(bus_users), bus_users, prefixes=None)
    server = start_nats(tmp_path_factory.mktemp("nats") / "store", config=config)
    server.url = access.url_with_user(server.url, bus_users)  # as the operator
    yield server
    server.stop()


@pytest.fixture(scope="session")
async def contract_tap(nats_server: RunningServer) -> AsyncIterator[ContractTap]:
    """Validates every message published during the session against the contracts."""
    tap = ContractTap()
    client = await nats.connect(nats_server.url)
    await tap.start(client)
    yield tap
    await client.flush()
    await client.drain()
    assert not tap.violations, "messages that break the contracts:\n" + "\n".join(tap.violations[:20])


@pytest.fixture(scope="session")
def nats_url(nats_server: RunningServer, contract_tap: ContractTap) -> str:
    return nats_server.url


@pytest.fixture
async def nc(nats_url: str) -> AsyncIterator[Client]:
    client = await nats.connect(nats_url)
    yield client
    await client.drain()


@pytest.fixture(scope="module")
async def llm() -> AsyncIterator[ScriptedLLM]:
    """The scripted OpenAI-compatible server (real HTTP and server-sent events)."""
    async with ScriptedLLM() as server:
        yield server
