"""Voice in, end to end: real synthetic speech through the real edge and NATS to the transcriber
(silero-vad + the default recognizer), and on to the orchestrator; barge-in; two replicas."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import nats
import pytest
from prometheus_client import REGISTRY

from contracts.binary import PCM_FRAME_BYTES, ClientFrame, FrameType
from ops.health import discover
from tests.support.edge_client import Client, connect, running_edge
from tests.support.scripted_llm import ScriptedLLM
from tests.support.speech import silence, synthesize, word_error_rate
from workers.orchestrator.worker import WORKER as ORCHESTRATOR
from workers.orchestrator.worker import OrchestratorSettings
from workers.runtime import running_worker
from workers.transcriber.worker import WORKER as TRANSCRIBER
from workers.transcriber.worker import TranscriberSettings

QUESTION = "What is the weather like in Paris today?"
WER_BOUND = 0.5  # the default engine's measured WER on piper speech is ~0.2; see docs/speech.md


@pytest.fixture(scope="module")
async def stack(nats_url: str, llm: ScriptedLLM) -> AsyncIterator[str]:
    transcriber = TranscriberSettings(nats_url=nats_url)
    orchestrator = OrchestratorSettings(nats_url=nats_url, llm_base_url=llm.base_url)
    async with (
        running_worker(TRANSCRIBER, transcriber),
        running_worker(ORCHESTRATOR, orchestrator),
        running_edge(nats_url, binary_frames_per_s=2000.0, burst_s=5.0) as url,
    ):
        yield url


async def speak(client: Client, pcm: bytes, speed: float = 4.0, start_seq: int = 0) -> int:
    """Send PCM as 20 ms frames at ``speed`` times real time; returns the next sequence number."""
    seq = start_seq
    for offset in range(0, len(pcm), PCM_FRAME_BYTES):
        chunk = pcm[offset : offset + PCM_FRAME_BYTES]
        frame = ClientFrame(FrameType.AUDIO_PCM16, seq, 1_700_000_000 + seq * 0.02, chunk)
        await client.ws.send(frame.pack())
        seq += 1
        if seq % 10 == 0:
            await asyncio.sleep(0.2 / speed)
    return seq


def kinds(events: list[dict[str, Any]]) -> list[str]:
    return [e["kind"] for e in events]


def speculative(outcome: str) -> float:
    return REGISTRY.get_sample_value("sb_speculative_finals_total", {"outcome": outcome}) or 0.0


async def test_spoken_question_becomes_a_user_turn_and_gets_a_reply(stack: str) -> None:
    client = await connect(stack, capabilities=["text", "audio_in"])
    used = speculative("used")
    await speak(client, synthesize(QUESTION))
    events = await client.until(lambda e: e["kind"] == "reply.done", timeout=30)
    final = next(e for e in events if e["kind"] == "transcript.final")
    turn = next(e for e in events if e["kind"] == "turn.user")
    started = next(e for e in events if e["kind"] == "vad.speech_started")
    assert word_error_rate(QUESTION, final["text"]) <= WER_BOUND, final["text"]
    assert turn["source"] == "spoken" and turn["text"] == final["text"]
    assert started["turn_id"] == final["turn_id"] == turn["turn_id"] == events[-1]["turn_id"]
    assert kinds(events).index("vad.speech_started") < kinds(events).index("transcript.final")
    assert events[-1]["text"] == f"You said: {final['text']}"
    assert 0.3 < final["audio_end"] - final["audio_start"] < 4.0
    # The default engine's final (whisper) was recognised when the speech stopped, not after the turn ended.
    assert speculative("used") == used + 1
    await client.close()


async def test_two_utterances_give_two_turns_and_silence_gives_none(stack: str) -> None:
    client = await connect(stack)
    audio = synthesize("Turn on the lights.") + silence(1.5) + synthesize("Play some music.") + silence(3.0)
    await speak(client, audio)
    finals: list[dict[str, Any]] = []
    while len(finals) < 2:
        finals += [
            e
            for e in await client.until(lambda e: e["kind"] == "transcript.final", timeout=30)
            if e["kind"] == "transcript.final"
        ]
    assert finals[0]["turn_id"] != finals[1]["turn_id"]
    assert "light" in finals[0]["text"] and "music" in finals[1]["text"]
    # Silence alone: no speech events at all.
    await speak(client, silence(3.0), start_seq=10_000)
    await client.send(type="ping", id="quiet")
    later = await client.until(lambda e: e["kind"] == "pong", timeout=15)
    assert not [e for e in later if e["kind"].startswith(("vad.", "transcript."))]
    await client.close()


async def test_speaking_over_the_assistant_interrupts_it(stack: str) -> None:
    client = await connect(stack, capabilities=["text", "audio_in"])
    await client.chat("[tokens:400] [delay:30]")
    await client.until(lambda e: e["kind"] == "reply.delta" and e["seq"] >= 3)
    await speak(client, synthesize("Stop, stop please."))
    events = await client.until(lambda e: e["kind"] == "reply.done", timeout=30)
    interrupt = next(e for e in events if e["kind"] == "ctl.interrupt")
    assert interrupt["reason"] == "barge_in"
    assert kinds(events).index("flush") < kinds(events).index("ctl.interrupt")
    assert events[-1]["finish_reason"] == "cancelled"
    after_flush = events[kinds(events).index("flush") :]
    assert not [e for e in after_flush if e["kind"] == "reply.delta"]
    await client.close()


ROOT = Path(__file__).resolve().parents[2]


def replica(nats_url: str, prefix: str) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "SB_NATS_URL": nats_url,
        "SB_SUBJECT_PREFIX": prefix,
        "SB_LOG_FORMAT": "json",
        "SB_LEASE_TTL_S": "2",
        "SB_LOG_LEVEL": os.environ.get("TEST_REPLICA_LOG_LEVEL", "warning"),
    }
    # TEST_REPLICA_LOG=file keeps the replicas' logs when debugging this test.
    log = open(os.environ["TEST_REPLICA_LOG"], "ab") if "TEST_REPLICA_LOG" in os.environ else None  # noqa: SIM115
    return subprocess.Popen(
        [sys.executable, "-m", "workers.transcriber"],
        cwd=ROOT,
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=log or subprocess.DEVNULL,
    )


async def wait_for_replicas(nats_url: str, count: int, timeout: float = 60.0) -> None:
    """Until ``count`` transcribers answer service discovery (they load their models first)."""
    nc = await nats.connect(nats_url)
    try:
        async with asyncio.timeout(timeout):
            while len([s for s in await discover(nc, wait_s=0.3) if s.name == "transcriber"]) < count:
                continue  # discover itself waits 0.3 s per round
    finally:
        await nc.close()


async def test_two_replicas_share_sessions_and_survive_one_being_killed(nats_url: str) -> None:
    prefix = "replicas"
    replicas = [replica(nats_url, prefix), replica(nats_url, prefix)]
    try:
        async with running_edge(nats_url, subject_prefix=prefix, binary_frames_per_s=2000.0, burst_s=5.0) as url:
            await wait_for_replicas(nats_url, 2)
            await asyncio.sleep(2.5)  # two lease ticks: the first replica hands the newcomer its share
            clients = await asyncio.gather(*(connect(url) for _ in range(6)))
            speech = synthesize("Turn on the lights.") + silence(1.5)

            async def one_final(client: Client, seq: int) -> str:
                await speak(client, speech, speed=1.0, start_seq=seq)  # six live microphones
                events = await client.until(lambda e: e["kind"] == "transcript.final", timeout=30)
                return str(events[-1]["text"])

            texts = await asyncio.gather(*(one_final(c, 0) for c in clients))
            assert all("light" in t for t in texts), texts
            os.killpg(replicas[0].pid, signal.SIGKILL)  # no goodbye: its leases must expire
            await asyncio.sleep(4.0)
            texts = await asyncio.gather(*(one_final(c, 1000) for c in clients))
            assert all("light" in t for t in texts), texts
            # Exactly one replica handled each utterance: no session got a second final.
            await asyncio.gather(*(c.send(type="ping", id="end") for c in clients))
            for client in clients:
                tail = await client.until(lambda e: e["kind"] == "pong", timeout=10)
                assert not [e for e in tail if e["kind"] == "transcript.final"]
                await client.close()
    finally:
        for process in replicas:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
                process.wait(10)
