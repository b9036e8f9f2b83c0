"""One video, processed from a local file: metadata, keyframes, timed transcript. No bus here.

Stages report progress through a callback ``(stage, done, total)``. A bad input raises
:class:`~workers.video.media.MediaError` (documented codes); anything else is a crash.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from contracts.events import TranscriptSegment, VideoMetadata

from . import media
from .transcript import SpeechPool

Progress = Callable[[str, int, int], Awaitable[None]]


@dataclass(frozen=True)
class Limits:
    max_pixels: int
    max_keyframes: int
    scene_threshold: float
    keyframe_width: int


@dataclass
class Processed:
    metadata: VideoMetadata
    keyframes: media.Keyframes
    transcript: list[TranscriptSegment] = field(default_factory=list)


class VideoProcessor:
    def __init__(self, limits: Limits, speech: SpeechPool | None) -> None:
        self.limits = limits
        self.speech = speech

    async def process(self, video: Path, work_dir: Path, transcribe: bool, progress: Progress) -> Processed:
        limits = self.limits
        metadata = await media.probe(video, limits.max_pixels)
        await progress("metadata", 1, 1)
        frames = await media.keyframes(
            video, work_dir, metadata.duration_s, limits.scene_threshold, limits.max_keyframes, limits.keyframe_width
        )
        await progress("keyframes", len(frames.paths), len(frames.paths))
        result = Processed(metadata, frames)
        if transcribe and metadata.audio_codec is not None and self.speech is not None:
            result.transcript = await self.transcribe(video, work_dir / "audio.pcm", progress)
        return result

    async def transcribe(self, video: Path, pcm: Path, progress: Progress) -> list[TranscriptSegment]:
        assert self.speech is not None
        await media.extract_audio(video, pcm)
        await progress("audio", 1, 1)
        spans = await self.speech.spans(pcm)
        segments = []
        await progress("transcript", 0, len(spans))
        for done, (start, end) in enumerate(spans, start=1):
            text = await self.speech.recognize(pcm, start, end)
            if text:
                segments.append(TranscriptSegment(start_s=round(start, 2), end_s=round(end, 2), text=text))
            await progress("transcript", done, len(spans))
        return segments


def transcript_document(title: str, duration_s: float, segments: list[TranscriptSegment]) -> str:
    """The transcript as a text document for the retriever: one timed line per segment."""
    lines = [f"Transcript of the video {title} ({_clock(duration_s)} long)."]
    lines += [f"[{_clock(s.start_s)} - {_clock(s.end_s)}] {s.text}" for s in segments]
    return "\n".join(lines)


def _clock(seconds: float) -> str:
    minutes, secs = divmod(seconds, 60.0)
    hours, minutes = divmod(int(minutes), 60)
    return f"{hours}:{minutes:02d}:{secs:04.1f}" if hours else f"{minutes}:{secs:04.1f}"
