"""A timed transcript of a video's audio: silero VAD finds the speech, an STT engine reads each span.

Both run in child processes (:class:`SpeechPool`): the engines hold the GIL while they decode, so
threads would stall the event loop. The audio stays in a file (PCM16 LE mono 16 kHz) that the
child reads, so only file names and offsets cross the process boundary. A job asks for the spans
once, then for one span at a time: progress is reported, and a cancelled job stops, between spans.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from workers.speech import child
from workers.speech.pool import ChildPool
from workers.speech.vad import VoiceActivity

SAMPLE_RATE = 16_000
BYTES_PER_S = 2 * SAMPLE_RATE
CHUNK_S = 0.5  # how much audio is pushed to the VAD at a time


@dataclass(frozen=True)
class SpeechConfig:
    engine: str
    model_path: str | None
    language: str
    vad_onnx: bool
    min_silence_ms: int  # a pause at least this long ends a segment
    max_segment_s: float  # longer speech is cut into pieces this long


# ------------------------------------------------------------------ inside a child process


def speech_spans(pcm_path: str) -> list[tuple[float, float]]:
    """(start, end) seconds of each stretch of speech, none longer than ``max_segment_s``."""
    config = child.settings(SpeechConfig)
    vad = VoiceActivity(child.models().vad, min_silence_ms=config.min_silence_ms, speech_pad_ms=100)
    spans: list[tuple[float, float]] = []
    start: float | None = None
    with Path(pcm_path).open("rb") as audio:
        while chunk := audio.read(int(CHUNK_S * BYTES_PER_S)):
            for event in vad.push(chunk):
                if event.kind == "start":
                    start = event.at_s
                elif start is not None:
                    spans.append((start, event.at_s))
                    start = None
    if start is not None:  # speech runs to the end of the audio
        spans.append((start, vad.position_s))
    return [piece for span in spans for piece in _cut(span, config.max_segment_s)]


def _cut(span: tuple[float, float], longest: float) -> list[tuple[float, float]]:
    start, end = span
    pieces = []
    while end - start > longest:
        pieces.append((start, start + longest))
        start += longest
    pieces.append((start, end))
    return pieces


def recognize(pcm_path: str, start_s: float, end_s: float) -> str:
    """The engine's text for one span of the audio file."""
    first = int(start_s * SAMPLE_RATE) * 2
    with Path(pcm_path).open("rb") as audio:
        audio.seek(first)
        pcm = audio.read(int(end_s * SAMPLE_RATE) * 2 - first)
    recognizer = child.models().engine.recognizer()
    recognizer.accept(pcm)
    return recognizer.final().text.strip()


# ------------------------------------------------------------------ in the worker


class SpeechPool:
    """Child processes holding the VAD and the engine (workers/speech/pool.py); any idle one takes a call.

    A child that dies (killed, out of memory) is respawned; the call it was running raises
    :class:`ChildLost` so that the job is retried. :class:`PoolBroken` when it kept dying.
    """

    def __init__(self, processes: int, config: SpeechConfig) -> None:
        self._pool = ChildPool("video", processes, child.load, config)

    async def start(self) -> None:
        """Load the models now (a benchmark, a warm-up); otherwise the first job loads them."""
        await self._pool.start()

    async def spans(self, pcm_path: Path) -> list[tuple[float, float]]:
        return await self._pool.call(None, speech_spans, str(pcm_path))

    async def recognize(self, pcm_path: Path, start_s: float, end_s: float) -> str:
        return await self._pool.call(None, recognize, str(pcm_path), start_s, end_s)

    def problems(self) -> list[str]:
        """Why transcription is degraded or down, for health; empty when fine."""
        return self._pool.problems()

    def shutdown(self) -> None:
        self._pool.shutdown()
