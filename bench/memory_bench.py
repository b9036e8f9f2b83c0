"""Memory worker figures beside raw PyMongo on the same server, in the same run.

Starts its own nats-server and nx-27017 (temporary stores) unless --nats-url / --mongo-url are given,
runs the memory worker in-process, and measures:

* write, sustained: a backlog of turns (100 sessions, users and replies, some stating facts) published
  while no writer runs, then drained by the memory worker: turns/s from its start to the last ack;
* write latency, paced at ``--rate`` (500 turns/s: half the 1,000 target) and at half the sustained
  rate: publish -> ack after the durable write (acks watched on the bus), and ``stored_at -
  published_at`` (stamped as the bulk write is sent: what the figures before group commit measured);
* write baselines, same run: raw PyMongo ``insert_many`` of as many turn documents in calls of
  WRITE_BATCH; and the floor: the writer's consumer (same subjects, runtime, batches) with a handler
  that writes nothing, draining the same messages and paced the same way;
* context fetch p50/p99 through NATS request/reply after seeding 10,000 and then 100,000 turns
  (100 turns per session; the write phase's turns are stored too), uncached (every request a
  session not in the cache) and cached;
* baseline: raw ``insert_one``, a session's 40 latest turns from the ``turns`` collection, and
  ``find_one`` of the session document a context reads, straight through PyMongo, same server;
  and a bare NATS request/reply answered with a canned reply, in the same process.

    .venv/bin/python bench/memory_bench.py [--backlog 20000] [--rate 500] [--requests 500]
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

import nats
from nats.aio.msg import Msg
from pymongo import DESCENDING

from contracts import events as ev
from contracts.streams import EVENTS, MEMORY_WRITER, STREAMS
from ops.servers import start_mongo, start_nats
from workers.memory.core import Recordable
from workers.memory.store import MemoryStore
from workers.memory.worker import WORKER, WRITE_BATCH, MemorySettings
from workers.runtime import Bus, RuntimeSettings, Worker, consumes, running_worker
from workers.runtime.bus import headers_for, subject_for
from workers.runtime.logging import configure_logging
from workers.runtime.provision import provision, stream_name

TURNS_PER_SESSION = 100
SESSIONS = 100  # the conversations a write backlog or a paced run is spread over
PACED_S = 8.0  # seconds of turns at each steady rate
CONTEXT_TURNS = MemorySettings.model_fields["context_turns"].default


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def line(name: str, values: list[float]) -> str:
    return (
        f"{name:<72} p50 {percentile(values, 0.5):7.2f} ms   p99 {percentile(values, 0.99):7.2f} ms   (n={len(values)})"
    )


async def timed(call: Callable[[], Awaitable[Any]], count: int) -> list[float]:
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        await call()
        samples.append((time.perf_counter() - started) * 1000)
    return samples


@contextlib.asynccontextmanager
async def worker(nats_url: str, mongo_url: str, prefix: str, cache: int) -> AsyncIterator[Bus]:
    settings = MemorySettings(
        nats_url=nats_url,
        mongo_url=mongo_url,
        subject_prefix=prefix,
        summary_after_turns=0,
        context_cache_sessions=cache,
        log_level="warning",
    )
    async with running_worker(WORKER, settings) as bus:
        yield bus


def rate_line(name: str, count: int, seconds: float) -> str:
    return f"{name:<72} {count / seconds:7.0f} /s      ({count} in {seconds:.1f} s)"


def session_of(tag: str, i: int) -> str:
    return f"{tag}-{i % SESSIONS:03d}"


def conversation_turn(tag: str, i: int) -> ev.UserTurn | ev.ReplyDone:
    """Turn ``i`` of SESSIONS interleaved conversations: user and assistant alternate, and every tenth user
    turn states a fact."""
    session, k = session_of(tag, i), i // SESSIONS
    if k % 2:
        return ev.ReplyDone(
            session_id=session, turn_id=f"t{k // 2}", text="a reply " + "words " * 30, agent="general", producer="bench"
        )
    text = f"My name is Name{k}." if k % 20 == 0 else f"turn number {k} " + "words " * 20
    return ev.UserTurn(session_id=session, turn_id=f"t{k // 2}", text=text, source="typed", producer="bench")


FLOOR = MEMORY_WRITER.model_copy(update={"durable": "bench-floor", "description": "memory_bench: the floor"})


class Floor(Worker[RuntimeSettings]):
    """The writer's consumer (same subjects, runtime and batches) with a handler that writes nothing."""

    name = "bench-floor"
    description = "memory_bench: what the bus and the runtime cost without the write"

    @consumes(delivery="jetstream", durable=FLOOR, batch=WRITE_BATCH)
    async def on_event(self, batch: list[Recordable]) -> None:
        return None


class Acks:
    """A consumer's acks, watched on the bus: when each stream position was acked (the writer acks after
    the durable write)."""

    def __init__(self, bus: Bus, consumer: str) -> None:
        self.bus = bus
        self.consumer = consumer
        self.at: dict[int, float] = {}
        self._changed = asyncio.Event()

    async def __aenter__(self) -> Acks:
        stream = stream_name(EVENTS, self.bus.prefix)
        # $JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<time>.<pending>
        self._sub = await self.bus.nc.subscribe(f"$JS.ACK.{stream}.{self.consumer}.>", cb=self._on_ack)
        return self

    async def __aexit__(self, *_: object) -> None:
        await self._sub.unsubscribe()

    async def _on_ack(self, msg: Msg) -> None:
        if not msg.data:  # an ack (in-progress and nak carry a payload)
            self.at.setdefault(int(msg.subject.split(".")[5]), time.perf_counter())
            self._changed.set()

    async def until(self, count: int) -> None:
        """Wait for ``count`` acks in all."""
        while len(self.at) < count:
            self._changed.clear()
            await self._changed.wait()

    async def paced(self, rate: float, count: int, tag: str) -> list[float]:
        """Publish ``count`` turns on a steady schedule; publish -> ack of each, in ms."""
        published: dict[int, float] = {}
        began, acked = time.perf_counter(), len(self.at)
        for i in range(count):
            await asyncio.sleep(max(0.0, began + i / rate - time.perf_counter()))  # on schedule, without drift
            event = conversation_turn(tag, i)  # made just before it is published: published_at starts the clock
            sent = time.perf_counter()
            ack = await self.bus.js.publish(
                subject_for(event, self.bus.prefix), event.model_dump_json().encode(), headers=headers_for(event)
            )
            published[ack.seq] = sent
        await self.until(acked + count)
        return [(self.at[seq] - sent) * 1000 for seq, sent in published.items()]


async def raw_insert_many(store: MemoryStore, events: list[ev.UserTurn | ev.ReplyDone]) -> None:
    docs = [
        {
            "_id": e.event_id,
            "session_id": e.session_id,
            "position": n,
            "turn_id": e.turn_id,
            "text": e.text,
            "at": e.published_at,
        }
        for n, e in enumerate(events)
    ]
    started = time.perf_counter()
    for first in range(0, len(docs), WRITE_BATCH):
        await store.db.baseline.insert_many(docs[first : first + WRITE_BATCH])
    print(
        rate_line(
            f"raw PyMongo insert_many of as many turn documents, {WRITE_BATCH} a call",
            len(docs),
            time.perf_counter() - started,
        )
    )


async def writes(nats_url: str, mongo_url: str, store: MemoryStore, backlog: int, rate: float) -> None:
    """The backlog is published before anything consumes it; the writer drains it, then turns come at a steady
    ``rate`` and at half the rate it sustained; then the floor consumer (which kept every message too) does
    the same."""
    bus = Bus(producer="bench", prefix="benchw")
    bus.attach(await nats.connect(nats_url))
    await provision(bus.js, STREAMS, (MEMORY_WRITER, FLOOR), bus.prefix)
    events = [conversation_turn("backlog", i) for i in range(backlog)]
    for first in range(0, backlog, 500):  # acks awaited 500 at a time: a burst, not a round trip each
        await asyncio.gather(*(bus.publish(e, durable=True) for e in events[first : first + 500]))
    await raw_insert_many(store, events)
    run = time.time_ns()
    async with Acks(bus, MEMORY_WRITER.durable) as acks:
        started = time.perf_counter()
        async with worker(nats_url, mongo_url, bus.prefix, cache=0):
            await acks.until(backlog)
            took = time.perf_counter() - started
            rates = sorted({round(rate), round(backlog / took / 2)})
            writer = {r: await acks.paced(r, round(r * PACED_S), f"steady-{r}-{run}") for r in rates}
    paced = sum(len(latencies) for latencies in writer.values())
    async with Acks(bus, FLOOR.durable) as acks:
        started = time.perf_counter()
        async with running_worker(
            Floor, RuntimeSettings(nats_url=nats_url, subject_prefix=bus.prefix, log_level="warning")
        ):
            await acks.until(backlog + paced)
            floor_took = time.perf_counter() - started
            floor = {r: await acks.paced(r, round(r * PACED_S), f"floor-{r}-{run}") for r in rates}
    print(
        rate_line(
            "floor: the same consumer writing nothing drains all that (from its start-up)", backlog + paced, floor_took
        )
    )
    print(
        rate_line(f"writer, sustained: the backlog drained (from its start-up), {WRITE_BATCH} a batch", backlog, took)
    )
    for r in rates:
        print(line(f"floor: publish -> ack at {r} turns/s", floor[r]))
        print(line(f"writer: publish -> ack after its durable write, at {r} turns/s", writer[r]))
        sessions = [session_of(f"steady-{r}-{run}", n) for n in range(SESSIONS)]
        docs = await store.db.turns.find({"session_id": {"$in": sessions}}, {"stored_at": 1, "at": 1}).to_list()
        assert len(docs) == len(writer[r]), f"{len(docs)} of {len(writer[r])} paced turns stored"
        print(
            line(
                f"writer: publish -> stored_at (as measured before group commit), at {r} turns/s",
                [(d["stored_at"].timestamp() - d["at"]) * 1000 for d in docs],
            )
        )
    await bus.nc.drain()


async def seed(store: MemoryStore, until: int, have: int) -> list[str]:
    for first in range(have, until, 2_000):
        docs = []
        for n in range(first, min(until, first + 2_000)):
            session, k = f"seed-{n // TURNS_PER_SESSION:05d}", n % TURNS_PER_SESSION
            docs.append(
                {
                    "_id": f"seed-{n}",
                    "session_id": session,
                    "position": n + 1,
                    "turn_id": f"t{k}",
                    "role": "user" if k % 2 == 0 else "assistant",
                    "text": f"seeded turn {k} " + "words " * 15,
                    "at": time.time(),
                }
            )
        await store.seed_turns(docs, keep=CONTEXT_TURNS)
    return [f"seed-{s:05d}" for s in range(until // TURNS_PER_SESSION)]


async def contexts(uncached: Bus, cached: Bus, store: MemoryStore, sessions: list[str], requests: int) -> None:
    total = await store.count_turns()
    rotation = itertools.cycle(sessions)

    async def ask(bus: Bus, session: str) -> None:
        request = ev.ContextRequest(session_id=session, turn_id="next", producer="bench")
        await bus.request("memory.context", request, ev.ContextReply, timeout=5)

    print(
        line(
            f"raw PyMongo find (a session's 40 latest turns), {total} turns",
            await timed(
                lambda: (
                    store.db.turns.find({"session_id": next(rotation)}).sort("position", DESCENDING).limit(40).to_list()
                ),
                requests,
            ),
        )
    )
    print(
        line(
            f"raw PyMongo find_one (the session document a context reads), {total} turns",
            await timed(lambda: store.db.sessions.find_one({"_id": next(rotation)}), requests),
        )
    )
    print(line(f"context fetch uncached, {total} turns", await timed(lambda: ask(uncached, next(rotation)), requests)))
    await ask(cached, sessions[0])
    print(line(f"context fetch cached, {total} turns", await timed(lambda: ask(cached, sessions[0]), requests)))
    reply = ev.ContextReply(session_id=sessions[0], producer="bench").model_dump_json().encode()

    async def echo(msg: Msg) -> None:
        await msg.respond(reply)

    sub = await cached.nc.subscribe("bench.raw.context", cb=echo)
    print(
        line(
            "raw NATS request/reply with a canned reply (the floor of a cached fetch)",
            await timed(lambda: cached.nc.request("bench.raw.context", b"{}", timeout=5), requests),
        )
    )
    await sub.unsubscribe()


async def run(nats_url: str, mongo_url: str, backlog: int, rate: float, requests: int) -> None:
    store = MemoryStore(mongo_url, "bench")
    await store.client.drop_database(store.db.name)
    print(
        line(
            "raw PyMongo insert_one",
            await timed(lambda: store.db.baseline.insert_one({"session_id": "raw", "text": "words " * 20}), requests),
        )
    )
    await writes(nats_url, mongo_url, store, backlog, rate)
    async with (
        worker(nats_url, mongo_url, "benchu", cache=0) as uncached,
        worker(nats_url, mongo_url, "benchc", cache=10_000) as cached,
    ):
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
            await run(nats_url, mongo_url, args.backlog, args.rate, args.requests)
        finally:
            for server in servers:
                server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--nats-url", help="Use this NATS instead of starting one")
    parser.add_argument("--mongo-url", help="Use this MongoDB (URL with a database) instead of starting nx-27017")
    parser.add_argument("--backlog", type=int, default=20_000, help="Turns the writer drains")
    parser.add_argument(
        "--rate",
        type=float,
        default=500.0,
        help="A steady rate (turns/s) for the latency, besides half the sustained rate",
    )
    parser.add_argument("--requests", type=int, default=500)
    args = parser.parse_args()
    configure_logging("warning", "pretty")
    started = time.perf_counter()
    asyncio.run(amain(args))
    print(f"(took {time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
