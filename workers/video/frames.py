"""Live camera frames: the latest sampled snapshot of each session, and what can be said about it.

Without a vision model the description is plain image facts, stated as such: the picture size,
its mean brightness and how much it changed since the previous sampled frame (mean absolute
change of a 64x48 grey thumbnail, 0 = identical, 1 = black to white everywhere). With one
(``SB_VIDEO_VISION_MODEL`` on any OpenAI-compatible server) the model's answer is returned, and
the facts still fill the numeric fields.
"""

from __future__ import annotations

import base64
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from .media import Thumbnail


@dataclass(frozen=True)
class Sampled:
    jpeg: bytes
    captured_at: float
    received_at: float
    thumbnail: Thumbnail
    brightness: float  # 0 black .. 1 white
    motion: float | None  # None for the first frame of a session

    def facts(self, now: float) -> str:
        motion = (
            "no earlier frame to compare with"
            if self.motion is None
            else f"{self.motion:.3f} mean change since the previous sampled frame ({_motion_word(self.motion)})"
        )
        return (
            f"Plain image facts (no vision model; nothing is recognised in the picture): a "
            f"{self.thumbnail.width}x{self.thumbnail.height} camera frame from {now - self.received_at:.1f} s "
            f"ago; brightness {self.brightness:.2f} on a 0 (black) to 1 (white) scale "
            f"({_light_word(self.brightness)}); "
            f"motion: {motion}."
        )

    def data_url(self) -> str:
        return "data:image/jpeg;base64," + base64.b64encode(self.jpeg).decode()


def _light_word(brightness: float) -> str:
    return "dark" if brightness < 0.25 else "bright" if brightness > 0.75 else "medium"


def _motion_word(motion: float) -> str:
    return "still" if motion < 0.02 else "some change" if motion < 0.1 else "large change"


class FrameKeeper:
    """The latest sampled frame per session, bounded in sessions and in age."""

    def __init__(self, sample_every_s: float, max_age_s: float, max_sessions: int) -> None:
        self._every = sample_every_s
        self._max_age = max_age_s
        self._max_sessions = max_sessions
        self._latest: OrderedDict[str, Sampled] = OrderedDict()

    def wants(self, session_id: str, now: float) -> bool:
        """Sampling: a frame closer than ``sample_every_s`` to the last kept one is skipped."""
        last = self._latest.get(session_id)
        return last is None or now - last.received_at >= self._every

    def keep(self, session_id: str, jpeg: bytes, captured_at: float, now: float, thumbnail: Thumbnail) -> Sampled:
        previous = self._latest.pop(session_id, None)
        grey = thumbnail.grey.astype(np.float32)
        motion = None
        if previous is not None and now - previous.received_at <= self._max_age:
            motion = float(np.abs(grey - previous.thumbnail.grey.astype(np.float32)).mean() / 255.0)
        sampled = Sampled(jpeg, captured_at, now, thumbnail, float(grey.mean() / 255.0), motion)
        self._latest[session_id] = sampled
        while len(self._latest) > self._max_sessions:
            self._latest.popitem(last=False)
        return sampled

    def latest(self, session_id: str, now: float) -> Sampled | None:
        sampled = self._latest.get(session_id)
        return sampled if sampled is not None and now - sampled.received_at <= self._max_age else None

    def forget(self, session_id: str) -> None:
        self._latest.pop(session_id, None)

    def __len__(self) -> int:
        return len(self._latest)
