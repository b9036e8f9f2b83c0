"""Memory worker: the durable conversation store and the context service.

Consumes: turn.user, reply.done, transcript.final and memory.forget through the durable JetStream
consumer ``memory-writer`` (contracts/streams.py MEMORY_WRITER), one message at a time in bus order,
acked only after the write; memory.context and memory.history (request/reply, queue group "memory").
Produces: ContextReply and HistoryReply (replies); dead letters on sb.dlq.memory.
Logic: core.Memory (record, context, history), store.MemoryStore (MongoDB through PyMongo's async
client), facts.extract_facts, summarizer.Summarizer (LLM summaries in the background).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated

from faststream import AckPolicy
from faststream.nats import JStream, NatsRouter, PullSub
from faststream.nats.annotations import NatsMessage
from pydantic import Field
from pymongo.errors import PyMongoError

from contracts import events as ev
from contracts.streams import EVENTS, MEMORY_WRITER
from contracts.subjects import BY_NAME
from workers.runtime import Bus, WorkerSpec
from workers.runtime.logging import get_logger
from workers.runtime.provision import stream_name
from workers.runtime.settings import LLMSettings
from workers.runtime.worker import StartupError

from .core import ContextCache, Memory
from .store import MemoryStore, while_unreachable
from .summarizer import Summarizer, openai_completion

log = get_logger("memory")
Recorded = Annotated[ev.UserTurn | ev.ReplyDone | ev.TranscriptFinal | ev.ForgetSession, Field(discriminator="kind")]


class MemorySettings(LLMSettings):
    mongo_url: str = Field(default="mongodb://127.0.0.1:27017",
                           description="MongoDB URL (a database in its path wins over SB_MONGO_DB)")
    mongo_db: str = Field(default="switchboard", pattern=r"^[A-Za-z0-9_-]{1,63}$", description="Database name")
    mongo_timeout_s: float = Field(default=2.0, gt=0, description="Server selection and connect timeout")
    retention_days: float = Field(default=90.0, gt=0, description="Stored memory older than this is deleted")
    context_turns: int = Field(default=40, ge=1, le=1_000, description="Recent turns a context is chosen from")
    context_cache_sessions: int = Field(default=10_000, ge=0, description="Sessions whose context is kept hot")
    summary_after_turns: int = Field(default=20, ge=0,
                                     description="New turns that trigger a background summary (0: never)")
    summary_keep_recent: int = Field(default=8, ge=0, description="Most recent turns a summary leaves out")
    summary_max_tokens: int = Field(default=200, ge=16, description="Longest summary, in tokens")


@dataclass
class _Parts:
    store: MemoryStore
    memory: Memory
    summarizer: Summarizer


_parts: dict[int, _Parts] = {}
PRUNE_EVERY_S = 3_600.0


def _assemble(settings: MemorySettings, bus: Bus) -> _Parts:
    store = MemoryStore(settings.mongo_url, settings.mongo_db, settings.mongo_timeout_s)
    cache = ContextCache(settings.context_cache_sessions)
    complete = openai_completion(settings.llm_base_url, settings.llm_api_key.get_secret_value(), settings.llm_model,
                                 settings.llm_timeout_s, settings.summary_max_tokens)
    summarizer = Summarizer(store, complete, settings.summary_after_turns, settings.summary_keep_recent,
                            on_summary=cache.invalidate)
    return _Parts(store, Memory(store, cache, summarizer, settings.context_turns, bus.producer), summarizer)


def build(settings: MemorySettings, bus: Bus) -> NatsRouter:
    parts = _parts[id(bus)] = _assemble(settings, bus)
    memory = parts.memory
    router = NatsRouter()

    @router.subscriber(
        BY_NAME["turn.user"].wildcard(bus.prefix), stream=JStream(stream_name(EVENTS, bus.prefix), declare=False),
        durable=MEMORY_WRITER.durable, pull_sub=PullSub(batch_size=1, timeout=0.5),
        ack_policy=AckPolicy.NACK_ON_ERROR, title="memory.writer",
        description="Durable consumer memory-writer: " + ", ".join(MEMORY_WRITER.filter_subjects))
    async def on_event(event: Recorded, message: NatsMessage) -> None:
        position = int(message.raw_message.metadata.sequence.stream)
        await while_unreachable(lambda: memory.record(event, position), message.in_progress)

    @router.subscriber(BY_NAME["memory.context"].subject(prefix=bus.prefix), queue="memory",
                       title="memory.serve_context")
    async def on_context(request: ev.ContextRequest) -> ev.ContextReply | None:
        try:
            return await memory.context(request)
        except PyMongoError as error:  # an empty reply: the asker reports "error" at once instead of waiting
            log.warning("context unavailable", error=repr(error)[:200])
            return None

    @router.subscriber(BY_NAME["memory.history"].subject(prefix=bus.prefix), queue="memory",
                       title="memory.serve_history")
    async def on_history(request: ev.HistoryRequest) -> ev.HistoryReply | None:
        try:
            return await memory.history(request)
        except PyMongoError as error:
            log.warning("history unavailable", error=repr(error)[:200])
            return None

    return router


@contextlib.asynccontextmanager
async def lifespan(settings: MemorySettings, bus: Bus) -> AsyncIterator[None]:
    parts = _parts.pop(id(bus))
    try:
        async with asyncio.timeout(settings.connect_timeout_s):
            created = await while_unreachable(parts.store.ensure_schema, _nothing)
    except TimeoutError:
        await parts.store.close()
        raise StartupError(f"cannot reach the database at {settings.mongo_url} after "
                           f"{settings.connect_timeout_s:g}s; start it with `just up` or set SB_MONGO_URL") from None
    if created:
        log.info("database initialised", created=created)
    prune = asyncio.create_task(_prune_periodically(parts.store, settings.retention_days), name="memory-prune")
    try:
        async with parts.summarizer.running():
            yield
    finally:
        prune.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await prune
        await parts.store.close()


async def _nothing() -> None:
    return None


async def _prune_periodically(store: MemoryStore, retention_days: float) -> None:
    while True:
        started = time.monotonic()
        try:
            if deleted := await store.prune(retention_days):
                log.info("retention: deleted old memory", documents=deleted)
        except PyMongoError as error:
            log.warning("retention sweep failed; next one in an hour", error=repr(error)[:200])
        await asyncio.sleep(max(0.0, PRUNE_EVERY_S - (time.monotonic() - started)))


WORKER = WorkerSpec(name="memory", description="Durable conversation memory and the context service",
                    settings=MemorySettings, build=build, lifespan=lifespan, consumers=(MEMORY_WRITER,))
