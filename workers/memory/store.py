"""The conversation store on MongoDB (or any MongoDB wire-protocol server) through PyMongo's async client.

Collections (database from ``SB_MONGO_URL``'s path, else ``SB_MONGO_DB``):

``turns``        one document per user turn or reply; ``_id`` is the event id, so a redelivered or
                 republished event can never make a second document (an upsert that only inserts).
                 ``position`` is the event's JetStream stream sequence: the session's order on the
                 bus, whatever order the writes happened in.
``transcripts``  final transcripts with the recognizer's details (engine, confidence, audio span);
                 the text itself also arrives as the user turn, so transcripts are not turns.
``sessions``     one document per session: what a context needs, in one read by ``_id``. ``window``
                 maps positions to the latest turns (setting a position twice is harmless; trimmed
                 to the newest ``keep`` now and then), ``facts`` maps keys to what the user stated
                 about themselves (a later statement replaces an earlier one), ``summary`` is the
                 running summary and ``until`` the position it covers up to.

The writer's writes (:class:`Write`: turns, transcripts, window entries, facts, forgets) go to the
server as one ordered client-level bulk write per batch (:meth:`MemoryStore.write`, MongoDB 8.0's
``bulkWrite`` command; nx-27017 has it): one round trip for the whole batch, applied in its order.

Retention is a periodic delete of documents older than ``retention_days`` (:meth:`MemoryStore.prune`),
not a TTL index: correctness and speed must not depend on how a server implements TTL (the
embedded nx-27017 sweeps expired documents on every query, which made each read ~25x slower).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from pymongo import ASCENDING, DESCENDING, AsyncMongoClient, DeleteMany, UpdateOne
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import ClientBulkWriteException, ConnectionFailure

from workers.runtime.logging import get_logger

log = get_logger("memory.store")
Doc = dict[str, Any]
T = TypeVar("T")

#: Indexes by collection (keys only: servers name indexes their own way).
INDEXES: dict[str, list[list[tuple[str, int]]]] = {
    "turns": [[("session_id", ASCENDING), ("position", ASCENDING)], [("stored_at", ASCENDING)]],
    "transcripts": [[("session_id", ASCENDING), ("position", ASCENDING)], [("stored_at", ASCENDING)]],
    "sessions": [[("stored_at", ASCENDING)]],
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


@dataclass(frozen=True)
class SessionMemory:
    """What a context is made of: the latest turns (newest first), the summary, the facts."""

    turns: list[Turn]
    summary: Summary | None
    facts: list[Fact]


@dataclass(frozen=True)
class InsertOnce:
    """A turn or a transcript, stored once per event id: a redelivery matches its document and changes nothing."""

    collection: Literal["turns", "transcripts"]
    event_id: str
    session_id: str
    position: int
    fields: Doc


@dataclass(frozen=True)
class SetWindow:
    """Turns into the session document's ``window`` by position (upserts the document; repeating it is harmless)."""

    session_id: str
    turns: dict[int, Doc]


@dataclass(frozen=True)
class SetFact:
    """A fact replaces the one with its key unless that one was stated later (a redelivery after a newer turn).

    Not an upsert (a conditional upsert fails with a duplicate key when the condition does not hold, which
    would stop an ordered bulk write): a :class:`SetWindow` of the session must come before it."""

    session_id: str
    position: int
    fact: Fact


@dataclass(frozen=True)
class Forget:
    """Delete everything stored about the session."""

    session_id: str


Write = InsertOnce | SetWindow | SetFact | Forget
Model = UpdateOne | DeleteMany


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
        # Only server selection is short: a connect timeout that short also bounds the driver's heartbeats,
        # and a server busy for longer (a big insert on nx-27017) would see its pool cleared mid-operation.
        self.client: AsyncMongoClient[Doc] = AsyncMongoClient(
            url, serverSelectionTimeoutMS=int(timeout_s * 1000), tz_aware=True
        )
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

    async def write(self, writes: Sequence[Write]) -> set[str]:
        """Apply ``writes`` in their order in one bulk write; returns the event ids it inserted (the others were
        stored already). A network failure mid-way raises ConnectionFailure: repeating the writes is harmless."""
        if not writes:
            return set()
        now = _utcnow()
        models: list[Model] = []
        inserts: dict[int, str] = {}  # model index -> event id
        for write in writes:
            if isinstance(write, InsertOnce):
                inserts[len(models)] = write.event_id
            models.extend(self._models(write, now))
        try:
            result = await self.client.bulk_write(models, ordered=True, verbose_results=True)
        except ClientBulkWriteException as error:  # the driver wraps a lost connection: say it plainly
            if isinstance(error.error, ConnectionFailure):
                raise error.error from error
            raise
        updates = result.update_results
        return {event_id for index, event_id in inserts.items() if updates[index].upserted_id is not None}

    def _models(self, write: Write, now: dt.datetime) -> list[Model]:
        def ns(collection: str) -> str:
            return f"{self.db.name}.{collection}"

        if isinstance(write, InsertOnce):
            doc = {"session_id": write.session_id, "position": write.position, "stored_at": now, **write.fields}
            return [
                UpdateOne({"_id": write.event_id}, {"$setOnInsert": doc}, upsert=True, namespace=ns(write.collection))
            ]
        if isinstance(write, SetWindow):
            entries = {f"window.{position}": turn for position, turn in write.turns.items()}
            return [
                UpdateOne(
                    {"_id": write.session_id},
                    {"$set": {**entries, "stored_at": now}},
                    upsert=True,
                    namespace=ns("sessions"),
                )
            ]
        if isinstance(write, SetFact):
            # Two conditions, not one $or: nx-27017 answers an $or by scanning the collection (14 ms a fact at
            # 1,000 sessions); each of these is a lookup by _id. (When the first sets it, the second finds it
            # not older and changes nothing.)
            path = f"facts.{write.fact.key}"
            fact = {"$set": {path: {"text": write.fact.text, "position": write.position}, "stored_at": now}}
            return [
                UpdateOne({"_id": write.session_id, path: {"$exists": False}}, fact, namespace=ns("sessions")),
                UpdateOne(
                    {"_id": write.session_id, f"{path}.position": {"$lt": write.position}},
                    fact,
                    namespace=ns("sessions"),
                ),
            ]
        return [
            DeleteMany({"session_id": write.session_id}, namespace=ns("turns")),
            DeleteMany({"session_id": write.session_id}, namespace=ns("transcripts")),
            DeleteMany({"_id": write.session_id}, namespace=ns("sessions")),
        ]

    async def trim_window(self, session_id: str, keep: int) -> None:
        doc = await self.db.sessions.find_one({"_id": session_id}, {"window": 1})
        window = doc.get("window") if doc else None
        if not isinstance(window, dict) or len(window) <= keep:
            return
        old = sorted(window, key=_position)[: len(window) - keep]
        await self.db.sessions.update_one({"_id": session_id}, {"$unset": {f"window.{k}": "" for k in old}})

    async def set_summary(self, session_id: str, summary: Summary) -> None:
        await self.db.sessions.update_one(
            {"_id": session_id},
            {"$set": {"summary": summary.text, "until": summary.until, "stored_at": _utcnow()}},
            upsert=True,
        )

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
        docs = await (
            self.db.turns.find({"session_id": session_id, "position": {"$gt": after}})
            .sort("position", ASCENDING)
            .limit(limit)
            .to_list()
        )
        return [t for t in map(parse_turn, docs) if t is not None]

    async def session(self, session_id: str, turns: int) -> SessionMemory:
        """The session's context material in one read; malformed parts are skipped."""
        doc = await self.db.sessions.find_one({"_id": session_id}) or {}
        window: Doc = doc["window"] if isinstance(doc.get("window"), dict) else {}
        latest = sorted(window, key=_position, reverse=True)[:turns]
        parsed = (
            parse_turn({**window[k], "position": k, "_id": f"{session_id}:{k}"})
            for k in latest
            if isinstance(window[k], dict)
        )
        facts: Doc = doc["facts"] if isinstance(doc.get("facts"), dict) else {}
        stated = sorted(
            (
                (v.get("position", 0), k, v["text"])
                for k, v in facts.items()
                if isinstance(v, dict) and isinstance(v.get("text"), str)
            ),
            key=lambda f: f[0],
        )
        return SessionMemory(
            [t for t in parsed if t is not None], _summary(doc), [Fact(key, text) for _, key, text in stated]
        )

    async def summary(self, session_id: str) -> Summary | None:
        return _summary(await self.db.sessions.find_one({"_id": session_id}, {"summary": 1, "until": 1}) or {})

    async def count_turns(self) -> int:
        """From the collection's metadata: cheap on any server, exact enough for reports."""
        return await self.db.turns.estimated_document_count()

    async def seed_turns(self, docs: list[Doc], keep: int) -> None:
        """Insert many new turns at once, and each session's newest ``keep`` in its window (benchmarks)."""
        now = _utcnow()
        await self.db.turns.insert_many([{**d, "stored_at": now} for d in docs], ordered=False)
        windows: dict[str, dict[str, Doc]] = {}
        for d in sorted(docs, key=lambda d: int(d["position"])):
            windows.setdefault(d["session_id"], {})[f"window.{d['position']}"] = {
                k: d[k] for k in ("role", "text", "turn_id", "at")
            }
        await self.db.sessions.bulk_write(
            [
                UpdateOne(
                    {"_id": session}, {"$set": {**dict(list(entries.items())[-keep:]), "stored_at": now}}, upsert=True
                )
                for session, entries in windows.items()
            ],
            ordered=False,
        )


def _position(key: str) -> int:
    return int(key) if key.isdigit() else 0


def _summary(doc: Doc) -> Summary | None:
    text = doc.get("summary")
    return Summary(text, int(doc.get("until") or 0)) if isinstance(text, str) and text else None


async def while_unreachable(operation: Callable[[], Awaitable[T]], max_wait_s: float = 2.0) -> T:
    """Run ``operation``, retrying for as long as the database cannot be reached.

    An unreachable database is not the messages' fault: burning their deliveries would dead-letter
    good turns during an outage. So the writer holds its batch (the runtime keeps telling JetStream
    it is in progress) and retries with capped backoff; anything else propagates.
    """
    delay, since, logged = 0.1, time.monotonic(), 0.0
    while True:
        try:
            return await operation()
        except ConnectionFailure as error:
            if time.monotonic() - logged >= 10.0:
                logged = time.monotonic()
                log.warning(
                    "database unreachable; retrying",
                    down_for_s=round(time.monotonic() - since, 1),
                    error=repr(error)[:200],
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, max_wait_s)
