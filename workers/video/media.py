"""What ffmpeg tells and extracts: metadata, keyframes, 16 kHz audio, small grey thumbnails.

The binary is the static ffmpeg of PyPI ``imageio-ffmpeg``; commands are built with
``ffmpeg-python`` and run as asyncio subprocesses, so the event loop never waits on them and a
cancelled job kills its ffmpeg at once. That ffmpeg has no ffprobe: the metadata comes from the
stream lines ffmpeg prints for its input (``Duration: ...``, ``Stream #0:0: Video: h264 ...``),
while decoding the first second of the video, which also proves that the video decodes.

Every failure the input can cause is a :class:`MediaError` with a stable ``code``
(docs/video.md lists them); anything else is a crash of the worker, retried by the job runner.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import ffmpeg
import imageio_ffmpeg
import numpy as np
import numpy.typing as npt

from contracts.events import VideoMetadata

AUDIO_RATE = 16_000
THUMB_SIZE = (64, 48)  # grey thumbnail of a live frame: enough for brightness and motion

_DURATION = re.compile(r"Duration: (\d+):(\d\d):(\d\d(?:\.\d+)?)")
_STREAM = re.compile(r"Stream #0:\d+[^:]*: (Video|Audio): (\S+)(.*)")
_SIZE = re.compile(r", (\d{1,6})x(\d{1,6})")
_FPS = re.compile(r", (\d+(?:\.\d+)?)(k?) (?:fps|tbr)")
_PTS_TIME = re.compile(r"pts_time:\s*(-?\d+(?:\.\d+)?)")
_TRUNCATED = ("moov atom not found", "partial file", "truncat", "end of file", "invalid nal")


class MediaError(Exception):
    """The input cannot be processed; ``code`` is stable (docs/video.md), the message says why."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Keyframes:
    paths: list[Path]
    times_s: list[float]
    method: str  # "scene" | "interval"


def ffmpeg_exe() -> str:
    return str(imageio_ffmpeg.get_ffmpeg_exe())


async def run(args: Sequence[str], stdin: bytes | None = None) -> tuple[int, bytes, str]:
    """Run ffmpeg; returns (exit code, stdout, stderr). Cancelling kills the process."""
    proc = await asyncio.create_subprocess_exec(
        *args,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await proc.communicate(stdin)
    finally:
        if proc.returncode is None:  # cancelled: do not leave ffmpeg running
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
    return proc.returncode or 0, out, err.decode(errors="replace")


def parse_metadata(info: str) -> VideoMetadata:
    """Metadata from the lines ffmpeg prints about its input (``ffmpeg -i``)."""
    duration = _DURATION.search(info)
    video = audio = None
    for match in _STREAM.finditer(info):
        kind, codec, rest = match.groups()
        if kind == "Video" and video is None:
            video = (codec.rstrip(","), rest)
        elif kind == "Audio" and audio is None:
            audio = codec.rstrip(",")
    if video is None:
        raise MediaError("no_video_stream", "the file has no video stream")
    codec, rest = video
    if codec == "none":
        tag = re.search(r"\((\w{4}) /", rest)
        raise MediaError("unsupported_codec", f"video codec {tag.group(1) if tag else 'unknown'!r} is not supported")
    size = _SIZE.search(rest)
    if size is None:
        raise MediaError("unsupported_codec", f"ffmpeg reports no picture size for the {codec} video stream")
    fps = _FPS.search(rest)
    seconds = 0.0
    if duration is not None:
        hours, minutes, secs = duration.groups()
        seconds = int(hours) * 3600 + int(minutes) * 60 + float(secs)
    return VideoMetadata(
        duration_s=round(seconds, 3),
        width=int(size.group(1)),
        height=int(size.group(2)),
        fps=(float(fps.group(1)) * (1000 if fps.group(2) else 1)) if fps else 0.0,
        video_codec=codec,
        audio_codec=audio,
    )


def _input_error(info: str) -> MediaError:
    lowered = info.lower()
    if "no decoder found" in lowered or "decoder (codec" in lowered:
        return MediaError("unsupported_codec", "ffmpeg has no decoder for this video's codec")
    # A format guessed from the file name alone ("low score") is not a container that lost its end.
    if "misdetection possible" not in lowered:
        for marker in _TRUNCATED:
            if marker in lowered:
                return MediaError("truncated", f"the file is cut short (ffmpeg: {_line_with(info, marker)})")
    return MediaError("not_a_video", f"ffmpeg cannot read this file as a video ({_line_with(info, 'invalid')})")


def _line_with(info: str, marker: str) -> str:
    """ffmpeg's line that says it (its last line when none does), without the ``[in#0 @ 0x..]`` tag."""
    lines = [re.sub(r"^\[[^]]*\]\s*", "", line.strip()) for line in info.splitlines() if line.strip()]
    chosen = next((line for line in lines if marker in line.lower()), lines[-1] if lines else "no output")
    return chosen[:200]


async def probe(path: Path, max_pixels: int) -> VideoMetadata:
    """Metadata of the video, after checking that its first second decodes and its size is allowed."""
    if await asyncio.to_thread(_size, path) == 0:
        raise MediaError("empty_file", "the file is empty")
    args = (
        ffmpeg.input(str(path), t=1)
        .output("-", format="null", map="0:v:0")
        .global_args("-hide_banner", "-nostdin")
        .compile(cmd=ffmpeg_exe())
    )
    code, _, info = await run(args)
    if "Duration:" not in info and "Stream #0" not in info:
        raise _input_error(info)
    metadata = parse_metadata(info)  # raises for a missing or unknown video stream
    if metadata.width * metadata.height > max_pixels:
        raise MediaError(
            "resolution_too_large",
            f"{metadata.width}x{metadata.height} is over the limit of {max_pixels:,} pixels per frame",
        )
    if code != 0 or "frame=" not in info:
        raise _input_error(info)
    return metadata


async def keyframes(
    path: Path, out_dir: Path, duration_s: float, scene_threshold: float, max_frames: int, width: int
) -> Keyframes:
    """JPEGs of the first frame and of each scene change; at a fixed interval when there is none."""
    select = f"eq(n\\,0)+gt(scene\\,{scene_threshold})"
    paths, times = await _extract(path, out_dir, "scene", f"select='{select}'", max_frames, width)
    if len(paths) > 1:
        return Keyframes(paths, times, "scene")
    for stale in paths:  # the first frame alone is no keyframe set: start again at an interval
        await asyncio.to_thread(stale.unlink)
    interval = max(duration_s / max_frames, 1.0) if duration_s > 0 else 1.0
    paths, times = await _extract(path, out_dir, "interval", f"fps=1/{interval:g}", max_frames, width)
    return Keyframes(paths, times, "interval")


async def _extract(
    path: Path, out_dir: Path, stem: str, selection: str, max_frames: int, width: int
) -> tuple[list[Path], list[float]]:
    pattern = out_dir / f"{stem}-%03d.jpg"
    # ffmpeg-python would quote the select expression's commas itself; the filter graph is one string.
    args = (
        ffmpeg.input(str(path))
        .output(
            str(pattern),
            vf=f"{selection},scale='min({width},iw)':-2,showinfo",
            fps_mode="vfr",
            **{"frames:v": max_frames, "q:v": 4},
        )
        .global_args("-hide_banner", "-nostdin", "-an")
        .overwrite_output()
        .compile(cmd=ffmpeg_exe())
    )
    code, _, info = await run(args)
    if code != 0:
        raise _input_error(info)
    times = [float(t) for t in _PTS_TIME.findall(info)]
    paths = await asyncio.to_thread(lambda: sorted(out_dir.glob(f"{stem}-*.jpg")))
    return paths, [max(t, 0.0) for t in times[: len(paths)]]


async def extract_audio(path: Path, target: Path) -> float:
    """The first audio track as PCM16 LE mono 16 kHz in ``target``; returns its length in seconds."""
    args = (
        ffmpeg.input(str(path))
        .output(str(target), format="s16le", acodec="pcm_s16le", ac=1, ar=AUDIO_RATE, map="0:a:0")
        .global_args("-hide_banner", "-nostdin", "-vn")
        .overwrite_output()
        .compile(cmd=ffmpeg_exe())
    )
    code, _, info = await run(args)
    if code != 0:
        raise _input_error(info)
    return await asyncio.to_thread(_size, target) / (2 * AUDIO_RATE)


def _size(path: Path) -> int:
    return path.stat().st_size


@dataclass(frozen=True)
class Thumbnail:
    width: int
    height: int
    grey: npt.NDArray[np.uint8]  # THUMB_SIZE[1] x THUMB_SIZE[0]


async def jpeg_thumbnail(jpeg: bytes) -> Thumbnail:
    """Decode a JPEG to its size and a small grey thumbnail (for brightness and motion)."""
    w, h = THUMB_SIZE
    args = (
        ffmpeg.input("pipe:0", format="image2pipe", vcodec="mjpeg")
        .output("pipe:1", format="rawvideo", pix_fmt="gray", s=f"{w}x{h}", **{"frames:v": 1})
        .global_args("-hide_banner")
        .compile(cmd=ffmpeg_exe())
    )
    code, out, info = await run(args, stdin=jpeg)
    size = _SIZE.search(info.split("Output #0")[0])
    if code != 0 or len(out) != w * h or size is None:
        raise MediaError("bad_frame", "the camera frame is not a decodable JPEG")
    grey = np.frombuffer(out, dtype=np.uint8).reshape(h, w)
    return Thumbnail(int(size.group(1)), int(size.group(2)), grey)
