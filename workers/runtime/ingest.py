"""Submitting ingestion jobs and following them: what the CLI and the edge's upload share.

A document travels inline in the :class:`~contracts.events.IngestJob` when it is small text;
otherwise its bytes go to the JetStream object store (``INGEST_FILES``) and the job names
the object. Progress and the result come back on the requesting session's subjects.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import mimetypes
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import PurePath
from typing import Literal

from nats.aio.client import Client
from nats.aio.msg import Msg

from contracts import events as ev
from contracts.envelope import new_id
from contracts.owners import PUBLIC, owner_of
from contracts.streams import INGEST_FILES
from contracts.subjects import BY_NAME

from .bus import Bus, flush_ordered
from .provision import object_store

#: Small text documents ride in the job message itself (SB_JOBS allows 1 MiB messages).
INLINE_MAX_BYTES = 256 * 1024
_INLINE_TYPES = frozenset({"text/plain", "text/markdown", "text/html"})
_BY_SUFFIX = {".md": "text/markdown", ".markdown": "text/markdown", ".txt": "text/plain", ".text": "text/plain"}
JobEvent = ev.JobProgress | ev.IngestResult
Owner = Literal["session", "public"]


def content_type_for(source: str, declared: str | None = None) -> str:
    """The declared type (without parameters) unless it is missing or generic; else guessed from the name."""
    declared = (declared or "").split(";", 1)[0].strip().lower()
    if declared and declared != "application/octet-stream":
        return declared
    suffix = PurePath(source).suffix.lower()
    return _BY_SUFFIX.get(suffix) or mimetypes.guess_type(source)[0] or "application/octet-stream"


def _inline_text(data: bytes, content_type: str) -> str | None:
    if content_type not in _INLINE_TYPES or len(data) > INLINE_MAX_BYTES:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None  # the retriever names the problem; the bytes go as they are


async def submit_ingest(
    bus: Bus,
    session_id: str,
    source: str,
    data: bytes | io.BufferedIOBase,
    content_type: str,
    base: str = "default",
    owner: Owner = "session",
    tenant: str | None = None,
) -> ev.IngestJob:
    """Publish a job that adds (or replaces) the document ``source`` in ``base`` of ``owner`` (a session's
    own: its ``tenant``'s when it has one)."""
    job_id = new_id()
    text = _inline_text(data, content_type) if isinstance(data, bytes) else None
    # The job is validated before any byte is stored: a refused upload leaves nothing behind.
    job = ev.IngestJob(
        session_id=session_id,
        producer=bus.producer,
        job_id=job_id,
        base=base,
        source=source,
        content_type=content_type,
        text=text,
        object_name=f"{stored_owner(session_id, owner, tenant)}/{job_id}" if text is None else None,
        owner=owner,
        tenant=tenant,
    )
    if job.object_name is None:
        await bus.publish(job, durable=True)
        return job
    store = await object_store(bus.js, INGEST_FILES, bus.prefix)
    await store.put(job.object_name, data)
    try:
        await bus.publish(job, durable=True)
    except BaseException:  # no job will ever read the bytes
        with contextlib.suppress(Exception):
            await store.delete(job.object_name)
        raise
    return job


def stored_owner(session_id: str, owner: Owner, tenant: str | None) -> str:
    """Whose quota an upload counts against: the first part of its object's name."""
    return PUBLIC if owner == "public" else owner_of(session_id, tenant)


async def submit_delete(
    bus: Bus,
    session_id: str,
    source: str,
    base: str = "default",
    owner: Owner = "session",
    tenant: str | None = None,
) -> ev.IngestJob:
    """Publish a job that removes the document ``source`` (all its chunks) from ``base`` of ``owner``."""
    job = ev.IngestJob(
        session_id=session_id,
        producer=bus.producer,
        job_id=new_id(),
        base=base,
        source=source,
        content_type="",
        delete=True,
        owner=owner,
        tenant=tenant,
    )
    await bus.publish(job, durable=True)
    return job


ProgressCallback = Callable[[ev.JobProgress], None]


class JobWatch:
    """The results of a session's jobs, subscribed before any job is submitted."""

    def __init__(self) -> None:
        self._results: asyncio.Queue[ev.IngestResult] = asyncio.Queue()

    async def results(self, job_ids: set[str], timeout: float) -> AsyncIterator[ev.IngestResult]:
        """Each result of ``job_ids`` as it arrives; TimeoutError when none comes for ``timeout`` s."""
        waiting = set(job_ids)
        while waiting:
            result = await asyncio.wait_for(self._results.get(), timeout)
            if result.job_id in waiting:
                waiting.discard(result.job_id)
                yield result


@asynccontextmanager
async def watch_jobs(
    nc: Client, session_id: str, prefix: str, on_progress: ProgressCallback | None = None
) -> AsyncIterator[JobWatch]:
    """Follow the session's job progress (through ``on_progress``) and results (``JobWatch.results``)."""
    watch = JobWatch()

    async def progress(msg: Msg) -> None:
        if on_progress is not None:
            on_progress(ev.JobProgress.model_validate_json(msg.data))

    async def result(msg: Msg) -> None:
        watch._results.put_nowait(ev.IngestResult.model_validate_json(msg.data))

    subscriptions = [
        await nc.subscribe(BY_NAME["job.progress"].subject(session_id, prefix), cb=progress),
        await nc.subscribe(BY_NAME["ingest.result"].subject(session_id, prefix), cb=result),
    ]
    await flush_ordered(nc)
    try:
        yield watch
    finally:
        for subscription in subscriptions:
            await subscription.unsubscribe()
