"""An optional worker end to end: WebSocket -> edge -> NATS -> keywords worker -> NATS -> edge -> WebSocket.

No orchestrator runs and the edge is unchanged: it forwards ``annot.keywords`` only because
the subject is declared with ``to_client=True``. Prefix "kw" keeps these sessions apart
from other tests on the shared NATS server.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.support.edge_client import Client, connect, running_edge
from workers.keywords.worker import WORKER
from workers.runtime import RuntimeSettings, running_worker

PREFIX = "kw"


@pytest.fixture(scope="module")
async def edge(nats_url: str) -> AsyncIterator[str]:
    settings = RuntimeSettings(nats_url=nats_url, subject_prefix=PREFIX)
    # Two replicas in one queue group: every turn must still be tagged exactly once.
    async with (
        running_worker(WORKER, settings),
        running_worker(WORKER, settings),
        running_edge(nats_url, subject_prefix=PREFIX) as url,
    ):
        yield url


async def keywords_of(client: Client, text: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Send a chat turn; return its echoed ``turn.user`` and the ``annot.keywords`` for that turn."""
    await client.chat(text)
    turn = (await client.until(lambda e: e["kind"] == "turn.user"))[-1]
    tags = (await client.until(lambda e: e["kind"] == "annot.keywords" and e["turn_id"] == turn["turn_id"]))[-1]
    return turn, tags


async def test_edge_forwards_the_keywords_of_a_typed_turn(edge: str) -> None:
    client = await connect(edge)
    turn, tags = await keywords_of(client, "I love the new pricing page, it is great")
    assert turn["text"] == "I love the new pricing page, it is great"
    assert tags["keywords"] == ["love", "new", "pricing", "page", "great"]
    assert tags["sentiment"] == "positive" and tags["score"] == 1.0
    assert tags["session_id"] == client.session_id and tags["producer"] == "keywords"
    assert tags["schema_version"] == 1
    await client.close()


async def test_each_turn_is_tagged_once_and_only_for_its_session(edge: str) -> None:
    first, second = await connect(edge), await connect(edge)
    _, tags = await keywords_of(first, "the checkout is not fast, the checkout form is confusing")
    assert tags["keywords"][0] == "checkout" and tags["sentiment"] == "negative"
    # A second replica would answer within this pause if the queue group did not hold.
    await asyncio.sleep(0.3)
    await first.send(type="ping", id="after")
    tail = await first.until(lambda e: e["kind"] == "pong")
    assert [e["kind"] for e in tail] == ["pong"]
    # The other session saw none of it.
    await second.send(type="ping", id="quiet")
    assert [e["kind"] for e in await second.until(lambda e: e["kind"] == "pong")] == ["pong"]
    await first.close()
    await second.close()
