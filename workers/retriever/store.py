"""The chunk index on chromadb: one collection per knowledge base, cosine space, our own vectors.

Embedded (``PersistentClient`` on a local folder) by default; a ``chroma run`` server through
``HttpClient`` when several replicas share one index. The calls are synchronous: the retriever
runs them in a thread.

Replacing a document is all-or-nothing as far as readers can tell: the new version's chunks
are written first (ids carry the content hash, so they never overwrite the old ones), then
the old version's chunks are deleted. If writing fails half-way, what was written is removed
again, so a failed job leaves no partial chunks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit

import chromadb
from chromadb.api import ClientAPI
from chromadb.api.models.Collection import Collection
from chromadb.config import Settings
from chromadb.errors import NotFoundError

from .embedder import Vectors

Scalar = str | int | float | bool
WRITE_BATCH = 256  # chunks per chromadb call


def collection_name(base: str) -> str:
    """``kb-<base>-minilm``: the model that made the vectors is part of the name (chroma: 3-512 characters)."""
    return f"kb-{base}-minilm-l6"


def open_client(chroma_url: str | None, path: Path) -> ClientAPI:
    no_telemetry = Settings(anonymized_telemetry=False)
    if chroma_url:
        parts = urlsplit(chroma_url)
        return chromadb.HttpClient(
            host=parts.hostname or "127.0.0.1",
            port=parts.port or 8000,
            ssl=parts.scheme == "https",
            settings=no_telemetry,
        )
    path.mkdir(parents=True, exist_ok=True)
    return chromadb.PersistentClient(path=str(path), settings=no_telemetry)


@dataclass(frozen=True)
class Hit:
    text: str
    score: float  # cosine similarity
    metadata: Mapping[str, Scalar]


def where_clause(filters: Mapping[str, Scalar]) -> dict[str, Any] | None:
    clauses = [{key: value} for key, value in sorted(filters.items())]
    if not clauses:
        return None
    return clauses[0] if len(clauses) == 1 else {"$and": clauses}


class ChunkStore:
    def __init__(self, client: ClientAPI) -> None:
        self._client = client

    def _collection(self, base: str, create: bool) -> Collection | None:
        name = collection_name(base)
        if create:
            return self._client.get_or_create_collection(
                name, configuration={"hnsw": {"space": "cosine"}}, embedding_function=None
            )
        try:
            return self._client.get_collection(name, embedding_function=None)
        except (NotFoundError, ValueError):
            return None

    def stored_hash(self, base: str, document_id: str) -> str | None:
        """The content hash of the document's indexed version, if it is indexed."""
        collection = self._collection(base, create=False)
        if collection is None:
            return None
        found = collection.get(where={"document_id": document_id}, limit=1, include=["metadatas"])
        metadatas = found["metadatas"] or []
        return str(metadatas[0]["content_hash"]) if metadatas else None

    def replace(
        self,
        base: str,
        document_id: str,
        content_hash: str,
        texts: Sequence[str],
        vectors: Vectors,
        metadatas: Sequence[Mapping[str, Scalar]],
    ) -> None:
        """Index the new version of a document, then drop every other version of it."""
        collection = self._collection(base, create=True)
        assert collection is not None
        ids = [f"{document_id}:{content_hash[:16]}:{m['position']}" for m in metadatas]
        try:
            for i in range(0, len(ids), WRITE_BATCH):
                collection.upsert(
                    ids=ids[i : i + WRITE_BATCH],
                    embeddings=vectors[i : i + WRITE_BATCH],
                    documents=list(texts[i : i + WRITE_BATCH]),
                    metadatas=cast(Any, list(metadatas[i : i + WRITE_BATCH])),
                )
        except BaseException:
            collection.delete(ids=ids)  # nothing half-ingested
            raise
        stale: dict[str, Any] = {"$and": [{"document_id": document_id}, {"content_hash": {"$ne": content_hash}}]}
        collection.delete(where=stale)

    def delete(self, base: str, document_id: str) -> int:
        collection = self._collection(base, create=False)
        if collection is None:
            return 0
        ids = collection.get(where={"document_id": document_id}, include=[])["ids"]
        if ids:
            collection.delete(ids=ids)
        return len(ids)

    def count(self, base: str) -> int:
        collection = self._collection(base, create=False)
        return collection.count() if collection is not None else 0

    def query(self, bases: Sequence[str], vector: Vectors, top_k: int, filters: Mapping[str, Scalar]) -> list[Hit]:
        """The ``top_k`` nearest chunks over all ``bases`` (absent bases contribute nothing), best first."""
        hits: list[Hit] = []
        for base in dict.fromkeys(bases):
            collection = self._collection(base, create=False)
            if collection is None:
                continue
            found = collection.query(
                query_embeddings=vector.reshape(1, -1),
                n_results=top_k,
                where=where_clause(filters),
                include=["documents", "metadatas", "distances"],
            )
            documents = (found["documents"] or [[]])[0]
            metadatas = (found["metadatas"] or [[]])[0]
            distances = (found["distances"] or [[]])[0]
            hits.extend(
                Hit(text, 1.0 - distance, cast(Mapping[str, Scalar], metadata))
                for text, metadata, distance in zip(documents, metadatas, distances, strict=True)
            )
        hits.sort(key=lambda hit: hit.score, reverse=True)
        return hits[:top_k]
