"""The operators' dashboard: live latency distributions and trends, sessions, error rates, one turn's waterfall.

HTTP (all under /ops; off unless ``SB_EDGE_OPERATOR_TOKEN`` is set):
  GET  /ops                the dashboard (or its login form); a page with no external assets
  POST /ops/login          {"token": ...} -> an HttpOnly cookie for /ops
  GET  /ops/api/snapshot   the stats worker's StatsSnapshot as JSON (?session_id=&recent=)
  GET  /ops/metrics        this process's Prometheus metrics
The cookie or an ``Authorization: Bearer <operator token>`` header authenticates.
The figures come from the stats worker over ``svc.stats.snapshot``; the page polls every 2 s.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Cookie, Depends, FastAPI, Header, HTTPException, Query, Response
from fastapi.responses import HTMLResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel

from contracts import events as ev
from workers.runtime.bus import Bus, DependencyUnavailableError
from workers.runtime.metrics import serve_metrics

from .auth import same_secret
from .settings import EdgeSettings

COOKIE = "sb_ops"
PAGE = (Path(__file__).with_name("dashboard.html")).read_text()
LOGIN = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Switchboard ops: sign in</title>
<link rel="icon" href="data:,">
<style nonce="__NONCE__">body{font:15px system-ui,sans-serif;background:#111;color:#eee;display:grid;
place-items:center;height:90vh}input,button{font:inherit;padding:.4em;margin:.2em}</style></head><body>
<form id="f"><h1>Switchboard ops</h1><input id="t" type="password" placeholder="operator token" autofocus>
<button>Sign in</button><p id="e"></p></form><script nonce="__NONCE__">
document.getElementById("f").addEventListener("submit", async (event) => {
  event.preventDefault();
  const r = await fetch("/ops/login", {method: "POST", headers: {"content-type": "application/json"},
    body: JSON.stringify({token: document.getElementById("t").value})});
  if (r.ok) location.reload(); else document.getElementById("e").textContent = "wrong token";
});</script></body></html>"""


class Login(BaseModel):
    token: str


def dashboard_router(settings: EdgeSettings, bus: Bus) -> APIRouter:
    token = settings.edge_operator_token.get_secret_value() if settings.edge_operator_token else None
    marker = hmac.new(token.encode(), b"sb-ops-session", hashlib.sha256).hexdigest() if token else None

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        # The edge's endpoint on its own port too, like every process.
        serve_metrics(settings.metrics_port, settings.metrics_host)
        yield

    router = APIRouter(prefix="/ops", lifespan=lifespan)

    def enabled() -> None:
        if token is None:
            raise HTTPException(404, "the dashboard is off: set SB_EDGE_OPERATOR_TOKEN")

    def authorized(authorization: str | None, cookie: str | None) -> bool:
        given = (authorization or "").removeprefix("Bearer ").strip()
        return bool(token and marker and (same_secret(given, token) or same_secret(cookie or "", marker)))

    def operator(
        authorization: Annotated[str | None, Header()] = None, sb_ops: Annotated[str | None, Cookie()] = None
    ) -> None:
        enabled()
        if not authorized(authorization, sb_ops):
            raise HTTPException(401, "an operator token is required", headers={"WWW-Authenticate": "Bearer"})

    def page(html: str) -> HTMLResponse:
        nonce = secrets.token_urlsafe(16)
        return HTMLResponse(
            html.replace("__NONCE__", nonce),
            headers={
                "Content-Security-Policy": f"default-src 'self'; script-src 'nonce-{nonce}'; "
                f"style-src 'nonce-{nonce}'; img-src 'self' data:",
                "Cache-Control": "no-store",
            },
        )

    @router.get("", dependencies=[Depends(enabled)])
    async def dashboard(
        authorization: Annotated[str | None, Header()] = None, sb_ops: Annotated[str | None, Cookie()] = None
    ) -> HTMLResponse:
        return page(PAGE if authorized(authorization, sb_ops) else LOGIN)

    @router.post("/login", dependencies=[Depends(enabled)], status_code=204)
    async def login(body: Login, response: Response) -> None:
        if token is None or marker is None or not same_secret(body.token, token):
            raise HTTPException(401, "wrong operator token")
        response.set_cookie(
            COOKIE,
            marker,
            httponly=True,
            samesite="strict",
            path="/ops",
            secure=settings.edge_host not in ("127.0.0.1", "localhost"),
        )

    @router.get("/api/snapshot", dependencies=[Depends(operator)])
    async def snapshot(
        session_id: str | None = None, recent: Annotated[int, Query(ge=0, le=1_000)] = 200
    ) -> ev.StatsSnapshot:
        request = ev.StatsRequest(producer=bus.producer, session_id=session_id, recent_turns=recent)
        try:
            return await bus.request("stats.snapshot", request, ev.StatsSnapshot, timeout=2.0)
        except DependencyUnavailableError as error:
            raise HTTPException(503, f"the stats worker did not answer ({error.status})") from None

    @router.get("/metrics", dependencies=[Depends(operator)])
    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return router
