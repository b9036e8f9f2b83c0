"""Limits that answer at once (never wait): frames per socket, uploads per session, bytes per owner."""

from __future__ import annotations

import math
import time

from fastapi import HTTPException
from nats.js.errors import NotFoundError
from nats.js.object_store import ObjectStore

from workers.runtime.turns import SessionTable


class TokenBucket:
    def __init__(self, rate_per_s: float, burst: float) -> None:
        self.rate = rate_per_s
        self.capacity = max(burst, 1.0)
        self._tokens = self.capacity
        self._at = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self._tokens = min(self.capacity, self._tokens + (now - self._at) * self.rate)
        self._at = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False


class UploadQuota:
    """Uploads (documents and videos together) a session may start per minute, on this edge process."""

    def __init__(self, per_minute: float, sessions: int = 10_000) -> None:
        self.per_minute = per_minute
        self._buckets: SessionTable[TokenBucket] = SessionTable(sessions)

    def take(self, session_id: str) -> None:
        """Count one upload, or refuse it with 429 and when to try again."""
        bucket = self._buckets.setdefault(session_id, lambda: TokenBucket(self.per_minute / 60, self.per_minute))
        if not bucket.take():
            raise HTTPException(
                status_code=429,
                detail=f"too many uploads from this session: at most {self.per_minute:g} a minute",
                headers={"Retry-After": str(math.ceil(60 / self.per_minute))},
            )


class StorageQuota:
    """Bytes an owner (a session, or its tenant) may hold in an object store at once: uploads waiting
    for their job, a finished video's keyframes. Object names start with ``<owner>/``."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes

    async def check(self, store: ObjectStore, owner: str, adding: int) -> None:
        """Refuse with 413 when ``adding`` more bytes would pass the owner's quota."""
        held = await held_by(store, owner)
        if held + adding > self.max_bytes:
            raise HTTPException(
                status_code=413,
                detail=(
                    f"this session (or its tenant) holds {held / 1e6:.1f} MB of stored uploads and keyframes; "
                    f"{adding / 1e6:.1f} MB more would pass its quota of {self.max_bytes / 1e6:.1f} MB "
                    "(SB_EDGE_STORED_BYTES_PER_OWNER); uploads are freed when their jobs end"
                ),
            )


async def held_by(store: ObjectStore, owner: str) -> int:
    try:
        objects = await store.list(ignore_deletes=True)
    except NotFoundError:  # an empty bucket
        return 0
    return sum(info.size or 0 for info in objects if info.name.startswith(f"{owner}/"))
