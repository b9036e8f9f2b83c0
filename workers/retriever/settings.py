"""Retriever settings (``SB_RETRIEVER_*``): where the index lives, how documents are cut, limits."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field, model_validator

from contracts.streams import INGEST
from workers.runtime import RuntimeSettings

MiB = 1024 * 1024
_REPO_RUN_DIR = Path(__file__).resolve().parents[2] / ".run"


def run_dir() -> Path:
    """State of the local stack: ``$SB_RUN_DIR``, else ``.run/`` in the repository."""
    return Path(os.environ.get("SB_RUN_DIR", _REPO_RUN_DIR))


def default_cache() -> Path:
    """``$XDG_CACHE_HOME/switchboard/models`` (``~/.cache/...``): shared by every run directory and checkout."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "switchboard" / "models"


class RetrieverSettings(RuntimeSettings):
    # JetStream stops redelivering an ingestion job after INGEST.max_deliver; dead-letter it then too.
    max_deliver: int = Field(
        default=INGEST.max_deliver, ge=1, le=100, description="Deliveries before a message is dead-lettered"
    )
    retriever_chroma_url: str | None = Field(
        default=None, description="A `chroma run` server (http://host:port) shared by replicas; unset: embedded"
    )
    retriever_path: Path | None = Field(
        default=None, description="Folder of the embedded index; unset: $SB_RUN_DIR/chroma (.run/chroma)"
    )
    retriever_model_cache: Path | None = Field(
        default=None,
        description="Where the ONNX export of the embedding model is cached; unset: "
        "~/.cache/switchboard/models (or under $XDG_CACHE_HOME)",
    )
    retriever_chunk_tokens: int = Field(default=128, ge=16, le=254, description="Tokens per chunk (model limit 254)")
    retriever_chunk_overlap: int = Field(default=24, ge=0, description="Tokens shared by neighbouring chunks")
    retriever_batch_size: int = Field(default=32, ge=1, le=512, description="Chunks embedded per model call")
    retriever_threads: int = Field(default=2, ge=1, le=64, description="onnxruntime threads per model call")
    retriever_max_document_bytes: int = Field(default=20 * MiB, ge=1, description="Largest document accepted (bytes)")
    retriever_max_chunks: int = Field(default=20_000, ge=1, description="Most chunks one document may make")
    retriever_max_jobs: int = Field(
        default=2,
        ge=1,
        le=INGEST.max_ack_pending,
        description="Ingestion jobs a replica runs at once, each reading its document in its own child process",
    )
    retriever_extract_timeout_s: float = Field(
        default=10.0, gt=0, le=3600, description="Longest a document may take to read (its reader process is killed)"
    )
    # About what retriever_max_chunks lets through at the default chunk size, but refused before chunking.
    retriever_max_text_chars: int = Field(
        default=10_000_000, ge=1, description="Most characters of text one document may hold"
    )

    @model_validator(mode="after")
    def _overlap_below_half_a_chunk(self) -> RetrieverSettings:
        if self.retriever_chunk_overlap * 2 >= self.retriever_chunk_tokens:
            raise ValueError("retriever_chunk_overlap must be below half of retriever_chunk_tokens")
        return self

    def chroma_path(self) -> Path:
        return self.retriever_path or run_dir() / "chroma"

    def model_cache(self) -> Path:
        return self.retriever_model_cache or default_cache()
