"""The transcriber's recognition processes with turn_policy smart_turn and silence, side by side on
the same speech: when each ends the turn, on the audio clock (Output.decided_at)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Literal, cast

import pytest

from tests.support.speech import silence, synthesize
from workers.speech import smart_turn
from workers.transcriber.endpoint import EndpointConfig
from workers.transcriber.pipeline import Output
from workers.transcriber.shards import ShardConfig, Shards
from workers.transcriber.worker import Transcriber, TranscriberSettings

pytestmark = pytest.mark.slow

BASE = ShardConfig(
    "pocketsphinx",
    None,
    "en",
    vad_onnx=True,
    vad_threshold=0.5,
    vad_min_silence_ms=160,
    endpoint=EndpointConfig(),
    partial_interval_s=0.25,
)


def config(policy: Literal["smart_turn", "silence"]) -> ShardConfig:
    return dataclasses.replace(
        BASE,
        endpoint=EndpointConfig(policy=policy),
        smart_turn_model=str(smart_turn.default_path()) if policy == "smart_turn" else None,
    )


async def finals(shards: Shards, session: str, pcm: bytes) -> list[Output]:
    frames = [(pcm[at : at + 640], 1_700_000_000 + at / 32_000) for at in range(0, len(pcm), 640)]
    outputs, _ = await shards.push(session, frames)
    outputs += await shards.close(session, finish=True)
    return [out for out in outputs if out.kind == "final"]


async def run_both(pcm: bytes) -> dict[str, Output]:
    ended: dict[str, Output] = {}
    for policy in ("smart_turn", "silence"):
        shards = Shards(1, config(policy))
        await shards.start()
        try:
            [final] = await finals(shards, f"s-{policy}", pcm)
        finally:
            shards.shutdown()
        assert not final.forced
        ended[policy] = final
    return ended


async def test_smart_turn_ends_a_complete_turn_sooner_than_the_silence_window() -> None:
    pcm = synthesize("What is the weather like today?") + silence(1.5)
    ended = await run_both(pcm)
    smart, plain = ended["smart_turn"], ended["silence"]
    assert abs(smart.audio_at - plain.audio_at) < 0.02  # the same end of speech...
    assert plain.decided_at - plain.audio_at == pytest.approx(0.5, abs=0.03)  # ...the 500 ms window
    assert smart.decided_at - smart.audio_at <= 0.2  # the model said complete at "speech stopped"
    assert plain.decided_at - smart.decided_at >= 0.3
    assert smart.turn_probability is not None and smart.turn_probability > 0.5
    assert plain.turn_probability is None
    assert "weather" in smart.text and smart.text == plain.text


async def test_smart_turn_waits_longer_on_an_unfinished_phrase_up_to_the_cap() -> None:
    pcm = synthesize("What is the weather like in") + silence(3.0)
    ended = await run_both(pcm)
    smart, plain = ended["smart_turn"], ended["silence"]
    assert smart.turn_probability is not None and smart.turn_probability < 0.5
    cap = EndpointConfig().smart_turn_max_wait_ms / 1000
    assert smart.decided_at - smart.audio_at == pytest.approx(cap, abs=0.03)  # then the fallback ends it
    assert smart.decided_at > plain.decided_at


def test_the_policy_defaults_to_smart_turn_when_the_model_is_installed(tmp_path: Path) -> None:
    assert smart_turn.default_path().is_file()  # infra/setup.sh installs it
    worker = Transcriber(TranscriberSettings(), cast(Any, None))
    assert worker.turn_policy == "smart_turn"
    missing = Transcriber(TranscriberSettings(smart_turn_model_path=str(tmp_path / "none.onnx")), cast(Any, None))
    assert missing.turn_policy == "silence"
    chosen = Transcriber(TranscriberSettings(turn_policy="silence"), cast(Any, None))
    assert chosen.turn_policy == "silence"
