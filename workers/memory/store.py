"""The conversation store on MongoDB (or any MongoDB wire-protocol server) through PyMongo's async client.

Collections (database from ``SB_MONGO_URL``'s path, else ``SB_MONGO_DB``):

``turns``        one document per user turn or reply; ``_id`` is the event id, so a redelivered or
                 republished event can never make a second document (an upsert that only inserts).
                 ``position`` is the event's JetStream stream sequence: the session's order on the
                 bus, whatever order the writes happened in.
``transcripts``  final transcripts with the recognizer's details (engine, confidence, audio span);
                 the text itself also arrives as the user turn, so transcripts are not turns.
``facts``        what a user stated about themselves, one document per (session, key); a later
                 statement replaces an earlier one.
``summaries``    one running summary per session and the position it covers up to.

Retention is a periodic delete of documents older than ``retention_days`` (:meth:`MemoryStore.prune`),
not a TTL index: correctness and speed must not depend on how a server implements TTL (the
embedded nx-27017 sweeps expired documents on every query, which made each read ~25x slower).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from pymongo import ASCENDING, DESCENDING, AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import ConnectionFailure, DuplicateKeyError

from workers.runtime.logging import get_logger

log = get_logger("memory.store")
Doc = dict[str, Any]
T = TypeVar("T")

#: Indexes by collection (keys only: servers name indexes their own way).
INDEXES: dict[str, list[list[tuple[str, int]]]] = {
    "turns": [[("session_id", ASCENDING), ("position", ASCENDING)], [("stored_at", ASCENDING)]],
    "transcripts": [[("session_id", ASCENDING), ("position", ASCENDING)], [("stored_at", ASCENDING)]],
    "facts": [[("session_id", ASCENDING)], [("stored_at", ASCENDING)]],
    "summaries": [[("stored_at", ASCENDING)]],
}


@dataclass(frozen=True)
class Turn:
    role: Literal["user", "assistant"]
    text: str
    turn_id: str
    at: float
    position: int


@dataclass(frozen=True)
class Summary:
    text: str
    until: int  # the last position it covers


@dataclass(frozen=True)
class Fact:
    key: str
    text: str


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def parse_turn(doc: Doc) -> Turn | None:
    """A stored turn, or None for a malformed document (logged, never fatal)."""
    try:
        role, text, turn_id = doc["role"], doc["text"], doc["turn_id"]
        if role not in ("user", "assistant") or not isinstance(text, str) or not isinstance(turn_id, str):
            raise TypeError("bad field types")
        return Turn(role, text, turn_id, float(doc["at"]), int(doc["position"]))
    except (KeyError, TypeError, ValueError) as error:
        log.warning("skipping a malformed turn document", id=str(doc.get("_id"))[:64], error=repr(error)[:200])
        return None


class MemoryStore:
    def __init__(self, url: str, database: str, timeout_s: float = 2.0) -> None:
        self.client: AsyncMongoClient[Doc] = AsyncMongoClient(
            url, serverSelectionTimeoutMS=int(timeout_s * 1000), connectTimeoutMS=int(timeout_s * 1000),
            tz_aware=True)
        self.db: AsyncDatabase[Doc] = self.client.get_default_database(default=database)

    async def close(self) -> None:
        await self.client.close()

    # ------------------------------------------------------------------ schema and retention

    async def ensure_schema(self) -> list[str]:
        """Create the collections and indexes that are missing; returns what it created (idempotent)."""
        created: list[str] = []
        existing = set(await self.db.list_collection_names())
        for name, indexes in INDEXES.items():
            if name not in existing:
                await self.db.create_collection(name)
                created.append(f"collection {name}")
            have = [list(info["key"]) for info in (await self.db[name].index_information()).values()]
            for keys in indexes:
                if [tuple(k) for k in keys] not in [[tuple(k) for k in h] for h in have]:
                    await self.db[name].create_index(keys)
                    created.append(f"index {name}({', '.join(k for k, _ in keys)})")
        return created

    async def prune(self, retention_days: float) -> int:
        """Delete everything stored more than ``retention_days`` ago; returns how many documents."""
        cutoff = _utcnow() - dt.timedelta(days=retention_days)
        total = 0
        for name in INDEXES:
            total += (await self.db[name].delete_many({"stored_at": {"$lt": cutoff}})).deleted_count
        return total

    # ------------------------------------------------------------------ writes (idempotent)

    async def add_turn(self, event_id: str, session_id: str, position: int, turn: Doc) -> bool:
        """Store a turn once; False when this event id is already stored."""
        doc = {"session_id": session_id, "position": position, "stored_at": _utcnow(), **turn}
        result = await self.db.turns.update_one({"_id": event_id}, {"$setOnInsert": doc}, upsert=True)
        return result.upserted_id is not None

    async def add_transcript(self, event_id: str, session_id: str, position: int, transcript: Doc) -> bool:
        doc = {"session_id": session_id, "position": position, "stored_at": _utcnow(), **transcript}
        result = await self.db.transcripts.update_one({"_id": event_id}, {"$setOnInsert": doc}, upsert=True)
        return result.upserted_id is not None

    async def set_facts(self, session_id: str, position: int, facts: list[Fact]) -> None:
        """A fact replaces the one with its key unless that one was stated later (redelivery after a newer turn)."""
        for fact in facts:
            doc = {"session_id": session_id, "key": fact.key, "text": fact.text, "position": position,
                   "stored_at": _utcnow()}
            with contextlib.suppress(DuplicateKeyError):  # a newer statement of the same fact is stored
                await self.db.facts.update_one({"_id": f"{session_id}:{fact.key}", "position": {"$lt": position}},
                                               {"$set": doc}, upsert=True)

    async def set_summary(self, session_id: str, summary: Summary) -> None:
        await self.db.summaries.update_one(
            {"_id": session_id},
            {"$set": {"text": summary.text, "until": summary.until, "stored_at": _utcnow()}}, upsert=True)

    async def forget(self, session_id: str) -> int:
        """Delete everything stored about the session; returns how many documents."""
        results = await asyncio.gather(*(self.db[name].delete_many({"session_id": session_id})
                                         for name in ("turns", "transcripts", "facts")),
                                       self.db.summaries.delete_many({"_id": session_id}))
        return sum(r.deleted_count for r in results)

    # ------------------------------------------------------------------ reads

    async def recent_turns(self, session_id: str, limit: int, before: int | None = None) -> list[Turn]:
        """Up to ``limit`` turns before position ``before`` (all when None), newest first."""
        query: Doc = {"session_id": session_id}
        if before is not None:
            query["position"] = {"$lt": before}
        docs = await self.db.turns.find(query).sort("position", DESCENDING).limit(limit).to_list()
        return [t for t in map(parse_turn, docs) if t is not None]

    async def turns_between(self, session_id: str, after: int, limit: int) -> list[Turn]:
        """Turns after position ``after``, oldest first."""
        docs = await (self.db.turns.find({"session_id": session_id, "position": {"$gt": after}})
                      .sort("position", ASCENDING).limit(limit).to_list())
        return [t for t in map(parse_turn, docs) if t is not None]

    async def summary(self, session_id: str) -> Summary | None:
        doc = await self.db.summaries.find_one({"_id": session_id})
        if doc is None or not isinstance(doc.get("text"), str):
            return None
        return Summary(doc["text"], int(doc.get("until", 0)))

    async def facts(self, session_id: str) -> list[Fact]:
        docs = await self.db.facts.find({"session_id": session_id}).sort("position", ASCENDING).to_list()
        return [Fact(str(d["key"]), d["text"]) for d in docs if isinstance(d.get("text"), str) and "key" in d]

    async def count_turns(self) -> int:
        return await self.db.turns.count_documents({})

    async def seed_turns(self, docs: list[Doc]) -> None:
        """Insert many new turns at once (benchmarks); each doc carries its ``_id``."""
        now = _utcnow()
        await self.db.turns.insert_many([{**d, "stored_at": now} for d in docs], ordered=False)


async def while_unreachable(operation: Callable[[], Awaitable[T]], keepalive: Callable[[], Awaitable[None]],
                            max_wait_s: float = 2.0) -> T:
    """Run ``operation``, retrying for as long as the database cannot be reached.

    An unreachable database is not the message's fault: burning its deliveries would dead-letter
    good turns during an outage. So the writer holds the message (``keepalive`` tells JetStream
    it is in progress) and retries with capped backoff; anything else propagates.
    """
    delay, since, logged = 0.1, time.monotonic(), 0.0
    while True:
        try:
            return await operation()
        except ConnectionFailure as error:
            if time.monotonic() - logged >= 10.0:
                logged = time.monotonic()
                log.warning("database unreachable; holding the message and retrying",
                            down_for_s=round(time.monotonic() - since, 1), error=repr(error)[:200])
            await keepalive()
            await asyncio.sleep(delay)
            delay = min(delay * 2, max_wait_s)
