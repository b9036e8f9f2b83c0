"""Session tokens: signed JWTs (HS256, PyJWT) that bind a socket to one session (and its tenant, if any)."""

from __future__ import annotations

import hmac
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

import jwt
from pydantic import TypeAdapter, ValidationError

from contracts.client import CloseCode
from contracts.envelope import SessionId, new_id
from contracts.owners import Tenant
from workers.runtime.logging import get_logger

log = get_logger("edge.auth")
ALGORITHM = "HS256"
DEV_SECRET_DIR = Path(__file__).resolve().parent.parent / ".run"


class AuthError(Exception):
    def __init__(self, close_code: CloseCode, message: str) -> None:
        super().__init__(message)
        self.close_code = close_code


@dataclass(frozen=True)
class Grant:
    session_id: str
    token: str
    expires_at: float
    tenant: str | None = None


@dataclass(frozen=True)
class Bearer:
    """What a valid token proves: the session, and the tenant named by the API key that created it."""

    session_id: str
    tenant: str | None = None


class TokenIssuer:
    def __init__(self, secret: str, ttl_s: float) -> None:
        if len(secret) < 32:
            raise ValueError("SB_EDGE_SECRET must be at least 32 characters")
        self._secret = secret
        self._ttl_s = ttl_s

    def issue(self, session_id: str | None = None, tenant: str | None = None) -> Grant:
        session_id = session_id or new_id()
        now = time.time()
        expires = int(now + self._ttl_s)
        claims: dict[str, object] = {"sid": session_id, "iat": int(now), "exp": expires, "typ": "session"}
        if tenant:  # tokens of tenant-less sessions stay as they were before tenants
            claims["tenant"] = tenant
        return Grant(session_id, jwt.encode(claims, self._secret, algorithm=ALGORITHM), expires, tenant)

    def verify(self, token: str | None) -> Bearer:
        """The session (and tenant) the token grants, or AuthError with the close code to use."""
        if not token:
            raise AuthError(CloseCode.AUTH_MISSING, "no session token")
        try:
            claims = jwt.decode(token, self._secret, algorithms=[ALGORITHM], options={"require": ["exp", "sid"]})
        except jwt.ExpiredSignatureError:
            raise AuthError(CloseCode.AUTH_EXPIRED, "session token expired; request a new one") from None
        except jwt.InvalidTokenError:
            raise AuthError(CloseCode.AUTH_INVALID, "invalid session token") from None
        if claims.get("typ") != "session":
            raise AuthError(CloseCode.AUTH_INVALID, "invalid session token")
        try:  # signed with our secret but not a session id or tenant we issue (a leaked secret, an old format)
            return Bearer(_SESSION_ID.validate_python(claims["sid"]), _TENANT.validate_python(claims.get("tenant")))
        except ValidationError:
            raise AuthError(CloseCode.AUTH_INVALID, "invalid session token") from None


_SESSION_ID: TypeAdapter[str] = TypeAdapter(SessionId)
_TENANT: TypeAdapter[str | None] = TypeAdapter(Tenant | None)


def same_secret(given: str, expected: str) -> bool:
    """Constant-time comparison of any text (hmac.compare_digest refuses non-ASCII str: a 500)."""
    return hmac.compare_digest(given.encode(), expected.encode())


def development_secret(path: Path | None = None) -> str:
    """A secret kept in .run/ (or $SB_RUN_DIR) so restarts keep tokens valid; never for production."""
    path = path or Path(os.environ.get("SB_RUN_DIR", DEV_SECRET_DIR)) / "edge-secret"
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_urlsafe(48)
    path.write_text(secret)
    path.chmod(0o600)
    log.warning("SB_EDGE_SECRET is not set: generated a development secret; set it in production", path=str(path))
    return secret
