"""nats-server stopped for ~2 s mid-conversation and started again on the same port and store.

Every process reconnects on its own. Every turn must still be answered and stored exactly once,
and the stats worker must come back too: its snapshot counts the turns of a session that only
began after the restart, and counts each turn of the others once.
"""

from __future__ import annotations

import asyncio
import time

from contracts import events as ev
from workers.runtime.bus import DependencyUnavailableError

from .conversation import Talker, conversation, healthy
from .harness import Stack

SESSIONS = 4
DOWN_S = 2.0
LATE_TURNS = 3


async def stats_turns(stack: Stack, talker: Talker) -> int | None:
    try:
        request = ev.StatsRequest(producer="chaos", session_id=talker.session_id)
        snapshot = await stack.request("stats.snapshot", request, ev.StatsSnapshot)
    except DependencyUnavailableError:
        return None
    return snapshot.turns


async def stats_mismatches(stack: Stack, talkers: list[Talker], timeout: float = 15.0) -> list[str]:
    """Sessions whose turn count in the stats snapshot differs from what the client heard (after a bounded wait)."""
    deadline = time.monotonic() + timeout
    while True:
        counted = {t.name: await stats_turns(stack, t) for t in talkers}
        wrong = [
            f"{t.name} counted {counted[t.name]} of {len(t.heard())}"
            for t in talkers
            if counted[t.name] != len(t.heard())
        ]
        if not wrong or time.monotonic() >= deadline:
            return wrong
        await asyncio.sleep(0.5)


async def test_nats_restart_mid_conversation_answers_every_turn_once_and_stats_recover(stack: Stack) -> None:
    await healthy(stack, "orchestrator", "memory", "stats", "edge")
    async with conversation(stack, "nats restart") as talk:
        for i in range(SESSIONS):
            await talk.add(f"n{i}")
        talk.start()
        await asyncio.sleep(3.0)  # a steady conversation before the fault
        fault = talk.fault(f"nats-server down {DOWN_S:g}s")
        await stack.restart_nats(DOWN_S)
        fault.back_s = time.monotonic() - fault.began
        await talk.until_recovered(fault)
        await asyncio.sleep(3.0)  # and after it
        await talk.stop_talking()

        late = await talk.add("late", pace_s=None)  # a session that exists only after the restart
        for _ in range(LATE_TURNS):
            await late.say()
            await talk.until(lambda: all(t.dones for t in late.heard()), 10.0)
        await talk.settle()
        problems = await talk.verify()
        stats = await stats_mismatches(stack, talk.talkers)
    if stats:
        problems.append("stats snapshot does not count each turn once after the restart: " + ", ".join(stats))
    assert not problems, "; ".join(problems)
