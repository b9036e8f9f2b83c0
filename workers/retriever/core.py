"""The retriever's logic, testable without the bus: ingest, delete and query documents.

Ingestion: extract sections -> token-aware chunks -> embeddings (batched) -> replace the
document's chunks in its base's collection. A document is identified by its source within a
base; its content hash (of its bytes and its media type: the same bytes read as another type
are another version) makes re-ingesting unchanged bytes a no-op, once the type is known to be
readable. Every base belongs to an owner (:func:`owned`): a session's bases are its own (or its
tenant's, shared by the tenant's sessions: contracts/owners.py), and the ``public`` ones, loaded
by operators, are read by every session that names them; nothing else crosses owners, not even
the answer to "unchanged". Extraction runs in a child process within a time budget (reader.py);
every other CPU- or IO-bound step runs in a worker thread, never on the event loop.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from contracts import events as ev
from contracts.owners import PUBLIC, owner_of

from .chunker import Chunker
from .embedder import Embedder
from .extract import DocumentError, check_readable, media_type
from .reader import Reader
from .store import ChunkStore, Hit, Scalar

Progress = Callable[[str, int, int], Awaitable[None]]  # stage, done, total


@dataclass(frozen=True)
class Outcome:
    status: Literal["ingested", "unchanged", "deleted"]
    document_id: str
    chunks: int


class QueryError(ValueError):
    """The query cannot run as asked (a blank query)."""


def owned(owner: str, base: str) -> str:
    """The stored name of ``owner``'s base ``base`` (owners never share a collection)."""
    return f"{owner}-{base}"


def searched(session_id: str, tenant: str | None, bases: Sequence[str]) -> list[str]:
    """What a session's query searches: its own (or its tenant's) bases of those names, then the public ones."""
    mine = owner_of(session_id, tenant)
    return [owned(owner, base) for base in dict.fromkeys(bases) for owner in (mine, PUBLIC)]


def search_result(passages: Sequence[ev.Passage]) -> dict[str, Any]:
    """Passages as the search_knowledge tool returns them (contracts/tools.py): numbered [n] for citing."""
    return {
        "passages": [
            {
                "n": n,
                "text": p.text,
                "source": p.citation.source,
                "section": p.citation.section,
                "score": round(p.score, 4),
            }
            for n, p in enumerate(passages, start=1)
        ],
        "citations": [p.citation.model_dump() for p in passages],
    }


def document_id(source: str) -> str:
    return hashlib.sha256(source.encode()).hexdigest()[:32]


def version_hash(data: bytes, content_type: str) -> str:
    """What makes a re-ingestion ``unchanged``: the same bytes read the same way (the same media type)."""
    digest = hashlib.sha256(media_type(content_type).encode() + b"\0")
    digest.update(data)
    return digest.hexdigest()


async def _no_progress(stage: str, done: int, total: int) -> None:
    return None


class Retriever:
    def __init__(
        self,
        reader: Reader,
        embedder: Embedder,
        chunker: Chunker,
        store: ChunkStore,
        max_document_bytes: int,
        max_chunks: int,
    ) -> None:
        self.reader = reader
        self.embedder = embedder
        self.chunker = chunker
        self.store = store
        self.max_document_bytes = max_document_bytes
        self.max_chunks = max_chunks

    async def ingest(
        self, base: str, source: str, content_type: str, data: bytes, progress: Progress = _no_progress
    ) -> Outcome:
        """Index ``data`` as the document ``source`` of ``base``; DocumentError for bad input."""
        self.check_size(len(data))
        check_readable(data, content_type)  # before "unchanged": bytes stored before may not be readable as this
        doc_id = document_id(source)
        content_hash = version_hash(data, content_type)
        if await asyncio.to_thread(self.store.stored_hash, base, doc_id) == content_hash:
            return Outcome("unchanged", doc_id, 0)
        await progress("parsing", 0, 1)
        document = await self.reader.read(data, content_type, source)
        chunks = await asyncio.to_thread(self.chunker.chunks, document)
        if len(chunks) > self.max_chunks:
            raise DocumentError(f"the document makes {len(chunks)} chunks; the limit is {self.max_chunks}")
        texts = [c.text for c in chunks]
        embedded = [f"{c.section}: {c.text}" if c.section else c.text for c in chunks]
        step = self.embedder.batch_size * 4
        vectors = []
        for i in range(0, len(embedded), step):
            await progress("embedding", i, len(chunks))
            vectors.append(await asyncio.to_thread(self.embedder.embed, embedded[i : i + step]))
        await progress("storing", len(chunks), len(chunks))
        metadatas: list[dict[str, Scalar]] = [
            {
                "document_id": doc_id,
                "source": source,
                "title": document.title,
                "section": c.section,
                "position": c.position,
                "content_hash": content_hash,
                "content_type": content_type,
            }
            for c in chunks
        ]
        await asyncio.to_thread(
            self.store.replace, base, doc_id, content_hash, texts, np.concatenate(vectors), metadatas
        )
        return Outcome("ingested", doc_id, len(chunks))

    def check_size(self, size: int) -> None:
        if size > self.max_document_bytes:
            raise DocumentError(
                f"the document is {size / 1e6:.1f} MB; the limit is {self.max_document_bytes / 1e6:.1f} MB"
            )

    async def delete(self, base: str, source: str) -> Outcome:
        doc_id = document_id(source)
        removed = await asyncio.to_thread(self.store.delete, base, doc_id)
        return Outcome("deleted", doc_id, removed)

    async def query(self, request: ev.RetrievalRequest, bases: Sequence[str] | None = None) -> list[ev.Passage]:
        """Top-k passages over ``bases`` (stored names; default: the request's, as they are), each at or
        above ``min_score``, best first."""
        if not request.query.strip():
            raise QueryError("the query is blank")
        hits = await asyncio.to_thread(self._search, request, request.bases if bases is None else bases)
        return [
            ev.Passage(
                text=hit.text,
                score=round(hit.score, 4),
                citation=ev.Citation(
                    document_id=str(hit.metadata["document_id"]),
                    source=str(hit.metadata["source"]),
                    title=str(hit.metadata.get("title", "")),
                    section=str(hit.metadata.get("section", "")),
                    position=int(hit.metadata.get("position", 0)),
                    score=round(hit.score, 4),
                ),
            )
            for hit in hits
            if hit.score >= request.min_score
        ]

    def _search(self, request: ev.RetrievalRequest, bases: Sequence[str]) -> list[Hit]:
        vector = self.embedder.embed([request.query.strip()])[0]
        return self.store.query(bases, vector, request.top_k, request.filters)
