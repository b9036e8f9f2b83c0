"""User turns are durable and answered exactly once (issue 15, observation 1), and JetStream consumers
survive what the server does to them (observation 2): real NATS servers, the real orchestrator and
stats worker, the scripted OpenAI-compatible server.

Each test uses its own subject prefix (its own streams and consumers) on the shared server, or its
own server where the test restarts it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from nats.aio.client import Client

from contracts import events as ev
from contracts.envelope import new_id
from contracts.streams import EVENTS, STREAMS, USER_TURNS
from contracts.subjects import BY_NAME
from ops.servers import free_port, start_nats
from ops.stack import NATS_CONF
from tests.support.scripted_llm import ScriptedLLM
from workers.orchestrator.worker import WORKER as ORCHESTRATOR
from workers.orchestrator.worker import OrchestratorSettings
from workers.runtime import Bus, running_worker
from workers.runtime.bus import flush_ordered
from workers.runtime.provision import consumer_config, provision, stream_name
from workers.stats.worker import WORKER as STATS
from workers.stats.worker import StatsSettings


def orchestrator_settings(
    nats_url: str, llm: ScriptedLLM, prefix: str, turn_deadline_s: float = 120.0
) -> OrchestratorSettings:
    return OrchestratorSettings(
        nats_url=nats_url,
        llm_base_url=llm.base_url,
        subject_prefix=prefix,
        memory_timeout_s=0.05,
        retrieval_timeout_s=0.05,
        connect_timeout_s=5,
        turn_deadline_s=turn_deadline_s,
    )


class Replies:
    """Every reply.done and error of a prefix, by turn."""

    def __init__(self) -> None:
        self.done: dict[str, list[ev.ReplyDone]] = {}
        self.errors: dict[str, list[ev.ErrorEvent]] = {}

    @contextlib.asynccontextmanager
    async def watching(self, nc: Client, prefix: str) -> AsyncIterator[Replies]:
        async def on_done(msg: object) -> None:
            done = ev.ReplyDone.model_validate_json(msg.data)  # type: ignore[attr-defined]
            self.done.setdefault(done.turn_id, []).append(done)

        async def on_error(msg: object) -> None:
            error = ev.ErrorEvent.model_validate_json(msg.data)  # type: ignore[attr-defined]
            self.errors.setdefault(error.turn_id or "", []).append(error)

        subs = [
            await nc.subscribe(BY_NAME["reply.done"].wildcard(prefix), cb=on_done),
            await nc.subscribe(BY_NAME["error"].wildcard(prefix), cb=on_error),
        ]
        await flush_ordered(nc)
        try:
            yield self
        finally:
            for sub in subs:
                await sub.unsubscribe()

    async def until_answered(self, turn_ids: list[str], within: float) -> None:
        deadline = asyncio.get_running_loop().time() + within
        while missing := [t for t in turn_ids if t not in self.done]:
            assert asyncio.get_running_loop().time() < deadline, f"turns never answered: {missing}"
            await asyncio.sleep(0.05)

    def answered_twice(self) -> list[str]:
        return [turn for turn, done in self.done.items() if len(done) > 1]


async def send_turn(bus: Bus, session: str, text: str) -> str:
    turn = ev.UserTurn(session_id=session, turn_id=new_id(), producer="edge", text=text, source="typed")
    await bus.publish(turn, durable=True)
    return turn.turn_id


@contextlib.asynccontextmanager
async def client_bus(nats_url: str, prefix: str) -> AsyncIterator[Bus]:
    import nats

    nc = await nats.connect(nats_url, reconnect_time_wait=0.2, max_reconnect_attempts=-1)
    bus = Bus(producer="test", prefix=prefix)  # plays the edge (and, once, a dying orchestrator replica)
    bus.attach(nc)
    await provision(bus.js, STREAMS, (USER_TURNS,), prefix)  # as the edge does
    try:
        yield bus
    finally:
        await nc.drain()


async def test_turns_sent_while_no_orchestrator_runs_are_answered_once_when_one_comes_back(
    nats_url: str, nc: Client, llm: ScriptedLLM
) -> None:
    prefix = "durable1"
    replies = Replies()
    async with client_bus(nats_url, prefix) as bus, replies.watching(nc, prefix):
        async with running_worker(ORCHESTRATOR, orchestrator_settings(nats_url, llm, prefix)):
            first = await send_turn(bus, new_id(), "before the crash")
            await replies.until_answered([first], 10)
        # No orchestrator runs now: these turns wait in the stream.
        waiting = [await send_turn(bus, new_id(), f"while down {i}") for i in range(5)]
        await asyncio.sleep(0.3)
        assert not [t for t in waiting if t in replies.done]
        async with (
            running_worker(ORCHESTRATOR, orchestrator_settings(nats_url, llm, prefix)),
            running_worker(ORCHESTRATOR, orchestrator_settings(nats_url, llm, prefix)),
        ):
            await replies.until_answered(waiting, 15)
            await asyncio.sleep(0.5)  # a second answer would come now
    assert replies.answered_twice() == []
    assert {replies.done[t][0].finish_reason for t in waiting} == {"stop"}


async def test_a_turn_older_than_the_deadline_gets_an_error_instead_of_a_late_reply(
    nats_url: str, nc: Client, llm: ScriptedLLM
) -> None:
    prefix = "durable2"
    replies = Replies()
    async with client_bus(nats_url, prefix) as bus, replies.watching(nc, prefix):
        stale = await send_turn(bus, new_id(), "nobody hears this in time")
        await asyncio.sleep(1.2)
        async with running_worker(ORCHESTRATOR, orchestrator_settings(nats_url, llm, prefix, turn_deadline_s=1.0)):
            await replies.until_answered([stale], 10)
    done = replies.done[stale]
    assert len(done) == 1 and done[0].finish_reason == "error" and done[0].text == ""
    assert [e.code for e in replies.errors[stale]] == ["turn_not_answered"]


async def test_a_redelivered_turn_that_was_answered_is_not_answered_again(
    nats_url: str, nc: Client, llm: ScriptedLLM
) -> None:
    prefix = "durable3"
    replies = Replies()
    async with client_bus(nats_url, prefix) as bus, replies.watching(nc, prefix):
        session = new_id()
        await bus.js.add_consumer(stream_name(EVENTS, prefix), consumer_config(USER_TURNS, prefix))
        answered = await send_turn(bus, session, "answered by a replica that died before its ack")
        # That replica: takes the turn, answers it, dies before acking (a nak redelivers it at once).
        pull = await bus.js.pull_subscribe_bind(USER_TURNS.durable, stream_name(EVENTS, prefix))
        [held] = await pull.fetch(1, timeout=5)
        await bus.publish(
            ev.ReplyDone(
                session_id=session, turn_id=answered, producer="orchestrator", text="the first answer", agent="general"
            ),
            durable=True,
        )
        await held.nak()
        await pull.unsubscribe()
        async with running_worker(ORCHESTRATOR, orchestrator_settings(nats_url, llm, prefix)):
            later = await send_turn(bus, session, "and then this")
            await replies.until_answered([later], 10)
            await asyncio.sleep(0.3)
    assert [d.text for d in replies.done[answered]] == ["the first answer"]


async def test_turns_and_stats_survive_a_nats_server_restart(tmp_path: Path, llm: ScriptedLLM) -> None:
    """The orchestrator's durable consumer and the stats worker's recorded read both carry on after the
    server restarts (the stats consumer used to fail re-creation with JetStream error 10094)."""
    port = free_port()
    server = start_nats(tmp_path / "store", port=port, config=NATS_CONF)
    url = server.url
    prefix = "sb"
    replies = Replies()
    try:
        async with (
            client_bus(url, prefix) as bus,
            client_bus(url, prefix) as watcher,
            replies.watching(watcher.nc, prefix),
            running_worker(ORCHESTRATOR, orchestrator_settings(url, llm, prefix)),
            running_worker(STATS, StatsSettings(nats_url=url, connect_timeout_s=5)),
        ):
            session = new_id()
            before = [await send_turn(bus, session, f"before {i}") for i in range(3)]
            await replies.until_answered(before, 10)
            server.stop()
            server = start_nats(tmp_path / "store", port=port, config=NATS_CONF)
            after: list[str] = []
            async with asyncio.timeout(20):
                while len(after) < 3:
                    try:
                        after.append(await send_turn(bus, session, f"after {len(after)}"))
                    except Exception:  # the client is still reconnecting
                        await asyncio.sleep(0.2)
            await replies.until_answered(after, 20)
            assert replies.answered_twice() == []
            async with asyncio.timeout(20):
                while True:
                    request = ev.StatsRequest(producer="test", session_id=session, recent_turns=20)
                    snapshot = await bus.request("stats.snapshot", request, ev.StatsSnapshot, timeout=2)
                    counted = {t.turn_id for t in snapshot.recent}
                    if set(after) <= counted:
                        break
                    await asyncio.sleep(0.3)
    finally:
        server.stop()
