"""Shared fixtures: one real NATS server (JetStream, temporary store) per test session."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import nats
import pytest
from nats.aio.client import Client

from ops.servers import RunningServer, start_nats
from ops.stack import NATS_CONF
from tests.contract_tap import ContractTap
from tests.support.scripted_llm import ScriptedLLM
from workers.runtime.logging import configure_logging

configure_logging("warning", "json")


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """A real nats-server -js on a free loopback port with a temporary store."""
    server = start_nats(tmp_path_factory.mktemp("nats") / "store", config=NATS_CONF)
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
