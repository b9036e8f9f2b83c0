"""Test videos made with the real ffmpeg: a test pattern (with scene cuts) and synthetic speech."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import ffmpeg
import imageio_ffmpeg
import numpy as np

from tests.support.speech import synthesize

FFMPEG = imageio_ffmpeg.get_ffmpeg_exe()


def _run(stream: ffmpeg.nodes.OutputStream) -> None:
    stream.global_args("-hide_banner", "-loglevel", "error").overwrite_output().run(cmd=FFMPEG)


def make_video(
    path: Path,
    seconds: float,
    size: str = "320x240",
    speech: str | None = None,
    scenes: bool = True,
    codec: str = "libx264",
) -> Path:
    """An MP4 (or the container of ``path``): testsrc, then smptebars, then mandelbrot when
    ``scenes`` (cuts at 1/3 and 2/3 of the length), plus piper speech of ``speech`` as AAC."""
    part = seconds / 3
    if scenes:
        sources = [
            ffmpeg.input(f"{name}=size={size}:rate=25", f="lavfi", t=part)
            for name in ("testsrc", "smptebars", "mandelbrot")
        ]
        video = ffmpeg.concat(*sources, v=1, a=0)
    else:
        video = ffmpeg.input(f"testsrc=size={size}:rate=25", f="lavfi", t=seconds)
    streams = [video]
    if speech is not None:
        pcm = path.with_suffix(".pcm")
        pcm.write_bytes(synthesize(speech, "piper", lead_silence_s=0.8, tail_silence_s=0.8))
        streams.append(ffmpeg.input(str(pcm), f="s16le", ar=16_000, ac=1).audio)
    _run(ffmpeg.output(*streams, str(path), t=seconds, vcodec=codec, pix_fmt="yuv420p", acodec="aac"))
    return path


def unsupported_codec_video(path: Path) -> Path:
    """An AVI whose video FourCC no decoder knows (MJPG patched to ZZZZ)."""
    _run(ffmpeg.input("testsrc=size=160x120:rate=10", f="lavfi", t=1).output(str(path), vcodec="mjpeg"))
    path.write_bytes(path.read_bytes().replace(b"MJPG", b"ZZZZ"))
    return path


def huge_video(path: Path, size: str) -> Path:
    """One frame of ``size`` as MJPEG in AVI (cheap to make at any size)."""
    _run(ffmpeg.input(f"color=c=gray:size={size}:rate=1", f="lavfi", t=1).output(str(path), vcodec="mjpeg"))
    return path


def solid_jpeg(color: str, size: str = "320x240") -> bytes:
    """A JPEG of one colour (``black``, ``white``, ``gray``...)."""
    out: bytes = (
        ffmpeg.input(f"color=c={color}:size={size}", f="lavfi", t=0.1)
        .output("pipe:", vcodec="mjpeg", format="image2pipe", **{"frames:v": 1})
        .global_args("-hide_banner", "-loglevel", "error")
        .run(cmd=FFMPEG, capture_stdout=True)[0]
    )
    return out


def decode_jpeg(data: bytes) -> tuple[int, int, np.ndarray]:
    """(width, height, grey pixels) of a JPEG, decoded by ffmpeg: proves it is a viewable image."""
    proc = subprocess.run(
        [
            FFMPEG,
            "-hide_banner",
            "-f",
            "image2pipe",
            "-vcodec",
            "mjpeg",
            "-i",
            "pipe:0",
            "-f",
            "rawvideo",
            "-pix_fmt",
            "gray",
            "pipe:1",
        ],
        input=data,
        capture_output=True,
        check=True,
    )
    size = re.search(r"Video: .*?, (\d+)x(\d+)", proc.stderr.decode())
    assert size is not None, proc.stderr.decode()
    width, height = int(size.group(1)), int(size.group(2))
    return width, height, np.frombuffer(proc.stdout, dtype=np.uint8).reshape(height, width)
