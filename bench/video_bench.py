"""Video processing time per minute of video, beside ffmpeg alone doing the same extraction.

    PYTHONPATH=. .venv/bin/python bench/video_bench.py [--seconds 30] [--repeats 3]

Makes one test video (ffmpeg testsrc/smptebars/mandelbrot with scene cuts, 320x240 H.264, and
piper speech as AAC), then times, per stage, the worker's code (workers/video) and the bare
ffmpeg command that extracts the same thing: metadata (ours: decode the first second and parse;
ffmpeg alone: ``ffmpeg -i``), keyframes (ours: scene select + showinfo + scaling; alone: the scene
select to JPEGs), transcript (ours: audio to 16 kHz PCM + silero VAD + Whisper-base per segment in
a child process; alone: only the audio extraction). Figures are seconds per minute of video,
median of the repeats. Not a test: nothing fails on a slow machine.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from tests.support.video import FFMPEG, make_video
from workers.video import media
from workers.video.core import Limits, VideoProcessor
from workers.video.transcript import SpeechConfig, SpeechPool

SENTENCE = "The quick brown fox jumps over the lazy dog, and then it runs into the forest to sleep."


async def timed(fn: Callable[[], Awaitable[object]], repeats: int) -> float:
    runs = []
    for _ in range(repeats):
        started = time.perf_counter()
        await fn()
        runs.append(time.perf_counter() - started)
    return statistics.median(runs)


def ffmpeg_alone(*args: str) -> Callable[[], Awaitable[object]]:
    async def run() -> object:
        return await asyncio.to_thread(
            subprocess.run, [FFMPEG, "-hide_banner", "-nostdin", *args], capture_output=True, check=False
        )

    return run


async def main(seconds: float, repeats: int) -> None:
    work = Path(tempfile.mkdtemp(prefix="video-bench-"))
    speech = " ".join([SENTENCE] * max(1, round(seconds / 7)))
    video = make_video(work / "bench.mp4", seconds, speech=speech)
    pool = SpeechPool(1, SpeechConfig("whisper", None, "en", True, 500, 20.0))
    await pool.start()
    processor = VideoProcessor(Limits(7680 * 4320, 24, 0.3, 640), pool)

    async def nothing(stage: str, done: int, total: int) -> None:
        return None

    frames = work / "frames"
    frames.mkdir()
    rows = [
        ("metadata", lambda: media.probe(video, 7680 * 4320), ffmpeg_alone("-i", str(video))),
        (
            "keyframes",
            lambda: media.keyframes(video, frames, seconds, 0.3, 24, 640),
            ffmpeg_alone(
                "-i",
                str(video),
                "-vf",
                "select='eq(n,0)+gt(scene,0.3)'",
                "-fps_mode",
                "vfr",
                "-y",
                str(work / "alone-%03d.jpg"),
            ),
        ),
        (
            "transcript",
            lambda: processor.transcribe(video, work / "audio.pcm", nothing),
            ffmpeg_alone(
                "-i", str(video), "-vn", "-ac", "1", "-ar", "16000", "-f", "s16le", "-y", str(work / "alone.pcm")
            ),
        ),
    ]
    per_minute = 60.0 / seconds
    print(f"video: {seconds:g} s, 320x240 25 fps H.264 + AAC speech; median of {repeats}; seconds per minute of video")
    print("| stage | worker (workers/video) | ffmpeg alone | ratio |")
    print("|---|---:|---:|---:|")
    for name, ours, alone in rows:
        t_ours = await timed(ours, repeats) * per_minute
        t_alone = await timed(alone, repeats) * per_minute
        print(f"| {name} | {t_ours:.2f} s | {t_alone:.2f} s | {t_ours / t_alone:.1f}x |")
    segments = await processor.transcribe(video, work / "audio.pcm", nothing)
    print(f"transcript: {len(segments)} segments, first: {segments[0].text if segments else ''!r}")
    pool.shutdown()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--repeats", type=int, default=3)
    options = parser.parse_args()
    asyncio.run(main(options.seconds, options.repeats))
