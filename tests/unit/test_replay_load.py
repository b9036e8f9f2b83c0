"""bench/replay_load.py: a recorded session's inputs become a client script with the true ends of its speech."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import numpy as np

from bench.replay_load import script_of, speech_ends
from bench.voice_loop import FRAME_S
from contracts import headers as h
from ops.tools import Recorded

FRAME = 320


def frames(*parts: tuple[str, float]) -> list[bytes]:
    """("tone"|"silence", seconds) runs as 20 ms PCM16 frames."""
    out: list[bytes] = []
    for kind, seconds in parts:
        for _ in range(round(seconds / FRAME_S)):
            samples = np.full(FRAME, 8000 if kind == "tone" else 0, dtype="<i2")
            out.append(samples.tobytes())
    return out


def recorded(at: float, kind: str, data: bytes) -> Recorded:
    msg: Any = SimpleNamespace(headers={h.KIND: kind}, data=data)
    return Recorded(at, msg)


def test_each_utterance_ends_at_its_last_loud_sample() -> None:
    audio = frames(("silence", 0.4), ("tone", 1.0), ("silence", 1.0), ("tone", 0.5), ("silence", 0.2))
    ends = speech_ends(audio)
    assert [round(e, 2) for e in ends] == [1.4, 2.9]


def test_a_short_pause_inside_an_utterance_does_not_end_it() -> None:
    audio = frames(("tone", 0.5), ("silence", 0.4), ("tone", 0.5), ("silence", 1.0))
    assert [round(e, 2) for e in speech_ends(audio)] == [1.4]


def test_a_recorded_session_becomes_a_script_of_typed_turns_and_audio_on_its_own_clock() -> None:
    audio = frames(("tone", 0.2), ("silence", 1.0))
    records = [recorded(100.0 + i * 0.021, "audio.in", pcm) for i, pcm in enumerate(audio)]  # jittered arrival
    records.append(recorded(100.5, "turn.user", json.dumps({"source": "typed", "text": "hello"}).encode()))
    records.append(recorded(100.6, "turn.user", json.dumps({"source": "spoken", "text": "heard"}).encode()))
    records.append(recorded(100.7, "reply.done", b"{}"))
    script = script_of("s", sorted(records, key=lambda r: r.at))
    assert script.typed == 1
    assert [s.text for s in script.steps if s.text] == ["hello"]
    frame_times = [s.at for s in script.steps if s.pcm is not None]
    assert len(frame_times) == len(audio)
    assert np.allclose(np.diff(frame_times), FRAME_S)  # the microphone's clock, not the arrival jitter
    assert [round(e, 2) for e in script.speech_ends] == [0.2]
