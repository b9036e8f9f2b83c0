"""Video uploads over HTTP, authenticated with the session token (``Authorization: Bearer <token>``).

  POST   /v1/videos?filename=&transcribe=&ingest_base=   the raw video as the request body, streamed
         into the SB_VIDEO object store (at most SB_EDGE_VIDEO_MAX_UPLOAD_BYTES); publishes a video
         job; 202 with the job id. Progress and the result reach the session's socket as events.
  DELETE /v1/videos/{job_id}                             cancel the job (running or queued)
  GET    /v1/videos/{job_id}/keyframes/{index}           one JPEG keyframe of a finished job

Bad uploads never leave an object behind: 400 for an empty body, 413 over the limit (as soon as
the declared length or the bytes read pass it), and the object is deleted if the job cannot be
published.
"""

from __future__ import annotations

import tempfile

from fastapi import APIRouter, Depends, Header, HTTPException, Query, Request, Response
from nats.js.errors import NotFoundError
from nats.js.object_store import ObjectStore
from pydantic import BaseModel

from contracts import events as ev
from contracts.envelope import new_id
from contracts.owners import owner_of
from contracts.streams import VIDEO_OBJECTS
from workers.runtime.bus import Bus
from workers.runtime.provision import object_store

from .auth import AuthError, Bearer, TokenIssuer
from .limits import StorageQuota, UploadQuota
from .settings import EdgeSettings

PRODUCER = "edge"
SPOOL_IN_MEMORY = 8 * 1024 * 1024  # larger uploads spill to a temporary file while they arrive


class VideoAccepted(BaseModel):
    job_id: str
    object_name: str
    size: int


def video_router(settings: EdgeSettings, bus: Bus, issuer: TokenIssuer, uploads: UploadQuota) -> APIRouter:
    router = APIRouter(prefix="/v1/videos", tags=["video"])
    limit = settings.edge_video_max_upload_bytes
    stored = StorageQuota(settings.edge_stored_bytes_per_owner)
    buckets: list[ObjectStore] = []

    def session(authorization: str | None = Header(default=None)) -> Bearer:
        try:
            return issuer.verify((authorization or "").removeprefix("Bearer ").strip())
        except AuthError as error:
            raise HTTPException(status_code=401, detail=str(error)) from None

    authenticated = Depends(session)

    async def store() -> ObjectStore:
        if not buckets:
            buckets.append(await object_store(bus.js, VIDEO_OBJECTS, bus.prefix))
        return buckets[0]

    @router.post("", status_code=202)
    async def upload(
        request: Request,
        bearer: Bearer = authenticated,
        filename: str = Query(default="", max_length=500),
        transcribe: bool = True,
        ingest_base: str | None = Query(default=None, min_length=3, max_length=63, pattern=r"^[A-Za-z0-9_-]+$"),
    ) -> VideoAccepted:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise HTTPException(status_code=413, detail=f"the video is over the upload limit of {limit} bytes")
        session_id = bearer.session_id
        uploads.take(session_id)
        job_id = new_id()
        name = f"{owner_of(session_id, bearer.tenant)}/{job_id}/upload"
        with tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY) as spool:
            size = 0
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise HTTPException(status_code=413, detail=f"the video is over the upload limit of {limit} bytes")
                spool.write(chunk)
            if size == 0:
                raise HTTPException(status_code=400, detail="the upload is empty")
            spool.seek(0)
            bucket = await store()
            await stored.check(bucket, owner_of(session_id, bearer.tenant), size)
            await bucket.put(name, spool)  # type: ignore[arg-type]  # a binary file object
        try:
            await bus.publish(
                ev.VideoJob(
                    session_id=session_id,
                    producer=PRODUCER,
                    job_id=job_id,
                    object_name=name,
                    filename=filename,
                    transcribe=transcribe,
                    ingest_base=ingest_base,
                    tenant=bearer.tenant,
                ),
                durable=True,
            )
        except Exception:
            await bucket.delete(name)
            raise
        return VideoAccepted(job_id=job_id, object_name=name, size=size)

    @router.delete("/{job_id}", status_code=202)
    async def cancel(job_id: str, bearer: Bearer = authenticated) -> dict[str, str]:
        await bus.publish(
            ev.VideoCancel(session_id=bearer.session_id, producer=PRODUCER, job_id=job_id[:64], tenant=bearer.tenant)
        )
        return {"job_id": job_id, "status": "cancel requested"}

    @router.get("/{job_id}/keyframes/{index}")
    async def keyframe(job_id: str, index: int, bearer: Bearer = authenticated) -> Response:
        bucket = await store()
        try:  # the name starts with the owner: a session reads only its own (or its tenant's) keyframes
            found = await bucket.get(f"{owner_of(bearer.session_id, bearer.tenant)}/{job_id}/keyframe-{index:03d}.jpg")
        except NotFoundError:
            raise HTTPException(status_code=404, detail="no such keyframe") from None
        return Response(content=found.data or b"", media_type="image/jpeg")

    return router
