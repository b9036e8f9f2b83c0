"""Video worker.

Consumes: video.job (SB_JOBS work queue, durable consumer "video-jobs": one replica per job),
          video.cancel (every replica: the one running the job stops it), video.frame (camera
          JPEGs; every replica keeps the latest per session), session.ended (forget its frames),
          video.describe (request/reply, queue group "video").
Produces: job.progress while a job runs, one video.result per job, error when a job fails,
          ingest.job (the timed transcript) when the job names a knowledge base; JPEG keyframes
          in the SB_VIDEO object store, named by their owner (the session, or its tenant: every
          session of the tenant reads and cancels its jobs); replies FrameDescription.
Logic: jobs.Jobs (runs, cancels and describes; publishes), core.VideoProcessor (ffmpeg in media.py,
       speech in transcript.py), frames.FrameKeeper. Settings: settings.VideoSettings.
"""

from __future__ import annotations

import time

from openai import AsyncOpenAI

from contracts import events as ev
from contracts.streams import VIDEO, VIDEO_OBJECTS
from workers.runtime import Bus, Delivery, Worker, consumes, serves
from workers.runtime.provision import object_store

from .core import Limits, VideoProcessor
from .jobs import Jobs
from .settings import VideoSettings
from .transcript import SpeechConfig, SpeechPool


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
