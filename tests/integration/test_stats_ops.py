"""Stats and ops through the real stack: a typed and spoken conversation (edge, transcriber, orchestrator
with the scripted LLM, the voice worker on espeak-ng), the stats snapshot checked against the recorded timestamps,
Prometheus, one trace per turn, replay into an isolated prefix, a transcriber re-driven by the replay,
and the `sb` commands as an operator runs them."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from nats.aio.client import Client as Nats

from contracts import events as ev
from contracts import headers as h
from contracts.binary import PCM_FRAME_BYTES, ClientFrame, FrameType
from contracts.envelope import Event
from ops import tools
from ops.servers import free_port
from tests.contract_tap import DELIBERATELY_INVALID
from tests.support.browser import BASE_ARGS
from tests.support.edge_client import Client, connect, running_edge
from tests.support.scripted_llm import ScriptedLLM
from tests.support.speech import silence, synthesize
from workers.orchestrator.worker import WORKER as ORCHESTRATOR
from workers.orchestrator.worker import OrchestratorSettings
from workers.runtime import Bus, running_worker
from workers.runtime.tracing import parse_traceparent
from workers.stats.worker import WORKER as STATS
from workers.stats.worker import StatsSettings
from workers.transcriber.worker import WORKER as TRANSCRIBER
from workers.transcriber.worker import TranscriberSettings
from workers.voice.worker import WORKER as VOICE
from workers.voice.worker import VoiceSettings

PREFIX = "statsit"
QUESTION = "What is the weather like in Paris today?"
ROOT = Path(__file__).resolve().parents[2]
OPERATOR = "operator-" + "y" * 30
ARTIFACTS = ROOT / "test-artifacts"  # gitignored: the dashboard's screenshot


@dataclass
class Conversation:
    session_id: str
    typed_turn: str
    spoken_turn: str
    final_text: str
    audio_bytes: int
    metrics_url: str
    edge_url: str
    client: Client


async def speak_live(client: Client, pcm: bytes) -> int:
    """Send PCM in 20 ms frames at real-time pace, stamped with the wall clock like a microphone."""
    started = time.monotonic()
    for seq, offset in enumerate(range(0, len(pcm), PCM_FRAME_BYTES)):
        await client.ws.send(
            ClientFrame(FrameType.AUDIO_PCM16, seq, time.time(), pcm[offset : offset + PCM_FRAME_BYTES]).pack()
        )
        await asyncio.sleep(max(0.0, (seq + 1) * 0.02 - (time.monotonic() - started)))
    return len(pcm)


async def heard(client: Client, turn_id: str) -> None:
    """Wait for the turn's audio.done (the end of its speech, or its cancellation)."""
    if not any(e["kind"] == "audio.done" and e["turn_id"] == turn_id for e in client.received):
        await client.until(lambda e: e["kind"] == "audio.done" and e["turn_id"] == turn_id, timeout=30)


@pytest.fixture(scope="module")
async def conversation(nats_url: str, llm: ScriptedLLM) -> AsyncIterator[Conversation]:
    metrics_port = free_port()
    async with (
        running_worker(VOICE, VoiceSettings(nats_url=nats_url, subject_prefix=PREFIX, tts_provider="espeak")),
        running_worker(TRANSCRIBER, TranscriberSettings(nats_url=nats_url, subject_prefix=PREFIX)),
        running_worker(
            ORCHESTRATOR, OrchestratorSettings(nats_url=nats_url, subject_prefix=PREFIX, llm_base_url=llm.base_url)
        ),
        running_worker(STATS, StatsSettings(nats_url=nats_url, subject_prefix=PREFIX, metrics_port=metrics_port)),
        running_edge(
            nats_url, subject_prefix=PREFIX, binary_frames_per_s=2000.0, burst_s=5.0, edge_operator_token=OPERATOR
        ) as url,
    ):
        client = await connect(url, capabilities=["text", "audio_in", "audio_out"])
        await client.chat("Hello there")
        typed = (await client.until(lambda e: e["kind"] == "reply.done"))[-1]
        # Listen to the whole answer before speaking: speaking over it would be a barge-in (an interruption).
        await heard(client, typed["turn_id"])
        sent = await speak_live(client, synthesize(QUESTION) + silence(1.0))  # a live mic keeps streaming
        events = await client.until(lambda e: e["kind"] == "reply.done", timeout=30)
        final = next(e for e in events if e["kind"] == "transcript.final")
        await heard(client, final["turn_id"])  # a new turn would cut the spoken reply's speech short
        await client.chat("[status:503]")  # the LLM fails: one error event
        await client.until(lambda e: e["kind"] == "reply.done")
        await client.chat("[tokens:300] [delay:20]")
        interrupted = (await client.until(lambda e: e["kind"] == "reply.delta" and e["seq"] >= 2))[-1]["turn_id"]
        await client.send(type="interrupt")
        await client.until(lambda e: e["kind"] == "reply.done")
        await heard(client, interrupted)  # the last audio.done: an interrupt ends the speech at once
        yield Conversation(
            client.session_id,
            typed["turn_id"],
            final["turn_id"],
            final["text"],
            sent,
            f"http://127.0.0.1:{metrics_port}/metrics",
            url,
            client,
        )
        await client.close()


async def snapshot_when(nc: Nats, session_id: str | None, ready: Any, prefix: str = PREFIX) -> ev.StatsSnapshot:
    bus = Bus(producer="test", prefix=prefix)
    bus.attach(nc)
    deadline = time.monotonic() + 10
    while True:
        snap = await bus.request(
            "stats.snapshot",
            ev.StatsRequest(producer="test", session_id=session_id, recent_turns=10),
            ev.StatsSnapshot,
            2.0,
        )
        if ready(snap) or time.monotonic() > deadline:
            return snap
        await asyncio.sleep(0.1)


def recorded_events(records: list[tools.Recorded]) -> list[Event]:
    return [ev.parse_event(r.msg.data) for r in records if r.msg.subject.split(".")[1] != "audio"]


async def test_snapshot_counts_and_latencies_match_the_recorded_timestamps(
    conversation: Conversation, nc: Nats
) -> None:
    c = conversation
    snap = await snapshot_when(
        nc, c.session_id, lambda s: s.turns == 4 and s.audio_out_s > 0 and s.stages["voice_to_voice"].count == 1
    )
    records = await tools.recorded_session(nc.jetstream(), c.session_id, PREFIX)
    events = recorded_events(records)
    dones = [e for e in events if isinstance(e, ev.ReplyDone)]
    assert snap.turns == 4 and snap.turns_by_source == {"typed": 3, "spoken": 1}
    assert snap.sessions_active == 1 and snap.sessions_total == 1
    assert snap.interruptions == 1
    errors = [e for e in events if isinstance(e, ev.ErrorEvent)]
    assert len(errors) == 1 and snap.errors == {errors[0].code: 1}
    assert snap.tokens == sum(d.usage.prompt_tokens + d.usage.completion_tokens for d in dones) > 0
    assert snap.audio_in_s == pytest.approx(c.audio_bytes / 32_000, abs=0.001)
    spoken_audio = [e for e in events if isinstance(e, ev.AudioOutDone)]
    assert spoken_audio and snap.audio_out_s == pytest.approx(
        sum(e.duration_ms for e in spoken_audio) / 1000, abs=0.002
    )

    def first(kind: type[Event], turn: str) -> Any:
        return next(e for e in events if isinstance(e, kind) and getattr(e, "turn_id", None) == turn)

    timelines = {t.turn_id: t for t in snap.recent}
    spoken, typed = timelines[c.spoken_turn], timelines[c.typed_turn]
    stopped, final = first(ev.SpeechStopped, c.spoken_turn), first(ev.TranscriptFinal, c.spoken_turn)
    delta, done = first(ev.ReplyDelta, c.spoken_turn), first(ev.ReplyDone, c.spoken_turn)
    audio = min(
        ev.AudioOutMeta.model_validate_json(r.msg.headers[h.META]).published_at
        for r in records
        if r.msg.subject.endswith(".out") and r.msg.headers and r.msg.headers.get(h.TURN) == c.spoken_turn
    )
    expected = {
        "end_of_speech_to_final": final.published_at - stopped.speech_ended_at,
        "final_to_first_delta": delta.published_at - final.published_at,
        "llm_time_to_first_token": done.first_token_at - final.published_at,
        "first_delta_to_first_audio": audio - delta.published_at,
        "voice_to_voice": audio - stopped.speech_ended_at,
    }
    assert spoken.stages == pytest.approx({k: v * 1000 for k, v in expected.items()}, abs=0.01)
    # The true end of speech comes before the VAD's decision, which comes before the final transcript.
    assert spoken.marks["speech_ended"] < spoken.marks["vad_stopped"] <= spoken.marks["turn_final"]
    # Voice to voice is the sum of the three stages between its ends (no speed target here: see the benchmarks).
    assert spoken.stages["voice_to_voice"] == pytest.approx(
        spoken.stages["end_of_speech_to_final"]
        + spoken.stages["final_to_first_delta"]
        + spoken.stages["first_delta_to_first_audio"],
        abs=0.01,
    )
    assert spoken.stages["voice_to_voice"] > 0
    assert set(typed.stages) == {"final_to_first_delta", "llm_time_to_first_token", "first_delta_to_first_audio"}
    typed_turn, typed_delta = first(ev.UserTurn, c.typed_turn), first(ev.ReplyDelta, c.typed_turn)
    assert typed.stages["final_to_first_delta"] == pytest.approx(
        (typed_delta.published_at - typed_turn.published_at) * 1000, abs=0.01
    )
    assert [t.outcome for t in snap.recent] == ["stop", "stop", "error", "cancelled"]
    assert snap.stages["final_to_first_delta"].count == 3  # the failed turn never had a delta
    everything = await snapshot_when(nc, None, lambda s: True)
    assert everything.turns >= snap.turns


async def test_prometheus_exposes_stages_and_counts(conversation: Conversation) -> None:
    async with httpx.AsyncClient() as http:
        text = (await http.get(conversation.metrics_url)).raise_for_status().text
    assert 'sb_turn_stage_seconds_count{stage="voice_to_voice"}' in text
    assert 'sb_turn_stage_seconds_bucket{le="0.3",stage="final_to_first_delta"}' in text
    assert 'sb_turns_total{source="spoken"}' in text and "sb_interruptions_total" in text
    assert 'sb_handler_seconds_count{kind="turn.user",outcome="ok",worker="orchestrator"}' in text
    assert 'sb_published_total{kind="reply.delta",producer="orchestrator"}' in text


async def test_an_unreadable_recorded_event_is_counted_and_the_aggregator_goes_on(
    conversation: Conversation, nc: Nats
) -> None:
    async def unreadable() -> float:
        async with httpx.AsyncClient() as http:
            text = (await http.get(conversation.metrics_url)).raise_for_status().text
        return float(
            next(line.split()[1] for line in text.splitlines() if line.startswith("sb_stats_unreadable_total "))
        )

    before = await unreadable()
    # Recorded (ev.> is SB_EVENTS) but consumed by no worker here, so only stats reads it.
    await nc.publish(
        f"{PREFIX}.ev.{conversation.session_id}.data.job_progress", b"{not json", headers={DELIBERATELY_INVALID: "1"}
    )
    deadline = time.monotonic() + 10
    while await unreadable() == before:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.1)
    assert await unreadable() == before + 1
    snap = await snapshot_when(nc, conversation.session_id, lambda s: True)
    assert snap.turns >= 4  # still answering, nothing lost


def depth(line: str) -> int:
    rest = line.split(" ms  ", 1)[1]
    return (len(rest) - len(rest.lstrip())) // 2


async def test_one_turn_is_one_trace_across_the_edge_and_the_workers(conversation: Conversation, nc: Nats) -> None:
    c = conversation
    for turn in (c.typed_turn, c.spoken_turn):
        records = await tools.turn_messages(nc.jetstream(), turn, c.session_id, PREFIX, 0)
        contexts = [parse_traceparent((r.msg.headers or {}).get(h.TRACEPARENT)) for r in records]
        assert all(contexts) and len({ctx.trace_id for ctx in contexts if ctx}) == 1
        producers = {(r.msg.headers or {}).get(h.PRODUCER) for r in records}
        assert {"orchestrator", "voice"} <= producers
        tree = tools.trace_tree(records)
        assert tree[0].startswith("trace ")
        delta = next(line for line in tree if "orchestrator: reply.delta" in line)
        user = next(line for line in tree if ": turn.user" in line)
        # The orchestrator's deltas hang under the user turn whose handling produced them.
        assert depth(delta) == depth(user) + 1
    spoken_tree = tools.trace_tree(await tools.turn_messages(nc.jetstream(), c.spoken_turn, None, PREFIX, 600))
    assert any("transcriber: vad.speech_stopped" in line for line in spoken_tree)


async def test_replay_reproduces_the_session_in_an_isolated_prefix(conversation: Conversation, nc: Nats) -> None:
    js = nc.jetstream()
    original = await tools.recorded_session(js, conversation.session_id, PREFIX)
    rate = await tools.republish(nc, original, "statsrpl", speed=0)
    assert rate > 0
    deadline = time.monotonic() + 10
    while len(replayed := await tools.recorded_session(js, conversation.session_id, "statsrpl")) < len(original):
        assert time.monotonic() < deadline, f"{len(replayed)} of {len(original)} replayed"
        await asyncio.sleep(0.1)

    def shape(records: list[tools.Recorded], stream: str) -> list[tuple[str, bytes, dict[str, str]]]:
        return [
            (r.msg.subject.split(".", 1)[1], r.msg.data, dict(r.msg.headers or {}))
            for r in records
            if r.msg.metadata.stream.startswith(stream)
        ]

    # Each stream holds the same messages in the same order (between two streams, order is by clock only).
    for stream in ("SB_EVENTS", "SB_AUDIO"):
        assert shape(replayed, stream) == shape(original, stream)
    assert len(shape(original, "SB_AUDIO")) > 100
    # Nothing leaked into the live prefix: still the same recording there.
    assert len(await tools.recorded_session(js, conversation.session_id, PREFIX)) == len(original)


async def test_a_transcriber_redriven_by_the_replay_gives_the_same_final(
    conversation: Conversation, nats_url: str, nc: Nats
) -> None:
    prefix = "statsredrive"
    finals: asyncio.Queue[ev.TranscriptFinal] = asyncio.Queue()

    async def on_final(msg: Any) -> None:
        await finals.put(ev.TranscriptFinal.model_validate_json(msg.data))

    sub = await nc.subscribe(f"{prefix}.ev.{conversation.session_id}.turn.transcript", cb=on_final)
    records = await tools.recorded_session(nc.jetstream(), conversation.session_id, PREFIX)
    audio_in = [r for r in records if (r.msg.headers or {}).get(h.KIND) == "audio.in"]
    async with running_worker(TRANSCRIBER, TranscriberSettings(nats_url=nats_url, subject_prefix=prefix)):
        await tools.republish(nc, audio_in, prefix, speed=2.0)
        final = await asyncio.wait_for(finals.get(), 30)
    await sub.unsubscribe()
    assert final.text == conversation.final_text
    assert final.turn_id != conversation.spoken_turn  # a new run of the transcriber, same words


def sb(*args: str, nats_url: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SB_LOG_LEVEL": "warning"}
    return subprocess.run(
        [sys.executable, "-m", "ops.cli", *args, "--nats-url", nats_url, "--prefix", PREFIX],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_sb_replay_prints_the_timeline_and_sb_trace_the_path(conversation: Conversation, nats_url: str) -> None:
    c = conversation
    shown = await asyncio.to_thread(sb, "replay", c.session_id, nats_url=nats_url)
    assert shown.returncode == 0, shown.stderr
    assert f"turn {c.spoken_turn[:8]} (spoken): end_of_speech_to_final" in shown.stdout
    assert "voice_to_voice" in shown.stdout and "audio frames:" in shown.stdout
    traced = await asyncio.to_thread(sb, "trace", c.typed_turn, "--session", c.session_id, nats_url=nats_url)
    assert traced.returncode == 0, traced.stderr
    assert "edge: turn.user" in traced.stdout and "orchestrator: reply.delta x" in traced.stdout
    missing = await asyncio.to_thread(sb, "replay", "no-such-session", nats_url=nats_url)
    assert missing.returncode == 1 and "nothing recorded" in missing.stderr


async def test_sb_tail_follows_live_events_filtered(conversation: Conversation, nats_url: str) -> None:
    c = conversation
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "ops.cli",
        "tail",
        "--nats-url",
        nats_url,
        "--prefix",
        PREFIX,
        "--kind",
        "reply.done",
        "--session",
        c.session_id,
        "--count",
        "1",
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stderr is not None and process.stdout is not None
        assert "following" in (await asyncio.wait_for(process.stderr.readline(), 30)).decode()
        other = await connect(c.edge_url)  # another session: filtered out
        await other.chat("not this one")
        await other.until(lambda e: e["kind"] == "reply.done")
        await other.close()
        await c.client.chat("tail me")
        await c.client.until(lambda e: e["kind"] == "reply.done")
        line = (await asyncio.wait_for(process.stdout.readline(), 30)).decode()
        assert await asyncio.wait_for(process.wait(), 30) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert "reply.done" in line and c.session_id[:12] in line and '"text": "You said: tail me"' in line


async def test_ops_routes_need_the_operator_token(conversation: Conversation, nats_url: str) -> None:
    async with httpx.AsyncClient(base_url=conversation.edge_url) as http:
        assert (await http.get("/ops/api/snapshot")).status_code == 401
        assert (await http.get("/ops/metrics", headers={"Authorization": "Bearer wrong"})).status_code == 401
        assert (await http.post("/ops/login", json={"token": "wrong"})).status_code == 401
        # Non-ASCII tokens are wrong tokens too (hmac.compare_digest refused them: a 500).
        assert (await http.post("/ops/login", json={"token": "ﬁ-tökén"})).status_code == 401
        foreign = {b"Authorization": "Bearer tökén".encode()}
        assert (await http.get("/ops/metrics", headers=foreign)).status_code == 401
        assert "operator token" in (await http.get("/ops")).text  # the login form, not the figures
        bearer = {"Authorization": f"Bearer {OPERATOR}"}
        snap = (
            (await http.get("/ops/api/snapshot", params={"session_id": conversation.session_id}, headers=bearer))
            .raise_for_status()
            .json()
        )
        assert snap["kind"] == "stats.snapshot" and snap["turns"] >= 4
        metrics = (await http.get("/ops/metrics", headers=bearer)).raise_for_status().text
        assert 'sb_published_total{kind="turn.user",producer="edge"}' in metrics
        assert (await http.post("/ops/login", json={"token": OPERATOR})).status_code == 204
        assert "sb_ops" in http.cookies and "Latency by stage" in (await http.get("/ops")).text
    async with running_edge(nats_url, subject_prefix=PREFIX) as url, httpx.AsyncClient(base_url=url) as http:
        assert (await http.get("/ops")).status_code == 404  # no operator token configured: no dashboard


async def test_dashboard_loads_in_a_real_browser_without_errors(conversation: Conversation) -> None:
    from playwright.async_api import async_playwright

    problems: list[str] = []
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path="/usr/bin/chromium",
            args=BASE_ARGS,
        )
        try:
            page = await browser.new_page(viewport={"width": 1280, "height": 1100})
            page.on(
                "console",
                lambda m: problems.append(f"console {m.type}: {m.text}") if m.type in ("error", "warning") else None,
            )
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            await page.goto(f"{conversation.edge_url}/ops")
            await page.fill("#t", OPERATOR)
            await page.click("button")
            await page.wait_for_selector("body[data-ready='true']", timeout=15_000)
            assert int(await page.locator(".tile b").nth(2).inner_text()) >= 4  # turns
            assert await page.locator(".card[data-stage='voice_to_voice'] svg rect").count() > 0
            await page.click(f"tr[data-turn='{conversation.spoken_turn}']")
            waterfall = page.locator("#waterfall-svg rect")
            assert await waterfall.count() == 5  # every stage of the spoken turn
            ARTIFACTS.mkdir(exist_ok=True)
            await page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
        finally:
            await browser.close()
    assert problems == []
    assert (ARTIFACTS / "dashboard.png").stat().st_size > 10_000
