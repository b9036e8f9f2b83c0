"""Ingestion jobs of the retriever worker: fetch a job's bytes, run it through the retriever (one job at a
time per document), report progress and the result, clean up the upload; and the retriever a replica
opens at start (Slot).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

from nats.js.errors import NotFoundError

from contracts import events as ev
from contracts.owners import PUBLIC, owner_of
from contracts.streams import INGEST_FILES
from workers.runtime import Bus
from workers.runtime.logging import get_logger
from workers.runtime.provision import object_store

from .chunker import Chunker
from .core import Outcome, Retriever, owned
from .embedder import Embedder, load_tokenizer
from .extract import DocumentError
from .reader import Reader
from .settings import RetrieverSettings
from .store import ChunkStore, open_client

log = get_logger("retriever")


@dataclass
class Slot:
    """Filled by start() (the model and index load there, not in the constructor)."""

    retriever: Retriever | None = None

    @property
    def ready(self) -> Retriever:
        assert self.retriever is not None, "the retriever's lifespan has not run"
        return self.retriever


def open_retriever(settings: RetrieverSettings) -> Retriever:
    """Load the embedding model (exporting it to ONNX on first use) and open the index. Blocking."""
    reader = Reader(
        settings.retriever_extract_timeout_s, settings.retriever_max_text_chars, settings.retriever_max_jobs
    )
    embedder = Embedder(settings.model_cache(), settings.retriever_threads, settings.retriever_batch_size)
    chunker = Chunker(load_tokenizer(), settings.retriever_chunk_tokens, settings.retriever_chunk_overlap)
    store = ChunkStore(open_client(settings.retriever_chroma_url, settings.chroma_path()))
    return Retriever(
        reader, embedder, chunker, store, settings.retriever_max_document_bytes, settings.retriever_max_chunks
    )


class _OnePerDocument:
    """Jobs for the same document (a stored base and a source) run one after another, in the order they
    came; jobs for other documents run at once. The "unchanged" check and the replace of a document's
    chunks rely on it (two uploads of the same bytes: one `ingested`, the other `unchanged`)."""

    def __init__(self) -> None:
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}
        self._users: dict[tuple[str, str], int] = {}

    @contextlib.asynccontextmanager
    async def held(self, base: str, source: str) -> AsyncIterator[None]:
        key = (base, source)
        lock = self._locks.setdefault(key, asyncio.Lock())
        self._users[key] = self._users.get(key, 0) + 1
        try:
            async with lock:
                yield
        finally:
            self._users[key] -= 1
            if not self._users[key]:
                del self._locks[key], self._users[key]


class Jobs:
    """One ingestion job: fetch its bytes, run it, report progress and the result, clean up."""

    def __init__(self, bus: Bus, slot: Slot, max_deliver: int) -> None:
        self._bus = bus
        self._slot = slot
        self._max_deliver = max_deliver
        self._documents = _OnePerDocument()

    async def run(self, job: ev.IngestJob, deliveries: int) -> None:
        base = owned(PUBLIC if job.owner == "public" else owner_of(job.session_id, job.tenant), job.base)
        async with self._documents.held(base, job.source):
            await self._run(job, base, deliveries)

    async def _run(self, job: ev.IngestJob, base: str, deliveries: int) -> None:
        async def progress(stage: str, done: int, total: int) -> None:
            await self._bus.publish(
                ev.JobProgress(
                    session_id=job.session_id,
                    producer=self._bus.producer,
                    job_id=job.job_id,
                    stage=stage,
                    done=done,
                    total=total,
                )
            )

        retriever = self._slot.ready
        try:
            if job.delete:
                outcome = await retriever.delete(base, job.source)
            else:
                outcome = await retriever.ingest(
                    base, job.source, job.content_type, await self._content(job, retriever), progress
                )
        except DocumentError as error:
            log.info("ingestion refused", job_id=job.job_id, source=job.source, error=str(error))
            await self._finish(job, error=str(error))
            return
        except Exception as error:
            if deliveries >= self._max_deliver:
                await self._finish(
                    job,
                    error=f"internal error after {self._max_deliver} attempts: "
                    f"{type(error).__name__}: {str(error)[:300]}",
                    keep_object=True,
                )
            raise  # redelivered, or dead-lettered with the reason
        await self._finish(job, outcome)

    async def _content(self, job: ev.IngestJob, retriever: Retriever) -> bytes:
        if job.object_name is None:
            return (job.text or "").encode()
        store = await object_store(self._bus.js, INGEST_FILES, self._bus.prefix)
        try:
            info = await store.get_info(job.object_name)
        except NotFoundError:
            raise DocumentError(
                f"the uploaded file {job.object_name!r} is gone (expired after a day, or deleted)"
            ) from None
        retriever.check_size(info.size or 0)
        data: bytes = (await store.get(job.object_name)).data or b""
        return data

    async def _finish(
        self, job: ev.IngestJob, outcome: Outcome | None = None, error: str = "", keep_object: bool = False
    ) -> None:
        if job.object_name and not keep_object:  # kept after an internal error: a replay needs it
            store = await object_store(self._bus.js, INGEST_FILES, self._bus.prefix)
            with contextlib.suppress(Exception):
                await store.delete(job.object_name)
        result = ev.IngestResult(
            session_id=job.session_id,
            producer=self._bus.producer,
            job_id=job.job_id,
            status=outcome.status if outcome else "failed",
            document_id=outcome.document_id if outcome else "",
            chunks=outcome.chunks if outcome else 0,
            error=error[:2000],
        )
        log.info("ingestion job done", job_id=job.job_id, source=job.source, status=result.status, chunks=result.chunks)
        await self._bus.publish(result, durable=True)
