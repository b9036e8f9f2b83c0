"""Raw NATS figures on this machine: the floor every Switchboard benchmark compares against.

Starts its own nats-server -js (temporary store) unless --url is given, then measures:
core publish throughput, JetStream awaited publish, core request/reply round trip, and
the same request/reply carrying a contract event through the Bus (our overhead over raw).

    .venv/bin/python bench/nats_baseline.py [--messages 20000] [--requests 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import nats
from nats.aio.client import Client
from nats.aio.msg import Msg

from contracts import events as ev
from contracts.subjects import BY_NAME
from ops.servers import start_nats
from workers.runtime.bus import Bus

PAYLOAD = b"x" * 256


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def core_publish(nc: Client, count: int) -> float:
    sub = await nc.subscribe("bench.core")
    received = 0
    done = asyncio.Event()

    async def on_msg(_: object) -> None:
        nonlocal received
        received += 1
        if received == count:
            done.set()

    await sub.unsubscribe()
    sub = await nc.subscribe("bench.core", cb=on_msg)
    start = time.perf_counter()
    for _ in range(count):
        await nc.publish("bench.core", PAYLOAD)
    await asyncio.wait_for(done.wait(), 60)
    elapsed = time.perf_counter() - start
    await sub.unsubscribe()
    return count / elapsed


async def js_publish(nc: Client, count: int) -> tuple[float, list[float]]:
    js = nc.jetstream()
    await js.add_stream(name="BENCH", subjects=["bench.js"])
    latencies = []
    start = time.perf_counter()
    for _ in range(count):
        t0 = time.perf_counter()
        await js.publish("bench.js", PAYLOAD)
        latencies.append((time.perf_counter() - t0) * 1000)
    rate = count / (time.perf_counter() - start)
    await js.delete_stream("BENCH")
    return rate, latencies


async def request_reply(nc: Client, count: int) -> list[float]:
    async def echo(msg: Msg) -> None:
        await msg.respond(msg.data)

    sub = await nc.subscribe("bench.rr", cb=echo)
    latencies = []
    for _ in range(count):
        t0 = time.perf_counter()
        await nc.request("bench.rr", PAYLOAD, timeout=2)
        latencies.append((time.perf_counter() - t0) * 1000)
    await sub.unsubscribe()
    return latencies


async def contract_request_reply(nc: Client, count: int) -> tuple[list[float], list[float]]:
    """A responder that parses and answers contract events, asked (1) with raw bytes, (2) through the Bus.

    The difference is the Bus's own cost: building the event, headers, validating the reply.
    """
    subject = BY_NAME["memory.context"].subject()

    async def answer(msg: Msg) -> None:
        request = ev.ContextRequest.model_validate_json(msg.data)
        reply = ev.ContextReply(session_id=request.session_id, producer="bench")
        await msg.respond(reply.model_dump_json().encode())

    sub = await nc.subscribe(subject, cb=answer)
    bus = Bus(producer="bench")
    bus.attach(nc)
    raw_request = ev.ContextRequest(session_id="bench-session", producer="bench").model_dump_json().encode()
    raw, via_bus = [], []
    for _ in range(count):
        t0 = time.perf_counter()
        await nc.request(subject, raw_request, timeout=2)
        t1 = time.perf_counter()
        await bus.request(
            "memory.context",
            ev.ContextRequest(session_id="bench-session", producer="bench"),
            ev.ContextReply,
            timeout=2,
        )
        t2 = time.perf_counter()
        raw.append((t1 - t0) * 1000)
        via_bus.append((t2 - t1) * 1000)
    await sub.unsubscribe()
    return raw, via_bus


def line(name: str, values: list[float]) -> str:
    return (
        f"{name:<34} p50 {statistics.median(values):7.3f} ms   p99 {percentile(values, 0.99):7.3f} ms   n={len(values)}"
    )


async def run(url: str | None, messages: int, requests: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        server = None if url else start_nats(Path(tmp) / "store")
        nc = await nats.connect(url or server.url)  # type: ignore[union-attr]
        try:
            rate = await core_publish(nc, messages)
            js_rate, js_lat = await js_publish(nc, min(messages, 5000))
            rr = await request_reply(nc, requests)
            raw_rr, bus_rr = await contract_request_reply(nc, requests)
        finally:
            await nc.close()
            if server:
                server.stop()
    print(f"{'core publish (256 B, received)':<34} {rate:10.0f} msg/s")
    print(f"{'JetStream publish, awaited ack':<34} {js_rate:10.0f} msg/s")
    print(line("JetStream publish ack latency", js_lat))
    print(line("core request/reply, echo responder", rr))
    print(line("contract responder, raw request", raw_rr))
    print(line("contract responder, via Bus", bus_rr))
    overhead = statistics.median(bus_rr) - statistics.median(raw_rr)
    print(f"{'Bus overhead over raw (p50)':<34} {overhead * 1000:7.0f} us")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="Use this NATS instead of starting one")
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--requests", type=int, default=2_000)
    args = parser.parse_args()
    asyncio.run(run(args.url, args.messages, args.requests))


if __name__ == "__main__":
    main()
