"""The edge SIGKILLed mid-conversation and started again: clients reconnect with their token.

The edge acknowledges a chat only by its ``turn.user`` echo (docs/protocol.md section 4): a chat
that got one must be answered and stored exactly once; a chat without one may be resent, which
the client does on reconnect. Replies published while a client had no socket are not replayed
(section 3), so for those the reply stored in memory is the evidence of an answer.
"""

from __future__ import annotations

import asyncio

from .conversation import conversation, healthy
from .harness import Stack

SESSIONS = 4
DOWN_S = 2.0


async def test_edge_killed_mid_conversation_loses_and_doubles_nothing(stack: Stack) -> None:
    await healthy(stack, "orchestrator", "memory", "edge")
    async with conversation(stack, "edge kill") as talk:
        for i in range(SESSIONS):
            await talk.add(f"e{i}")
        talk.start()
        await asyncio.sleep(3.0)  # a steady conversation before the fault
        fault = talk.fault("edge killed")
        fault.back_s = await stack.restart("edge", DOWN_S) + DOWN_S
        await talk.until_recovered(fault)
        await asyncio.sleep(3.0)  # and after it
        await talk.stop_talking()
        await talk.settle()
        problems = await talk.verify()
    if fault.recovered_s is None:
        problems.insert(0, "the clients were never answered again after the edge restart")
    assert not problems, "; ".join(problems)
