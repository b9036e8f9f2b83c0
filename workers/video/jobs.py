"""Video jobs: fetch the upload, process it, store keyframes, publish progress and the result;
cancellation, cleanup, and camera-frame descriptions.

Jobs: at most ``SB_VIDEO_MAX_JOBS`` at once on the event loop (ffmpeg runs as subprocesses, speech
in ``SB_VIDEO_SPEECH_PROCESSES`` child processes). Bad input ends the job at once with a failed
result and an error event; a crash is retried by JetStream redelivery, and the last attempt
reports the failure and is dead-lettered with the reason. Every outcome deletes the upload;
failed and cancelled jobs delete their keyframes too (docs/video.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import time
from collections import OrderedDict
from pathlib import Path

from nats.js.errors import NotFoundError
from nats.js.object_store import ObjectStore
from openai import AsyncOpenAI, OpenAIError

from contracts import events as ev
from contracts.envelope import new_id
from contracts.owners import owner_of
from workers.runtime import Bus
from workers.runtime.logging import get_logger

from . import media
from .core import Processed, VideoProcessor, transcript_document
from .frames import FrameKeeper, Sampled
from .settings import VideoSettings
from .transcript import SpeechPool

log = get_logger("video")
PRODUCER = "video"


class JobCrashError(RuntimeError):
    """Processing failed for a reason that is not the input's: the job is retried."""


class Jobs:
    """Runs video jobs: fetch, process, store keyframes, publish; cancellation and cleanup."""

    def __init__(self, settings: VideoSettings, bus: Bus) -> None:
        self.settings = settings
        self.bus = bus
        self.store: ObjectStore | None = None
        self.speech: SpeechPool | None = None
        self.processor: VideoProcessor | None = None
        self.running: dict[str, tuple[str, asyncio.Task[Processed]]] = {}  # job id -> (owner, task)
        self.cancelled: OrderedDict[str, str] = OrderedDict()  # job id -> owner, for jobs not started yet
        self.frames = FrameKeeper(
            settings.video_frame_sample_s, settings.video_frame_max_age_s, settings.video_frame_sessions
        )
        self.vision: AsyncOpenAI | None = None

    # ------------------------------------------------------------------ jobs

    async def handle(self, job: ev.VideoJob, deliveries: int) -> None:
        if self.cancelled.pop(job.job_id, None) == owner_of(job.session_id, job.tenant):
            await self._finish(
                job,
                ev.VideoResult(session_id=job.session_id, producer=PRODUCER, job_id=job.job_id, status="cancelled"),
                [],
            )
            return
        stored: list[str] = []  # the runtime keeps the job's ack deadline alive while it runs
        try:
            result = await self._attempt(job, stored)
        except media.MediaError as error:
            result = self._failed(job, error.code, str(error))
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # the worker is stopping: JetStream redelivers the job to a replica
            result = ev.VideoResult(session_id=job.session_id, producer=PRODUCER, job_id=job.job_id, status="cancelled")
        except Exception as error:
            await self._delete(stored)
            if deliveries < self.settings.max_deliver:
                raise
            await self._finish(
                job,
                self._failed(job, "crashed", f"processing failed {deliveries} times: {type(error).__name__}: {error}"),
                [],
            )
            raise  # dead-lettered with the reason by the runtime
        await self._finish(job, result, stored if result.status != "done" else [])
        if result.status == "done" and job.ingest_base and result.transcript and result.metadata:
            await self.bus.publish(
                ev.IngestJob(
                    session_id=job.session_id,
                    producer=PRODUCER,
                    job_id=new_id(),
                    base=job.ingest_base,
                    source=f"video:{job.filename or job.job_id}",
                    content_type="text/plain",
                    text=transcript_document(job.filename or job.job_id, result.metadata.duration_s, result.transcript),
                    tenant=job.tenant,  # into the base of the job's owner
                ),
                durable=True,
            )

    async def _attempt(self, job: ev.VideoJob, stored: list[str]) -> ev.VideoResult:
        assert self.store is not None and self.processor is not None
        processor, store = self.processor, self.store

        async def progress(stage: str, done: int, total: int) -> None:
            await self.bus.publish(
                ev.JobProgress(
                    session_id=job.session_id, producer=PRODUCER, job_id=job.job_id, stage=stage, done=done, total=total
                )
            )

        with tempfile.TemporaryDirectory(prefix="sb-video-") as tmp:
            work = Path(tmp)
            video = work / "upload"
            try:
                with video.open("wb") as sink:
                    await store.get(job.object_name, writeinto=sink)
            except NotFoundError:
                raise media.MediaError("upload_missing", f"no uploaded object {job.object_name!r}") from None
            await progress("fetch", 1, 1)
            task = asyncio.create_task(processor.process(video, work, job.transcribe, progress))
            owner = owner_of(job.session_id, job.tenant)
            self.running[job.job_id] = (owner, task)
            if self.cancelled.pop(job.job_id, None) == owner:  # cancelled while its upload was being fetched
                task.cancel()
            try:
                processed = await task
            finally:
                self.running.pop(job.job_id, None)
            names = []
            for index, path in enumerate(processed.keyframes.paths):
                # named by the owner: every session of a tenant reads them, nobody else (edge/video.py)
                name = f"{owner_of(job.session_id, job.tenant)}/{job.job_id}/keyframe-{index:03d}.jpg"
                with path.open("rb") as jpeg:
                    await store.put(name, jpeg)
                stored.append(name)
                names.append(name)
        return ev.VideoResult(
            session_id=job.session_id,
            producer=PRODUCER,
            job_id=job.job_id,
            status="done",
            metadata=processed.metadata,
            keyframes=names,
            keyframe_times_s=processed.keyframes.times_s,
            keyframe_method="scene" if processed.keyframes.method == "scene" else "interval",
            transcript=processed.transcript,
        )

    def _failed(self, job: ev.VideoJob, code: str, message: str) -> ev.VideoResult:
        return ev.VideoResult(
            session_id=job.session_id,
            producer=PRODUCER,
            job_id=job.job_id,
            status="failed",
            error_code=code,
            error=message[:2_000],
        )

    async def _finish(self, job: ev.VideoJob, result: ev.VideoResult, orphans: list[str]) -> None:
        """The upload and any keyframes of an unfinished job go; then the client hears the outcome."""
        await self._delete([job.object_name, *orphans])
        if result.status == "failed":
            await self.bus.publish(
                ev.ErrorEvent(
                    session_id=job.session_id,
                    producer=PRODUCER,
                    code=f"video_{result.error_code}",
                    message=result.error[:500],
                    source=PRODUCER,
                    retryable=result.error_code == "crashed",
                )
            )
        await self.bus.publish(result)
        log.info("video job ended", job_id=job.job_id, status=result.status, error_code=result.error_code)

    async def _delete(self, names: list[str]) -> None:
        assert self.store is not None
        for name in names:
            with contextlib.suppress(NotFoundError):
                await self.store.delete(name)

    def cancel(self, request: ev.VideoCancel) -> None:
        owner = owner_of(request.session_id, request.tenant)  # any session of the job's owner may cancel it
        running = self.running.get(request.job_id)
        if running is None:
            self.cancelled[request.job_id] = owner
            while len(self.cancelled) > 1_000:
                self.cancelled.popitem(last=False)
        elif running[0] == owner:
            running[1].cancel()

    # ------------------------------------------------------------------ live frames

    async def on_frame(self, session_id: str, jpeg: bytes, captured_at: float) -> None:
        now = time.time()
        if not self.frames.wants(session_id, now):
            return
        try:
            thumbnail = await media.jpeg_thumbnail(jpeg)
        except media.MediaError:
            log.info("camera frame is not a decodable JPEG; ignored", session_id=session_id, size=len(jpeg))
            return
        self.frames.keep(session_id, jpeg, captured_at, now, thumbnail)

    async def describe(self, request: ev.FrameDescribeRequest) -> ev.FrameDescription:
        now = time.time()
        sampled = self.frames.latest(request.session_id, now)
        base = {"session_id": request.session_id, "turn_id": request.turn_id, "producer": PRODUCER}
        if sampled is None:
            return ev.FrameDescription(
                **base,
                available=False,
                source="none",
                text=f"No camera frame from this session in the last {self.settings.video_frame_max_age_s:g} s.",
            )
        facts = {
            "width": sampled.thumbnail.width,
            "height": sampled.thumbnail.height,
            "brightness": round(sampled.brightness, 4),
            "motion": None if sampled.motion is None else round(sampled.motion, 4),
            "frame_captured_at": sampled.captured_at,
        }
        text = await self._vision(sampled, request.prompt) if self.vision is not None else None
        if text is not None:
            return ev.FrameDescription(**base, **facts, available=True, source="vision_model", text=text[:4_000])
        return ev.FrameDescription(**base, **facts, available=True, source="facts", text=sampled.facts(now))

    async def _vision(self, sampled: Sampled, prompt: str) -> str | None:
        assert self.vision is not None and self.settings.video_vision_model
        question = prompt or "Describe briefly what this camera frame shows."
        try:
            reply = await self.vision.chat.completions.create(
                model=self.settings.video_vision_model,
                max_tokens=200,
                timeout=self.settings.video_vision_timeout_s,
                messages=[
                    {
                        "role": "user",
                        "content": [
                            {"type": "text", "text": question},
                            {"type": "image_url", "image_url": {"url": sampled.data_url()}},
                        ],
                    }
                ],
            )
        except OpenAIError as error:
            log.warning("vision model failed; answering with image facts", error=repr(error)[:200])
            return None
        return (reply.choices[0].message.content or "").strip() or None
