"""The document store (MongoDB wire server) stopped for 10 s mid-conversation, then started again.

Replies go on meanwhile (their memory context degrades: ``memory`` is not "ok"), the memory
worker stays up and holds what it could not write, and once the store is back the history is
complete with nothing stored twice.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter

from .conversation import conversation, healthy
from .harness import Stack

SESSIONS = 4
OUTAGE_S = 10.0


async def test_store_outage_keeps_replies_going_and_memory_complete(stack: Stack) -> None:
    await healthy(stack, "orchestrator", "memory", "edge")
    async with conversation(stack, "store outage") as talk:
        for i in range(SESSIONS):
            await talk.add(f"m{i}")
        talk.start()
        await asyncio.sleep(3.0)  # a steady conversation before the fault
        fault = talk.fault(f"document store down {OUTAGE_S:g}s")
        await stack.stop_mongo()
        await asyncio.sleep(OUTAGE_S)
        restarted = time.monotonic()
        await stack.start_mongo()
        fault.back_s = time.monotonic() - fault.began

        def context_back() -> bool:
            return any(
                d.get("memory") == "ok"
                for t in talk.talkers
                for turn in t.turns.values()
                if turn.said and turn.said.sent_at > restarted
                for d in turn.dones
            )

        context_ok = await talk.until(context_back, 20.0)
        fault.notes.append(
            f"memory context ok {time.monotonic() - restarted:.1f}s after the store was back"
            if context_ok
            else "memory context NEVER ok again"
        )
        await talk.until_recovered(fault)
        await asyncio.sleep(2.0)  # a steady conversation after it
        await talk.stop_talking()
        await talk.settle()
        problems = await talk.verify()
        during = Counter(
            d.get("memory")
            for t in talk.talkers
            for turn in t.turns.values()
            if turn.said and turn.said.phase == fault.label
            for d in turn.dones
        )
        print(f"[store outage] memory status of the replies to turns sent during the outage: {dict(during)}")
    memory = stack.services["memory"]
    if not memory.alive:
        code = memory.process and memory.process.returncode
        problems.append(f"the memory worker exited during the outage (code {code})")
    if not context_ok:
        problems.append("replies never used memory context again after the store came back")
    assert not problems, "; ".join(problems)
