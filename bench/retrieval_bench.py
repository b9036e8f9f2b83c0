"""Retrieval: ingestion throughput and query latency, beside raw chromadb in the same run.

    .venv/bin/python bench/retrieval_bench.py [--ingest-chunks 1000] [--sizes 1000,10000] [--queries 200]

1. Ingestion: synthetic documents (sentences of the test corpus, shuffled) through
   ``Retriever.ingest``: extraction, token-aware chunking, ONNX embedding, chromadb writes.
   Figure: chunks per second, embedding included. Beside it: the embedding alone, and the
   sentence-transformers model (the same weights through torch) on the same chunks.
2. Query latency at each index size: ``Retriever.query`` (embed the question with onnxruntime,
   then search, in a worker thread as the worker does), beside the raw chromadb query with a
   precomputed embedding, on the same collection. The index is filled to size with the
   ingested chunks' vectors plus small noise (real neighbourhoods; embedding 10,000 extra
   chunks would only measure ingestion again).

Questions: the test question set, cycled. Everything runs in one process on an embedded index
in a temporary folder; the NATS request/reply hop (~0.3 ms p50, bench/nats_baseline.py) is not
included. Target: query p50 < 30 ms including embedding at 10,000 chunks.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from contracts import events as ev
from tests.support.retrieval import corpus_files, questions
from workers.retriever.core import Retriever
from workers.retriever.extract import extract
from workers.retriever.jobs import open_retriever
from workers.retriever.settings import RetrieverSettings
from workers.retriever.store import collection_name
from workers.runtime.ingest import content_type_for

TARGET_P50_MS = 30.0


def sentences() -> list[str]:
    found: list[str] = []
    for path in corpus_files():
        document = extract(path.read_bytes(), content_type_for(path.name), path.name)
        for section in document.sections:
            found.extend(s.strip() + "." for s in " ".join(section.text.split()).split(". ") if len(s) > 20)
    return found


def synthetic_documents(target_chunks: int, chunk_tokens: int, seed: int = 7) -> list[str]:
    """Plain-text documents of ~20 chunks each, about ``target_chunks`` chunks in all."""
    rng = random.Random(seed)
    pool = sentences()
    words_per_chunk = int(chunk_tokens * 0.7)
    documents = []
    for _ in range(max(1, target_chunks // 20)):
        text, words = [], 0
        while words < words_per_chunk * 20:
            sentence = rng.choice(pool)
            text.append(sentence)
            words += len(sentence.split())
        documents.append(" ".join(text))
    return documents


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def row(label: str, samples: list[float]) -> str:
    return f"| {label} | {statistics.median(samples):.1f} ms | {percentile(samples, 0.99):.1f} ms |"


async def ingest(retriever: Retriever, documents: list[str]) -> tuple[int, float]:
    started = time.perf_counter()
    chunks = 0
    for i, text in enumerate(documents):
        outcome = await retriever.ingest("bench", f"doc-{i}.txt", "text/plain", text.encode())
        chunks += outcome.chunks
    return chunks, time.perf_counter() - started


def fill(retriever: Retriever, size: int, seed: int = 11) -> None:
    """Top the collection up to ``size`` chunks with noisy copies of the stored vectors."""
    collection = retriever.store._client.get_collection(collection_name("bench"), embedding_function=None)
    have = collection.count()
    if have >= size:
        return
    stored = collection.get(include=["embeddings", "documents", "metadatas"], limit=have)
    vectors = np.asarray(stored["embeddings"], dtype=np.float32)
    rng = np.random.default_rng(seed)
    for start in range(have, size, 1000):
        n = min(1000, size - start)
        picks = rng.integers(0, len(vectors), n)
        noisy = vectors[picks] + rng.normal(0, 0.03, (n, vectors.shape[1])).astype(np.float32)
        noisy /= np.linalg.norm(noisy, axis=1, keepdims=True)
        documents = stored["documents"] or []
        metadatas = stored["metadatas"] or []
        collection.add(
            ids=[f"filler-{start + j}" for j in range(n)],
            embeddings=noisy,
            documents=[documents[p] for p in picks],
            metadatas=[{**metadatas[p], "document_id": f"filler-{(start + j) // 20}"} for j, p in enumerate(picks)],
        )


async def query_latency(retriever: Retriever, asked: list[str], n: int) -> tuple[list[float], list[float]]:
    """Interleaved: each question through Retriever.query, then the raw chromadb query for it."""
    collection = retriever.store._client.get_collection(collection_name("bench"), embedding_function=None)
    vectors = retriever.embedder.embed(asked)
    ours, raw = [], []
    for i in range(n + 10):  # the first 10 warm up
        text, vector = asked[i % len(asked)], vectors[i % len(asked)]
        request = ev.RetrievalRequest(
            session_id="bench-session", producer="bench", query=text, bases=["bench"], top_k=4
        )
        t0 = time.perf_counter()
        await retriever.query(request)
        t1 = time.perf_counter()
        collection.query(
            query_embeddings=vector.reshape(1, -1), n_results=4, include=["documents", "metadatas", "distances"]
        )
        t2 = time.perf_counter()
        if i >= 10:
            ours.append((t1 - t0) * 1000)
            raw.append((t2 - t1) * 1000)
    return ours, raw


def torch_baseline(texts: list[str], asked: list[str], n: int) -> tuple[float, list[float]]:
    """sentence-transformers on the same weights (torch): chunks/s, and one-question latencies."""
    from sentence_transformers import SentenceTransformer

    from workers.retriever.embedder import model_dir

    model = SentenceTransformer(str(model_dir()), device="cpu")
    model.encode(texts[:32], batch_size=32)
    started = time.perf_counter()
    model.encode(texts, batch_size=32)
    rate = len(texts) / (time.perf_counter() - started)
    return rate, timed(lambda i: model.encode([asked[i % len(asked)]]), n)


def timed(call: Callable[[int], object], n: int) -> list[float]:
    """Milliseconds of ``n`` calls after 10 warm-up calls."""
    samples = []
    for i in range(n + 10):
        started = time.perf_counter()
        call(i)
        if i >= 10:
            samples.append((time.perf_counter() - started) * 1000)
    return samples


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ingest-chunks", type=int, default=1000)
    parser.add_argument("--sizes", default="1000,10000")
    parser.add_argument("--queries", type=int, default=200)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory() as folder:
        settings = RetrieverSettings(retriever_path=Path(folder) / "chroma")
        retriever = await asyncio.to_thread(open_retriever, settings)
        documents = synthetic_documents(args.ingest_chunks, settings.retriever_chunk_tokens)
        chunks, seconds = await ingest(retriever, documents)
        sample = [extract(d.encode(), "text/plain", "sample.txt") for d in documents[:10]]
        texts = [c.text for document in sample for c in retriever.chunker.chunks(document)]
        t0 = time.perf_counter()
        retriever.embedder.embed(texts)
        embed_rate = len(texts) / (time.perf_counter() - t0)
        asked = [q.question for q in questions()]
        st_rate, st_query = torch_baseline(texts, asked, args.queries)
        onnx_query = timed(lambda i: retriever.embedder.embed([asked[i % len(asked)]]), args.queries)
        print(f"load: {os.getloadavg()[0]:.2f} (1 min), {os.cpu_count()} cores")
        print("\n| ingestion | chunks/s |\n|---|---:|")
        print(
            f"| Retriever.ingest: extract, chunk, embed (onnxruntime), store ({chunks} chunks, "
            f"{len(documents)} documents) | {chunks / seconds:.0f} |"
        )
        print(f"| embedding alone, onnxruntime ({len(texts)} chunks) | {embed_rate:.0f} |")
        print(f"| embedding alone, sentence-transformers (torch), same chunks | {st_rate:.0f} |")
        print("\n| query (top 4) | p50 | p99 |\n|---|---:|---:|")
        print(row("embedding one question alone, onnxruntime", onnx_query))
        print(row("embedding one question alone, sentence-transformers (torch)", st_query))
        for size in sizes:
            await asyncio.to_thread(fill, retriever, size)
            ours, raw = await query_latency(retriever, asked, args.queries)
            print(row(f"{size:,} chunks: Retriever.query (embedding included)", ours))
            print(row(f"{size:,} chunks: raw chromadb query, precomputed embedding", raw))
            verdict = "meets" if statistics.median(ours) < TARGET_P50_MS else "MISSES"
            print(f"|   target p50 < {TARGET_P50_MS:.0f} ms incl. embedding: {verdict} | | |")


if __name__ == "__main__":
    asyncio.run(main())
