"""Retriever: documents in as durable ingestion jobs, passages out by request/reply (chromadb, MiniLM)."""
