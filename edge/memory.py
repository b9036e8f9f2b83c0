"""A session's memory over HTTP, for its owner only: read the stored history (paged), delete it.

  GET    /v1/sessions/{session_id}/history?before=&limit=   one page of stored turns, oldest first
  DELETE /v1/sessions/{session_id}/memory                   forget the session (202: applied in bus order)

Both need the session's token as ``Authorization: Bearer <token>`` (401 without a valid one, 403
for another session's). The edge never talks to the database: history is a request/reply to the
memory worker (503 when it does not answer), and forgetting is a durable ForgetSession event that
the memory worker applies after every turn published before it, even if it was down meanwhile.
"""

from __future__ import annotations

from fastapi import APIRouter, Header, HTTPException, Query, Response

from contracts import events as ev
from workers.runtime.bus import Bus, DependencyUnavailableError

from .auth import AuthError, TokenIssuer

HISTORY_TIMEOUT_S = 2.0


def memory_router(issuer: TokenIssuer, bus: Bus) -> APIRouter:
    router = APIRouter(prefix="/v1/sessions/{session_id}", tags=["memory"])

    def owner(session_id: str, authorization: str | None) -> str:
        try:
            # Memory stays per session, whatever the tenant: only the session's own token reads it.
            granted = issuer.verify((authorization or "").removeprefix("Bearer ").strip()).session_id
        except AuthError as error:
            raise HTTPException(status_code=401, detail=str(error)) from None
        if granted != session_id:
            raise HTTPException(status_code=403, detail="the token belongs to another session")
        return granted

    @router.get("/history")
    async def history(
        session_id: str,
        before: int | None = Query(default=None, ge=1),
        limit: int = Query(default=50, ge=1, le=200),
        authorization: str | None = Header(default=None),
    ) -> ev.HistoryReply:
        request = ev.HistoryRequest(
            session_id=owner(session_id, authorization), producer=bus.producer, before=before, limit=limit
        )
        try:
            return await bus.request("memory.history", request, ev.HistoryReply, HISTORY_TIMEOUT_S)
        except DependencyUnavailableError as error:
            raise HTTPException(status_code=503, detail=f"memory is {error.status}; try again shortly") from None
        except ValueError:  # an empty reply: memory could not read its database
            raise HTTPException(status_code=503, detail="memory cannot read its store; try again shortly") from None

    @router.delete("/memory", status_code=202)
    async def forget(session_id: str, authorization: str | None = Header(default=None)) -> Response:
        await bus.publish(
            ev.ForgetSession(session_id=owner(session_id, authorization), producer=bus.producer), durable=True
        )
        return Response(status_code=202)

    return router
