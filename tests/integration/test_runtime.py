"""The worker runtime against a real NATS server: dead letters, redelivery, health, drain.

The user-turn tests run twice: the turn reaches the handler through a core NATS subscription,
or through a durable JetStream consumer; both ways in must give the same guarantees.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator

import pytest
from nats.aio.client import Client
from nats.js.errors import NotFoundError

from contracts import events as ev
from contracts import headers as h
from contracts.envelope import new_id
from contracts.streams import EVENTS, STREAMS, ConsumerSpec
from contracts.subjects import BY_NAME, dead_letter_subject
from tests.contract_tap import DELIBERATELY_INVALID
from tests.support.bus import client_bus
from tests.support.waiting import eventually
from workers.runtime import Bus, RuntimeSettings, Worker, consumes, running_worker, serves
from workers.runtime.bus import flush_ordered
from workers.runtime.provision import provision, stream_name
from workers.runtime.tracing import parse_traceparent

SESSION = "session-runtime-1"
ECHO_TURNS = ConsumerSpec(
    durable="test-echo-turns",
    stream=EVENTS.name,
    filter_subjects=(BY_NAME["turn.user"].wildcard(),),
    ack_wait_s=2.0,
    max_deliver=3,
    deliver="new",
    description="test consumer of user turns",
)
FLAKY = ConsumerSpec(
    durable="test-flaky",
    stream=EVENTS.name,
    filter_subjects=(BY_NAME["memory.forget"].wildcard(),),
    ack_wait_s=2.0,
    max_deliver=3,
    description="test consumer that always fails",
)


class EchoSettings(RuntimeSettings):
    handle_delay_s: float = 0.0


class Echo(Worker[EchoSettings]):
    """Answers each user turn with a reply; fails on every forget request (to test redelivery)."""

    name = "echo"
    description = "test worker"

    def __init__(self, settings: EchoSettings, bus: Bus) -> None:
        super().__init__(settings, bus)
        self.attempts: list[str] = []

    async def answer(self, turn: ev.UserTurn) -> None:
        await asyncio.sleep(self.settings.handle_delay_s)
        await self.bus.publish(
            ev.ReplyDone(
                session_id=turn.session_id,
                turn_id=turn.turn_id,
                producer=self.bus.producer,
                text=turn.text.upper(),
                agent="echo",
            )
        )

    @consumes(delivery="jetstream", durable=FLAKY)
    async def on_forget(self, forget: ev.ForgetSession) -> None:
        self.attempts.append(forget.event_id)
        raise RuntimeError(f"store down (attempt {len(self.attempts)})")


class DirectEcho(Echo):
    @consumes("turn.user", queue="echo")
    async def on_turn(self, turn: ev.UserTurn) -> None:
        await self.answer(turn)


class DurableEcho(Echo):
    @consumes("turn.user", delivery="jetstream", durable=ECHO_TURNS)
    async def on_turn(self, turn: ev.UserTurn) -> None:
        await self.answer(turn)


WAYS_IN = pytest.mark.parametrize("worker", [DirectEcho, DurableEcho], ids=["direct", "jetstream"])
ECHO_WAYS_IN = pytest.mark.parametrize("echo", [DirectEcho, DurableEcho], ids=["direct", "jetstream"], indirect=True)


@pytest.fixture
async def echo(nats_url: str, nc: Client, request: pytest.FixtureRequest) -> AsyncIterator[Bus]:
    worker: type[Echo] = getattr(request, "param", DirectEcho)
    await without_backlog(nc)
    async with running_worker(worker, EchoSettings(nats_url=nats_url, max_deliver=3)) as bus:
        yield bus


async def without_backlog(nc: Client) -> None:
    """The durable echo starts afresh: turns other tests sent while it did not run are not its business."""
    with contextlib.suppress(NotFoundError):
        await nc.jetstream().delete_consumer(EVENTS.name, ECHO_TURNS.durable)


def user_turn(text: str, turn_id: str = "t1") -> ev.UserTurn:
    return ev.UserTurn(session_id=SESSION, turn_id=turn_id, text=text, source="typed", producer="test")


@ECHO_WAYS_IN
async def test_worker_handles_a_valid_event_within_its_trace(echo: Bus, nc: Client) -> None:
    turns = await nc.subscribe(BY_NAME["turn.user"].subject(SESSION))
    replies = await nc.subscribe(BY_NAME["reply.done"].subject(SESSION))
    await flush_ordered(nc)
    await echo.publish(user_turn("hello"))
    message = await replies.next_msg(timeout=5)
    reply = ev.ReplyDone.model_validate_json(message.data)
    assert (reply.text, reply.turn_id, reply.producer) == ("HELLO", "t1", "echo")
    turn_span = parse_traceparent(((await turns.next_msg(timeout=5)).headers or {}).get(h.TRACEPARENT))
    reply_headers = message.headers or {}
    reply_span = parse_traceparent(reply_headers.get(h.TRACEPARENT))
    assert turn_span and reply_span and reply_span.trace_id == turn_span.trace_id
    assert reply_headers.get(h.PARENT_SPAN) == turn_span.span_id  # published while handling the turn


@ECHO_WAYS_IN
async def test_invalid_event_is_dead_lettered_and_the_worker_carries_on(echo: Bus, nc: Client) -> None:
    letters = await nc.subscribe(dead_letter_subject("echo"))
    await flush_ordered(nc)
    replies = await nc.subscribe(BY_NAME["reply.done"].subject(SESSION))
    await flush_ordered(nc)
    bad = json.dumps(
        {"kind": "turn.user", "session_id": SESSION, "turn_id": "t2", "producer": "test", "source": "typed", "text": ""}
    ).encode()
    on_purpose = {DELIBERATELY_INVALID: "1"}
    await nc.publish(BY_NAME["turn.user"].subject(SESSION), bad, headers=on_purpose)
    await nc.publish(BY_NAME["turn.user"].subject(SESSION), b"\xff not json", headers=on_purpose)
    first = ev.DeadLetter.model_validate_json((await letters.next_msg(timeout=5)).data)
    second = ev.DeadLetter.model_validate_json((await letters.next_msg(timeout=5)).data)
    assert "text" in first.reason and first.error_type == "ValidationError"
    assert first.original_subject == BY_NAME["turn.user"].subject(SESSION)
    assert second.deliveries == 1 and second.reason
    await echo.publish(user_turn("still alive", "t3"))
    reply = ev.ReplyDone.model_validate_json((await replies.next_msg(timeout=5)).data)
    assert reply.text == "STILL ALIVE"


async def test_failing_durable_message_is_redelivered_then_dead_lettered(echo: Bus, nc: Client) -> None:
    letters = await nc.subscribe(dead_letter_subject("echo"))
    await flush_ordered(nc)
    forget = ev.ForgetSession(session_id=SESSION, producer="test")
    await echo.publish(forget, durable=True)
    letter = ev.DeadLetter.model_validate_json((await letters.next_msg(timeout=20)).data)
    assert letter.deliveries == 3
    assert letter.reason.startswith("RuntimeError: store down")
    # After dead-lettering, the message is acked: nothing is pending or redelivered.
    await asyncio.sleep(0.5)
    info = await nc.jetstream().consumer_info(EVENTS.name, FLAKY.durable)
    assert info.num_ack_pending == 0 and info.num_pending == 0


async def test_worker_answers_service_discovery(echo: Bus, nc: Client) -> None:
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    await flush_ordered(nc)
    await nc.publish("$SRV.PING.echo", b"", reply=inbox)
    pong = json.loads((await sub.next_msg(timeout=2)).data)
    assert pong["name"] == "echo" and pong["type"] == "io.nats.micro.v1.ping_response"


@WAYS_IN
async def test_stop_drains_in_flight_work(nats_url: str, nc: Client, worker: type[Echo]) -> None:
    replies = await nc.subscribe(BY_NAME["reply.done"].subject(SESSION))
    await flush_ordered(nc)
    settings = EchoSettings(nats_url=nats_url, handle_delay_s=0.5)
    await without_backlog(nc)
    async with running_worker(worker, settings) as bus:
        await bus.publish(user_turn("in flight", "t9"))
        await asyncio.sleep(0.1)  # the handler is now sleeping mid-turn
    reply = ev.ReplyDone.model_validate_json((await replies.next_msg(timeout=2)).data)
    assert reply.text == "IN FLIGHT"


async def test_a_consumer_the_server_lost_is_recreated_where_it_was_and_health_says_so_meanwhile(
    nats_url: str, nc: Client
) -> None:
    """Deleted under a running worker (an operator's mistake, a lost replica): the worker re-creates the consumer
    after the last turn it saw (old turns are not answered again); while it cannot (its stream is gone too), its
    health says so."""
    prefix = "lost"
    started: list[Echo] = []
    replies = await nc.subscribe(BY_NAME["reply.done"].subject(SESSION, prefix))
    await flush_ordered(nc)
    settings = EchoSettings(nats_url=nats_url, subject_prefix=prefix)
    async with running_worker(DurableEcho, settings, started=started.append) as bus:
        worker, stream = started[0], stream_name(EVENTS, prefix)

        async def answered(text: str, turn_id: str) -> None:
            await bus.publish(user_turn(text, turn_id), durable=True)
            reply = ev.ReplyDone.model_validate_json((await replies.next_msg(timeout=15)).data)
            assert (reply.turn_id, reply.text) == (turn_id, text.upper())

        await answered("before", "lost-1")
        await nc.jetstream().delete_consumer(stream, ECHO_TURNS.durable)
        await answered("after", "lost-2")
        await nc.jetstream().delete_stream(stream)
        await eventually(lambda: ECHO_TURNS.durable in " ".join(worker.health()), 15)
        await provision(nc.jetstream(), STREAMS, (), prefix)
        await eventually(lambda: not worker.health(), 15)
        await answered("back", "lost-3")
    with pytest.raises(TimeoutError):  # nothing was answered a second time
        await replies.next_msg(timeout=0.5)


async def test_health_endpoint_reports_problems(echo: Bus, nc: Client) -> None:
    info = json.loads((await nc.request("$SRV.INFO.echo", b"", timeout=2)).data)
    [health] = [e["subject"] for e in info["endpoints"] if e["name"] == "health"]
    assert json.loads((await nc.request(health, b"", timeout=2)).data) == {"status": "ok", "problems": []}


BATCH_TURNS = ConsumerSpec(
    durable="test-batch-turns",
    stream=EVENTS.name,
    filter_subjects=(BY_NAME["turn.user"].wildcard(),),
    ack_wait_s=2.0,
    max_deliver=3,
    description="test consumer handing turns over in batches",
)


class BatchEcho(Echo):
    """Writes batches of turns; a turn saying "poison" makes any batch holding it fail."""

    def __init__(self, settings: EchoSettings, bus: Bus) -> None:
        super().__init__(settings, bus)
        self.written: list[str] = []

    @consumes("turn.user", delivery="jetstream", durable=BATCH_TURNS, batch=8)
    async def on_turns(self, turns: list[ev.UserTurn]) -> None:
        if any(t.text == "poison" for t in turns):
            raise RuntimeError("cannot write this batch")
        self.written.extend(t.turn_id for t in turns)


async def test_a_poison_message_in_a_batch_is_dead_lettered_alone_and_its_batch_is_written(
    nats_url: str, nc: Client
) -> None:
    prefix = "batch"
    started: list[BatchEcho] = []
    letters = await nc.subscribe(dead_letter_subject("echo", prefix))
    await flush_ordered(nc)
    async with running_worker(
        BatchEcho, EchoSettings(nats_url=nats_url, subject_prefix=prefix, max_deliver=3), started=started.append
    ) as bus:
        for turn_id, text in (("good-1", "one"), ("bad", "poison"), ("good-2", "two")):
            await bus.publish(user_turn(text, turn_id), durable=True)
        letter = ev.DeadLetter.model_validate_json((await letters.next_msg(timeout=20)).data)
        await eventually(lambda: len(started[0].written) == 2, 10)
    assert started[0].written == ["good-1", "good-2"]
    assert letter.deliveries == 3 and "cannot write this batch" in letter.reason
    assert letter.headers.get("Sb-Turn") == "bad"


class SlowContext(Worker[EchoSettings]):
    """Answers memory context after a slow read; records how many answers ran at once."""

    name = "slowcontext"
    description = "test worker"
    running = 0
    most = 0

    @serves("memory.context", queue="slowcontext")
    async def on_context(self, request: ev.ContextRequest) -> ev.ContextReply:
        SlowContext.running += 1
        SlowContext.most = max(SlowContext.most, SlowContext.running)
        await asyncio.sleep(0.3)  # a read from a busy document store
        SlowContext.running -= 1
        return ev.ContextReply(session_id=request.session_id, producer="slowcontext", summary=request.event_id)


class OneAtATime(SlowContext):
    name = "oneatatime"

    @serves("memory.context", queue="oneatatime", max_in_flight=1)
    async def on_context(self, request: ev.ContextRequest) -> ev.ContextReply:
        return await super().on_context(request)


@pytest.mark.parametrize(("worker", "most"), [(SlowContext, 8), (OneAtATime, 1)], ids=["default", "declared-1"])
async def test_requests_are_answered_at_once_up_to_the_declared_limit(
    nats_url: str, worker: type[SlowContext], most: int
) -> None:
    # Seen under load: memory answered context requests one at a time, so at 200 turns a second most
    # requests waited past the orchestrator's 250 ms deadline while the worker's CPU idled.
    SlowContext.running = SlowContext.most = 0
    prefix = f"serves{most}"
    async with (
        running_worker(worker, EchoSettings(nats_url=nats_url, subject_prefix=prefix)),
        client_bus(nats_url, prefix) as client,
    ):
        requests = [ev.ContextRequest(session_id=new_id(), producer="test") for _ in range(8)]
        asked = [client.request("memory.context", r, ev.ContextReply, timeout=5.0) for r in requests]
        began = asyncio.get_running_loop().time()
        replies = await asyncio.gather(*asked)
        took = asyncio.get_running_loop().time() - began
    assert [r.summary for r in replies] == [r.event_id for r in requests]  # each its own answer
    assert SlowContext.most == most
    assert most > 1 or took >= 8 * 0.3  # declared one at a time: each waits for the one before
