"""The whole voice loop, measured from outside: end of speech to first assistant audio (issue 18).

Starts the whole system as ``just up`` does (``python -m ops.cli up`` in a subprocess: supervisord,
NATS, MongoDB, every worker and the edge, each its own process) in a temporary run directory on
free ports, so it never collides with another stack, then drives N WebSocket sessions that stream
a live microphone at real-time pace: 20 ms PCM16 frames on the asyncio clock, never pausing the
socket; an utterance, then silence (zeros) until the reply's audio has finished arriving (its
``audio.done``, or a timeout after which the client sends ``interrupt``) plus 1.5-3 s, then the
next utterance.

Utterances: short questions spoken by piper (en_US joe) and espeak-ng, half each, plus the test
sentences of tests/ (tests/support/speech.py, cached). The *true end of speech* of a turn is the
client time of the last sample above 0.01 full scale: the capture time of its frame (a frame's
capture time is when its first sample was taken; it is sent 20 ms later, when its last sample
has been taken, as a microphone would) plus the sample's offset in the frame.

Per turn, client clock (time.time() when the frame arrived on the socket), relative to the true
end of speech: ``vad.speech_stopped``, ``transcript.final``, ``turn.user`` (the committed turn:
the client sees no separate turn-end event; the transcriber publishes the final when it ends the
turn, then turn.user), first ``reply.delta``, first binary ``audio.out`` frame. The stats
worker's marks for the same turn (GET /ops/api/snapshot?session_id=...&recent=N: vad_stopped,
turn_final, first_delta, first_audio, the publish times) are set against the same true end; the
difference client - stats is the delivery from the bus to the socket and must stay within 20 ms
(printed, not enforced). The stats worker's own ``speech_ended`` (the VAD's estimate of the end
of speech) is compared to the true end too.

Rows: ``--llm scripted`` (tests/support/scripted_llm.py run in this process, zero latency; the
stack's SB_LLM_BASE_URL points at it; it echoes "You said: <question>", one short sentence: the
system's own overhead) and ``--llm embedded`` (the stack's own local model, SB_LLM_LOCAL_MODEL or
the default). Each with ``--sessions 1 4`` (one stack per LLM, every session count on it).

    .venv/bin/python -m bench.voice_loop                        # scripted x1, x4; embedded x1
    .venv/bin/python -m bench.voice_loop --llm scripted --sessions 1 --turns 6   # quick look
    .venv/bin/python -m bench.voice_loop --write-docs           # also append to docs/benchmarks.md
    .venv/bin/python -m bench.voice_loop --llm scripted --compare SB_SPECULATIVE_FINAL=false  # a setting's effect
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import random
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import websockets
from websockets.asyncio.client import ClientConnection

from contracts.binary import AudioOutFrame, ClientFrame, FrameType
from ops.servers import free_port

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs" / "benchmarks.md"
RATE = 16_000
FRAME_SAMPLES = 320  # 20 ms
FRAME_S = FRAME_SAMPLES / RATE
LOUD = 0.01 * 32768  # "above 0.01 full scale"
OPERATOR_TOKEN = "voice-loop-operator-" + "x" * 24
AGREE_MS = 20.0
GAP_S = (1.5, 3.0)
DOC_HEADING = "## Voice loop: end of speech to first audio (issue 18)"

PIPER_QUESTIONS = (
    "What is the capital of France?",
    "Tell me a joke about cats.",
    "How far away is the moon?",
    "What time is it in Tokyo?",
    "Can you recommend a good book?",
    "How do I boil an egg?",
    "What is the tallest mountain in the world?",
    "Why is the sky blue?",
    "Set a timer for ten minutes.",
    "How many legs does a spider have?",
    "What should I cook for dinner tonight?",
)
ESPEAK_QUESTIONS = (
    "What is two plus two?",
    "Who wrote Romeo and Juliet?",
    "What is the weather like today?",
    "Tell me something interesting.",
    "How do you say hello in Spanish?",
    "What is the largest ocean?",
    "Give me a fun fact about dogs.",
    "What day is it today?",
    "How long is a marathon?",
    "What is the speed of light?",
    "Name a famous painter.",
)
# The sentences the tests already speak (tests/integration, tests/unit), both voices.
TEST_SENTENCES = (
    ("What is the weather like in Paris today?", "piper"),
    ("Please turn off the lights in the kitchen.", "espeak"),
    ("Please book a table for two at eight tonight.", "piper"),
    ("Remind me to call my mother this evening.", "espeak"),
)

# (client event, stats mark) per stage, in the order they happen.
STAGES: tuple[tuple[str, str, str | None], ...] = (
    ("speech stopped", "vad.speech_stopped", "vad_stopped"),
    ("final", "transcript.final", "turn_final"),
    ("turn.user", "turn.user", None),
    ("first delta", "reply.delta", "first_delta"),
    ("first audio", "audio.out", "first_audio"),
)


# ---------------------------------------------------------------------------------- utterances


@dataclass(frozen=True)
class Utterance:
    text: str
    voice: str
    pcm: bytes  # lead silence, speech, tail silence
    end_sample: int  # index just after the last sample above 0.01 full scale


def utterances() -> list[Utterance]:
    from tests.support.speech import synthesize

    items = [(t, "piper") for t in PIPER_QUESTIONS] + [(t, "espeak") for t in ESPEAK_QUESTIONS] + list(TEST_SENTENCES)
    out: list[Utterance] = []
    for text, voice in items:
        pcm = synthesize(text, voice)  # type: ignore[arg-type]
        samples = np.abs(np.frombuffer(pcm, dtype="<i2").astype(np.int32))
        loud = np.flatnonzero(samples > LOUD)
        out.append(Utterance(text, voice, pcm, int(loud[-1]) + 1))
    # Interleave the voices so every run of turns has both.
    piper = [u for u in out if u.voice == "piper"]
    espeak = [u for u in out if u.voice == "espeak"]
    mixed: list[Utterance] = []
    for a, b in zip(piper, espeak, strict=False):
        mixed += [a, b]
    return mixed + piper[len(espeak) :] + espeak[len(piper) :]


# ---------------------------------------------------------------------------------- statistics


def percentile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


# ---------------------------------------------------------------------------------- one session


@dataclass
class TurnRecord:
    session: int
    utterance: Utterance
    true_end: float = 0.0  # epoch s
    turn_id: str | None = None
    client: dict[str, float] = field(default_factory=dict)  # event -> epoch s of arrival
    stats: dict[str, float] = field(default_factory=dict)  # stats mark -> epoch s
    turns_started: int = 0  # vad.speech_started seen for this utterance (>1: the turn was split)
    text: str = ""
    reply: str = ""
    timed_out: bool = False

    def after_end(self, event: str) -> float | None:
        at = self.client.get(event)
        return None if at is None else (at - self.true_end) * 1000

    def stats_after_end(self, mark: str) -> float | None:
        at = self.stats.get(mark)
        return None if at is None else (at - self.true_end) * 1000


class Session:
    """One browser: a socket, a microphone streaming at real-time pace, a reader."""

    def __init__(self, index: int, ws: ClientConnection, session_id: str) -> None:
        self.index = index
        self.ws = ws
        self.session_id = session_id
        self.events: list[tuple[float, dict[str, Any]]] = []
        self.first_audio: dict[str, float] = {}  # turn id -> arrival of its first audio frame
        self.changed = asyncio.Event()
        self._queue: bytearray = bytearray()
        self._queued_start: float | None = None  # capture time of the queue's first sample, once sent
        self._sent_samples = 0
        self._pending: list[tuple[int, asyncio.Future[float]]] = []  # absolute sample -> its capture time
        self._stop = False

    async def read(self) -> None:
        async for frame in self.ws:
            now = time.time()
            if isinstance(frame, bytes):
                audio = AudioOutFrame.unpack(frame)
                self.first_audio.setdefault(audio.turn_id, now)
            else:
                self.events.append((now, json.loads(frame)))
            self.changed.set()

    def say(self, pcm: bytes, sample: int) -> asyncio.Future[float]:
        """Queue ``pcm``; the future gets the capture time of its sample number ``sample``."""
        future: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        absolute = self._sent_samples + len(self._queue) // 2 + sample
        self._pending.append((absolute, future))
        self._queue += pcm
        return future

    def queued_s(self) -> float:
        return len(self._queue) / 2 / RATE

    async def microphone(self) -> None:
        """20 ms frames on an absolute schedule: queued speech, else silence; never a pause."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        seq = 0
        silence = bytes(FRAME_SAMPLES * 2)
        while not self._stop:
            due = start + (seq + 1) * FRAME_S  # a frame goes out once its last sample is captured
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            captured_at = time.time() - FRAME_S  # when its first sample was taken
            if self._queue:
                payload = bytes(self._queue[: FRAME_SAMPLES * 2]).ljust(FRAME_SAMPLES * 2, b"\0")
                del self._queue[: FRAME_SAMPLES * 2]
            else:
                payload = silence
            first = self._sent_samples
            for absolute, future in list(self._pending):
                if first <= absolute < first + FRAME_SAMPLES or absolute == first + FRAME_SAMPLES:
                    if not future.done():
                        future.set_result(captured_at + (absolute - first) / RATE)
                    self._pending.remove((absolute, future))
            self._sent_samples += FRAME_SAMPLES
            await self.ws.send(ClientFrame(FrameType.AUDIO_PCM16, seq, captured_at, payload).pack())
            seq += 1

    def stop(self) -> None:
        self._stop = True

    async def wait(self, timeout: float) -> None:
        self.changed.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.changed.wait(), timeout)


async def open_session(edge: str, index: int, voice: bool = True) -> Session:
    """A session through the edge; ``voice=False``: a text-only client (no audio either way)."""
    async with httpx.AsyncClient(base_url=edge) as http:
        grant = (await http.post("/v1/sessions")).raise_for_status().json()
    ws = await websockets.connect(edge.replace("http", "ws") + "/v1/ws", max_size=2**22)
    hello = {
        "type": "hello",
        "token": grant["token"],
        "client": "bench/voice_loop",
        "capabilities": ["text", "audio_in", "audio_out"] if voice else ["text"],
        "audio": {"sample_rate": RATE, "encoding": "pcm_s16le"},
    }
    await ws.send(json.dumps(hello))
    welcome = json.loads(await ws.recv())
    if welcome.get("kind") != "welcome":
        raise RuntimeError(f"no welcome: {welcome}")
    return Session(index, ws, welcome["session_id"])


async def one_turn(session: Session, utterance: Utterance, timeout: float, rng: random.Random) -> TurnRecord:
    """Speak ``utterance`` into the live microphone and follow its turn to the end of the reply's audio."""
    record = TurnRecord(session.index, utterance)
    mark = len(session.events)
    ended = session.say(utterance.pcm, utterance.end_sample)
    record.true_end = await ended
    deadline = time.monotonic() + timeout + session.queued_s()
    while True:
        finished = False
        for _, event in session.events[mark:]:
            kind, turn = event.get("kind"), event.get("turn_id")
            if kind == "turn.user" and event.get("source") == "spoken":
                record.turn_id = turn  # the last committed turn of this utterance is the one measured
                record.text = event.get("text", "")
            elif kind == "reply.done" and turn == record.turn_id:
                record.reply = event.get("text", "")
            elif kind == "audio.done" and turn is not None and turn == record.turn_id:
                finished = True
        if finished:
            break
        if time.monotonic() >= deadline:
            record.timed_out = True
            await session.ws.send(json.dumps({"type": "interrupt"}))
            break
        await session.wait(min(0.5, max(0.01, deadline - time.monotonic())))
    record.turns_started = sum(1 for _, e in session.events[mark:] if e.get("kind") == "vad.speech_started")
    for at, event in session.events[mark:]:
        if record.turn_id is not None and event.get("turn_id") == record.turn_id:
            record.client.setdefault(str(event.get("kind")), at)
    if record.turn_id in session.first_audio:
        record.client["audio.out"] = session.first_audio[record.turn_id]
    # The rest of the live-mic gap: silence streams on meanwhile.
    await asyncio.sleep(rng.uniform(*GAP_S))
    return record


async def drive(session: Session, plan: list[Utterance], timeout: float, seed: int) -> list[TurnRecord]:
    rng = random.Random(seed)
    mic = asyncio.create_task(session.microphone())
    reader = asyncio.create_task(session.read())
    records: list[TurnRecord] = []
    try:
        await asyncio.sleep(rng.uniform(0.5, 2.0))  # sessions do not start in lockstep
        for utterance in plan:
            turn = asyncio.create_task(one_turn(session, utterance, timeout, rng))
            # A microphone or reader that ended (the socket closed, a send failed) would leave the turn
            # waiting for a frame that is never sent: the session fails with the reason instead.
            await asyncio.wait({turn, mic, reader}, return_when=asyncio.FIRST_COMPLETED)
            if not turn.done():
                turn.cancel()
                ended = mic if mic.done() else reader
                raise RuntimeError(f"session {session.index}: the socket closed ({ended.exception() or 'closed'})")
            records.append(turn.result())
    finally:
        session.stop()
        await asyncio.wait([mic], timeout=1.0)  # never swallows a cancellation of this task (Ctrl-C)
        mic.cancel()
        await session.ws.close()
        reader.cancel()
        await asyncio.wait([mic, reader])
    return records


async def fetch_stats(edge: str, sessions: Sequence[Session], records: list[TurnRecord]) -> bool:
    """Fill each record's stats marks from the stats worker; False if it did not answer."""
    by_turn = {(r.session, r.turn_id): r for r in records if r.turn_id}
    answered = False
    async with httpx.AsyncClient(base_url=edge, headers={"Authorization": f"Bearer {OPERATOR_TOKEN}"}) as http:
        for session in sessions:
            for _ in range(10):  # the aggregator folds recorded events a moment after they were published
                reply = await http.get("/ops/api/snapshot", params={"session_id": session.session_id, "recent": 1000})
                if reply.status_code != 200:
                    await asyncio.sleep(1.0)
                    continue
                answered = True
                timelines = {t["turn_id"]: t["marks"] for t in reply.json().get("recent", [])}
                wanted = [r for (s, _), r in by_turn.items() if s == session.index]
                if all(r.turn_id in timelines and "first_audio" in timelines[r.turn_id] for r in wanted):
                    break
                await asyncio.sleep(1.0)
            for record in wanted:
                record.stats = dict(timelines.get(record.turn_id or "", {}))
    return answered


# ---------------------------------------------------------------------------------- the stack


class Stack:
    """``python -m ops.cli up`` in a subprocess, on its own run directory and free ports."""

    def __init__(self, llm: str, base_dir: Path, llm_url: str | None, settings: dict[str, str] | None = None) -> None:
        self.llm = llm
        self.run_dir = base_dir / f"run-{llm}-{len(list(base_dir.glob('run-*')))}"
        self.run_dir.mkdir(parents=True)
        self.edge_port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("SB_")}
        env.update(
            SB_RUN_DIR=str(self.run_dir),
            SB_NATS_URL=f"nats://127.0.0.1:{free_port()}",
            SB_NATS_MONITOR_PORT=str(free_port()),
            SB_MONGO_URL=f"mongodb://127.0.0.1:{free_port()}",
            SB_LLM_LOCAL_PORT=str(free_port()),
            SB_EDGE_HOST="127.0.0.1",
            SB_EDGE_PORT=str(self.edge_port),
            SB_EDGE_OPERATOR_TOKEN=OPERATOR_TOKEN,
            SB_LOG_LEVEL="warning",
            PYTHONUNBUFFERED="1",
        )
        if os.environ.get("SB_LLM_LOCAL_MODEL"):
            env["SB_LLM_LOCAL_MODEL"] = os.environ["SB_LLM_LOCAL_MODEL"]
        if llm_url:
            env.update(SB_LLM_BASE_URL=llm_url, SB_LLM_MODEL="scripted", SB_LLM_API_KEY="x")
        env.update(settings or {})
        self.env = env
        self.log = self.run_dir / "launcher.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def edge(self) -> str:
        return f"http://127.0.0.1:{self.edge_port}"

    def start(self) -> None:
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "ops.cli", "up"],
                cwd=ROOT,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGINT)  # the launcher stops every process of its stack
        try:
            self.process.wait(timeout=40)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return ""


async def wait_ready(stack: Stack, utterance: Utterance, timeout: float) -> float:
    """Until the edge answers and one spoken turn comes back with audio (a warm-up, not measured)."""
    started = time.monotonic()
    deadline = started + timeout
    async with httpx.AsyncClient() as http:
        while time.monotonic() < deadline:
            if not stack.alive():
                raise RuntimeError(f"the stack stopped:\n{stack.tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if (await http.get(stack.edge + "/healthz", timeout=2)).status_code == 200:
                    break
            await asyncio.sleep(1.0)
    while time.monotonic() < deadline:
        session = await open_session(stack.edge, -1)
        records = await drive(session, [utterance], min(60.0, deadline - time.monotonic()), seed=0)
        if records and "audio.out" in records[0].client:
            return time.monotonic() - started
        progress(f"warm-up turn not answered yet ({records[0].client if records else {}}); again")
    raise RuntimeError(f"the stack did not answer a spoken turn within {timeout:.0f} s:\n{stack.tail()}")


# ---------------------------------------------------------------------------------- rows


@dataclass
class Row:
    llm: str
    sessions: int
    records: list[TurnRecord]
    stats_answered: bool
    wall_s: float
    load: tuple[float, float]
    variant: str = ""  # the settings this row's stack ran with beside the defaults ("": the defaults)

    @property
    def measured(self) -> list[TurnRecord]:
        return [r for r in self.records if r.turn_id and not r.timed_out]

    def stage(self, event: str) -> list[float]:
        return [v for r in self.measured if (v := r.after_end(event)) is not None]

    def stats_stage(self, mark: str) -> list[float]:
        return [v for r in self.measured if (v := r.stats_after_end(mark)) is not None]

    def diffs(self, event: str, mark: str) -> list[float]:
        out = []
        for r in self.measured:
            a, b = r.client.get(event), r.stats.get(mark)
            if a is not None and b is not None:
                out.append((a - b) * 1000)
        return out

    def markdown(self) -> str:
        n = len(self.measured)
        head = (
            f"**{self.llm} LLM, {self.sessions} session{'s' if self.sessions > 1 else ''}"
            f"{', ' + self.variant if self.variant else ''}**: "
            f"{n} turns measured of {len(self.records)} spoken "
            f"({sum(r.timed_out for r in self.records)} timed out, "
            f"{sum(r.turn_id is None for r in self.records)} without a turn, "
            f"{sum(r.turns_started > 1 for r in self.records)} split in two or more); "
            f"{self.wall_s:.0f} s; load average {self.load[0]:.2f} -> {self.load[1]:.2f}"
        )
        lines = [
            head,
            "",
            "| after the true end of speech | client p50 | client p95 | stats p50 | stats p95 "
            "| client - stats p50 | max abs diff | within 20 ms |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for label, event, mark in STAGES:
            client = self.stage(event)
            cells = [f"{label} (`{event}`)", fmt(percentile(client, 50)), fmt(percentile(client, 95))]
            if mark is None:
                cells += ["-", "-", "-", "-", "-"]
            else:
                stats = self.stats_stage(mark)
                diffs = self.diffs(event, mark)
                worst = max((abs(d) for d in diffs), default=None)
                within = sum(abs(d) <= AGREE_MS for d in diffs)
                cells += [
                    fmt(percentile(stats, 50)),
                    fmt(percentile(stats, 95)),
                    fmt(percentile(diffs, 50)),
                    fmt(worst),
                    f"{within}/{len(diffs)}" if diffs else "-",
                ]
            lines.append("| " + " | ".join(cells) + " |")
        estimate = self.stats_stage("speech_ended")
        lines += [
            "",
            f"Stats worker's `speech_ended` (the VAD's estimate) - true end of speech: p50 "
            f"{fmt(percentile(estimate, 50))} ms, p95 {fmt(percentile(estimate, 95))} ms"
            + ("" if self.stats_answered else " (the stats worker did not answer)"),
        ]
        by_voice = []
        for voice in ("piper", "espeak"):
            values = [v for r in self.measured if r.utterance.voice == voice and (v := r.after_end("audio.out"))]
            by_voice.append(f"{voice} {fmt(percentile(values, 50))} ms ({len(values)})")
        from tests.support.speech import word_error_rate

        wer = [word_error_rate(r.utterance.text, r.text) for r in self.measured]
        lines.append(
            f"First audio p50 by voice: {', '.join(by_voice)}. Final transcript WER (mean): {sum(wer) / len(wer):.2f}"
            if wer
            else "No turn measured."
        )
        return "\n".join(lines)


async def run_row(
    stack: Stack, llm: str, sessions: int, plan: list[Utterance], turns: int, timeout: float, variant: str
) -> Row:
    load_start = os.getloadavg()[0]
    started = time.monotonic()
    opened = [await open_session(stack.edge, i) for i in range(sessions)]
    per_session = [[plan[(i * 5 + k) % len(plan)] for k in range(turns)] for i in range(sessions)]
    results = await asyncio.gather(
        *(drive(s, p, timeout, seed=1000 + s.index) for s, p in zip(opened, per_session, strict=True))
    )
    records = [r for rs in results for r in rs]
    answered = await fetch_stats(stack.edge, opened, records)
    return Row(llm, sessions, records, answered, time.monotonic() - started, (load_start, os.getloadavg()[0]), variant)


@contextlib.asynccontextmanager
async def llm_server(llm: str) -> AsyncIterator[str | None]:
    if llm != "scripted":
        yield None
        return
    from tests.support.scripted_llm import ScriptedLLM

    async with ScriptedLLM() as server:
        yield server.base_url


async def run(options: argparse.Namespace, base_dir: Path) -> list[Row]:
    progress("synthesising the utterances (cached after the first run)")
    plan = utterances()
    rows: list[Row] = []
    variants: list[tuple[str, dict[str, str]]] = [("", {})]
    if options.compare:
        variants.append((" ".join(options.compare), dict(setting.split("=", 1) for setting in options.compare)))
    for llm, (variant, settings) in ((llm, v) for llm in options.llm for v in variants):
        async with llm_server(llm) as llm_url:
            stack = Stack(llm, base_dir, llm_url, settings)
            progress(f"{llm} {variant}: starting the stack (python -m ops.cli up, run dir {stack.run_dir})")
            stack.start()
            try:
                ready = await wait_ready(stack, plan[0], options.start_timeout)
                progress(f"{llm}: stack ready, a spoken turn answered after {ready:.0f} s")
                for sessions in options.sessions:
                    turns = options.embedded_turns if llm == "embedded" and options.embedded_turns else options.turns
                    progress(f"{llm}: {sessions} session(s) x {turns} turns")
                    timeout = options.turn_timeout * (3 if llm == "embedded" else 1)
                    row = await run_row(stack, llm, sessions, plan, turns, timeout, variant)
                    rows.append(row)
                    print("\n" + row.markdown() + "\n", flush=True)
            except BaseException:
                print(f"--- last lines of the launcher ---\n{stack.tail()}", file=sys.stderr)
                raise
            finally:
                progress(f"{llm}: stopping the stack")
                await asyncio.to_thread(stack.stop)
    return rows


# ---------------------------------------------------------------------------------- report


def machine() -> str:
    model = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{model}, {os.cpu_count()} cores, Linux {platform.release()}, Python {platform.python_version()}"


def progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def report(rows: list[Row], command: str, load: tuple[float, float], wall_s: float) -> str:
    parts = [
        f"    {command}",
        "",
        f"{machine()}, {time.strftime('%Y-%m-%d')}; load average {load[0]:.2f} at the start, "
        f"{load[1]:.2f} at the end; whole run {wall_s / 60:.1f} min. The whole stack as `just up` starts it "
        "(each worker its own process), a live microphone per session (20 ms frames at real-time pace, "
        "silence between utterances, never paused); utterances: short questions by piper and espeak-ng "
        "plus the test sentences. Times in ms after the true end of speech (last sample above 0.01 full "
        "scale). Client: arrival on the socket; stats: the stats worker's mark for the turn (publish "
        "time); client - stats is the delivery from the bus to the client.",
    ]
    for row in rows:
        parts += ["", row.markdown()]
    return "\n".join(parts) + "\n"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--llm", nargs="+", choices=["scripted", "embedded"], default=["scripted", "embedded"])
    parser.add_argument(
        "--sessions", nargs="+", type=int, default=None, help="session counts (default: 1 4 scripted, 1 embedded)"
    )
    parser.add_argument("--turns", type=int, default=20, help="utterances per session (default 20)")
    parser.add_argument("--embedded-turns", type=int, default=0, help="utterances per session with the embedded LLM")
    parser.add_argument("--turn-timeout", type=float, default=20.0, help="s from speech to audio.done (x3 embedded)")
    parser.add_argument("--start-timeout", type=float, default=600.0, help="s for the stack to answer a first turn")
    parser.add_argument("--write-docs", action="store_true", help="append the figures to docs/benchmarks.md")
    parser.add_argument(
        "--compare",
        nargs="+",
        default=[],
        metavar="SB_KEY=VALUE",
        help="also run every row on a stack with these settings (the defaults' rows are the baseline)",
    )
    args = parser.parse_args(argv)
    if any("=" not in s or not s.startswith("SB_") for s in args.compare):
        parser.error("--compare takes SB_KEY=VALUE settings")
    args.sessions_given = args.sessions is not None
    if args.sessions is None:
        args.sessions = [1, 4]
    if min(args.sessions) < 1 or args.turns < 1:
        parser.error("--sessions and --turns must be positive")
    return args


def command_line() -> str:
    return shlex.join([".venv/bin/python", "-m", "bench.voice_loop", *sys.argv[1:]])


def main(argv: Sequence[str] | None = None) -> None:
    options = parse_args(argv)
    load_start = os.getloadavg()[0]
    started = time.monotonic()
    rows: list[Row] = []

    async def go(base: Path) -> None:
        nonlocal rows
        if not options.sessions_given and "embedded" in options.llm and "scripted" in options.llm:
            # the default run: scripted 1 and 4 sessions, embedded 1 session
            scripted = argparse.Namespace(**{**vars(options), "llm": ["scripted"]})
            embedded = argparse.Namespace(**{**vars(options), "llm": ["embedded"], "sessions": [1]})
            rows = await run(scripted, base) + await run(embedded, base)
        else:
            rows = await run(options, base)

    try:
        with tempfile.TemporaryDirectory(prefix="voice-loop-") as tmp:
            asyncio.run(go(Path(tmp)))
    except KeyboardInterrupt:
        progress("interrupted: the stacks the benchmark started were stopped")
        raise SystemExit(130) from None
    text = report(rows, command_line(), (load_start, os.getloadavg()[0]), time.monotonic() - started)
    print("\n----- markdown -----\n" + text)
    if options.write_docs:
        existing = DOCS.read_text()
        with DOCS.open("a") as out:
            if DOC_HEADING not in existing:
                out.write(("\n" if existing.endswith("\n") else "\n\n") + DOC_HEADING + "\n\n")
            else:
                out.write("\n")
            out.write(text)
        progress(f"appended to {DOCS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
