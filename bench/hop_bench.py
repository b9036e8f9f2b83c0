"""What one hop costs on this machine, back to back and after a pause (cold).

The chat benchmark's sessions send one turn per second, so every hop of a turn runs on code
that has been idle; this script shows how much that costs per kind of hop, each beside its
own raw baseline measured in the same run:

  nats     a UserTurn published -> the handler has it: a raw nats-py subscriber that
           validates the event (baseline) vs the worker runtime's direct delivery (core NATS
           under its handling scope: log and trace context, metrics, dead letters) vs its
           jetstream delivery (stored in SB_EVENTS first, pulled by a durable consumer, acked
           after the handler: how user turns reach the orchestrator)
  ws       a chat frame's round trip through uvicorn + Starlette (echo), for uvicorn's
           WebSocket protocols: websockets-sansio (the edge's) and websockets (legacy)

    .venv/bin/python bench/hop_bench.py [--messages 2000] [--pause-ms 10]
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import nats
import uvloop
import websockets
from nats.aio.msg import Msg

from contracts import events as ev
from contracts.envelope import new_id
from contracts.headers import MSG_ID
from contracts.streams import STREAMS, USER_TURNS
from ops.servers import free_port, start_nats, wait_for_port
from workers.runtime.bus import Bus, flush_ordered, headers_for
from workers.runtime.consumes import Consumption
from workers.runtime.logging import configure_logging
from workers.runtime.provision import provision
from workers.runtime.transports import transport_for

TURN_SESSION = "bench-session-1"
SUBJECT = f"bench.ev.{TURN_SESSION}.turn.user"  # what BY_NAME["turn.user"] is under the prefix "bench"
TURN = ev.UserTurn(
    session_id=TURN_SESSION, turn_id="t" * 32, producer="edge", text="hello there", source="typed", captured_at=1.0
)
FRAME = '{"type": "chat", "text": "hello there"}'
ECHO_SERVER = """
import sys, uvicorn
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute

async def echo(ws):
    await ws.accept()
    while (message := await ws.receive())["type"] != "websocket.disconnect":
        await ws.send_text(message["text"])

uvicorn.run(Starlette(routes=[WebSocketRoute("/ws", echo)]), host="127.0.0.1", port=int(sys.argv[1]),
            ws=sys.argv[2], ws_per_message_deflate=False, log_level="warning")
"""

Handler = Callable[[ev.UserTurn], Awaitable[None]]
Stop = Callable[[], Awaitable[None]]


def p50(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def line(name: str, hot: list[float], cold: list[float], baseline: tuple[list[float], list[float]] | None) -> str:
    text = f"{name:44} back to back p50 {p50(hot):7.0f} us   after a pause p50 {p50(cold):7.0f} us"
    if baseline:
        text += f"   (+{p50(hot) - p50(baseline[0]):.0f} / +{p50(cold) - p50(baseline[1]):.0f} us over the baseline)"
    return text


async def raw_subscriber(url: str, handler: Handler) -> Stop:
    nc = await nats.connect(url)

    async def on_message(msg: Msg) -> None:
        await handler(ev.UserTurn.model_validate_json(msg.data))

    await nc.subscribe(SUBJECT, cb=on_message)
    await nc.flush()
    return nc.close


async def runtime_subscriber(url: str, handler: Handler, consumption: Consumption) -> Stop:
    bus = Bus("bench", prefix="bench")
    bus.attach(await nats.connect(url))
    await provision(bus.js, STREAMS, (USER_TURNS,), "bench")

    async def on_turn(turn: ev.UserTurn) -> None:
        await handler(turn)

    transport = transport_for(bus, "bench", consumption, on_turn, 5, 0.0)
    await transport.start()
    await flush_ordered(bus.nc)

    async def stop() -> None:
        await transport.stop()
        await bus.nc.close()

    return stop


async def direct_subscriber(url: str, handler: Handler) -> Stop:
    return await runtime_subscriber(url, handler, Consumption(method="on_turn", subject="turn.user", delivery="direct"))


async def jetstream_subscriber(url: str, handler: Handler) -> Stop:
    return await runtime_subscriber(
        url,
        handler,
        Consumption(
            method="on_turn",
            subject="turn.user",
            delivery="jetstream",
            durable=USER_TURNS,
            max_in_flight=USER_TURNS.max_ack_pending,
        ),
    )


async def nats_hops(
    url: str, start: Callable[[str, Handler], Awaitable[Stop]], count: int, pause_s: float
) -> list[float]:
    arrived = asyncio.Event()
    at = 0.0

    async def handler(_: ev.UserTurn) -> None:
        nonlocal at
        at = time.perf_counter()
        arrived.set()

    stop = await start(url, handler)
    publisher = await nats.connect(url)
    payload, headers = TURN.model_dump_json().encode(), headers_for(TURN)
    took: list[float] = []
    try:
        for _ in range(count):
            arrived.clear()
            headers[MSG_ID] = new_id()  # JetStream would drop a repeated id as a duplicate
            sent = time.perf_counter()
            await publisher.publish(SUBJECT, payload, headers=headers)
            await arrived.wait()
            took.append((at - sent) * 1e6)
            if pause_s:
                await asyncio.sleep(pause_s)
    finally:
        await publisher.close()
        await stop()
    return took[count // 10 :]  # the first tenth warms up


def start_echo(protocol: str) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    # -W ignore: uvicorn warns that its legacy protocol is deprecated (the reason the edge left it).
    server = subprocess.Popen([sys.executable, "-W", "ignore", "-c", ECHO_SERVER, str(port), protocol])
    wait_for_port("127.0.0.1", port, 20.0, server)
    return server, port


async def ws_round_trips(port: int, count: int, pause_s: float) -> list[float]:
    took: list[float] = []
    async with websockets.connect(f"ws://127.0.0.1:{port}/ws", compression=None, proxy=None) as ws:
        for _ in range(count):
            sent = time.perf_counter()
            await ws.send(FRAME)
            await ws.recv()
            took.append((time.perf_counter() - sent) * 1e6)
            if pause_s:
                await asyncio.sleep(pause_s)
    return took[count // 10 :]


async def run(url: str, echo_ports: dict[str, int], count: int, pause_s: float) -> None:
    cold = max(count // 10, 50)  # a pause per message: fewer of them
    raw = (await nats_hops(url, raw_subscriber, count, 0), await nats_hops(url, raw_subscriber, cold, pause_s))
    print(line("nats: raw nats-py subscriber (baseline)", *raw, None))
    direct = (await nats_hops(url, direct_subscriber, count, 0), await nats_hops(url, direct_subscriber, cold, pause_s))
    print(line("nats: runtime, direct delivery", *direct, raw))
    durable = (
        await nats_hops(url, jetstream_subscriber, count, 0),
        await nats_hops(url, jetstream_subscriber, cold, pause_s),
    )
    print(line("nats: runtime, jetstream delivery (user turns)", *durable, raw))
    legacy_port, sansio_port = echo_ports["websockets"], echo_ports["websockets-sansio"]
    legacy = (await ws_round_trips(legacy_port, count, 0), await ws_round_trips(legacy_port, cold, pause_s))
    print(line("ws: uvicorn websockets (legacy, baseline)", *legacy, None))
    sansio = (await ws_round_trips(sansio_port, count, 0), await ws_round_trips(sansio_port, cold, pause_s))
    print(line("ws: uvicorn websockets-sansio (the edge's)", *sansio, legacy))


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--messages", type=int, default=2000, help="Messages per back-to-back run (default 2000)")
    parser.add_argument("--pause-ms", type=float, default=10.0, help="Idle time before each cold message (default 10)")
    args = parser.parse_args()
    configure_logging("warning", "json", process="bench")
    with tempfile.TemporaryDirectory(prefix="hop-bench-") as tmp:
        nats_server = start_nats(Path(tmp) / "nats")
        echoes = {protocol: start_echo(protocol) for protocol in ("websockets", "websockets-sansio")}
        try:
            uvloop.run(
                run(nats_server.url, {p: port for p, (_, port) in echoes.items()}, args.messages, args.pause_ms / 1000)
            )
        finally:
            nats_server.stop()
            for process, _ in echoes.values():
                process.terminate()
                process.wait()


if __name__ == "__main__":
    main()
