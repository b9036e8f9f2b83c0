"""Nothing lost: 1,000 turns across 20 sessions while the writer is SIGKILLed, NATS restarts, the database stops.

The writer is the real thing (``python -m workers.memory`` as a subprocess). Each test checks that
every turn is stored exactly once and that each session's turns read back in publish order.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import nats
import nats.errors
import pytest

from contracts import events as ev
from contracts.streams import MEMORY_WRITER, STREAMS
from contracts.subjects import dead_letter_subject
from ops.servers import RunningServer, free_port, start_mongo, start_nats
from ops.stack import NATS_CONF, ROOT
from tests.support.mongo import database_url, mongo_url
from workers.memory.store import MemoryStore
from workers.runtime import Bus
from workers.runtime.bus import flush_ordered
from workers.runtime.provision import provision

__all__ = ["mongo_url"]
TURNS, SESSIONS = 1_000, 20


class Run:
    """One scenario: its sessions, its prefix, a paced publisher and the writer subprocess."""

    def __init__(self, name: str, nats_url: str, mongo: str) -> None:
        tag = uuid.uuid4().hex[:8]
        self.prefix = f"rel{name}"
        self.sessions = [f"{name}-{tag}-{i:02d}" for i in range(SESSIONS)]
        self.nats_url = nats_url
        self.mongo = mongo
        self.store = MemoryStore(mongo, "unused", timeout_s=1.0)
        self.published = 0
        self.writer: subprocess.Popen[bytes] | None = None

    def start_writer(self) -> None:
        env = {
            **os.environ,
            "SB_NATS_URL": self.nats_url,
            "SB_MONGO_URL": self.mongo,
            "SB_SUBJECT_PREFIX": self.prefix,
            "SB_SUMMARY_AFTER_TURNS": "0",
            "SB_LOG_LEVEL": "warning",
            "SB_LOG_FORMAT": "json",
            "PYTHONPATH": str(ROOT),
        }
        self.writer = subprocess.Popen(
            [sys.executable, "-m", "workers.memory"],
            env=env,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def stop_writer(self, sig: signal.Signals = signal.SIGTERM) -> None:
        assert self.writer is not None
        self.writer.send_signal(sig)
        self.writer.wait(timeout=20)

    async def publish(self, bus: Bus, pace_s: float = 0.002) -> None:
        """Publish every turn in order, retrying through outages (the event id dedupes a retry)."""
        for i in range(TURNS):
            session = self.sessions[i % SESSIONS]
            turn = ev.UserTurn(
                session_id=session,
                turn_id=f"t{i // SESSIONS}",
                text=f"{session} #{i // SESSIONS}",
                source="typed",
                producer="reliability",
            )
            while True:
                try:
                    await bus.publish(turn, durable=True)
                    break
                except (nats.errors.Error, TimeoutError):
                    await asyncio.sleep(0.1)
            self.published += 1
            await asyncio.sleep(pace_s)

    async def stored(self) -> int:
        # Not count_documents: nx-27017 runs its aggregation in Python, slowly, beside the writer.
        ids = await self.store.db.turns.find({"session_id": {"$in": self.sessions}}, {"_id": 1}).to_list()
        return len(ids)

    async def until_stored(self, count: int, timeout: float = 90.0) -> None:
        async with asyncio.timeout(timeout):
            while True:
                if await self.stored() >= count:
                    return
                await asyncio.sleep(0.2)

    async def check_exactly_once_in_order(self) -> None:
        assert await self.stored() == TURNS
        for session in self.sessions:
            turns = list(reversed(await self.store.recent_turns(session, 1_000)))
            assert [t.text for t in turns] == [f"{session} #{k}" for k in range(TURNS // SESSIONS)]
            assert [t.position for t in turns] == sorted({t.position for t in turns})


@pytest.fixture
async def run_factory(mongo_url: str) -> AsyncIterator[Callable[[str, str, str | None], Run]]:
    runs: list[Run] = []

    def make(name: str, nats_url: str, mongo: str | None = None) -> Run:
        run = Run(name, nats_url, mongo or database_url(mongo_url, "memory_reliability"))
        runs.append(run)
        return run

    yield make
    for run in runs:
        if run.writer is not None and run.writer.poll() is None:
            run.stop_writer(signal.SIGKILL)
        await run.store.close()


async def connected_bus(url: str, prefix: str) -> Bus:
    nc = await nats.connect(url, max_reconnect_attempts=-1, reconnect_time_wait=0.2)
    bus = Bus(producer="reliability", prefix=prefix)
    bus.attach(nc)
    await provision(bus.js, STREAMS, (MEMORY_WRITER,), prefix)
    return bus


async def test_writer_sigkilled_mid_stream_loses_and_duplicates_nothing(
    nats_url: str, run_factory: Callable[[str, str], Run]
) -> None:
    run = run_factory("kill", nats_url)
    bus = await connected_bus(nats_url, run.prefix)
    letters = await bus.nc.subscribe(dead_letter_subject("memory", run.prefix))
    await flush_ordered(bus.nc)
    run.start_writer()
    publishing = asyncio.create_task(run.publish(bus))
    await run.until_stored(150)
    run.stop_writer(signal.SIGKILL)
    at_kill = await run.stored()
    assert 150 <= at_kill < TURNS
    await asyncio.sleep(0.5)
    run.start_writer()
    await publishing
    await run.until_stored(TURNS)
    await asyncio.sleep(1.0)  # anything redelivered after the kill has had its chance to duplicate
    await run.check_exactly_once_in_order()
    assert letters.pending_msgs == 0
    await bus.nc.drain()


async def test_nats_restarted_mid_stream_loses_and_duplicates_nothing(
    tmp_path: Path, run_factory: Callable[[str, str], Run]
) -> None:
    store_dir, port = tmp_path / "jetstream", free_port()
    server: RunningServer = start_nats(store_dir, port, NATS_CONF)
    try:
        run = run_factory("natsrestart", server.url)
        bus = await connected_bus(server.url, run.prefix)
        run.start_writer()
        publishing = asyncio.create_task(run.publish(bus))
        await run.until_stored(200)
        server.stop()
        await asyncio.sleep(1.0)
        server = start_nats(store_dir, port, NATS_CONF)  # same port, same JetStream store
        await publishing
        await run.until_stored(TURNS)
        await asyncio.sleep(1.0)
        await run.check_exactly_once_in_order()
        assert run.writer is not None and run.writer.poll() is None
        await bus.nc.drain()
    finally:
        server.stop()


async def test_database_stopped_for_ten_seconds_loses_nothing_and_the_writer_stays_up(
    tmp_path: Path, nats_url: str, run_factory: Callable[[str, str, str], Run]
) -> None:
    data_dir, port = tmp_path / "mongo", free_port()
    database: RunningServer = start_mongo(data_dir, port)
    try:
        run = run_factory("dbstop", nats_url, database.url)
        bus = await connected_bus(nats_url, run.prefix)
        letters = await bus.nc.subscribe(dead_letter_subject("memory", run.prefix))
        await flush_ordered(bus.nc)
        run.start_writer()
        publishing = asyncio.create_task(run.publish(bus, pace_s=0.01))
        await run.until_stored(200)
        database.stop()
        await asyncio.sleep(10.0)
        assert run.writer is not None and run.writer.poll() is None, "the writer exited while the database was down"
        assert run.published > 300  # turns kept arriving during the outage
        database = start_mongo(data_dir, port)
        await publishing
        await run.until_stored(TURNS)
        await asyncio.sleep(1.0)
        await run.check_exactly_once_in_order()
        assert run.writer.poll() is None and letters.pending_msgs == 0
        await bus.nc.drain()
    finally:
        database.stop()
