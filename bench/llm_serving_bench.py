"""Local LLM serving: foreground turns beside background summaries, and llama-cpp-python vs llama-server.

``priority`` (default): one local server (ops/llama_cpp_serve.py, the launcher of ``just up``) and
three phases in the same run, each of ``--turns`` streamed turns spaced 1-2.5 s apart (seeded):
``alone`` (the baseline: no background work), ``summaries, unmarked`` (a summary loop beside the
turns, its requests without the priority header: what the memory worker sent before) and
``summaries, background`` (the same loop marked ``X-SB-Priority: background``). The summary loop
sends memory-worker-shaped requests (its instruction, ~20 turns of a conversation, 200 tokens at
most) back to back, 0.5 s after a pre-empted one. Prints first-delta p50 / p95 / max per phase and
how many summaries completed or were pre-empted.

``compare``: llama-cpp-python's server (our launcher) and llama.cpp's ``llama-server``
(ops/llama_server.py; ``-t 2 --parallel 2 --cache-reuse 256 --jinja``), one after the other, same
model: first delta of a fresh conversation (system prompt + two tool descriptions in the system
prompt + a question) and of a follow-up turn of it (prefix cache), prompt tokens each one processed
(llama-server: ``timings.prompt_n``; llama-cpp-python: its log's "remaining N prompt tokens"), and
two turns of two conversations sent at the same moment (first delta of each, and wall time).

``layout``: a six-turn conversation with the knowledge agent (five passages found for every question,
different each turn) through ``build_prompt`` on our launcher, laid out as now (passages after the
history) and as before (passages in the first system message): prompt tokens the server evaluated
per turn (its log) and first delta.

    .venv/bin/python bench/llm_serving_bench.py priority [--model smollm2] [--turns 20]
    .venv/bin/python bench/llm_serving_bench.py compare [--model 1.5b] [--rounds 3] [--parallel 2]
    .venv/bin/python bench/llm_serving_bench.py layout [--model 1.5b]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import statistics
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from ops import llama_server, models
from ops.llm_server import llm_command, start_llm
from ops.servers import RunningServer, free_port
from workers.memory.summarizer import INSTRUCTION
from workers.runtime.llm_priority import BACKGROUND_HEADERS

SYSTEM = (
    "You are Switchboard, a helpful voice assistant. Answer in one or two short sentences, in the "
    "language of the question. Never invent facts; say when you do not know."
)
TOOLS = (
    'You can use these tools by answering with a JSON object {"tool": name, "arguments": {...}}:\n'
    "- calculate(expression: string): evaluates arithmetic exactly, e.g. 12 * 7\n"
    "- get_time(timezone: string): the current date and time in an IANA time zone, e.g. Europe/Paris"
)
QUESTIONS = [
    "What is the capital of France?",
    "Name a planet of the solar system.",
    "How many days are in a week?",
    "What colour is the sky on a clear day?",
    "Say good morning in German.",
    "What is 12 times 7?",
]
CONVERSATION = "\n".join(
    f"user: {q}\nassistant: I think the answer is simple, and I will explain it in a few words." for q in QUESTIONS * 3
)


@dataclass
class Turn:
    first_delta: float
    prompt_tokens: int | None = None  # processed (not taken from the cache), when the server says
    text: str = ""


async def stream_turn(client: httpx.AsyncClient, model: str, messages: list[dict[str, str]], max_tokens: int) -> Turn:
    body = {"model": model, "messages": messages, "stream": True, "max_tokens": max_tokens, "temperature": 0}
    started, first, text, processed = time.monotonic(), 0.0, "", None
    async with client.stream("POST", "/chat/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            for choice in event.get("choices") or []:
                piece = (choice.get("delta") or {}).get("content") or ""
                if piece and not first:
                    first = time.monotonic() - started
                text += piece
            if isinstance(timings := event.get("timings"), dict):
                processed = timings.get("prompt_n", processed)
    return Turn(first or time.monotonic() - started, processed, text)


NAN = float("nan")  # a figure the server did not give


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def ms(value: float) -> str:
    return f"{value * 1000:7.0f}"


# ---------------------------------------------------------------- priority


@dataclass
class Background:
    marked: bool
    done: int = 0
    preempted: int = 0
    failed: int = 0
    durations: list[float] = field(default_factory=list)


async def summaries(client: httpx.AsyncClient, model: str, state: Background) -> None:
    headers = BACKGROUND_HEADERS if state.marked else {}
    body = {
        "model": model,
        "max_tokens": 200,
        "messages": [
            {"role": "system", "content": INSTRUCTION},
            {"role": "user", "content": f"Summary so far: (none)\n\nNew turns:\n{CONVERSATION}"},
        ],
    }
    while True:
        started = time.monotonic()
        response = await client.post("/chat/completions", json=body, headers=headers)
        if response.status_code == 503 and "preempted" in response.text:
            state.preempted += 1
            await asyncio.sleep(0.5)
        elif response.status_code == 200:
            state.done += 1
            state.durations.append(time.monotonic() - started)
        else:
            state.failed += 1
            await asyncio.sleep(0.5)


async def turns(client: httpx.AsyncClient, model: str, count: int, seed: int) -> list[float]:
    rng = random.Random(seed)
    firsts = []
    for i in range(count):
        await asyncio.sleep(rng.uniform(1.0, 2.5))
        question = QUESTIONS[i % len(QUESTIONS)]
        messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]
        firsts.append((await stream_turn(client, model, messages, 24)).first_delta)
    return firsts


async def priority(options: argparse.Namespace) -> None:
    local = models.resolve(options.model)
    print(f"model {local.alias}, {options.turns} turns a phase, load average {os.getloadavg()[0]:.2f}")
    server = start_llm(name=local.alias)
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=600) as client:
            await stream_turn(client, local.alias, [{"role": "user", "content": "Hi"}], 4)  # warm up
            print(f"{'phase':26} {'p50 ms':>7} {'p95 ms':>7} {'max ms':>7}  summaries")
            for name, marked in (("alone", None), ("summaries, unmarked", False), ("summaries, background", True)):
                state = Background(bool(marked))
                loop = asyncio.create_task(summaries(client, local.alias, state)) if marked is not None else None
                firsts = await turns(client, local.alias, options.turns, options.seed)
                if loop:
                    loop.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await loop
                    # An unmarked summary the server is still making (it does not stop for a client that
                    # went away) would delay the next phase's first turn: wait until it is done.
                    await stream_turn(client, local.alias, [{"role": "user", "content": "Hi"}], 1)
                note = (
                    f"{state.done} done (median {statistics.median(state.durations):.1f} s), "
                    f"{state.preempted} pre-empted, {state.failed} failed"
                    if marked is not None and state.durations
                    else f"{state.done} done, {state.preempted} pre-empted, {state.failed} failed"
                    if marked is not None
                    else "-"
                )
                p50, p95 = statistics.median(firsts), percentile(firsts, 0.95)
                print(f"{name:26} {ms(p50)} {ms(p95)} {ms(max(firsts))}  {note}")
    finally:
        server.stop()
    print(f"load average at the end {os.getloadavg()[0]:.2f}")


# ---------------------------------------------------------------- compare


@contextlib.contextmanager
def serving(kind: str, alias: str, log: Path, parallel: int = 2) -> Iterator[RunningServer]:
    if kind == "llama-server":
        server = llama_server.start(alias, log_file=log, parallel=parallel)
    else:  # our launcher, verbose so that its log says how many prompt tokens each request evaluated
        port = free_port()
        command = llm_command(port, name=alias)
        command[command.index("--verbose") + 1] = "True"
        with open(log, "ab") as out:
            process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
        server = RunningServer(f"http://127.0.0.1:{port}/v1", port, process)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{server.url}/models", timeout=1).status_code == 200:
                    break
            time.sleep(0.2)
    try:
        yield server
    finally:
        server.stop()


def log_size(log: Path, remove: bool = False) -> int:
    size = log.stat().st_size
    if remove:
        log.unlink()
    return size


_REMAINING = re.compile(r"remaining (\d+) prompt tokens to eval")


def evaluated_since(log: Path, offset: int) -> tuple[int | None, int]:
    """llama-cpp-python's log: prompt tokens the last request evaluated (None: the whole prompt, as
    it logs nothing when no prefix matched), and the new offset."""
    text = log.read_bytes()[offset:].decode(errors="replace")
    found = _REMAINING.findall(text)
    return (int(found[-1]) if found else None), offset + len(text.encode())


@contextlib.asynccontextmanager
async def client_for(server: RunningServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.url, timeout=600) as client:
        yield client


async def compare(options: argparse.Namespace) -> None:
    local = models.resolve(options.model)
    print(
        f"model {local.alias}, {options.rounds} rounds, llama-server --parallel {options.parallel}, "
        f"load average {os.getloadavg()[0]:.2f}"
    )
    rows: dict[str, dict[str, list[float]]] = {}
    for kind in ("llama-cpp-python", "llama-server"):
        log = Path(tempfile.mkstemp(prefix=f"sb-{kind}-", suffix=".log")[1])
        figures: dict[str, list[float]] = rows.setdefault(kind, {})
        with serving(kind, local.alias, log, options.parallel) as server:
            async with client_for(server) as client:
                await stream_turn(client, local.alias, [{"role": "user", "content": "Hi"}], 4)  # warm up
                offset = log_size(log)
                for r in range(options.rounds):
                    system = f"{SYSTEM}\n\n{TOOLS}\n\nConversation {r} {time.time()}"  # a fresh prefix each round
                    history = [{"role": "system", "content": system}, {"role": "user", "content": QUESTIONS[r]}]
                    fresh = await stream_turn(client, local.alias, history, 24)
                    tokens, offset = evaluated_since(log, offset)
                    figures.setdefault("fresh first delta", []).append(fresh.first_delta)
                    figures.setdefault("fresh prompt tokens", []).append(fresh.prompt_tokens or tokens or NAN)
                    history += [
                        {"role": "assistant", "content": fresh.text},
                        {"role": "user", "content": QUESTIONS[r + 1]},
                    ]
                    follow = await stream_turn(client, local.alias, history, 24)
                    tokens, offset = evaluated_since(log, offset)
                    figures.setdefault("follow-up first delta", []).append(follow.first_delta)
                    figures.setdefault("follow-up prompt tokens", []).append(
                        follow.prompt_tokens or tokens or float("nan")
                    )
                    started = time.monotonic()
                    pair = await asyncio.gather(
                        *(
                            stream_turn(
                                client,
                                local.alias,
                                [
                                    {"role": "system", "content": f"{SYSTEM} Session {r}-{i}."},
                                    {"role": "user", "content": q},
                                ],
                                24,
                            )
                            for i, q in enumerate(QUESTIONS[2:4])
                        )
                    )
                    figures.setdefault("2 at once: first deltas", []).extend(t.first_delta for t in pair)
                    figures.setdefault("2 at once: both done", []).append(time.monotonic() - started)
                    offset = log_size(log)
        log_size(log, remove=True)
    print(f"{'median of ' + str(options.rounds):28} {'llama-cpp-python':>17} {'llama-server':>13}")
    for key in rows["llama-cpp-python"]:
        a, b = (statistics.median(rows[k][key]) for k in ("llama-cpp-python", "llama-server"))
        if "tokens" in key:
            print(f"{key:28} {a:17.0f} {b:13.0f}")
        else:
            print(f"{key + ' (ms)':28} {a * 1000:17.0f} {b * 1000:13.0f}")
    spread = {k: [f"{v * 1000:.0f}" for v in rows[k]["2 at once: first deltas"]] for k in rows}
    print(f"2 at once, every first delta (ms): {spread}")
    print(f"load average at the end {os.getloadavg()[0]:.2f}")


async def layout(options: argparse.Namespace) -> None:
    from contracts import events as ev
    from workers.orchestrator.agents import DEFAULT_AGENTS
    from workers.orchestrator.prompt import build_prompt

    local = models.resolve(options.model)
    agent = next(a for a in DEFAULT_AGENTS if a.name == "knowledge")
    print(f"model {local.alias}, knowledge agent, 5 passages a turn, load average {os.getloadavg()[0]:.2f}")

    def passages(turn: int) -> list[ev.Passage]:
        return [
            ev.Passage(
                text=f"Section {turn}.{k}: the handbook says that rule {turn * 10 + k} applies to leave and travel.",
                score=0.9 - k / 10,
                citation=ev.Citation(document_id=f"d{k}", source="handbook.md", section=f"{turn}.{k}"),
            )
            for k in range(5)
        ]

    def as_before(messages: list[dict[str, str]]) -> list[dict[str, str]]:
        """The layout before: what changes every turn inside the first system message."""
        volatile = [m for m in messages[1:-1] if m["role"] == "system"]
        first = {"role": "system", "content": "\n\n".join([messages[0]["content"], *(m["content"] for m in volatile)])}
        return [first, *(m for m in messages[1:] if m["role"] != "system")]

    results: dict[str, list[tuple[int | None, float]]] = {}
    log = Path(tempfile.mkstemp(prefix="sb-layout-", suffix=".log")[1])
    with serving("llama-cpp-python", local.alias, log) as server:
        async with client_for(server) as client:
            for name in ("before", "now"):
                history: list[tuple[str, str]] = []
                offset = log_size(log)
                for turn in range(6):
                    question = f"{QUESTIONS[turn]} (question {turn})"
                    messages = build_prompt(agent, None, question, history, None, passages(turn)).messages
                    sent = as_before(messages) if name == "before" else messages
                    reply = await stream_turn(client, local.alias, sent, 24)
                    tokens, offset = evaluated_since(log, offset)
                    results.setdefault(name, []).append((tokens, reply.first_delta))
                    history += [("user", question), ("assistant", reply.text)]
    log_size(log, remove=True)
    print(f"{'turn':>4} {'before: tokens':>15} {'first delta ms':>15} {'now: tokens':>12} {'first delta ms':>15}")
    for turn, ((bt, bf), (nt, nf)) in enumerate(zip(results["before"], results["now"], strict=True)):
        print(f"{turn + 1:>4} {bt or 'all':>15} {bf * 1000:>15.0f} {nt or 'all':>12} {nf * 1000:>15.0f}")
    print(f"load average at the end {os.getloadavg()[0]:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("scenario", nargs="?", choices=("priority", "compare", "layout"), default="priority")
    parser.add_argument("--model", default=None, help="1.5b, 0.5b or smollm2 (priority: smollm2; compare: 1.5b)")
    parser.add_argument("--turns", type=int, default=20, help="priority: turns a phase")
    parser.add_argument("--rounds", type=int, default=3, help="compare: conversations a server")
    parser.add_argument("--parallel", type=int, default=2, help="compare: llama-server's slots")
    parser.add_argument("--seed", type=int, default=17)
    options = parser.parse_args()
    options.model = options.model or ("smollm2" if options.scenario == "priority" else models.DEFAULT)
    scenarios = {"priority": priority, "compare": compare, "layout": layout}
    asyncio.run(scenarios[options.scenario](options))


if __name__ == "__main__":
    main()
