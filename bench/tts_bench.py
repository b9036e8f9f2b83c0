"""Voice out per provider: first reply delta to first audio frame at the socket, real-time factor,
and how many sessions are voiced concurrently in real time, beside the provider alone.

Starts its own nats-server, the voice worker as its own process (``python -m workers.voice``),
the edge and the scripted OpenAI-compatible server (for the openai provider) in this process.
Reply deltas are published straight onto the bus (one word every ``--word-ms``, an LLM's pace),
so the figures are the voice path alone: bus -> voice worker -> synthesis -> bus -> edge -> socket.

  first audio      time from publishing a turn's first delta to its first 0x81 frame at the
                   socket (each turn is interrupted after its first frame), p50 / p95
  provider alone   the same provider called in this process: time to the first audio of the
                   same first unit, and the real-time factor (compute / audio) of the whole reply
  sessions         N sessions get the reply at once; a session is in real time when no frame
                   arrives later than its playback needs it (playback starting at the first
                   frame, 150 ms of jitter buffer); the level is met when every session is

    .venv/bin/python bench/tts_bench.py [--providers piper,espeak,openai] [--turns 10] [--levels 1,2,4,8]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nats

from contracts import events as ev
from contracts.binary import AudioOutFrame
from contracts.envelope import new_id
from ops.health import discover
from ops.servers import start_nats
from ops.stack import NATS_CONF
from tests.support.edge_client import Client, connect, running_edge
from tests.support.scripted_llm import ScriptedLLM
from workers.runtime.bus import Bus
from workers.voice.providers import available
from workers.voice.providers.base import TTSProvider
from workers.voice.text import Chunker, speakable

ROOT = Path(__file__).resolve().parent.parent
REPLY = (
    "Sure, here is what I found for you. The meeting moved to ten o'clock in the blue room on the second "
    "floor. Bring your notes and the budget figures, and we will finish before lunch."
)
JITTER_BUFFER_S = 0.15
TARGET_FIRST_AUDIO_MS = 400.0  # the embedded default (piper), first delta to first audio


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


@contextlib.contextmanager
def voice_process(nats_url: str, llm_url: str) -> Iterator[subprocess.Popen[bytes]]:
    env = {
        **os.environ,
        "SB_NATS_URL": nats_url,
        "SB_TTS_OPENAI_BASE_URL": llm_url,
        "SB_TTS_OPENAI_API_KEY": "bench",
        "SB_LOG_LEVEL": "warning",
        "PYTHONPATH": str(ROOT),
    }
    process = subprocess.Popen([sys.executable, "-m", "workers.voice"], cwd=ROOT, env=env)
    try:
        yield process
    finally:
        process.terminate()
        process.wait(15)


async def wait_ready(nats_url: str) -> None:
    nc = await nats.connect(nats_url)
    try:
        async with asyncio.timeout(60):
            while not [s for s in await discover(nc, wait_s=0.3) if s.name == "voice"]:
                continue
    finally:
        await nc.close()


async def session(url: str, provider: str) -> Client:
    client = await connect(url, capabilities=["text", "audio_out"])
    await client.send(type="settings", tts_provider=provider)
    await client.until(lambda e: e["kind"] == "session.settings")
    return client


async def turn(bus: Bus, client: Client, word_s: float, interrupt: bool) -> list[tuple[float, AudioOutFrame]]:
    """Stream the reply as deltas; the turn's frames with their arrival times (relative to the first delta)."""
    turn_id, words = new_id(), [w + " " for w in REPLY.split()]
    arrivals: list[tuple[float, AudioOutFrame]] = []
    started = time.perf_counter()

    async def read() -> None:
        while True:
            frame = await client.next_frame(timeout=60)
            if isinstance(frame, AudioOutFrame):
                if frame.turn_id == turn_id:
                    arrivals.append((time.perf_counter() - started, frame))
                    if interrupt and len(arrivals) == 1:
                        await client.send(type="interrupt")
            elif frame["kind"] == "audio.done" and frame["turn_id"] == turn_id:
                return

    reader = asyncio.create_task(read())
    for seq, word in enumerate(words):
        await bus.publish(
            ev.ReplyDelta(
                session_id=client.session_id, turn_id=turn_id, producer="bench", seq=seq, text=word, agent="bench"
            )
        )
        if reader.done():
            break
        await asyncio.sleep(word_s)
    await bus.publish(
        ev.ReplyDone(
            session_id=client.session_id,
            turn_id=turn_id,
            producer="bench",
            text="".join(words),
            agent="bench",
            finish_reason="stop",
        )
    )
    await reader
    return arrivals


def real_time(arrivals: list[tuple[float, AudioOutFrame]]) -> bool:
    """True when playback starting at the first frame (plus the jitter buffer) never waits for a frame."""
    if not arrivals:
        return False
    clock = arrivals[0][0] + JITTER_BUFFER_S
    for at, frame in arrivals:
        if at > clock:
            return False
        clock += len(frame.pcm) / 2 / frame.sample_rate
    return True


async def alone(provider: TTSProvider, turns: int) -> tuple[list[float], float]:
    """The provider in this process: first-unit latencies (ms) and the reply's real-time factor."""
    chunker = Chunker()
    units = [speakable(u) for u in chunker.feed(REPLY + " ") + chunker.flush()]
    firsts: list[float] = []
    for _ in range(turns):
        started = time.perf_counter()
        async for _audio in provider.synthesize(units[0], provider.default_voice):
            firsts.append((time.perf_counter() - started) * 1000)
            break
    started, seconds = time.perf_counter(), 0.0
    for unit in units:
        async for audio in provider.synthesize(unit, provider.default_voice):
            seconds += len(audio.pcm) / 2 / audio.sample_rate
    return firsts, (time.perf_counter() - started) / seconds


@contextlib.asynccontextmanager
async def stack() -> AsyncIterator[tuple[str, Bus, ScriptedLLM]]:
    server = start_nats(Path(tempfile.mkdtemp(prefix="tts-bench-")) / "store", config=NATS_CONF)
    try:
        async with ScriptedLLM() as llm, running_edge(server.url) as url:
            with voice_process(server.url, llm.base_url):
                await wait_ready(server.url)
                bus = Bus(producer="bench")
                bus.attach(await nats.connect(server.url))
                yield url, bus, llm
                await bus.nc.drain()
    finally:
        server.stop()


async def main(args: argparse.Namespace) -> None:
    print(f"load: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f} on {os.cpu_count()} cores")
    word_s = args.word_ms / 1000
    async with stack() as (url, bus, llm):
        pool = ThreadPoolExecutor(2)
        local = available(pool, None, llm.base_url, "bench", "gpt-4o-mini-tts", 10.0)
        rows = []
        for name in args.providers.split(","):
            client = await session(url, name)
            await turn(bus, client, word_s, interrupt=True)  # warm-up
            firsts = [(await turn(bus, client, word_s, interrupt=True))[0][0] * 1000 for _ in range(args.turns)]
            await client.close()
            await local[name].start()
            alone_firsts, rtf = await alone(local[name], args.turns)
            capacity = 0
            for level in (int(n) for n in args.levels.split(",")):
                clients = await asyncio.gather(*(session(url, name) for _ in range(level)))
                results = await asyncio.gather(*(turn(bus, c, word_s, interrupt=False) for c in clients))
                for c in clients:
                    await c.close()
                ok = sum(real_time(r) for r in results)
                print(f"  {name}: {level} sessions -> {ok} in real time", flush=True)
                if ok < level:
                    break
                capacity = level
            rows.append(
                (
                    name,
                    pct(firsts, 0.5),
                    pct(firsts, 0.95),
                    pct(alone_firsts, 0.5),
                    pct(alone_firsts, 0.95),
                    rtf,
                    capacity,
                )
            )
        pool.shutdown()
    print(
        f"\nreply: {len(REPLY)} characters streamed one word per {args.word_ms:g} ms; {args.turns} turns each; "
        f"target for piper: first audio within {TARGET_FIRST_AUDIO_MS:g} ms of the first delta"
    )
    print(
        "| provider | first delta to first audio at the socket p50 / p95 | provider alone, first unit p50 / p95 "
        "| real-time factor alone | sessions voiced in real time |"
    )
    print("|---|---:|---:|---:|---:|")
    for name, p50, p95, a50, a95, rtf, capacity in rows:
        print(f"| {name} | {p50:.0f} / {p95:.0f} ms | {a50:.0f} / {a95:.0f} ms | {rtf:.3f} | {capacity} |")
    print(f"load after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--providers", default="piper,espeak,openai")
    parser.add_argument("--turns", type=int, default=10)
    parser.add_argument("--levels", default="1,2,4,8")
    parser.add_argument("--word-ms", type=float, default=20.0, help="Pace of the deltas (LLM speed)")
    asyncio.run(main(parser.parse_args()))
