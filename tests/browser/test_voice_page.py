"""Speaking to the page in a real chromium: the fake microphone plays a WAV of synthetic speech."""

from __future__ import annotations

import wave
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import expect

from tests.support.browser import chromium, fake_microphone, open_page
from tests.support.edge_client import running_edge
from tests.support.scripted_llm import ScriptedLLM
from tests.support.speech import silence, synthesize, word_error_rate
from workers.orchestrator.worker import WORKER as ORCHESTRATOR
from workers.orchestrator.worker import OrchestratorSettings
from workers.runtime import running_worker
from workers.transcriber.worker import WORKER as TRANSCRIBER
from workers.transcriber.worker import TranscriberSettings
from workers.voice.worker import WORKER as VOICE
from workers.voice.worker import VoiceSettings

PREFIX = "pagevoice"
QUESTION = "What is the weather like in Paris today?"


def write_wav(path: Path, pcm: bytes, rate: int = 16_000) -> Path:
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(pcm)
    return path


@pytest.fixture(scope="module")
async def stack(nats_url: str, llm: ScriptedLLM) -> AsyncIterator[str]:
    async with (
        running_worker(TRANSCRIBER, TranscriberSettings(nats_url=nats_url, subject_prefix=PREFIX)),
        running_worker(
            ORCHESTRATOR, OrchestratorSettings(nats_url=nats_url, llm_base_url=llm.base_url, subject_prefix=PREFIX)
        ),
        running_worker(VOICE, VoiceSettings(nats_url=nats_url, subject_prefix=PREFIX)),
        running_edge(nats_url, subject_prefix=PREFIX) as url,
    ):
        yield url


async def test_spoken_turn_shows_the_transcript_and_the_reply(stack: str, tmp_path: Path) -> None:
    # Chromium clips the first 10-140 ms of a fake capture file: lead with silence.
    wav = write_wav(tmp_path / "question.wav", silence(1.0) + synthesize(QUESTION) + silence(2.0))
    async with chromium(*fake_microphone(wav)) as browser, open_page(browser, f"{stack}/?aec=0") as ui:
        await ui.until("sb.status === 'connected'")
        await ui.page.get_by_role("button", name="Start microphone").click()
        await ui.until("sb.micOn && sb.sentFrames > 0")

        user = ui.page.locator(".msg.user[data-source='spoken'] .text")
        await expect(user).not_to_be_empty(timeout=30_000)
        heard = await user.inner_text()
        assert word_error_rate(QUESTION, heard) <= 0.5, heard
        await expect(ui.page.locator(".msg.assistant .text")).to_have_text(f"You said: {heard}", timeout=15_000)

        state = await ui.state()
        turn = next(t for t in state["turns"].values() if t.get("finalText"))
        assert turn["finalText"] == heard
        # The readout is measured from the end of speech in the audio, not from the VAD's decision.
        # (not a speed check: only that the clocks line up; a unit slip would be off by 1000x)
        assert 0 < turn["latency"]["toFinal"] < 60_000 and turn["latency"]["toFirstText"] >= turn["latency"]["toFinal"]
        assert state["sentFrames"] >= 100  # >= 2 s of 20 ms frames went out
        # The reply is spoken: its audio frames were scheduled and played to the end, gap-free.
        await ui.until("Object.values(sb.turns).some(t => t.audioDone && t.played > 0 && t.played === t.audioFrames)")
        turn = next(t for t in (await ui.state("sb.turns")).values() if t.get("finalText"))
        assert turn["audioDone"]["cancelled"] is False and turn["audioFrames"] == turn["audioDone"]["frames"]
        assert turn["latency"]["toFirstAudio"] > 0 and turn["latency"]["toFirstAudio"] >= turn["latency"]["toFirstText"]
        await expect(ui.page.locator(".msg.assistant .meta")).to_contain_text("first audio")
        await ui.screenshot("spoken_turn")
        assert ui.errors == []


STORY = " ".join(
    f"Sentence number {n} of a long story about the sea and the ships that sail on it." for n in range(1, 30)
)


async def test_speaking_over_the_assistant_flushes_playback_and_starts_a_new_turn(
    stack: str, llm: ScriptedLLM, tmp_path: Path
) -> None:
    llm.script(reply=STORY)  # the first question gets a reply that takes a minute to say
    audio = (
        silence(1.0)
        + synthesize("Tell me a long story about the sea.")
        + silence(9.0)
        + synthesize("Stop, what time is it?")
        + silence(3.0)
    )
    wav = write_wav(tmp_path / "barge_in.wav", audio)
    async with chromium(*fake_microphone(wav)) as browser, open_page(browser, f"{stack}/?aec=0") as ui:
        await ui.until("sb.status === 'connected'")
        await ui.page.get_by_role("button", name="Start microphone").click()
        await ui.until("Object.values(sb.turns).some(t => t.played > 0)", timeout_s=40)  # the story is playing

        # The second question interrupts: playback is flushed at once and a new turn begins.
        await ui.until("sb.flushes >= 1", timeout_s=40)
        assert (await ui.state())["stoppedByFlush"] > 0, "nothing was playing when the flush came"
        await expect(ui.page.locator(".msg.assistant").first.locator(".meta")).to_contain_text("interrupted")
        await expect(ui.page.locator(".msg.assistant").nth(1).locator(".text")).to_contain_text(
            "You said:", timeout=40_000
        )
        # A pause after "Stop" may end a turn of its own: what counts is everything said after the story.
        await ui.until(
            "Object.values(sb.turns).filter(t => t.source === 'spoken').slice(1)"
            ".map(t => t.user || '').join(' ').toLowerCase().includes('time')",
            timeout_s=40,
        )
        turns = [t for t in (await ui.state("sb.turns")).values() if t.get("source") == "spoken"]
        story, heard = turns[0], " ".join(t["user"] for t in turns[1:])
        assert story["played"] < story["audioFrames"] or story["audioDone"]["cancelled"], story
        assert story["reply"].startswith("Sentence number 1")
        assert word_error_rate("Stop, what time is it?", heard) <= 0.5, heard
        await ui.screenshot("barge_in")
        assert ui.errors == []
