"""Video worker.

Consumes: video.job (SB_JOBS work queue, durable consumer "video-jobs": one replica per job),
          video.cancel (every replica: the one running the job stops it), video.frame (camera
          JPEGs; every replica keeps the latest per session), session.ended (forget its frames),
          video.describe (request/reply, queue group "video").
Produces: job.progress while a job runs, one video.result per job, error when a job fails,
          ingest.job (the timed transcript) when the job names a knowledge base; JPEG keyframes
          in the SB_VIDEO object store, named by their owner (the session, or its tenant: every
          session of the tenant reads and cancels its jobs); replies FrameDescription.
Logic: core.VideoProcessor (ffmpeg in media.py, speech in transcript.py), frames.FrameKeeper.

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
from pydantic import Field, SecretStr

from contracts import events as ev
from contracts.envelope import new_id
from contracts.owners import owner_of
from contracts.streams import VIDEO, VIDEO_OBJECTS
from workers.runtime import Bus, Delivery, RuntimeSettings, Worker, consumes, serves
from workers.runtime.logging import get_logger
from workers.runtime.provision import object_store

from . import media
from .core import Limits, Processed, VideoProcessor, transcript_document
from .frames import FrameKeeper, Sampled
from .transcript import SpeechConfig, SpeechPool

log = get_logger("video")
PRODUCER = "video"


class VideoSettings(RuntimeSettings):
    max_deliver: int = Field(
        default=VIDEO.max_deliver,
        ge=1,
        le=VIDEO.max_deliver,
        description="Attempts of a crashing video job before it is dead-lettered",
    )
    video_max_jobs: int = Field(default=2, ge=1, le=VIDEO.max_ack_pending, description="Video jobs run at once")
    video_speech_processes: int = Field(default=1, ge=1, le=16, description="Child processes that transcribe")
    video_stt_engine: str = Field(default="whisper", description="Speech-to-text engine of transcripts")
    video_stt_model_path: str | None = Field(default=None, description="Model folder of that engine")
    video_language: str = Field(default="en", description="Spoken language of the videos")
    video_vad_onnx: bool = Field(default=True, description="silero-vad on ONNX Runtime (else Torch JIT)")
    video_min_silence_ms: int = Field(default=500, ge=100, description="A pause this long ends a transcript segment")
    video_max_segment_s: float = Field(default=20.0, ge=2.0, le=30.0, description="Longest transcript segment")
    video_max_pixels: int = Field(default=7680 * 4320, ge=64 * 64, description="Largest frame size accepted (8K)")
    video_max_keyframes: int = Field(default=24, ge=1, le=500, description="Keyframes per video at most")
    video_scene_threshold: float = Field(default=0.3, gt=0.0, lt=1.0, description="ffmpeg scene score of a cut")
    video_keyframe_width: int = Field(default=640, ge=64, description="Keyframes are scaled down to this width")
    video_frame_sample_s: float = Field(default=0.5, gt=0.0, description="Keep at most one camera frame per this")
    video_frame_max_age_s: float = Field(default=30.0, gt=0.0, description="Older camera frames are not described")
    video_frame_sessions: int = Field(default=1_000, ge=1, description="Sessions whose latest frame is kept")
    video_vision_model: str | None = Field(default=None, description="OpenAI vision model; unset: plain image facts")
    video_vision_base_url: str | None = Field(default=None, description="OpenAI-compatible base URL of that model")
    video_vision_api_key: SecretStr | None = Field(default=None, description="API key of that server")
    video_vision_timeout_s: float = Field(default=10.0, gt=0.0, description="Deadline of one vision answer")


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


class VideoWorker(Worker[VideoSettings]):
    name = "video"
    description = "Video jobs (metadata, keyframes, transcript) and live camera frames"

    def __init__(self, settings: VideoSettings, bus: Bus) -> None:
        super().__init__(settings, bus)
        self.jobs = Jobs(settings, bus)

    async def start(self) -> None:
        settings, jobs = self.settings, self.jobs
        jobs.store = await object_store(self.bus.js, VIDEO_OBJECTS, self.bus.prefix)
        jobs.speech = SpeechPool(
            settings.video_speech_processes,
            SpeechConfig(
                settings.video_stt_engine,
                settings.video_stt_model_path,
                settings.video_language,
                settings.video_vad_onnx,
                settings.video_min_silence_ms,
                settings.video_max_segment_s,
            ),
        )
        # the speech models load in their child process with the first job, not at start-up
        jobs.processor = VideoProcessor(
            Limits(
                settings.video_max_pixels,
                settings.video_max_keyframes,
                settings.video_scene_threshold,
                settings.video_keyframe_width,
            ),
            jobs.speech,
        )
        if settings.video_vision_model:
            key = settings.video_vision_api_key.get_secret_value() if settings.video_vision_api_key else "unused"
            jobs.vision = AsyncOpenAI(base_url=settings.video_vision_base_url, api_key=key, max_retries=0)

    async def stop(self) -> None:
        if self.jobs.speech is not None:
            self.jobs.speech.shutdown()

    def problems(self) -> list[str]:
        return self.jobs.speech.problems() if self.jobs.speech is not None else []

    @consumes("video.job", delivery="jetstream", durable=VIDEO, max_in_flight="video_max_jobs")
    async def on_job(self, job: ev.VideoJob, delivery: Delivery) -> None:
        await self.jobs.handle(job, delivery.deliveries)

    @consumes("video.cancel")
    async def on_cancel(self, request: ev.VideoCancel) -> None:
        self.jobs.cancel(request)

    @consumes("video.frame")
    async def on_frame(self, meta: ev.VideoFrameMeta, delivery: Delivery) -> None:
        await self.jobs.on_frame(meta.session_id, delivery.data, meta.captured_at or time.time())

    @consumes("session.ended")
    async def on_session_ended(self, ended: ev.SessionEnded) -> None:
        self.jobs.frames.forget(ended.session_id)

    @serves("video.describe", queue="video")
    async def on_describe(self, request: ev.FrameDescribeRequest) -> ev.FrameDescription:
        return await self.jobs.describe(request)


WORKER = VideoWorker
