"""The worker runtime against a real NATS server: dead letters, redelivery, health, drain.

The user-turn tests run twice: the turn reaches the handler through FastStream, or through a
direct subscription (runtime/handling.py); both ways in must give the same guarantees.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from faststream import AckPolicy
from faststream.nats import JStream, NatsRouter, PullSub
from nats.aio.client import Client

from contracts import events as ev
from contracts import headers as h
from contracts.streams import EVENTS, ConsumerSpec
from contracts.subjects import BY_NAME, dead_letter_subject
from tests.contract_tap import DELIBERATELY_INVALID
from workers.runtime import Bus, RuntimeSettings, WorkerSpec, running_worker
from workers.runtime.bus import flush_ordered
from workers.runtime.handling import DirectSubscription
from workers.runtime.tracing import parse_traceparent

SESSION = "session-runtime-1"
FLAKY = ConsumerSpec(durable="test-flaky", stream=EVENTS.name, filter_subjects=(BY_NAME["memory.forget"].wildcard(),),
                     ack_wait_s=2.0, max_deliver=3, description="test consumer that always fails")


class EchoSettings(RuntimeSettings):
    handle_delay_s: float = 0.0
    direct_turns: bool = False  # user turns through a direct subscription instead of FastStream


def answer(settings: EchoSettings, bus: Bus) -> Callable[[ev.UserTurn], Awaitable[None]]:
    async def on_turn(turn: ev.UserTurn) -> None:
        await asyncio.sleep(settings.handle_delay_s)
        await bus.publish(ev.ReplyDone(session_id=turn.session_id, turn_id=turn.turn_id, producer=bus.producer,
                                       text=turn.text.upper(), agent="echo"))

    return on_turn


def build_echo(settings: EchoSettings, bus: Bus) -> NatsRouter:
    """Answers each user turn with a reply; fails on every forget request (to test redelivery)."""
    router = NatsRouter()
    attempts: list[str] = []
    if not settings.direct_turns:
        router.subscriber(BY_NAME["turn.user"].template(), queue="echo")(answer(settings, bus))

    @router.subscriber(FLAKY.filter_subjects[0], stream=JStream(EVENTS.name, declare=False), durable=FLAKY.durable,
                       pull_sub=PullSub(batch_size=1, timeout=0.2), ack_policy=AckPolicy.NACK_ON_ERROR)
    async def on_forget(forget: ev.ForgetSession) -> None:
        attempts.append(forget.event_id)
        raise RuntimeError(f"store down (attempt {len(attempts)})")

    return router


def direct_echo(settings: EchoSettings, bus: Bus) -> list[DirectSubscription[ev.UserTurn]]:
    if not settings.direct_turns:
        return []
    return [DirectSubscription("turn.user", ev.UserTurn, answer(settings, bus), queue="echo")]


ECHO = WorkerSpec(name="echo", description="test worker", settings=EchoSettings, build=build_echo,
                  consumers=(FLAKY,), direct=direct_echo)
WAYS_IN = pytest.mark.parametrize("direct", [False, True], ids=["faststream", "direct"])
ECHO_WAYS_IN = pytest.mark.parametrize("echo", [False, True], ids=["faststream", "direct"], indirect=True)


@pytest.fixture
async def echo(nats_url: str, request: pytest.FixtureRequest) -> AsyncIterator[Bus]:
    direct = getattr(request, "param", False)
    async with running_worker(ECHO, EchoSettings(nats_url=nats_url, max_deliver=3, direct_turns=direct)) as bus:
        yield bus


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
    bad = json.dumps({"kind": "turn.user", "session_id": SESSION, "turn_id": "t2", "producer": "test",
                      "source": "typed", "text": ""}).encode()
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
async def test_stop_drains_in_flight_work(nats_url: str, nc: Client, direct: bool) -> None:
    replies = await nc.subscribe(BY_NAME["reply.done"].subject(SESSION))
    await flush_ordered(nc)
    settings = EchoSettings(nats_url=nats_url, handle_delay_s=0.5, direct_turns=direct)
    async with running_worker(ECHO, settings) as bus:
        await bus.publish(user_turn("in flight", "t9"))
        await asyncio.sleep(0.1)  # the handler is now sleeping mid-turn
    reply = ev.ReplyDone.model_validate_json((await replies.next_msg(timeout=2)).data)
    assert reply.text == "IN FLIGHT"
