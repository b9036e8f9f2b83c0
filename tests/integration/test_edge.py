"""The real edge over a real NATS: auth, protocol errors, limits, session isolation, backpressure."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator

import jwt
import pytest
import websockets
from nats.aio.client import Client as Nats
from websockets.exceptions import ConnectionClosed

from contracts import events as ev
from contracts.binary import ClientFrame, FrameType
from contracts.client import CloseCode
from contracts.streams import EVENTS
from contracts.subjects import BY_NAME
from tests.support.edge_client import SECRET, connect, new_session, running_edge
from workers.runtime.bus import Bus, flush_ordered
from workers.runtime.provision import stream_name


@pytest.fixture(scope="module")
async def edge(nats_url: str) -> AsyncIterator[str]:
    async with running_edge(nats_url, text_frames_per_s=50.0, burst_s=1.0, max_violations=7) as url:
        yield url


@pytest.fixture
async def bus(nc: Nats) -> Bus:
    bus = Bus(producer="test")
    bus.attach(nc)
    return bus


async def closed_with(base_url: str, hello: dict[str, object] | str | bytes) -> tuple[int, list[str]]:
    """Open a socket, send one first frame, return the close code and the text frames received."""
    frames: list[str] = []
    async with websockets.connect(base_url.replace("http", "ws") + "/v1/ws") as ws:
        await ws.send(hello if isinstance(hello, str | bytes) else json.dumps(hello))
        try:
            while True:
                frame = await asyncio.wait_for(ws.recv(), 5)
                frames.append(str(frame))
        except ConnectionClosed as closed:
            assert closed.rcvd is not None
            return closed.rcvd.code, frames


def token(claims: dict[str, object], secret: str = SECRET) -> str:
    return jwt.encode({"typ": "session", "iat": int(time.time()), **claims}, secret, algorithm="HS256")


async def test_missing_forged_and_expired_tokens_are_refused_with_documented_codes(edge: str) -> None:
    sid = "session-auth-01"
    forged = token({"sid": sid, "exp": int(time.time()) + 60}, secret="not-the-secret" * 4)
    expired = token({"sid": sid, "exp": int(time.time()) - 5})
    cases: list[tuple[dict[str, object] | str, CloseCode]] = [
        ({"type": "hello", "token": forged}, CloseCode.AUTH_INVALID),
        ({"type": "hello", "token": expired}, CloseCode.AUTH_EXPIRED),
        ({"type": "hello", "token": "garbage"}, CloseCode.AUTH_INVALID),
        # Signed with our secret, but no session id of ours: refused, not a dropped socket (1006).
        ({"type": "hello", "token": token({"sid": "../../x", "exp": int(time.time()) + 60})}, CloseCode.AUTH_INVALID),
        ({"type": "hello", "token": token({"sid": ["a"], "exp": int(time.time()) + 60})}, CloseCode.AUTH_INVALID),
        ({"type": "chat", "text": "hi"}, CloseCode.PROTOCOL_ERROR),
        ("not json", CloseCode.PROTOCOL_ERROR),
        ({"type": "hello"}, CloseCode.PROTOCOL_ERROR),
    ]
    for first_frame, code in cases:
        got, frames = await closed_with(edge, first_frame)
        assert got == code, (first_frame, frames)
        assert json.loads(frames[-1])["kind"] == "protocol_error"


async def test_no_hello_in_time_closes_with_auth_missing(nats_url: str) -> None:
    async with (
        running_edge(nats_url, hello_timeout_s=0.3) as url,
        websockets.connect(url.replace("http", "ws") + "/v1/ws") as ws,
    ):
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                await asyncio.wait_for(ws.recv(), 5)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == CloseCode.AUTH_MISSING


async def test_chat_is_published_as_a_user_turn_and_echoed_to_the_client(edge: str, nc: Nats) -> None:
    client = await connect(edge)
    turns = await nc.subscribe(BY_NAME["turn.user"].subject(client.session_id))
    await flush_ordered(nc)
    await client.chat("hello edge")
    turn = ev.UserTurn.model_validate_json((await turns.next_msg(timeout=5)).data)
    assert (turn.text, turn.source, turn.producer) == ("hello edge", "typed", "edge")
    echoed = await client.until(lambda e: e["kind"] == "turn.user")
    assert echoed[-1]["turn_id"] == turn.turn_id
    await client.close()


async def test_settings_ping_and_interrupt_commands(edge: str, nc: Nats) -> None:
    client = await connect(edge)
    settings = await nc.subscribe(BY_NAME["session.settings"].subject(client.session_id))
    await flush_ordered(nc)
    await client.send(type="settings", tone="formal", agent="coach")
    published = ev.SessionSettings.model_validate_json((await settings.next_msg(timeout=5)).data)
    assert (published.tone, published.agent, published.voice) == ("formal", "coach", None)
    await client.send(type="ping", id=7)
    assert (await client.until(lambda e: e["kind"] == "pong"))[-1]["id"] == 7
    await client.send(type="interrupt")
    events = await client.until(lambda e: e["kind"] == "ctl.interrupt")
    assert events[-1]["reason"] == "client"
    await client.close()


async def test_bad_commands_get_protocol_errors_and_the_socket_stays_open(edge: str) -> None:
    client = await connect(edge)
    await client.ws.send("{not json")
    await client.ws.send('{"type": []}')
    await client.send(type="dance")
    await client.send(type="chat", text="")
    await client.send(type="chat", text="x" * 20_000)
    await client.ws.send(b"\x01\x01")
    codes = [(await client.until(lambda e: e["kind"] == "protocol_error"))[-1]["code"] for _ in range(6)]
    assert codes == ["bad_json", "bad_command", "unknown_type", "bad_command", "too_big", "bad_frame"]
    await client.send(type="ping", id="still-open")
    assert (await client.until(lambda e: e["kind"] == "pong"))[-1]["id"] == "still-open"
    await client.close()


async def test_deeply_nested_json_is_refused_and_counted_as_a_violation(edge: str) -> None:
    client = await connect(edge)
    deep = '{"type": "chat", "text": "hi", "x": ' + "[" * 8000 + "]" * 8000 + "}"
    with pytest.raises(ConnectionClosed) as closed:
        for _ in range(20):
            await client.ws.send(deep)
            await client.next_event()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == CloseCode.POLICY
    refusals = [e for e in client.received if e["kind"] == "protocol_error"]
    assert {e["code"] for e in refusals} == {"bad_json"} and "nested deeper" in refusals[0]["message"]
    hello_deep = json.dumps({"type": "hello", "token": "t"})[:-1] + ', "x": ' + "[" * 8000 + "]" * 8000 + "}"
    got, frames = await closed_with(edge, hello_deep)
    assert got == CloseCode.PROTOCOL_ERROR and json.loads(frames[-1])["code"] == "bad_json"


async def test_rate_limit_violations_close_the_socket_and_others_are_unaffected(edge: str) -> None:
    noisy, calm = await connect(edge), await connect(edge)
    for _ in range(200):
        try:
            await noisy.send(type="ping")
        except ConnectionClosed:
            break
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            await noisy.next_event()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == CloseCode.POLICY
    refusals = [e for e in noisy.received if e["kind"] == "protocol_error"]
    assert refusals and all(e["code"] == "rate_limited" for e in refusals)
    assert refusals[-1]["fatal"] and refusals[-1]["close_code"] == CloseCode.POLICY
    assert not any(e["fatal"] for e in refusals[:-1])
    await calm.send(type="ping", id=1)
    assert (await calm.until(lambda e: e["kind"] == "pong"))[-1]["id"] == 1
    await calm.close()


async def test_sockets_per_session_are_limited(edge: str) -> None:
    _, session_token = await new_session(edge)
    first, second = await connect(edge, session_token), await connect(edge, session_token)
    code, _ = await closed_with(edge, {"type": "hello", "token": session_token})
    assert code == CloseCode.TOO_MANY_SOCKETS
    await first.close()
    await asyncio.sleep(0.1)
    third = await connect(edge, session_token)  # a slot is free again: reconnect works
    assert third.session_id == second.session_id
    await second.close()
    await third.close()


async def test_two_sessions_never_see_each_others_events(edge: str, bus: Bus) -> None:
    alice, bob = await connect(edge), await connect(edge)
    for who in (alice, bob):
        await bus.publish(
            ev.ReplyDone(
                session_id=who.session_id, turn_id="t1", producer="test", text=f"for {who.session_id}", agent="general"
            )
        )
    for who in (alice, bob):
        done = (await who.until(lambda e: e["kind"] == "reply.done"))[-1]
        assert done["text"] == f"for {who.session_id}"
    await bob.send(type="ping", id="sync")
    await bob.until(lambda e: e["kind"] == "pong")
    assert all(e.get("session_id") in (None, bob.session_id) for e in bob.received)
    await alice.close()
    await bob.close()


async def test_audio_frames_reach_the_audio_subject(edge: str, nc: Nats) -> None:
    client = await connect(edge, audio={"sample_rate": 16000})
    frames = await nc.subscribe(BY_NAME["audio.in.partition"].subject(client.session_id, partition="*"))
    await flush_ordered(nc)
    await client.ws.send(ClientFrame(FrameType.AUDIO_PCM16, 3, 1.25, b"\x01\x00" * 320).pack())
    msg = await frames.next_msg(timeout=5)
    meta = ev.AudioInMeta.model_validate_json(msg.headers["Sb-Meta"])  # type: ignore[index]
    assert (meta.seq, meta.captured_at, len(msg.data)) == (3, 1.25, 640)
    await client.close()


async def test_interrupt_before_the_first_delta_flushes_the_turn_in_progress(edge: str, bus: Bus) -> None:
    client = await connect(edge)
    await client.chat("a question")
    asked = (await client.until(lambda e: e["kind"] == "turn.user"))[-1]
    await client.send(type="interrupt")
    flush = (await client.until(lambda e: e["kind"] == "flush"))[-1]
    assert flush["turn_id"] == asked["turn_id"]
    await bus.publish(
        ev.ReplyDelta(
            session_id=client.session_id, turn_id=asked["turn_id"], producer="test", seq=0, text="late", agent="g"
        )
    )
    await client.send(type="ping", id="end")
    assert [e["kind"] for e in await client.until(lambda e: e["kind"] == "pong")] == ["ctl.interrupt", "pong"]
    await client.close()


async def test_late_deltas_of_an_interrupted_turn_are_not_forwarded(edge: str, bus: Bus) -> None:
    client = await connect(edge)
    sid = client.session_id

    def delta(i: int) -> ev.ReplyDelta:
        return ev.ReplyDelta(session_id=sid, turn_id="turn-a", producer="test", seq=i, text=f"d{i} ", agent="g")

    await bus.publish(delta(0))
    await client.until(lambda e: e["kind"] == "reply.delta")
    await bus.publish(ev.Interrupt(session_id=sid, producer="test", reason="barge_in"))
    for i in range(1, 4):
        await bus.publish(delta(i))
    await bus.publish(
        ev.ReplyDone(
            session_id=sid, turn_id="turn-a", producer="test", text="d0 d1", agent="g", finish_reason="cancelled"
        )
    )
    events = await client.until(lambda e: e["kind"] == "reply.done")
    kinds = [e["kind"] for e in events]
    assert kinds == ["flush", "ctl.interrupt", "reply.done"], kinds
    assert events[0]["turn_id"] == "turn-a"
    await client.close()


async def test_slow_client_is_bounded_then_disconnected(nats_url: str, bus: Bus) -> None:
    async with running_edge(nats_url, outbound_queue=16) as url:
        client = await connect(url)
        sid = client.session_id
        # The client reads nothing while far more than the queue and the socket buffers hold arrives.
        big = "x" * 8_000
        for i in range(3_000):
            await bus.publish(ev.ReplyDelta(session_id=sid, turn_id="t", producer="test", seq=i, text=big, agent="g"))
        # Must-deliver events keep coming while the writer is blocked on the full socket.
        for i in range(50):
            await bus.publish(ev.ReplyDone(session_id=sid, turn_id=f"t{i}", producer="test", text="", agent="g"))
        await flush_ordered(bus.nc)
        kinds: list[str] = []
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                kinds.append((await client.next_event(timeout=10))["kind"])
        assert closed.value.rcvd is not None and closed.value.rcvd.code == CloseCode.SLOW_CONSUMER
        assert "dropped" in kinds
        assert kinds.count("reply.delta") < 3_000


async def test_a_turn_the_bus_cannot_store_is_refused_to_its_socket_and_a_stored_one_is_echoed_once(
    nats_url: str, nc: Nats
) -> None:
    """The stream that keeps turns is gone (a cluster electing its leader looks the same for a while):
    the edge retries for SB_EDGE_TURN_ACCEPT_S, then tells the sender the turn was not accepted."""
    async with running_edge(nats_url, subject_prefix="unstored", edge_turn_accept_s=1.0) as url:
        client = await connect(url)
        await client.chat("stored")
        [echo] = [e for e in await client.until(lambda e: e["kind"] == "turn.user") if e["kind"] == "turn.user"]
        await nc.jetstream().delete_stream(stream_name(EVENTS, "unstored"))
        await client.chat("not stored")
        events = await client.until(lambda e: e["kind"] == "error", timeout=10)
        error = events[-1]
        assert (error["code"], error["source"], error["retryable"]) == ("turn_not_accepted", "edge", True)
        echoes = [e for e in events if e["kind"] == "turn.user"]
        assert all(e["event_id"] != echo["event_id"] for e in echoes)  # the stored turn was not echoed again
        assert len([e for e in echoes if e["text"] == "not stored"]) <= 1  # one echo however many attempts
        await client.close()
