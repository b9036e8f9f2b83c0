"""What every fuzz example checks: a real socket on the real edge, fuzzed frames, then the protocol's promises.

The promises (docs/protocol.md): a socket is only ever closed with a code of ``CloseCode``; every
``protocol_error`` has a documented code (never ``internal``); after any frames a ``ping`` still gets
its ``pong`` unless the socket was closed (with a documented code); every ``chat`` the edge accepted
(echoed as ``turn.user``) ends with exactly one ``reply.done``; and every process is still healthy
(:func:`healthy`, after examples and after each test: the edge's ``/healthz``, the orchestrator's
health endpoint, both still discovered as ``sb status`` finds them).
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, get_args

import httpx
import websockets
from hypothesis import event
from nats.aio.client import Client
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from contracts.client import CloseCode, ProtocolError

#: Close codes a client may see: the documented ones (1000 and 1001 are ordinary closes too).
DOCUMENTED_CLOSES = frozenset(int(code) for code in CloseCode) | {1000, 1001}
#: ``internal`` is declared but means the edge failed: a fuzzer finding, never an answer.
DOCUMENTED_ERRORS = frozenset(get_args(ProtocolError.model_fields["code"].annotation)) - {"internal"}
#: How long one answer (a pong, a reply.done) may take before the edge counts as hung.
DEADLINE_S = 10.0

_ping_ids = itertools.count()


@dataclass
class Outcome:
    """What a socket received after its fuzzed frames."""

    events: list[dict[str, Any]] = field(default_factory=list)
    close_code: int | None = None
    ponged: bool = False

    @property
    def errors(self) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("kind") == "protocol_error"]

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("kind") == kind]


async def open_socket(base_url: str, **hello: Any) -> ClientConnection:
    """A new session's socket past its welcome."""
    async with httpx.AsyncClient(base_url=base_url) as http:
        token = (await http.post("/v1/sessions")).raise_for_status().json()["token"]
    ws = await websockets.connect(base_url.replace("http", "ws") + "/v1/ws", max_size=2**22)
    await ws.send(json.dumps({"type": "hello", "token": token, **hello}))
    welcome = json.loads(await asyncio.wait_for(ws.recv(), DEADLINE_S))
    assert welcome["kind"] == "welcome", welcome
    return ws


async def _receive(ws: ClientConnection, outcome: Outcome) -> dict[str, Any] | None:
    """The next text event (audio frames are skipped), or None once the socket closed."""
    while True:
        try:
            frame = await asyncio.wait_for(ws.recv(), DEADLINE_S)
        except ConnectionClosed as closed:
            # No close frame at all (1006) is recorded as such and fails the documented-close check.
            outcome.close_code = closed.rcvd.code if closed.rcvd is not None else 1006
            return None
        if isinstance(frame, str):
            event: dict[str, Any] = json.loads(frame)
            outcome.events.append(event)
            return event


async def exchange(ws: ClientConnection, frames: Sequence[str | bytes], chats: int = 0, refill_s: float = 0) -> Outcome:
    """Send ``frames``, then a ping; read until its pong and ``chats`` finished turns, or the close.

    ``chats`` is how many of the frames the edge must accept as chat turns (when the socket stays
    open): each must be echoed as ``turn.user`` and end with one ``reply.done``. A wait that runs out
    raises TimeoutError: the edge hung."""
    outcome = Outcome()
    ping_id = f"fuzz-{next(_ping_ids)}"
    try:
        for frame in frames:
            await ws.send(frame)
        # Pacing, not an assertion: a burst empties the rate bucket, whose refill the ping waits for.
        await asyncio.sleep(refill_s)
        await ws.send(json.dumps({"type": "ping", "id": ping_id}))
    except ConnectionClosed:
        pass  # closed mid-send (4008 after the budget): _receive reads the code
    while (event := await _receive(ws, outcome)) is not None:
        if event.get("kind") == "pong" and event.get("id") == ping_id:
            outcome.ponged = True
        echoed = {e["turn_id"] for e in outcome.of_kind("turn.user")}
        done = {e["turn_id"] for e in outcome.of_kind("reply.done")}
        if outcome.ponged and len(echoed) >= chats and echoed <= done:
            break
    if outcome.close_code is None and chats:
        # A second round trip: a duplicate reply.done sent right after the first would arrive before it.
        await _round_trip(ws, outcome)
    await ws.close()
    return outcome


async def _round_trip(ws: ClientConnection, outcome: Outcome) -> None:
    ping_id = f"fuzz-{next(_ping_ids)}"
    await ws.send(json.dumps({"type": "ping", "id": ping_id}))
    while (event := await _receive(ws, outcome)) is not None:
        if event.get("kind") == "pong" and event.get("id") == ping_id:
            return


def check(outcome: Outcome, chats: int = 0) -> None:
    """The promises every example must keep (see the module docstring)."""
    # Labels for --hypothesis-show-statistics: which refusals and closes the examples reached.
    event(f"closed {outcome.close_code}")
    for code in sorted({e["code"] for e in outcome.errors}):
        event(f"protocol_error {code}")
    if outcome.close_code is not None:
        assert outcome.close_code in DOCUMENTED_CLOSES, f"undocumented close {outcome.close_code}: {outcome.events}"
    else:
        assert outcome.ponged, f"no pong on an open socket: {outcome.events}"
    for error in outcome.errors:
        assert error["code"] in DOCUMENTED_ERRORS, f"undocumented protocol_error: {error}"
        if error["fatal"]:
            assert error["close_code"] in DOCUMENTED_CLOSES, error
    turns = [e["turn_id"] for e in outcome.of_kind("turn.user")]
    dones = [e["turn_id"] for e in outcome.of_kind("reply.done")]
    assert len(set(turns)) == len(turns), f"a turn echoed twice: {turns}"
    for turn in turns if outcome.close_code is None else ():
        assert dones.count(turn) == 1, f"turn {turn} ended {dones.count(turn)} times: {outcome.events}"
    if outcome.close_code is None:
        assert len(turns) == chats, f"{chats} valid chats sent, {len(turns)} echoed: {outcome.events}"


@dataclass(frozen=True)
class Stack:
    """The processes under fuzz: the edge and the orchestrator behind it."""

    url: str  # the edge's base URL
    nc: Client  # the operator's connection, for the orchestrator's health
    orchestrator_id: str  # its service instance (discovery)
    orchestrator_health: str  # the subject of its health endpoint, which ``sb status`` asks


async def healthy(stack: Stack) -> None:
    """The edge answers its /healthz, and the orchestrator its health endpoint, with no problem."""
    async with httpx.AsyncClient(base_url=stack.url) as http:
        response = await http.get("/healthz")
    assert response.status_code == 200, response.text
    reply = json.loads((await stack.nc.request(stack.orchestrator_health, b"", timeout=DEADLINE_S)).data)
    assert reply == {"status": "ok", "problems": []}, reply
