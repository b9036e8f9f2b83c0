"""`sb init-db`: create the memory store's collections and indexes and apply retention (idempotent)."""

from __future__ import annotations

import asyncio

import typer

from workers.memory.store import MemoryStore
from workers.memory.worker import MemorySettings
from workers.runtime.settings import load_settings


def init_db() -> None:
    """Initialise the memory database at SB_MONGO_URL: collections, indexes, retention (safe to repeat)."""
    settings = load_settings(MemorySettings)
    try:
        created, pruned = asyncio.run(_init(settings))
    except Exception as error:  # one clear line instead of a driver traceback
        typer.echo(f"cannot initialise {settings.mongo_url}: {type(error).__name__}: {str(error)[:300]}", err=True)
        raise typer.Exit(1) from None
    typer.echo(
        "\n".join(
            [
                *(f"created {what}" for what in created),
                f"deleted {pruned} documents older than {settings.retention_days:g} days",
                "memory database ready",
            ]
        )
    )


async def _init(settings: MemorySettings) -> tuple[list[str], int]:
    store = MemoryStore(settings.mongo_url, settings.mongo_db, settings.mongo_timeout_s)
    try:
        return await store.ensure_schema(), await store.prune(settings.retention_days)
    finally:
        await store.close()
