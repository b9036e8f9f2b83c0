"""The retrieval test corpus, its question set, and helpers to run the retriever and feed it."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from contracts import events as ev
from contracts.envelope import new_id
from tests.support.bus import serving
from workers.retriever.settings import RetrieverSettings
from workers.retriever.worker import WORKER
from workers.runtime import Bus
from workers.runtime.ingest import Owner, content_type_for, submit_delete, submit_ingest, watch_jobs

DATA = Path(__file__).resolve().parents[1] / "data"
CORPUS = DATA / "corpus"
SESSION = "retrieval-tests"


@dataclass(frozen=True)
class Question:
    question: str
    source: str  # the document that answers it
    passage: str  # a phrase of the passage that answers it


def corpus_files() -> list[Path]:
    return [p for p in sorted(CORPUS.iterdir()) if p.name != "SOURCES.md"]


def questions() -> list[Question]:
    return [Question(**q) for q in json.loads((DATA / "retrieval_questions.json").read_text())]


def _words(text: str) -> str:
    return " ".join(text.split())


def answers(question: Question, passages: list[ev.Passage]) -> bool:
    """Whether one of the passages is from the expected document and holds the expected phrase."""
    return any(p.citation.source == question.source and _words(question.passage) in _words(p.text) for p in passages)


@asynccontextmanager
async def running_retriever(nats_url: str, folder: Path, prefix: str, **overrides: Any) -> AsyncIterator[Bus]:
    settings = RetrieverSettings(
        nats_url=nats_url, subject_prefix=prefix, retriever_path=folder / "chroma", **overrides
    )
    async with serving(WORKER, settings) as bus:
        yield bus


async def ingest(
    bus: Bus,
    files: dict[str, bytes],
    base: str = "default",
    timeout: float = 60.0,
    progress: list[ev.JobProgress] | None = None,
    owner: Owner = "public",
    session: str | None = None,
) -> dict[str, ev.IngestResult]:
    """Submit one job per (name, bytes), as the CLI and the edge do; the results by name. By default an
    operator's load of the shared read-only bases (every session searches them); ``owner="session"``
    loads into ``session``'s own."""
    session = session or f"{SESSION}-{new_id()[:8]}"
    async with watch_jobs(bus.nc, session, bus.prefix, progress.append if progress is not None else None) as watch:
        jobs = {
            (await submit_ingest(bus, session, name, data, content_type_for(name), base, owner)).job_id: name
            for name, data in files.items()
        }
        return {jobs[r.job_id]: r async for r in watch.results(set(jobs), timeout)}


async def delete(
    bus: Bus, source: str, base: str = "default", owner: Owner = "public", session: str | None = None
) -> ev.IngestResult:
    session = session or f"{SESSION}-{new_id()[:8]}"
    async with watch_jobs(bus.nc, session, bus.prefix) as watch:
        job = await submit_delete(bus, session, source, base, owner)
        return await anext(watch.results({job.job_id}, 30.0))


async def query(bus: Bus, text: str, session: str = SESSION, **fields: Any) -> ev.RetrievalReply:
    request = ev.RetrievalRequest(session_id=session, producer="test", query=text, **fields)
    return await bus.request("retrieval.query", request, ev.RetrievalReply, timeout=10.0)
