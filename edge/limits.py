"""Rate limits that answer at once (never wait): per socket (frames) and per session (uploads)."""

from __future__ import annotations

import math
import time

from fastapi import HTTPException

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
