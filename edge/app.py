"""The edge's ASGI app (FastAPI on uvicorn): session tokens, the WebSocket, health.

HTTP:
  POST /v1/sessions            a new session and its token (Bearer API key when SB_EDGE_API_KEYS is set)
  POST /v1/sessions/refresh    a fresh token for the session of the Bearer session token
  POST /v1/ingest              upload a document into a knowledge base (edge/ingest.py)
  GET  /healthz                liveness and NATS connectivity
  GET  /                       the browser client (edge/static)
  /v1/sessions/{id}/history, /v1/sessions/{id}/memory: the session's stored memory (edge/memory.py)
  /ops/...                     the operators' dashboard and metrics (edge/dashboard.py)
WebSocket:
  /v1/ws                       protocol v1 (docs/protocol.md); first frame: hello with the token
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import nats.micro
import uvicorn
from fastapi import Depends, FastAPI, Header, HTTPException, WebSocket
from pydantic import BaseModel

from workers.runtime.bus import Bus
from workers.runtime.logging import get_logger
from workers.runtime.provision import EDGE_CONSUMERS, provision, used_streams
from workers.runtime.worker import VERSION, StopBudget, close_bus, connect_nats

from . import page
from .auth import AuthError, Grant, TokenIssuer, development_secret, same_secret
from .connection import Connection, Edge, SessionSockets
from .dashboard import dashboard_router
from .ingest import ingest_router
from .limits import UploadQuota
from .memory import memory_router
from .settings import EdgeSettings
from .video import video_router

log = get_logger("edge")


class SessionGrant(BaseModel):
    session_id: str
    token: str
    expires_at: float
    tenant: str | None = None  # named by the API key that created the session; None: the session owns its things alone


def create_app(settings: EdgeSettings) -> FastAPI:
    secret = settings.edge_secret.get_secret_value() if settings.edge_secret else development_secret()
    issuer = TokenIssuer(secret, settings.token_ttl_s)
    uploads = UploadQuota(settings.edge_uploads_per_min)
    api_keys = settings.api_key_tenants()  # key -> the tenant it names (None: a bare key)
    bus = Bus(producer="edge", prefix=settings.subject_prefix)
    edge = Edge(settings, bus, issuer, SessionSockets())

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        nc = await connect_nats(settings, "edge")
        bus.attach(nc)
        # The edge records sessions' events from their first frame, even before any worker ran, and the
        # consumer of the user turns it accepts exists before the first orchestrator starts: none is lost.
        await provision(
            bus.js,
            used_streams("edge"),
            EDGE_CONSUMERS,
            prefix=settings.subject_prefix,
            replicas=settings.stream_replicas,
            update=False,  # its NATS user changes no stream (ops/access.py)
        )
        service = await nats.micro.add_service(
            nc,
            name="edge",
            version=VERSION,
            description="WebSocket edge",
            metadata={"started_at": f"{time.time():.3f}", "pid": str(os.getpid())},
        )
        log.info("edge ready", port=settings.edge_port, auth="api keys" if api_keys else "open session creation")
        yield
        await close_bus(nc, StopBudget(nc), service)  # bounded and quiet when NATS is already gone

    app = FastAPI(title="Switchboard edge", version=VERSION, lifespan=lifespan)
    app.include_router(video_router(settings, bus, issuer, uploads))

    def api_key_tenant(authorization: str | None = Header(default=None)) -> str | None:
        """The tenant the request's API key names (None: a bare key, or none needed); 401 without a valid key."""
        if not api_keys:
            return None
        given = (authorization or "").removeprefix("Bearer ").strip()
        # Every key is compared (constant time each): which one matched takes no longer to find.
        matched = [tenant for key, tenant in api_keys.items() if same_secret(given, key)]
        if not matched:
            raise HTTPException(status_code=401, detail="a valid API key is required to create sessions")
        return matched[0]

    @app.post("/v1/sessions")
    async def create_session(tenant: str | None = Depends(api_key_tenant)) -> SessionGrant:
        return _granted(issuer.issue(tenant=tenant))

    @app.post("/v1/sessions/refresh")
    async def refresh_session(authorization: str | None = Header(default=None)) -> SessionGrant:
        try:
            bearer = issuer.verify((authorization or "").removeprefix("Bearer ").strip())
        except AuthError as error:
            raise HTTPException(status_code=401, detail=str(error)) from None
        return _granted(issuer.issue(bearer.session_id, bearer.tenant))  # the session keeps its tenant

    app.include_router(memory_router(issuer, bus))
    app.include_router(ingest_router(settings, bus, issuer, uploads))

    @app.get("/healthz")
    async def health() -> dict[str, object]:
        connected = bus._nc is not None and bus.nc.is_connected
        if not connected:
            raise HTTPException(status_code=503, detail="NATS disconnected")
        return {"status": "ok", "sockets": edge.sockets.count()}

    app.include_router(dashboard_router(settings, bus))

    @app.websocket("/v1/ws")
    async def websocket(ws: WebSocket) -> None:
        await Connection(edge, ws).run()

    app.include_router(page.router)
    app.mount("/static", page.static_files, name="static")
    return app


def _granted(grant: Grant) -> SessionGrant:
    return SessionGrant(
        session_id=grant.session_id, token=grant.token, expires_at=grant.expires_at, tenant=grant.tenant
    )


def server_config(settings: EdgeSettings, **overrides: object) -> uvicorn.Config:
    """The uvicorn configuration of the edge (also what the tests serve it with)."""
    options: dict[str, object] = {
        "host": settings.edge_host,
        "port": settings.edge_port,
        "log_level": "warning",
        "access_log": False,
        # The frame limits are enforced per frame by the edge with a protocol error; this is the hard cap.
        "ws_max_size": 4 * max(settings.max_text_frame_bytes, settings.max_binary_frame_bytes),
        "timeout_graceful_shutdown": 5,
        "ws_per_message_deflate": False,  # measured: ~41 KB per socket and CPU on every frame
        "ws": "websockets-sansio",  # uvicorn deprecates its legacy protocol; ~30 us less per round trip here
    }
    return uvicorn.Config(create_app(settings), **(options | overrides))  # type: ignore[arg-type]
