"""How useful the assistant is: the evaluation set (tests/data/eval/conversations.json) through a running edge.

Each conversation is a new session: its documents are uploaded to the session's own knowledge base
first, then its turns are typed one after the other, as a user would. A turn with ``expect`` passes
when its final reply matches one of the patterns (case-insensitive; ``{year}``, ``{month}`` and
``{weekday}`` are today's, UTC), names the expected source among its citations (``cites``) and was
answered by the expected agent (``agent``). Prints each failure, the score per category, and
first-delta percentiles of the typed turns (client clock).

    just up                                  # the embedded default, in another terminal
    .venv/bin/python -m bench.eval_assistant [--edge http://127.0.0.1:8080] [--only kb-]
    .venv/bin/python -m bench.eval_assistant --warm      # first delta of a 10-turn conversation
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import re
import statistics
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.support.edge_client import Client, connect

ROOT = Path(__file__).resolve().parent.parent
CONVERSATIONS = ROOT / "tests" / "data" / "eval" / "conversations.json"
CORPUS = ROOT / "tests" / "data" / "corpus"
TURN_TIMEOUT_S = 120.0


@dataclass
class Outcome:
    conversation: str
    category: str
    passed: bool
    why: str = ""
    first_delta_ms: list[float] = field(default_factory=list)


def today_patterns(pattern: str, now: dt.datetime) -> str:
    return (
        pattern.replace("{year}", str(now.year))
        .replace("{month}", now.strftime("%B").lower())
        .replace("{weekday}", now.strftime("%A").lower())
    )


def judge(turn: dict[str, Any], done: dict[str, Any], now: dt.datetime) -> str:
    """Why the reply fails the turn's expectations ('' when it passes)."""
    text = done.get("text", "").lower()
    if done.get("finish_reason") == "error":
        return f"the turn failed: {text[:120]!r}"
    patterns = [today_patterns(p, now) for p in turn.get("expect", [])]
    if patterns and not any(re.search(p, text) for p in patterns):
        return f"{text[:160]!r} matches none of {patterns}"
    if (source := turn.get("cites")) and source not in {c.get("source") for c in done.get("citations", [])}:
        return f"no citation of {source} (cited: {[c.get('source') for c in done.get('citations', [])]})"
    if (agent := turn.get("agent")) and done.get("agent") != agent:
        return f"answered by {done.get('agent')!r}, not {agent!r}"
    return ""


async def upload(edge: str, client: Client, name: str) -> None:
    async with httpx.AsyncClient(base_url=edge, timeout=TURN_TIMEOUT_S) as http:
        reply = await http.post(
            "/v1/ingest",
            params={"filename": name, "wait": 90},
            content=(CORPUS / name).read_bytes(),
            headers={"Authorization": f"Bearer {client.token}"},
        )
        reply.raise_for_status()
        result = reply.json().get("result") or {}
        if result.get("status") not in ("ingested", "unchanged"):
            raise RuntimeError(f"upload of {name} did not finish: {reply.json()}")


async def run_conversation(edge: str, conversation: dict[str, Any]) -> Outcome:
    outcome = Outcome(conversation["id"], conversation["category"], passed=True)
    client = await connect(edge)
    try:
        for name in conversation.get("upload", []):
            await upload(edge, client, name)
        for turn in conversation["turns"]:
            sent = time.perf_counter()
            await client.chat(turn["say"])
            first: float | None = None
            tools: list[str] = []  # what the model called and what came back, for a failure's report
            while True:
                event = await client.next_event(timeout=TURN_TIMEOUT_S)
                if event["kind"] == "reply.delta" and first is None:
                    first = time.perf_counter()
                if event["kind"] == "tool.call":
                    tools.append(f"{event.get('name')}({event.get('arguments')})")
                if event["kind"] == "tool.result":
                    tools.append(f"-> {str(event.get('result') or event.get('error'))[:80]}")
                if event["kind"] == "reply.done":
                    break
            if first is not None:
                outcome.first_delta_ms.append((first - sent) * 1000)
            if why := judge(turn, event, dt.datetime.now(dt.UTC)):
                called = f" [tools: {' '.join(tools)}]" if tools else " [no tool]"
                outcome.passed, outcome.why = False, f"{turn['say']!r}: {why}{called}"
                break
    except Exception as error:  # a hung or refused turn fails its conversation, not the run
        outcome.passed, outcome.why = False, f"{type(error).__name__}: {error}"[:300]
    finally:
        await client.close()
    return outcome


def report(outcomes: list[Outcome]) -> int:
    for o in outcomes:
        if not o.passed:
            print(f"FAIL {o.conversation}: {o.why}")
    by_category: Counter[str] = Counter(o.category for o in outcomes)
    passed: Counter[str] = Counter(o.category for o in outcomes if o.passed)
    print("\n| category | right | of |\n|---|---:|---:|")
    for category in by_category:
        print(f"| {category} | {passed[category]} | {by_category[category]} |")
    total = sum(passed.values())
    print(f"| **all** | **{total}** | **{len(outcomes)}** ({100 * total / len(outcomes):.0f}%) |")
    deltas = sorted(ms for o in outcomes for ms in o.first_delta_ms)
    if len(deltas) >= 2:
        p50, p95 = statistics.median(deltas), statistics.quantiles(deltas, n=20)[18]
        print(f"\nfirst delta (client clock, {len(deltas)} turns): p50 {p50:.0f} ms, p95 {p95:.0f} ms")
    return 0 if total == len(outcomes) else 1


# A warm conversation (issue 17's first-delta target): one session, everyday questions one after the other.
WARM_TURNS = (
    "Hi! I'm planning a trip to Italy.",
    "What is the capital of Italy?",
    "What food is it famous for?",
    "Which river flows through it?",
    "Is it warm there in October?",
    "What language do they speak?",
    "How do you say good morning in it?",
    "Name one famous painter from Italy.",
    "What is the tallest mountain in Italy?",
    "Thanks, that helps a lot.",
)


async def warm_conversation(edge: str) -> int:
    """First delta of every turn of one conversation (client clock); the p50 of the turns after the first."""
    client = await connect(edge)
    deltas: list[float] = []
    try:
        for text in WARM_TURNS:
            sent, first = time.perf_counter(), None
            await client.chat(text)
            while (event := await client.next_event(timeout=TURN_TIMEOUT_S))["kind"] != "reply.done":
                if event["kind"] == "reply.delta" and first is None:
                    first = time.perf_counter()
            deltas.append(((first or time.perf_counter()) - sent) * 1000)
            print(f"{deltas[-1]:7.0f} ms  {text}  ->  {event.get('text', '')[:70]!r}", flush=True)
    finally:
        await client.close()
    warm = sorted(deltas[1:])
    print(
        f"\nwarm conversation: first delta p50 {statistics.median(warm):.0f} ms, max {warm[-1]:.0f} ms "
        f"(turns 2-{len(deltas)}); the first turn {deltas[0]:.0f} ms"
    )
    return 0


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--edge", default="http://127.0.0.1:8080", help="the edge's base URL")
    parser.add_argument("--only", default="", help="run the conversations whose id starts with this")
    parser.add_argument("--warm", action="store_true", help="only the warm-conversation latency (one session)")
    args = parser.parse_args()
    if args.warm:
        return await warm_conversation(args.edge)
    conversations = [c for c in json.loads(CONVERSATIONS.read_text()) if c["id"].startswith(args.only)]
    outcomes = []
    for i, conversation in enumerate(conversations, start=1):
        outcome = await run_conversation(args.edge, conversation)
        print(f"[{i}/{len(conversations)}] {'ok  ' if outcome.passed else 'FAIL'} {conversation['id']}", flush=True)
        outcomes.append(outcome)
    return report(outcomes)


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
