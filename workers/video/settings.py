"""The video worker's settings (SB_VIDEO_...)."""

from __future__ import annotations

from pydantic import Field, SecretStr

from contracts.streams import VIDEO
from workers.runtime import RuntimeSettings


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
