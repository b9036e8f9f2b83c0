"""The video worker on real NATS (JetStream work queue and object store), real ffmpeg, real silero
VAD and Whisper, and the real edge for uploads and camera frames. Videos are made by ffmpeg in the
test (a few seconds each) with piper speech.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from nats.aio.client import Client as Nats
from nats.aio.msg import Msg
from nats.js.errors import NotFoundError
from nats.js.object_store import ObjectStore

from contracts import events as ev
from contracts.binary import ClientFrame, FrameType
from contracts.envelope import new_id, now
from contracts.streams import VIDEO_OBJECTS
from tests.support.bus import serving
from tests.support.edge_client import connect, new_session, running_edge
from tests.support.speech import word_error_rate
from tests.support.video import decode_jpeg, huge_video, make_video, solid_jpeg, unsupported_codec_video
from workers.orchestrator.worker import WORKER as ORCHESTRATOR
from workers.orchestrator.worker import OrchestratorSettings
from workers.runtime import Bus, running_worker
from workers.runtime.bus import flush_ordered
from workers.runtime.provision import object_store
from workers.video.settings import VideoSettings
from workers.video.worker import WORKER, VideoWorker

pytestmark = pytest.mark.slow
PREFIX = "vid"
SPOKEN = "The quick brown fox jumps over the lazy dog. Then the dog runs away into the forest."


def settings(nats_url: str, prefix: str = PREFIX, **overrides: Any) -> VideoSettings:
    return VideoSettings(
        nats_url=nats_url, subject_prefix=prefix, video_frame_sample_s=0.01, video_max_pixels=4096 * 2304, **overrides
    )


@pytest.fixture(scope="module")
async def worker(nats_url: str) -> AsyncIterator[Bus]:
    async with serving(WORKER, settings(nats_url)) as bus:
        yield bus


@pytest.fixture(scope="module")
async def store(worker: Bus) -> ObjectStore:
    return await object_store(worker.js, VIDEO_OBJECTS, PREFIX)


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("videos")
    return {
        "speech": make_video(folder / "speech.mp4", 8.0, speech=SPOKEN),
        "silent": make_video(folder / "silent.mp4", 3.0, scenes=False),
    }


class Watch:
    """Every event of one session (and ingest jobs / dead letters of the prefix) as dicts."""

    def __init__(self, nc: Nats, session_id: str, prefix: str = PREFIX) -> None:
        self.nc, self.session_id, self.prefix = nc, session_id, prefix
        self.events: list[dict[str, Any]] = []
        self.arrived = asyncio.Event()

    async def __aenter__(self) -> Watch:
        async def on(msg: Msg) -> None:
            self.events.append(json.loads(msg.data))
            self.arrived.set()

        self.subs = [
            await self.nc.subscribe(f"{self.prefix}.ev.{self.session_id}.>", cb=on),
            await self.nc.subscribe(f"{self.prefix}.job.ingest", cb=on),
            await self.nc.subscribe(f"{self.prefix}.dlq.video", cb=on),
        ]
        await flush_ordered(self.nc)
        return self

    async def __aexit__(self, *_: object) -> None:
        for sub in self.subs:
            await sub.unsubscribe()

    async def until(self, kind: str, timeout: float = 60.0) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            while True:
                found = [e for e in self.events if e["kind"] == kind]
                if found:
                    return found[-1]
                self.arrived.clear()
                await self.arrived.wait()

    def kinds(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["kind"] == kind]


async def submit(bus: Bus, store: ObjectStore, data: bytes, session_id: str, **job: Any) -> ev.VideoJob:
    job_id = new_id()
    name = f"{session_id}/{job_id}/upload"
    await store.put(name, data)
    video_job = ev.VideoJob(session_id=session_id, producer="test", job_id=job_id, object_name=name, **job)
    await bus.publish(video_job, durable=True)
    return video_job


async def names(store: ObjectStore, session_id: str) -> list[str]:
    try:
        return sorted(i.name for i in await store.list(ignore_deletes=True) if i.name.startswith(session_id))
    except NotFoundError:  # an empty bucket
        return []


async def test_video_with_speech_gives_metadata_keyframes_transcript_progress_and_an_ingest_job(
    worker: Bus, store: ObjectStore, videos: dict[str, Path], nc: Nats
) -> None:
    session = new_id()
    async with Watch(nc, session) as watch:
        job = await submit(
            worker, store, videos["speech"].read_bytes(), session, filename="fox.mp4", ingest_base="videos"
        )
        result = await watch.until("video.result", timeout=120)
        # Published after the result: wait for it while still subscribed.
        ingest = await watch.until("ingest.job")
    assert result["status"] == "done", result
    meta = result["metadata"]
    assert meta["width"] == 320 and meta["height"] == 240 and meta["fps"] == 25.0
    assert abs(meta["duration_s"] - 8.0) < 0.1
    assert meta["video_codec"] == "h264" and meta["audio_codec"] == "aac"
    # Keyframes at the cuts (1/3 and 2/3 of 8 s), plus the first frame; each decodes to a 320x240 picture.
    assert result["keyframe_method"] == "scene"
    times = result["keyframe_times_s"]
    assert len(times) == 3 and all(abs(t - cut) <= 0.1 for t, cut in zip(times, (0.0, 8 / 3, 16 / 3), strict=True))
    pictures = []
    for name in result["keyframes"]:
        width, height, grey = decode_jpeg((await store.get(name)).data or b"")
        assert (width, height) == (320, 240)
        pictures.append(grey.astype(float))
    assert all(abs(a - b).mean() > 10 for a, b in itertools.pairwise(pictures))  # different scenes
    # The transcript is close to what was said, and inside the speech (0.8 s of lead silence).
    text = " ".join(s["text"] for s in result["transcript"])
    assert word_error_rate(SPOKEN, text) < 0.25, text
    first, last = result["transcript"][0], result["transcript"][-1]
    assert 0.4 <= first["start_s"] <= 1.2 and last["end_s"] <= 8.0
    assert all(s["start_s"] < s["end_s"] for s in result["transcript"])
    # Progress in order, then the result; the upload is gone, the keyframes stay.
    stages = [(p["stage"], p["done"], p["total"]) for p in watch.kinds("job.progress")]
    assert [s for s, *_ in stages][:4] == ["fetch", "metadata", "keyframes", "audio"]
    assert stages[-1][0] == "transcript" and stages[-1][1] == stages[-1][2] >= 1
    assert await names(store, session) == sorted(result["keyframes"])
    # The transcript, with its timestamps, goes to the retriever as a document.
    assert ingest["base"] == "videos" and ingest["source"] == "video:fox.mp4" and ingest["session_id"] == session
    assert ingest["content_type"] == "text/plain"
    assert f"[0:{first['start_s']:04.1f} - 0:{first['end_s']:04.1f}] {first['text']}" in ingest["text"]
    assert job.job_id == result["job_id"]


async def test_video_without_audio_or_scene_changes(
    worker: Bus, store: ObjectStore, videos: dict[str, Path], nc: Nats
) -> None:
    session = new_id()
    async with Watch(nc, session) as watch:
        await submit(worker, store, videos["silent"].read_bytes(), session, ingest_base="videos")
        result = await watch.until("video.result")
    assert result["status"] == "done" and result["metadata"]["audio_codec"] is None
    assert result["transcript"] == [] and watch.kinds("ingest.job") == []
    assert result["keyframe_method"] == "interval" and len(result["keyframes"]) >= 2
    assert [s["stage"] for s in watch.kinds("job.progress")] == ["fetch", "metadata", "keyframes"]


def _bad_inputs(folder: Path) -> dict[str, bytes]:
    truncated = make_video(folder / "cut.mp4", 2.0, scenes=False).read_bytes()
    return {
        "not_a_video": b"hello, this is a text file and not a video\n" * 10,
        "truncated": truncated[: len(truncated) // 2],
        "empty_file": b"",
        "unsupported_codec": unsupported_codec_video(folder / "zzzz.avi").read_bytes(),
        "resolution_too_large": huge_video(folder / "huge.avi", "5000x3000").read_bytes(),
    }


async def test_each_bad_input_fails_clearly_and_leaves_no_object(
    worker: Bus, store: ObjectStore, nc: Nats, tmp_path: Path
) -> None:
    for code, data in _bad_inputs(tmp_path).items():
        session = new_id()
        async with Watch(nc, session) as watch:
            await submit(worker, store, data, session)
            result = await watch.until("video.result")
            error = await watch.until("error")
        assert (result["status"], result["error_code"]) == ("failed", code), result
        assert result["error"] and result["keyframes"] == []
        assert error["code"] == f"video_{code}" and error["source"] == "video" and not error["retryable"]
        assert await names(store, session) == [], code


async def test_a_running_job_is_cancelled_and_a_queued_one_never_runs(
    worker: Bus, store: ObjectStore, videos: dict[str, Path], nc: Nats
) -> None:
    session = new_id()
    async with Watch(nc, session) as watch:
        job = await submit(worker, store, videos["speech"].read_bytes(), session)
        await watch.until("job.progress")
        await worker.publish(ev.VideoCancel(session_id=session, producer="test", job_id=job.job_id))
        result = await watch.until("video.result")
    assert result["status"] == "cancelled" and result["job_id"] == job.job_id
    assert await names(store, session) == []
    # Cancelled before it started: never processed.
    session = new_id()
    async with Watch(nc, session) as watch:
        job_id = new_id()
        await worker.publish(ev.VideoCancel(session_id=session, producer="test", job_id=job_id))
        await asyncio.sleep(0.2)
        name = f"{session}/{job_id}/upload"
        await store.put(name, videos["silent"].read_bytes())
        await worker.publish(
            ev.VideoJob(session_id=session, producer="test", job_id=job_id, object_name=name), durable=True
        )
        result = await watch.until("video.result")
    assert result["status"] == "cancelled" and watch.kinds("job.progress") == []
    assert await names(store, session) == []


async def test_a_crashing_job_is_retried_then_dead_lettered_with_the_reason(
    nats_url: str, videos: dict[str, Path], nc: Nats
) -> None:
    prefix = "vidcrash"
    started: list[VideoWorker] = []
    async with serving(WORKER, settings(nats_url, prefix), started=started.append) as bus:
        jobs = started[0].jobs
        crash_store = await object_store(bus.js, VIDEO_OBJECTS, prefix)
        session = new_id()
        async with Watch(nc, session, prefix) as watch:

            async def kill_speech_processes() -> None:  # a child dies (OOM killer, segfault) mid-recognition
                seen = 0
                while True:
                    await asyncio.sleep(0.02)
                    spans = [p for p in watch.kinds("job.progress") if p["stage"] == "transcript"]
                    if len(spans) > seen:  # the job goes on to recognise the next span
                        seen = len(spans)
                        assert jobs.speech is not None
                        for pid in jobs.speech._pool.pids():
                            os.kill(pid, signal.SIGKILL)

            killer = asyncio.create_task(kill_speech_processes())
            await submit(bus, crash_store, videos["speech"].read_bytes(), session)
            letter = await watch.until("deadletter", timeout=180)
            result = await watch.until("video.result")
            killer.cancel()
        assert letter["deliveries"] == 3 and letter["reason"].startswith("ChildLost: video child 0 killed by SIGKILL")
        assert base64.b64decode(letter["payload_b64"]).startswith(b"{")
        assert (result["status"], result["error_code"]) == ("failed", "crashed")
        assert len(watch.kinds("video.result")) == 1 and "3 times" in result["error"]
        assert await names(crash_store, session) == []


async def test_camera_frames_are_described_with_plain_facts(worker: Bus, nc: Nats) -> None:
    session = new_id()

    async def describe() -> ev.FrameDescription:
        return await worker.request(
            "video.describe",
            ev.FrameDescribeRequest(session_id=session, producer="test"),
            ev.FrameDescription,
            timeout=5,
        )

    empty = await describe()
    assert not empty.available and empty.source == "none"
    for color in ("black", "white"):
        await worker.publish_binary(
            ev.VideoFrameMeta(session_id=session, producer="test", captured_at=now()), solid_jpeg(color)
        )
        await asyncio.sleep(0.5)
    described = await describe()
    assert described.available and described.source == "facts"
    assert (described.width, described.height) == (320, 240)
    assert described.brightness is not None and described.brightness > 0.95
    assert described.motion is not None and described.motion > 0.9
    assert described.text.startswith("Plain image facts") and "320x240" in described.text
    await worker.publish(ev.SessionEnded(session_id=session, producer="test"))
    await asyncio.sleep(0.3)
    assert not (await describe()).available


async def test_a_vision_model_describes_the_frame_when_configured(nats_url: str, llm: Any, nc: Nats) -> None:
    prefix = "vidvision"
    overrides = {"video_vision_model": "vision-test", "video_vision_base_url": llm.base_url}
    async with serving(WORKER, settings(nats_url, prefix, **overrides)) as bus:
        session = new_id()
        await bus.publish_binary(ev.VideoFrameMeta(session_id=session, producer="test"), solid_jpeg("gray"))
        await asyncio.sleep(0.5)
        reply = await bus.request(
            "video.describe",
            ev.FrameDescribeRequest(session_id=session, producer="test", prompt="what is on the desk?"),
            ev.FrameDescription,
            timeout=10,
        )
        assert reply.source == "vision_model" and reply.text == "You said: what is on the desk?"
        assert reply.brightness is not None and 0.4 < reply.brightness < 0.6
        failing = await bus.request(
            "video.describe",
            ev.FrameDescribeRequest(session_id=session, producer="test", prompt="[status:500]"),
            ev.FrameDescription,
            timeout=10,
        )
        assert failing.source == "facts" and failing.available


async def test_edge_uploads_cancels_and_forwards_camera_frames(
    worker: Bus, store: ObjectStore, videos: dict[str, Path], nc: Nats, nats_url: str
) -> None:
    async with running_edge(nats_url, subject_prefix=PREFIX, edge_video_max_upload_bytes=200_000) as url:
        session, token = await new_session(url)
        auth = {"Authorization": f"Bearer {token}"}
        async with httpx.AsyncClient(base_url=url) as http, Watch(nc, session) as watch:
            assert (await http.post("/v1/videos", content=b"x")).status_code == 401
            assert (await http.post("/v1/videos", content=b"", headers=auth)).status_code == 400

            async def too_big() -> AsyncIterator[bytes]:  # streamed, no declared length
                for _ in range(50):
                    yield b"\0" * 10_000

            over = await http.post("/v1/videos", content=too_big(), headers=auth)
            assert over.status_code == 413 and "limit" in over.json()["detail"]
            accepted = await http.post(
                "/v1/videos", params={"filename": "silent.mp4"}, content=videos["silent"].read_bytes(), headers=auth
            )
            assert accepted.status_code == 202, accepted.text
            job_id = accepted.json()["job_id"]
            result = await watch.until("video.result")
            assert result["status"] == "done" and result["job_id"] == job_id
            frame = await http.get(f"/v1/videos/{job_id}/keyframes/0", headers=auth)
            assert frame.status_code == 200 and decode_jpeg(frame.content)[:2] == (320, 240)
            _, other_token = await new_session(url)
            denied = await http.get(
                f"/v1/videos/{job_id}/keyframes/0", headers={"Authorization": f"Bearer {other_token}"}
            )
            assert denied.status_code == 404
            cancel = await http.delete(f"/v1/videos/{new_id()}", headers=auth)
            assert cancel.status_code == 202 and (await watch.until("video.cancel"))["session_id"] == session
        assert await names(store, session) == sorted(result["keyframes"])
        # Camera frames over the socket: JPEG only, a few per second, then described by the worker.
        client = await connect(url, token)
        await client.ws.send(ClientFrame(FrameType.VIDEO_JPEG, 1, now(), b"not a jpeg").pack())
        refused = await client.until(lambda e: e.get("kind") == "protocol_error")
        assert refused[-1]["code"] == "bad_frame"
        await client.ws.send(ClientFrame(FrameType.VIDEO_JPEG, 2, now(), solid_jpeg("white")).pack())
        await asyncio.sleep(0.5)
        reply = await worker.request(
            "video.describe",
            ev.FrameDescribeRequest(session_id=session, producer="test"),
            ev.FrameDescription,
            timeout=5,
        )
        assert reply.available and reply.brightness is not None and reply.brightness > 0.95
        for seq in range(3, 10):  # over 2 per second (burst of 4)
            await client.ws.send(ClientFrame(FrameType.VIDEO_JPEG, seq, now(), solid_jpeg("black")).pack())
        limited = await client.until(lambda e: e.get("code") == "rate_limited")
        assert "camera frames" in limited[-1]["message"]
        await client.close()


async def test_the_general_agent_sees_what_the_camera_shows(worker: Bus, nats_url: str, llm: Any) -> None:
    orchestrator = OrchestratorSettings(nats_url=nats_url, subject_prefix=PREFIX, llm_base_url=llm.base_url)
    async with running_worker(ORCHESTRATOR, orchestrator), running_edge(nats_url, subject_prefix=PREFIX) as url:
        client = await connect(url, capabilities=["text", "video"])
        await client.chat("[echo_system] hello")
        before = (await client.until(lambda e: e["kind"] == "reply.done"))[-1]["text"]
        assert "camera" not in before  # no frame yet: nothing is said about a camera

        await client.ws.send(ClientFrame(FrameType.VIDEO_JPEG, 0, now(), solid_jpeg("white")).pack())
        await asyncio.sleep(0.5)  # the worker samples the frame
        await client.chat("[echo_system] what do you see?")
        after = (await client.until(lambda e: e["kind"] == "reply.done"))[-1]["text"]
        assert "The user's camera, just now: Plain image facts" in after and "320x240" in after
        await client.close()


async def test_stored_videos_count_against_their_owners_quota(nats_url: str) -> None:
    """No video worker runs: uploads wait in the bucket, counted against their session's quota."""
    upload = b"\0" * 200_000
    async with running_edge(nats_url, subject_prefix="vquota", edge_stored_bytes_per_owner=300_000) as url:
        (_, filler), (_, other) = await new_session(url), await new_session(url)
        async with httpx.AsyncClient(base_url=url) as http:

            async def send(token: str) -> httpx.Response:
                headers = {"Authorization": f"Bearer {token}"}
                return await http.post("/v1/videos", params={"filename": "clip.mp4"}, content=upload, headers=headers)

            assert (await send(filler)).status_code == 202
            refused = await send(filler)
            assert refused.status_code == 413 and "quota of 0.3 MB" in refused.json()["detail"]
            assert (await send(other)).status_code == 202
