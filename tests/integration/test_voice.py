"""Voice out end to end: WebSocket -> edge -> orchestrator (scripted LLM) -> voice worker -> edge -> socket.

Real NATS, the real edge, the real orchestrator; piper and espeak-ng synthesise for real; the
OpenAI provider talks HTTP to the scripted server's /v1/audio/speech.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest

from contracts.binary import AudioOutFrame
from tests.support.edge_client import Client, connect, running_edge
from tests.support.scripted_llm import ScriptedLLM
from workers.orchestrator.worker import WORKER as ORCHESTRATOR
from workers.orchestrator.worker import OrchestratorSettings
from workers.runtime import running_worker
from workers.voice.worker import WORKER as VOICE
from workers.voice.worker import VoiceSettings

pytestmark = pytest.mark.slow
SPEAKS = ["text", "audio_out"]


@contextlib.asynccontextmanager
async def voiced_stack(nats_url: str, llm: ScriptedLLM, prefix: str, **voice: Any) -> AsyncIterator[str]:
    """Orchestrator, voice worker and edge on ``prefix``; yields the edge's URL."""
    brain = OrchestratorSettings(
        nats_url=nats_url,
        llm_base_url=llm.base_url,
        subject_prefix=prefix,
        memory_timeout_s=0.05,
        retrieval_timeout_s=0.05,
    )
    speech = VoiceSettings(
        nats_url=nats_url,
        subject_prefix=prefix,
        tts_openai_base_url=llm.base_url,
        tts_openai_api_key="test",
        tts_lead_s=0.5,
        **voice,
    )
    async with (
        running_worker(ORCHESTRATOR, brain),
        running_worker(VOICE, speech),
        running_edge(nats_url, subject_prefix=prefix) as url,
    ):
        yield url


@pytest.fixture(scope="module")
async def stack(nats_url: str, llm: ScriptedLLM) -> AsyncIterator[str]:
    async with voiced_stack(nats_url, llm, "voice") as url:
        yield url


def kinds(events: list[dict[str, Any]]) -> list[str]:
    return [e["kind"] for e in events]


Spoken = tuple[list[dict[str, Any]], list[AudioOutFrame]]


async def spoken_turn(client: Client, text: str, timeout: float = 30.0) -> Spoken:
    """Chat once; every event up to the turn's audio.done, and the turn's audio frames."""
    await client.chat(text)
    turn_id = (await client.until(lambda e: e["kind"] == "turn.user"))[-1]["turn_id"]
    events = await client.until(lambda e: e["kind"] == "audio.done" and e["turn_id"] == turn_id, timeout)
    return events, [frame for _, frame in client.audio if frame.turn_id == turn_id]


def pcm(frames: list[AudioOutFrame]) -> np.ndarray[Any, np.dtype[np.int16]]:
    return np.frombuffer(b"".join(f.pcm for f in frames), dtype="<i2")


def seconds(frames: list[AudioOutFrame]) -> float:
    return sum(len(f.pcm) / 2 / f.sample_rate for f in frames)


def assert_speech(frames: list[AudioOutFrame], text: str, rate: int) -> None:
    """Whole, ordered, non-silent audio of a plausible length for ``text``."""
    assert frames, "no audio"
    assert [f.seq for f in frames] == list(range(len(frames)))
    assert {f.sample_rate for f in frames} == {rate}
    samples = pcm(frames).astype(np.float64)
    assert np.sqrt(np.mean(samples**2)) > 300, "silent audio"
    # English speech runs at roughly 10-25 characters a second.
    assert len(text) / 30 < seconds(frames) < len(text) / 6, (seconds(frames), len(text))


async def test_a_typed_turn_is_spoken_by_piper_while_the_text_streams(stack: str, llm: ScriptedLLM) -> None:
    client = await connect(stack, capabilities=SPEAKS)
    llm.script(delay_ms=80)  # the echo, one word every 80 ms
    events, frames = await spoken_turn(client, "The weather is fine today, and tomorrow will be sunny too.")
    done, audio_done = next(e for e in events if e["kind"] == "reply.done"), events[-1]
    assert done["text"].startswith("You said: The weather")
    assert [e for e in events if e["kind"] == "reply.delta"]
    assert_speech(frames, done["text"], rate=22_050)
    assert audio_done["frames"] == len(frames) and not audio_done["cancelled"]
    assert audio_done["duration_ms"] == pytest.approx(seconds(frames) * 1000, abs=1)
    # Speech began while the text was still streaming.
    first_frame_at = next(i for i, f in client.audio if f.turn_id == done["turn_id"])
    assert first_frame_at < client.received.index(done)
    await client.close()


async def test_a_client_without_audio_out_gets_no_audio(stack: str) -> None:
    client = await connect(stack)
    await client.chat("Just text, please.")
    await client.until(lambda e: e["kind"] == "reply.done")
    await asyncio.sleep(0.5)
    await client.send(type="ping", id="end")
    assert "audio.done" not in kinds(await client.until(lambda e: e["kind"] == "pong"))
    assert client.audio == []
    await client.close()


async def test_provider_and_voice_are_chosen_per_session(stack: str, llm: ScriptedLLM) -> None:
    espeak, openai = await asyncio.gather(connect(stack, capabilities=SPEAKS), connect(stack, capabilities=SPEAKS))
    await espeak.send(type="settings", tts_provider="espeak", voice="en-gb")
    await openai.send(type="settings", tts_provider="openai", voice="nova")
    for client in (espeak, openai):
        await client.until(lambda e: e["kind"] == "session.settings")
    llm.speech_requests.clear()
    (_, robot), (_, tone) = await asyncio.gather(
        spoken_turn(espeak, "Good morning to you."), spoken_turn(openai, "Good evening to you.")
    )
    text = "You said: Good morning to you."
    assert_speech(robot, text, rate=22_050)
    assert_speech(tone, text, rate=24_000)
    assert [(r["voice"], r["response_format"], r["model"]) for r in llm.speech_requests] == [
        ("nova", "pcm", "gpt-4o-mini-tts")
    ] * len(llm.speech_requests)
    assert " ".join(r["input"] for r in llm.speech_requests) == "You said: Good evening to you."
    await espeak.close()
    await openai.close()


async def test_two_sessions_audio_never_mixes(stack: str) -> None:
    clients = await asyncio.gather(*(connect(stack, capabilities=SPEAKS) for _ in range(3)))
    results = await asyncio.gather(
        *(spoken_turn(c, f"Session number {i} is speaking now.") for i, c in enumerate(clients))
    )
    turns = [events[-1]["turn_id"] for events, _ in results]
    for client, turn, (events, frames) in zip(clients, turns, results, strict=True):
        assert {f.turn_id for _, f in client.audio} == {turn}
        assert {e["session_id"] for e in events if "session_id" in e} == {client.session_id}
        assert events[-1]["frames"] == len(frames) > 0
        await client.close()
    assert len(set(turns)) == 3


LONG_FIRST_SENTENCE = (
    "This first sentence is deliberately long, because it has to keep the voice busy while "
    "the user interrupts it somewhere in the middle of all these many words and clauses. "
    "A second sentence follows. And a third one ends the reply."
)


async def frames_of(client: Client, turn_id: str, count: int) -> None:
    """Read until ``count`` audio frames of the turn have arrived."""
    while len([f for _, f in client.audio if f.turn_id == turn_id]) < count:
        await client.next_frame(timeout=20)


async def test_an_interrupt_mid_sentence_stops_audio_and_text_at_the_flush(stack: str, llm: ScriptedLLM) -> None:
    client = await connect(stack, capabilities=SPEAKS)
    llm.script(reply=LONG_FIRST_SENTENCE, delay_ms=150)  # the text streams for about 6 s
    await client.chat("talk for a while")
    turn_id = (await client.until(lambda e: e["kind"] == "turn.user"))[-1]["turn_id"]
    await frames_of(client, turn_id, 8)  # 0.8 s into the first sentence, which takes over 6 s to say
    assert "reply.done" not in kinds(client.received)  # the text is still streaming too
    await client.send(type="interrupt")
    await client.until(lambda e: e["kind"] == "audio.done", timeout=10)
    if "reply.done" not in kinds(client.received):
        await client.until(lambda e: e["kind"] == "reply.done", timeout=10)
    flush = kinds(client.received).index("flush")
    assert client.received[flush]["turn_id"] == turn_id
    after = client.received[flush:]
    assert not [e for e in after if e["kind"] == "reply.delta"], "a text delta after the flush"
    assert not [f for at, f in client.audio if at > flush], "audio after the flush"
    audio_done = next(e for e in after if e["kind"] == "audio.done")
    reply_done = next(e for e in after if e["kind"] == "reply.done")
    assert audio_done["turn_id"] == reply_done["turn_id"] == turn_id
    assert audio_done["cancelled"] and reply_done["finish_reason"] == "cancelled"
    assert audio_done["duration_ms"] < 4_000  # stopped inside the first sentence, not at its end
    # Nothing of the turn arrives later either.
    heard = len(client.audio)
    await asyncio.sleep(1.0)
    await client.send(type="ping", id="after")
    assert kinds(await client.until(lambda e: e["kind"] == "pong")) == ["pong"]
    assert len(client.audio) == heard
    # The worker carries on: the next turn is spoken.
    assert (await spoken_turn(client, "Are you still there?"))[1]
    await client.close()


async def test_an_interrupt_after_the_text_ended_still_stops_the_speech(stack: str, llm: ScriptedLLM) -> None:
    client = await connect(stack, capabilities=SPEAKS)
    llm.script(reply=LONG_FIRST_SENTENCE)
    await client.chat("answer at once")
    done = (await client.until(lambda e: e["kind"] == "reply.done"))[-1]  # all text is there; speech has begun
    await frames_of(client, done["turn_id"], 3)
    await client.send(type="interrupt")
    events = await client.until(lambda e: e["kind"] == "audio.done", timeout=10)
    flush = kinds(client.received).index("flush")
    assert client.received[flush]["turn_id"] == done["turn_id"] == events[-1]["turn_id"]
    assert events[-1]["cancelled"]
    assert not [f for at, f in client.audio if at > flush]
    await client.close()


async def test_empty_and_unpronounceable_replies_end_at_once_without_audio(stack: str, llm: ScriptedLLM) -> None:
    client = await connect(stack, capabilities=SPEAKS)
    for reply in ("", "   ", "\U0001f600 \U0001f389 \u2764\ufe0f", "```python\nprint('hi')\n```"):
        llm.script(reply=reply)
        events, frames = await spoken_turn(client, "say nothing", timeout=10)
        assert frames == [] and events[-1]["frames"] == 0 and not events[-1]["cancelled"]
        # A blank reply is the model's failure (the orchestrator says so); nothing to say is never the voice's.
        errors = [e["code"] for e in events if e["kind"] == "error"]
        assert errors == (["llm_empty_reply"] if not reply.strip() else []), (reply, errors)
    await client.close()


async def test_urls_code_and_emoji_are_not_read_out(stack: str, llm: ScriptedLLM) -> None:
    client = await connect(stack, capabilities=SPEAKS)
    await client.send(type="settings", tts_provider="openai")
    await client.until(lambda e: e["kind"] == "session.settings")
    llm.speech_requests.clear()
    llm.script(
        reply="See https://docs.example.com/a/b?c=1 for **details** \U0001f600. "
        "```python\nprint('hi')\n```\nThat is all!"
    )
    _, frames = await spoken_turn(client, "links please")
    said = [r["input"] for r in llm.speech_requests]
    assert said == ["See link to docs dot example dot com for details.", "That is all!"], said
    assert frames
    await client.close()


async def test_a_very_long_reply_is_read_up_to_the_limit_and_says_so(nats_url: str, llm: ScriptedLLM) -> None:
    limit = 60
    async with voiced_stack(nats_url, llm, "voicelong", tts_provider="espeak", tts_max_chars=limit) as url:
        client = await connect(url, capabilities=SPEAKS)
        sentence = "Here is one more sentence of a very long answer. "
        llm.script(reply=sentence * 40)  # about 2,000 characters
        events, frames = await spoken_turn(client, "tell me everything")
        errors = [e for e in events if e["kind"] == "error"]
        assert [(e["code"], e["source"]) for e in errors] == [("tts_truncated", "voice")]
        assert_speech(frames, sentence[:limit], rate=22_050)
        await client.close()


async def test_unknown_voice_and_provider_are_refused_and_the_default_speaks(stack: str) -> None:
    client = await connect(stack, capabilities=SPEAKS)
    await client.send(type="settings", voice="no-such-voice")
    first = await client.until(lambda e: e["kind"] == "error")
    await client.send(type="settings", tts_provider="braille")
    second = await client.until(lambda e: e["kind"] == "error")
    assert (first[-1]["code"], second[-1]["code"]) == ("tts_unknown_voice", "tts_unknown_provider")
    assert "piper" in second[-1]["message"]
    _, frames = await spoken_turn(client, "Which voice is this?")
    assert {f.sample_rate for f in frames} == {22_050} and frames  # piper's joe voice, the default
    await client.close()


@pytest.mark.parametrize("failure", [{"status": 500}, {"disconnect": True}])
async def test_a_failing_provider_is_reported_and_the_worker_carries_on(
    stack: str, llm: ScriptedLLM, failure: dict[str, Any]
) -> None:
    client = await connect(stack, capabilities=SPEAKS)
    await client.send(type="settings", tts_provider="openai")
    await client.until(lambda e: e["kind"] == "session.settings")
    llm.script_speech(**failure)
    events, frames = await spoken_turn(client, "This answer will fail. It has two sentences.")
    errors = [e for e in events if e["kind"] == "error"]
    assert [(e["code"], e["source"], e["retryable"]) for e in errors] == [("tts_failed", "voice", True)]
    assert events[-1]["cancelled"] and events[-1]["frames"] == len(frames)
    assert bool(frames) == bool(failure.get("disconnect"))  # a cut-off stream had sent some audio
    _, frames = await spoken_turn(client, "And now it works again.")
    assert_speech(frames, "You said: And now it works again.", rate=24_000)
    await client.close()
