"""Audio from a client socket to the bus: validation, the one place audio is resampled, compressed decode.

The bus carries only PCM16 LE mono at 16 kHz. A client that declared another rate in its
hello is resampled here (soxr, streaming), once; a client that declared a compressed
encoding (WebM/Opus or Ogg/Opus chunks, as MediaRecorder makes them) is decoded here by
the ffmpeg binary from imageio-ffmpeg, driven by ffmpeg-python, as a stream: chunks go to
ffmpeg's stdin as they arrive and 20 ms frames are read from its stdout.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable

import ffmpeg
import imageio_ffmpeg
import numpy as np
import soxr

from contracts.binary import PCM_BYTES_PER_SAMPLE, PCM_FRAME_BYTES, PCM_SAMPLE_RATE, ClientFrame

# Audio that arrives this much faster than its declared rate, measured over this much contiguous
# capture, is refused: clearly the wrong rate (a 48 kHz or 44.1 kHz microphone declared as 16 kHz
# shows 2.8-3 times too many samples), never a valid stream with a few late or early capture times.
RATE_TOO_HIGH = 1.5
RATE_WINDOW_S = 2.0
# A frame captured more than this many frame durations after (or before) the end of the audio so far
# is not contiguous with it: a gap in capture, or a jump of the client's clock. It starts a new window.
CONTIGUOUS_FRAMES = 2.0
# ... and never less than this (tiny or empty frames, capture times with a little jitter).
CONTIGUOUS_MIN_S = 0.04
# A stream that yields no audio after this many bytes is not one ffmpeg can decode (ffmpeg
# itself would keep searching for a sync point as long as bytes come).
UNDECODABLE_AFTER_BYTES = 24_000

Emit = Callable[[int, float, bytes], Awaitable[None]]  # (seq, captured_at, pcm16k)


class AudioError(ValueError):
    """A frame that breaks the audio rules; the message is what the client is told."""


class PcmIngest:
    """Checks PCM frames of one socket and brings them to 16 kHz."""

    def __init__(self, sample_rate: int) -> None:
        self.sample_rate = sample_rate
        self._resampler = (
            None
            if sample_rate == PCM_SAMPLE_RATE
            else soxr.ResampleStream(sample_rate, PCM_SAMPLE_RATE, 1, dtype="int16")
        )
        self._last_seq: int | None = None
        self.gaps = 0
        self._window_start: float | None = None
        self._window_end: float | None = None  # capture time where the window's audio ends
        self._window_samples = 0

    def accept(self, frame: ClientFrame) -> bytes:
        """The frame's audio at 16 kHz (possibly empty while the resampler fills), or AudioError.

        Sequence numbers are the client's: frames are forwarded in the order they arrive and never
        refused for their number (docs/protocol.md); gaps are counted (``gaps``) for operators."""
        if len(frame.payload) % PCM_BYTES_PER_SAMPLE:
            raise AudioError("PCM16 payload has an odd number of bytes")
        if self._last_seq is not None and frame.seq > self._last_seq + 1:
            self.gaps += frame.seq - self._last_seq - 1
        self._last_seq = frame.seq
        self._check_rate(frame)
        if self._resampler is None:
            return frame.payload
        samples = np.frombuffer(frame.payload, dtype="<i2")
        resampled: np.ndarray = self._resampler.resample_chunk(samples)
        return resampled.astype("<i2").tobytes()

    def _check_rate(self, frame: ClientFrame) -> None:
        # Compare the samples received with the capture clock over a window of contiguous audio: a
        # client that declared 16 kHz but sends 48 kHz audio shows three times too many samples for the
        # time its frames' capture times span. Only contiguous capture says anything about the rate: a
        # gap (mute, push-to-talk, client-side VAD, a lost frame or two, however short) or a jump of the
        # client's clock, either way, starts a new window, and a rate too low is never refused (it is
        # what gaps look like). So a valid stream is never refused, however it pauses.
        samples = len(frame.payload) // PCM_BYTES_PER_SAMPLE
        duration = samples / self.sample_rate
        tolerance = max(CONTIGUOUS_FRAMES * duration, CONTIGUOUS_MIN_S)
        end = frame.captured_at + duration
        contiguous = self._window_end is not None and abs(frame.captured_at - self._window_end) <= tolerance
        if self._window_start is None or self._window_end is None or not contiguous:
            self._window_start, self._window_end, self._window_samples = frame.captured_at, end, samples
            return
        self._window_end = max(self._window_end, end)
        self._window_samples += samples
        spanned = self._window_end - self._window_start
        if spanned < RATE_WINDOW_S:
            return
        measured = self._window_samples / spanned
        self._window_start, self._window_end, self._window_samples = None, None, 0
        if measured > RATE_TOO_HIGH * self.sample_rate:
            raise AudioError(
                f"audio arrives at about {measured:.0f} samples/s but the hello declared {self.sample_rate} Hz"
            )


class CompressedIngest:
    """A streaming ffmpeg decoder for one socket's WebM/Opus or Ogg/Opus chunks."""

    def __init__(self, container: str, emit: Emit, on_error: Callable[[str], Awaitable[None]]) -> None:
        self._container = container  # "webm" | "ogg"
        self._emit = emit
        self._on_error = on_error
        self._process: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._seq = 0
        self._fed = 0
        self._decoded = 0

    async def feed(self, chunk: bytes) -> None:
        if self._process is None or self._process.returncode is not None:
            await self._start()
        assert self._process is not None and self._process.stdin is not None
        self._fed += len(chunk)
        if self._fed > UNDECODABLE_AFTER_BYTES and not self._decoded:
            self._process.kill()
            self._fed = 0
            return
        try:
            self._process.stdin.write(chunk)
            await self._process.stdin.drain()
        except (BrokenPipeError, ConnectionResetError):
            pass  # ffmpeg gave up on the stream; the reader reports why

    async def _start(self) -> None:
        args = (
            ffmpeg.input("pipe:0", format=self._container)
            .output("pipe:1", format="s16le", acodec="pcm_s16le", ac=1, ar=PCM_SAMPLE_RATE)
            .global_args("-loglevel", "error", "-nostdin")
            .compile(cmd=imageio_ffmpeg.get_ffmpeg_exe())
        )
        self._process = await asyncio.create_subprocess_exec(
            *args, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        self._reader = asyncio.create_task(self._read(self._process))

    async def _read(self, process: asyncio.subprocess.Process) -> None:
        assert process.stdout is not None and process.stderr is not None
        while True:
            try:
                pcm = await process.stdout.readexactly(PCM_FRAME_BYTES)
            except asyncio.IncompleteReadError as end:
                pcm = end.partial
                if pcm:
                    await self._publish(pcm)
                break
            await self._publish(pcm)
        errors = (await process.stderr.read()).decode(errors="replace").strip().splitlines()
        code = await process.wait()
        if code != 0:
            why = errors[-1] if errors else f"no audio in the first {UNDECODABLE_AFTER_BYTES} bytes"
            await self._on_error(f"compressed audio could not be decoded ({why}); send a new stream from its start")

    async def _publish(self, pcm: bytes) -> None:
        self._seq += 1
        self._decoded += len(pcm)
        await self._emit(self._seq, time.time(), pcm)

    async def close(self) -> None:
        process = self._process
        if process is None:
            return
        if process.stdin is not None and not process.stdin.is_closing():
            process.stdin.close()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(2.0):
                await process.wait()
        if process.returncode is None:
            process.kill()
        if self._reader is not None:
            with contextlib.suppress(Exception):
                await self._reader
