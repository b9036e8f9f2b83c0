"""Document upload: ``POST /v1/ingest`` streams a file into a retrieval ingestion job.

The request proves its session with the session token (``Authorization: Bearer``); the body is
the raw file, streamed to disk up to ``SB_EDGE_MAX_UPLOAD_BYTES`` (413 beyond, nothing
submitted). The job's progress and result go to that session's socket (``job.progress``,
``ingest.result``); ``?wait=S`` also waits up to S seconds for the result and returns it.

  POST   /v1/ingest?filename=NAME[&base=B][&wait=S]   body: the file; Content-Type: its type
  DELETE /v1/ingest?filename=NAME[&base=B][&wait=S]   remove the document
"""

from __future__ import annotations

import contextlib
import io
import tempfile
from typing import Annotated

from fastapi import APIRouter, Depends, Header, HTTPException, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError

from contracts import events as ev
from contracts.streams import INGEST_FILES
from workers.runtime.bus import Bus
from workers.runtime.ingest import (
    INLINE_MAX_BYTES,
    JobWatch,
    content_type_for,
    stored_owner,
    submit_delete,
    submit_ingest,
    watch_jobs,
)
from workers.runtime.provision import object_store

from .auth import AuthError, Bearer, TokenIssuer
from .limits import StorageQuota, UploadQuota
from .settings import EdgeSettings

Base = Annotated[str, Query(min_length=3, max_length=63, pattern=r"^[A-Za-z0-9_-]+$")]
Filename = Annotated[str, Query(min_length=1, max_length=500)]
Wait = Annotated[float, Query(ge=0, le=600, description="Seconds to wait for the result")]


class Submitted(BaseModel):
    job_id: str
    document: str
    base: str
    result: ev.IngestResult | None = None


class SessionAuth:
    """Dependency: the session (and tenant) whose token the request carries (``Authorization: Bearer``), else 401."""

    def __init__(self, issuer: TokenIssuer) -> None:
        self._issuer = issuer

    def __call__(self, authorization: Annotated[str | None, Header()] = None) -> Bearer:
        try:
            return self._issuer.verify((authorization or "").removeprefix("Bearer ").strip())
        except AuthError as error:
            raise HTTPException(status_code=401, detail=str(error)) from None


def ingest_router(settings: EdgeSettings, bus: Bus, issuer: TokenIssuer, uploads: UploadQuota) -> APIRouter:
    router = APIRouter(prefix="/v1/ingest", tags=["retrieval"])
    limit = settings.edge_max_upload_bytes
    stored = StorageQuota(settings.edge_stored_bytes_per_owner)

    authenticated = Depends(SessionAuth(issuer))  # the session (and tenant) of the request's token

    @router.post("")
    async def upload(
        request: Request,
        filename: Filename,
        bearer: Bearer = authenticated,
        base: Base = "default",
        wait: Wait = 0.0,
        content_type: Annotated[str | None, Header()] = None,
    ) -> JSONResponse:
        if int(request.headers.get("content-length") or 0) > limit:
            raise HTTPException(status_code=413, detail=_too_large(limit))
        session_id = bearer.session_id
        uploads.take(session_id)
        with tempfile.TemporaryFile() as spool:
            size = 0
            async for piece in request.stream():
                size += len(piece)
                if size > limit:  # a chunked body announces no length: counted as it streams
                    raise HTTPException(status_code=413, detail=_too_large(limit))
                spool.write(piece)
            if size == 0:
                raise HTTPException(status_code=400, detail="the upload is empty")
            spool.seek(0)
            data: bytes | io.BufferedIOBase = spool.read() if size <= INLINE_MAX_BYTES else spool
            if size > INLINE_MAX_BYTES:  # it will wait in the object store for its job
                bucket = await object_store(bus.js, INGEST_FILES, bus.prefix)
                await stored.check(bucket, stored_owner(session_id, "session", bearer.tenant), size)
            async with watch_jobs(bus.nc, session_id, bus.prefix) as watch:
                try:
                    job = await submit_ingest(
                        bus,
                        session_id,
                        filename,
                        data,
                        content_type_for(filename, content_type),
                        base,
                        tenant=bearer.tenant,  # a tenant's session writes the tenant's base
                    )
                except ValidationError as error:  # e.g. a Content-Type no document has
                    raise HTTPException(status_code=422, detail=f"cannot ingest this upload: {_first(error)}") from None
                return await _reply(job, watch, wait)

    @router.delete("")
    async def delete(
        filename: Filename, bearer: Bearer = authenticated, base: Base = "default", wait: Wait = 0.0
    ) -> JSONResponse:
        async with watch_jobs(bus.nc, bearer.session_id, bus.prefix) as watch:
            job = await submit_delete(bus, bearer.session_id, filename, base, tenant=bearer.tenant)
            return await _reply(job, watch, wait)

    return router


async def _reply(job: ev.IngestJob, watch: JobWatch, wait: float) -> JSONResponse:
    """202 with the job id; 200 with the result too when it arrived within ``wait`` seconds."""
    result = None
    if wait > 0:
        with contextlib.suppress(TimeoutError):
            result = await anext(watch.results({job.job_id}, wait))
    body = Submitted(job_id=job.job_id, document=job.source, base=job.base, result=result)
    return JSONResponse(body.model_dump(mode="json"), status_code=200 if result else 202)


def _first(error: ValidationError) -> str:
    first = error.errors()[0]
    return f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']}"


def _too_large(limit: int) -> str:
    return f"the upload is larger than the limit of {limit / 1e6:.1f} MB (SB_EDGE_MAX_UPLOAD_BYTES)"
