"""One of two edges (each on another NATS node) SIGKILLed mid-conversation: its clients reconnect to
the other edge with the same token, as behind a load balancer.

The sessions are spread over both edges. A chat echoed by the lost edge must be answered and stored
exactly once; a chat it never echoed is resent on the other edge (docs/protocol.md section 4).
"""

from __future__ import annotations

import asyncio
import time

from tests.chaos.conversation import conversation, healthy

from .harness import ClusterStack

SESSIONS = 4


async def test_losing_one_of_two_edges_moves_its_clients_and_loses_no_turn(stack: ClusterStack) -> None:
    await healthy(stack, "orchestrator", "memory", "edge")
    await stack.ensure("edge#2")
    lost_edge = stack.edge_urls()[0]
    try:
        async with conversation(stack, "edge loss") as talk:
            for i in range(SESSIONS):
                await talk.add(f"g{i}")
            moved = [t for t in talk.talkers if t.edges == [lost_edge]]
            assert moved and len(moved) < SESSIONS, (
                f"sessions not spread over both edges: {[t.edges for t in talk.talkers]}"
            )
            talk.start()
            await asyncio.sleep(3.0)
            fault = talk.fault("edge on node 0 SIGKILLed (its clients reconnect to the edge on node 1)")
            await stack.kill("edge")
            fault.back_s = time.monotonic() - fault.began
            await talk.until_recovered(fault)
            await asyncio.sleep(3.0)
            await talk.stop_talking()
            await talk.settle()
            problems = await talk.verify()
        for talker in moved:
            if len(talker.edges) < 2 or talker.edges[-1] == lost_edge:
                problems.append(f"{talker.name} did not move to the other edge: {talker.edges}")
        if fault.recovered_s is None:
            problems.insert(0, "the clients of the lost edge were never answered again")
    finally:
        await stack.ensure("edge")  # as the other tests expect it
        await stack.stop("edge#2")
    assert not problems, "; ".join(problems)
