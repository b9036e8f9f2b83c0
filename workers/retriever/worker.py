"""Retriever worker: knowledge bases of the user's documents, on chromadb with offline embeddings.

Consumes: ingest.job (durable JetStream pull consumer INGEST on SB_JOBS: SB_RETRIEVER_MAX_JOBS jobs
          at once per replica, one at a time per document; bad documents fail their job, other
          errors are redelivered then dead-lettered), retrieval.query and tools.search_knowledge
          (request/reply, queue group "retriever").
Produces: job.progress and ingest.result on the requesting session; RetrievalReply and ToolReply replies.
Logic: jobs.Jobs runs a job through core.Retriever (reader -> chunker -> embedder -> store), plain
       classes without the bus; the reader has a child process per job slot, killed when its
       document takes longer than SB_RETRIEVER_EXTRACT_TIMEOUT_S (the other slots' jobs go on).
"""

from __future__ import annotations

import asyncio

from contracts import events as ev
from contracts.limits import QUERY_CHARS
from contracts.streams import INGEST
from workers.runtime import Bus, Delivery, Worker, consumes, serves

from .core import QueryError, search_result, searched
from .jobs import Jobs, Slot, open_retriever
from .settings import RetrieverSettings


class RetrieverWorker(Worker[RetrieverSettings]):
    name = "retriever"
    description = "Knowledge bases: document ingestion and passage retrieval"

    def __init__(self, settings: RetrieverSettings, bus: Bus) -> None:
        super().__init__(settings, bus)
        self.slot = Slot()
        self.jobs = Jobs(bus, self.slot, settings.max_deliver)

    async def start(self) -> None:
        self.slot.retriever = await asyncio.to_thread(open_retriever, self.settings)
        await self.slot.retriever.reader.start()

    async def stop(self) -> None:
        if self.slot.retriever is not None:
            self.slot.retriever.reader.shutdown()

    def problems(self) -> list[str]:
        return self.slot.retriever.reader.problems() if self.slot.retriever is not None else []

    # retriever_max_jobs at once per replica, one at a time per document (the runtime keeps a long
    # job's ack deadline alive).
    @consumes("ingest.job", delivery="jetstream", durable=INGEST, max_in_flight="retriever_max_jobs")
    async def on_job(self, job: ev.IngestJob, delivery: Delivery) -> None:
        await self.jobs.run(job, delivery.deliveries)

    @serves("retrieval.query", queue="retriever")
    async def on_query(self, request: ev.RetrievalRequest) -> ev.RetrievalReply:
        reply = {"session_id": request.session_id, "turn_id": request.turn_id, "producer": self.bus.producer}
        try:
            return ev.RetrievalReply(
                **reply,
                passages=await self.slot.ready.query(
                    request, searched(request.session_id, request.tenant, request.bases)
                ),
            )
        except QueryError as error:
            return ev.RetrievalReply(**reply, error=str(error))

    # The same search as a tool the model calls (contracts/tools.py): passages numbered for citing.
    @serves("tools.search_knowledge", queue="retriever")
    async def on_search_tool(self, call: ev.ToolRequest) -> ev.ToolReply:
        reply = {"session_id": call.session_id, "turn_id": call.turn_id, "producer": self.bus.producer}
        query = str(call.arguments.get("query") or "").strip()[:QUERY_CHARS]
        if not query:
            return ev.ToolReply(**reply, error="the query is empty")
        bases = call.knowledge_bases or ["default"]
        request = ev.RetrievalRequest(**reply, query=query, bases=bases, tenant=call.tenant)
        try:
            passages = await self.slot.ready.query(request, searched(call.session_id, call.tenant, request.bases))
        except QueryError as error:
            return ev.ToolReply(**reply, error=str(error))
        return ev.ToolReply(**reply, result=search_result(passages))


WORKER = RetrieverWorker
