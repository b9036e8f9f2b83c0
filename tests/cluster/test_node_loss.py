"""One NATS node of three SIGKILLed mid-conversation, then brought back; one of two orchestrator
replicas (on different nodes) SIGKILLed mid-conversation.

The edge, the orchestrator, memory and the transcriber each talk to a different node first; the
node that goes is the leader of the conversations' stream. Sessions talk typed and one speaks.
Every turn must be answered and stored exactly once, the durable consumers keep their place (the
replicated streams survive the node), every session goes on, speech is heard again (the
transcriber's partition leases live in a replicated bucket) and the retriever, in server mode,
answers again; the times to recover are reported.
"""

from __future__ import annotations

import asyncio
import time

from contracts.streams import EVENTS
from tests.chaos.conversation import conversation, healthy
from tests.chaos.probes import UTTERANCE, retriever_again, transcriber_again
from tests.support.speech import synthesize

from .harness import ClusterStack

SESSIONS = 4
DOWN_S = 3.0


async def test_losing_a_node_mid_conversation_loses_and_duplicates_no_turn(stack: ClusterStack) -> None:
    await healthy(stack, "orchestrator", "memory", "edge", "transcriber", "retriever")
    await asyncio.to_thread(synthesize, UTTERANCE)  # cached: the probe never waits for piper
    victim = await stack.leader_of(EVENTS)  # the worst node to lose: the one leading the conversations' stream
    async with conversation(stack, "node loss") as talk:
        for i in range(SESSIONS):
            await talk.add(f"c{i}")
        await talk.add("listener", pace_s=None, capabilities=("text", "audio_in"))
        talk.start()
        await asyncio.sleep(3.0)  # a steady conversation before the fault
        fault = talk.fault(f"NATS node {victim} SIGKILLed for {DOWN_S:g}s")
        await stack.kill_node(victim)
        await asyncio.sleep(DOWN_S)
        await stack.start_node(victim)
        fault.back_s = time.monotonic() - fault.began
        await talk.until_recovered(fault, report=False)
        failed = [p for probe in (transcriber_again, retriever_again) if (p := await probe(talk, stack, fault))]
        talk.report(fault)
        await asyncio.sleep(3.0)  # and after it
        await talk.stop_talking()
        await talk.settle()
        problems = await talk.verify()
    assert not failed + problems, "; ".join(failed + problems)


async def test_losing_one_of_two_orchestrators_loses_and_duplicates_no_turn(stack: ClusterStack) -> None:
    # Two replicas share the durable consumer of user turns, each through another node. The one that
    # dies leaves its turns in flight unacknowledged: the other answers them after the ack wait, once.
    await healthy(stack, "orchestrator", "memory", "edge")
    await stack.ensure("orchestrator#2")
    async with conversation(stack, "orchestrator replica loss") as talk:
        for i in range(SESSIONS):
            await talk.add(f"r{i}")
        talk.start()
        await asyncio.sleep(3.0)
        fault = talk.fault("orchestrator replica on node 1 SIGKILLed (its twin on node 2 goes on)")
        await stack.kill("orchestrator")
        await talk.until_recovered(fault)
        await asyncio.sleep(3.0)
        await talk.stop_talking()
        await talk.settle()
        problems = await talk.verify()
    await stack.ensure("orchestrator")  # as the other tests expect it
    assert not problems, "; ".join(problems)
