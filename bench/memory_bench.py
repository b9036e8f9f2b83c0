"""Memory worker figures beside raw PyMongo on the same server, in the same run.

Starts its own nats-server and nx-27017 (temporary stores) unless --nats-url / --mongo-url are given,
runs the memory worker in-process, and measures:

* write: sustained throughput of the durable writer (a burst of turns published at once) and the
  time from publish to durable write (``stored_at - published_at``) at a steady third of that rate;
* context fetch p50/p99 through NATS request/reply with 10,000 and then 100,000 stored turns
  (100 turns per session), uncached (every request a session not in the cache) and cached;
* baseline: raw ``insert_one``, a session's 40 latest turns from the ``turns`` collection, and
  ``find_one`` of the session document a context reads, straight through PyMongo, same server;
  and a bare NATS request/reply answered with a canned reply, in the same process.

    .venv/bin/python bench/memory_bench.py [--burst 3000] [--requests 500]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from nats.aio.msg import Msg
from pymongo import DESCENDING

from contracts import events as ev
from ops.servers import start_mongo, start_nats
from workers.memory.store import MemoryStore
from workers.memory.worker import WORKER, MemorySettings
from workers.runtime import Bus, running_worker
from workers.runtime.logging import configure_logging

TURNS_PER_SESSION = 100
CONTEXT_TURNS = MemorySettings.model_fields["context_turns"].default


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def line(name: str, values: list[float]) -> str:
    return (f"{name:<72} p50 {percentile(values, 0.5):7.2f} ms   p99 {percentile(values, 0.99):7.2f} ms"
            f"   (n={len(values)})")


async def timed(call: Callable[[], Awaitable[Any]], count: int) -> list[float]:
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        await call()
        samples.append((time.perf_counter() - started) * 1000)
    return samples


@contextlib.asynccontextmanager
async def worker(nats_url: str, mongo_url: str, prefix: str, cache: int) -> AsyncIterator[Bus]:
    settings = MemorySettings(nats_url=nats_url, mongo_url=mongo_url, subject_prefix=prefix, summary_after_turns=0,
                              context_cache_sessions=cache, log_level="warning")
    async with running_worker(WORKER, settings) as bus:
        yield bus


async def stored(store: MemoryStore, last: ev.UserTurn) -> None:
    """The writer applies a session's turns in order: once the last is stored, all are."""
    while True:
        if await store.db.turns.find_one({"_id": last.event_id}, {"_id": 1}) is not None:
            return
        await asyncio.sleep(0.01)


async def writes(bus: Bus, store: MemoryStore, burst: int) -> None:
    def turn(session: str, i: int) -> ev.UserTurn:
        return ev.UserTurn(session_id=session, turn_id=f"t{i}", text=f"turn number {i} " + "words " * 20,
                           source="typed", producer="bench")

    session = f"burst-{time.time_ns()}"
    turns = [turn(session, i) for i in range(burst)]
    started = time.perf_counter()
    for event in turns:
        await bus.publish(event, durable=True)
    await stored(store, turns[-1])
    throughput = burst / (time.perf_counter() - started)
    print(f"{'writer, sustained (burst of ' + str(burst) + ' turns)':<72} {throughput:7.0f} turns/s")
    rate = max(5.0, throughput / 3)  # a third of what it sustains: the latency of a writer that keeps up
    session = f"steady-{time.time_ns()}"
    for i in range(min(500, round(rate * 10))):
        event = turn(session, i)  # made just before it is published: published_at is the start of the clock
        await bus.publish(event, durable=True)
        await asyncio.sleep(1 / rate)
    await stored(store, event)
    docs = await store.db.turns.find({"session_id": session}).to_list()
    print(line(f"writer, publish -> durable write at {rate:.0f} turns/s", [
        (d["stored_at"].timestamp() - d["at"]) * 1000 for d in docs]))


async def seed(store: MemoryStore, until: int, have: int) -> list[str]:
    for first in range(have, until, 2_000):
        docs = []
        for n in range(first, min(until, first + 2_000)):
            session, k = f"seed-{n // TURNS_PER_SESSION:05d}", n % TURNS_PER_SESSION
            docs.append({"_id": f"seed-{n}", "session_id": session, "position": n + 1, "turn_id": f"t{k}",
                         "role": "user" if k % 2 == 0 else "assistant", "text": f"seeded turn {k} " + "words " * 15,
                         "at": time.time()})
        await store.seed_turns(docs, keep=CONTEXT_TURNS)
    return [f"seed-{s:05d}" for s in range(until // TURNS_PER_SESSION)]


async def contexts(uncached: Bus, cached: Bus, store: MemoryStore, sessions: list[str], requests: int) -> None:
    total = await store.count_turns()
    rotation = itertools.cycle(sessions)

    async def ask(bus: Bus, session: str) -> None:
        request = ev.ContextRequest(session_id=session, turn_id="next", producer="bench")
        await bus.request("memory.context", request, ev.ContextReply, timeout=5)

    print(line(f"raw PyMongo find (a session's 40 latest turns), {total} turns", await timed(
        lambda: store.db.turns.find({"session_id": next(rotation)}).sort("position", DESCENDING).limit(40).to_list(),
        requests)))
    print(line(f"raw PyMongo find_one (the session document a context reads), {total} turns", await timed(
        lambda: store.db.sessions.find_one({"_id": next(rotation)}), requests)))
    print(line(f"context fetch uncached, {total} turns", await timed(lambda: ask(uncached, next(rotation)),
                                                                      requests)))
    await ask(cached, sessions[0])
    print(line(f"context fetch cached, {total} turns", await timed(lambda: ask(cached, sessions[0]), requests)))
    reply = ev.ContextReply(session_id=sessions[0], producer="bench").model_dump_json().encode()

    async def echo(msg: Msg) -> None:
        await msg.respond(reply)

    sub = await cached.nc.subscribe("bench.raw.context", cb=echo)
    print(line("raw NATS request/reply with a canned reply (the floor of a cached fetch)", await timed(
        lambda: cached.nc.request("bench.raw.context", b"{}", timeout=5), requests)))
    await sub.unsubscribe()


async def run(nats_url: str, mongo_url: str, burst: int, requests: int) -> None:
    store = MemoryStore(mongo_url, "bench")
    await store.client.drop_database(store.db.name)
    async with worker(nats_url, mongo_url, "benchu", cache=0) as uncached, \
            worker(nats_url, mongo_url, "benchc", cache=10_000) as cached:
        print(line("raw PyMongo insert_one", await timed(
            lambda: store.db.baseline.insert_one({"session_id": "raw", "text": "words " * 20}), requests)))
        await writes(uncached, store, burst)
        have = 0
        for size in (10_000, 100_000):
            sessions = await seed(store, size, have)
            have = size
            await contexts(uncached, cached, store, sessions, requests)
    await store.close()


async def amain(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        servers = []
        nats_url, mongo_url = args.nats_url, args.mongo_url
        if not nats_url:
            servers.append(start_nats(Path(tmp) / "nats"))
            nats_url = servers[-1].url
        if not mongo_url:
            servers.append(start_mongo(Path(tmp) / "mongo"))
            mongo_url = servers[-1].url + "/bench"
        try:
            await run(nats_url, mongo_url, args.burst, args.requests)
        finally:
            for server in servers:
                server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--nats-url", help="Use this NATS instead of starting one")
    parser.add_argument("--mongo-url", help="Use this MongoDB (URL with a database) instead of starting nx-27017")
    parser.add_argument("--burst", type=int, default=3_000)
    parser.add_argument("--requests", type=int, default=500)
    args = parser.parse_args()
    configure_logging("warning", "pretty")
    started = time.perf_counter()
    asyncio.run(amain(args))
    print(f"(took {time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
