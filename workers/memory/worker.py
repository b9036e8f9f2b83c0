"""Memory worker: the durable conversation store and the context service.

Consumes: turn.user, reply.done, transcript.final and memory.forget through the durable JetStream
consumer ``memory-writer`` (contracts/streams.py MEMORY_WRITER) in batches of up to WRITE_BATCH, in bus
order (group commit: one bulk write per batch, the batch acked after it); memory.context and
memory.history and tools.recall_memory (request/reply, queue group "memory").
Produces: ContextReply, HistoryReply and ToolReply (replies); dead letters on sb.dlq.memory.
Logic: core.Memory (record_batch, context, history), recall.Recall (the recall_memory tool: the calling
session's own turns and facts), store.MemoryStore (MongoDB through PyMongo's async client),
facts.extract_facts, summarizer.Summarizer (LLM summaries in the background).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Annotated

from pydantic import Field
from pymongo.errors import PyMongoError

from contracts import events as ev
from contracts.streams import MEMORY_WRITER
from workers.runtime import Bus, Delivery, StartupError, Worker, consumes, serves
from workers.runtime.logging import get_logger
from workers.runtime.settings import LLMSettings

from .core import ContextCache, Memory, Recordable
from .recall import Recall, RecallError
from .store import MemoryStore, while_unreachable
from .summarizer import Summarizer, openai_completion

log = get_logger("memory")
Recorded = Annotated[Recordable, Field(discriminator="kind")]  # the AsyncAPI document's payload schema
# Most events per bulk write. Draining 10,000 turns the writer sustained 1,580 / 1,620 / 2,430 / 2,890
# turns/s with 64 / 128 / 256 / 512, but a batch of 256 over 100 sessions takes ~70 ms to write and 512
# twice that, which every event behind it waits (bench/memory_bench.py, docs/benchmarks.md).
WRITE_BATCH = 256


class MemorySettings(LLMSettings):
    mongo_url: str = Field(
        default="mongodb://127.0.0.1:27017", description="MongoDB URL (a database in its path wins over SB_MONGO_DB)"
    )
    mongo_db: str = Field(default="switchboard", pattern=r"^[A-Za-z0-9_-]{1,63}$", description="Database name")
    mongo_timeout_s: float = Field(default=2.0, gt=0, description="Server selection and connect timeout")
    retention_days: float = Field(default=90.0, gt=0, description="Stored memory older than this is deleted")
    context_turns: int = Field(default=40, ge=1, le=1_000, description="Recent turns a context is chosen from")
    context_cache_sessions: int = Field(default=10_000, ge=0, description="Sessions whose context is kept hot")
    summary_after_turns: int = Field(
        default=20, ge=0, description="New turns that trigger a background summary (0: never)"
    )
    summary_keep_recent: int = Field(default=8, ge=0, description="Most recent turns a summary leaves out")
    summary_max_tokens: int = Field(default=200, ge=16, description="Longest summary, in tokens")


PRUNE_EVERY_S = 3_600.0


class MemoryWorker(Worker[MemorySettings]):
    name = "memory"
    description = "Durable conversation memory and the context service"

    def __init__(self, settings: MemorySettings, bus: Bus) -> None:
        super().__init__(settings, bus)
        self.store = MemoryStore(settings.mongo_url, settings.mongo_db, settings.mongo_timeout_s)
        cache = ContextCache(settings.context_cache_sessions)
        complete = openai_completion(
            settings.llm_base_url,
            settings.llm_api_key.get_secret_value(),
            settings.llm_model,
            settings.llm_timeout_s,
            settings.summary_max_tokens,
        )
        self.summarizer = Summarizer(
            self.store,
            complete,
            settings.summary_after_turns,
            settings.summary_keep_recent,
            on_summary=cache.invalidate,
        )
        self.memory = Memory(self.store, cache, self.summarizer, settings.context_turns, bus.producer)
        self.recall = Recall(self.store)
        self._background = contextlib.AsyncExitStack()

    async def start(self) -> None:
        try:
            async with asyncio.timeout(self.settings.connect_timeout_s):
                created = await while_unreachable(self.store.ensure_schema)
        except TimeoutError:
            await self.store.close()
            raise StartupError(
                f"cannot reach the database at {self.settings.mongo_url} after "
                f"{self.settings.connect_timeout_s:g}s; start it with `just up` or set SB_MONGO_URL"
            ) from None
        if created:
            log.info("database initialised", created=created)
        prune = asyncio.create_task(_prune_periodically(self.store, self.settings.retention_days), name="memory-prune")
        self._background.push_async_callback(_cancelled, prune)
        await self._background.enter_async_context(self.summarizer.running())

    async def stop(self) -> None:
        await self._background.aclose()
        await self.store.close()

    @consumes(delivery="jetstream", durable=MEMORY_WRITER, batch=WRITE_BATCH)
    async def on_event(self, batch: list[tuple[Recorded, Delivery]]) -> None:
        events = [(event, delivery.stream_sequence) for event, delivery in batch]
        await while_unreachable(lambda: self.memory.record_batch(events))

    @serves("memory.context", queue="memory")
    async def on_context(self, request: ev.ContextRequest) -> ev.ContextReply | None:
        try:
            return await self.memory.context(request)
        except PyMongoError as error:  # an empty reply: the asker reports "error" at once instead of waiting
            log.warning("context unavailable", error=repr(error)[:200])
            return None

    @serves("memory.history", queue="memory")
    async def on_history(self, request: ev.HistoryRequest) -> ev.HistoryReply | None:
        try:
            return await self.memory.history(request)
        except PyMongoError as error:
            log.warning("history unavailable", error=repr(error)[:200])
            return None

    @serves("tools.recall_memory", queue="memory")
    async def on_recall_memory(self, call: ev.ToolRequest) -> ev.ToolReply:
        """Always a reply: a result, or an error the model reads (bad arguments, the database down)."""
        reply = {"session_id": call.session_id, "turn_id": call.turn_id, "producer": self.bus.producer}
        try:
            return ev.ToolReply(**reply, result=await self.recall.recall(call))
        except RecallError as error:
            log.info("recall refused", error=str(error)[:200])
            return ev.ToolReply(**reply, error=str(error)[:1_000])
        except PyMongoError as error:
            log.warning("recall unavailable", error=repr(error)[:200])
            return ev.ToolReply(**reply, error="the conversation's memory cannot be read right now; try again later")


async def _cancelled(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _prune_periodically(store: MemoryStore, retention_days: float) -> None:
    while True:
        started = time.monotonic()
        try:
            if deleted := await store.prune(retention_days):
                log.info("retention: deleted old memory", documents=deleted)
        except PyMongoError as error:
            log.warning("retention sweep failed; next one in an hour", error=repr(error)[:200])
        await asyncio.sleep(max(0.0, PRUNE_EVERY_S - (time.monotonic() - started)))


WORKER = MemoryWorker
