"""Every worker's JetStream consumer delivers new work exactly once after nats-server restarts (issue 15:
"consumers survive server restarts ... test it for each worker that has one").

One case per durable consumer not covered elsewhere: the retriever's ingest jobs (``retriever-ingest``),
the video worker's jobs (``video-jobs``) and the tools worker's fired reminders (``tools-reminders``). The
orchestrator's turns and the stats worker's recorded reads are tested in test_durable_turns.py, the memory
writer's in test_memory_reliability.py. Each case runs the real worker (in this process, as its own NATS
user) on its own nats-server, stopped and started again on the same port and store: one piece of work
before the restart, two after; each is done exactly once, and the one done before is not done again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from nats.aio.msg import Msg

from contracts import events as ev
from contracts.envelope import new_id
from contracts.streams import VIDEO_OBJECTS
from contracts.subjects import BY_NAME, DEFAULT_PREFIX
from ops import access
from ops.health import discover
from ops.servers import RunningServer, free_port, start_nats
from ops.stack import NATS_CONF
from tests.support.bus import client_bus
from tests.support.video import make_video
from tests.support.waiting import eventually
from workers.retriever.settings import RetrieverSettings
from workers.retriever.worker import WORKER as RETRIEVER
from workers.runtime import Bus, running_worker
from workers.runtime.bus import flush_ordered
from workers.runtime.ingest import submit_ingest
from workers.runtime.provision import object_store
from workers.tools.worker import WORKER as TOOLS
from workers.tools.worker import ToolsSettings
from workers.video.settings import VideoSettings
from workers.video.worker import WORKER as VIDEO

Running = Callable[[str, str, Path], contextlib.AbstractAsyncContextManager[Bus]]
Submit = Callable[[Bus, Path], Awaitable[str]]


@dataclass(frozen=True)
class Case:
    worker: str
    running: Running  # the worker on (its NATS URL, prefix, a folder of its own)
    submit: Submit  # one new piece of work for its consumer; returns the work's id
    result: str  # the subject (contracts.subjects) of what the work produces
    key: str  # the result's field that names the work
    status: str | None  # the result's status when the work was done (None: results have none)
    within_s: float = 30.0


def retriever(url: str, prefix: str, folder: Path) -> contextlib.AbstractAsyncContextManager[Bus]:
    settings = RetrieverSettings(nats_url=url, subject_prefix=prefix, retriever_path=folder / "chroma")
    return running_worker(RETRIEVER, settings)


async def ingest_job(bus: Bus, folder: Path) -> str:
    text = f"Restart note {new_id()}: the consumer came back after the server did."
    job = await submit_ingest(bus, new_id(), f"{new_id()[:8]}.txt", text.encode(), "text/plain", owner="session")
    return job.job_id


def video(url: str, prefix: str, folder: Path) -> contextlib.AbstractAsyncContextManager[Bus]:
    return running_worker(VIDEO, VideoSettings(nats_url=url, subject_prefix=prefix))


async def video_job(bus: Bus, folder: Path) -> str:
    clip = folder / "clip.mp4"
    if not clip.exists():
        await asyncio.to_thread(make_video, clip, 1.0, "160x120", None, False)
    session, job_id = new_id(), new_id()
    store = await object_store(bus.js, VIDEO_OBJECTS, bus.prefix)
    await store.put(f"{session}/{job_id}/upload", clip.read_bytes())
    job = ev.VideoJob(
        session_id=session, producer="edge", job_id=job_id, object_name=f"{session}/{job_id}/upload", transcribe=False
    )
    await bus.publish(job, durable=True)
    return job_id


def tools(url: str, prefix: str, folder: Path) -> contextlib.AbstractAsyncContextManager[Bus]:
    return running_worker(TOOLS, ToolsSettings(nats_url=url, subject_prefix=prefix))


async def reminder(bus: Bus, folder: Path) -> str:
    """A reminder due in 1 s: the server fires it on reminder.fired, which the consumer reads."""
    call = ev.ToolRequest(
        session_id=new_id(),
        turn_id="t1",
        producer="orchestrator",
        call_id=new_id(),
        tool="set_reminder",
        arguments={"text": f"reminder {new_id()}", "delay_s": 1.0},
    )
    reply = await bus.request("tools.set_reminder", call, ev.ToolReply, timeout=5.0)
    assert reply.result is not None, reply.error
    return str(reply.result["reminder_id"])


CASES = [
    Case("retriever", retriever, ingest_job, "ingest.result", "job_id", "ingested"),
    Case("video", video, video_job, "video.result", "job_id", "done", within_s=60.0),
    Case("tools", tools, reminder, "reminder.due", "reminder_id", None),
]


class Server:
    """A nats-server that requires the suite's users, restartable on the same port and store."""

    def __init__(self, folder: Path, users: Path) -> None:
        self.store, self.port = folder / "store", free_port()
        self.config = access.server_config(NATS_CONF, users)
        self.url = f"nats://127.0.0.1:{self.port}"
        self.operator_url = access.url_with_user(self.url, users)
        self.process: RunningServer = start_nats(self.store, self.port, self.config)

    def restart(self) -> None:
        self.process.stop()
        self.process = start_nats(self.store, self.port, self.config)


@pytest.fixture
def server(tmp_path: Path, bus_users: Path) -> Iterator[Server]:
    running = Server(tmp_path, bus_users)
    yield running
    running.process.stop()


@contextlib.asynccontextmanager
async def results(bus: Bus, case: Case) -> AsyncIterator[Counter[str]]:
    """How often each piece of work produced its result (a result of another status counts under that status)."""
    done: Counter[str] = Counter()

    async def count(msg: Msg) -> None:
        result = json.loads(msg.data)
        done[str(result[case.key]) + ("" if result.get("status") == case.status else f" {result.get('status')}")] += 1

    sub = await bus.nc.subscribe(BY_NAME[case.result].wildcard(bus.prefix), cb=count)
    await flush_ordered(bus.nc)
    try:
        yield done
    finally:
        await sub.unsubscribe()


async def healthy(bus: Bus, worker: str) -> None:
    """The worker answers service discovery again, with nothing to report (its consumer is back)."""
    for _ in range(100):
        with contextlib.suppress(Exception):  # the test's own client may still be reconnecting
            found = [s for s in await discover(bus.nc, wait_s=0.5) if s.name == worker]
            if found and not any(s.problems for s in found):
                return
        await asyncio.sleep(0.2)
    raise AssertionError(f"{worker} not healthy after the restart: {found}")


@pytest.mark.parametrize("case", CASES, ids=[c.worker for c in CASES])
async def test_a_consumer_delivers_new_work_exactly_once_after_nats_restarts(
    server: Server, tmp_path: Path, case: Case
) -> None:
    prefix = DEFAULT_PREFIX  # the server is the case's own; its users' grants name the default prefix's streams
    async with (
        case.running(server.url, prefix, tmp_path),
        client_bus(server.operator_url, prefix) as bus,
        results(bus, case) as done,
    ):
        before = await case.submit(bus, tmp_path)
        await eventually(lambda: done[before] >= 1, within=case.within_s)
        await asyncio.sleep(0.5)  # its ack reaches the server

        await asyncio.to_thread(server.restart)
        await healthy(bus, case.worker)
        after = [await case.submit(bus, tmp_path) for _ in range(2)]
        await eventually(lambda: all(done[work] >= 1 for work in after), within=case.within_s)
        await asyncio.sleep(1.5)  # a second delivery would be done by now
    assert {work: done[work] for work in (before, *after)} == dict.fromkeys((before, *after), 1), done
