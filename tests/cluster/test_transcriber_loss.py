"""One of two transcriber replicas (on different NATS nodes) SIGKILLed while a session speaks.

The replicas share the audio partitions through leases in a key-value bucket; the one that dies
stops renewing, its leases lapse after ``SB_TRANSCRIBER_LEASE_TTL_S`` and the survivor claims its
partitions: the speaking session is heard again on the other replica (the utterance in flight
when the replica died is lost with it: its recognizer state was there). Typed sessions go on
untouched; every turn is answered and stored exactly once.
"""

from __future__ import annotations

import asyncio
import time

from tests.chaos.conversation import conversation, healthy
from tests.chaos.probes import UTTERANCE, transcriber_again
from tests.support.speech import synthesize

from .harness import ClusterStack

SESSIONS = 2
REPLICAS = ("transcriber", "transcriber#2")


async def partition_owner(stack: ClusterStack, session_id: str) -> str:
    """Which replica hears ``session_id``: its audio's partition (the server's mapping), that
    partition's lease holder in the bucket, and the replica that logged taking it."""
    sub = await stack.nc.subscribe(f"sb.audio.{session_id}.in.*")
    try:
        partition = (await sub.next_msg(timeout=5)).subject.rsplit(".", 1)[1]
    finally:
        await sub.unsubscribe()
    leases = await stack.nc.jetstream().key_value("sb_transcriber_sb")
    holder = ((await leases.get(f"p.{partition}")).value or b"").decode()
    for name in REPLICAS:
        if f'"replica": "{holder}"' in (stack.logs / f"{name}.log").read_text(errors="replace"):
            return name
    raise AssertionError(f"partition {partition} is held by {holder!r}, which no replica logged")


async def test_losing_one_of_two_transcribers_moves_its_partitions_and_the_session_is_heard_again(
    stack: ClusterStack,
) -> None:
    await healthy(stack, "orchestrator", "memory", "edge", "transcriber")
    await asyncio.to_thread(synthesize, UTTERANCE)
    await stack.ensure("transcriber#2")
    await asyncio.sleep(2.0)  # the leases rebalance over the two replicas (a tick every third of the TTL)
    victim = ""
    try:
        async with conversation(stack, "transcriber replica loss") as talk:
            for i in range(SESSIONS):
                await talk.add(f"t{i}")
            listener = await talk.add("listener", pace_s=None, capabilities=("text", "audio_in"))
            talk.start()
            victim = await partition_owner(stack, listener.session_id)
            await asyncio.sleep(2.0)
            fault = talk.fault(f"{victim} (the listener's replica) SIGKILLed; the other takes its partitions")
            await stack.kill(victim)
            fault.back_s = time.monotonic() - fault.began
            await talk.until_recovered(fault, report=False)
            failed = await transcriber_again(talk, stack, fault)
            talk.report(fault)
            survivor = await partition_owner(stack, listener.session_id)
            await talk.stop_talking()
            await talk.settle()
            problems = await talk.verify()
        if survivor == victim:
            problems.append(f"the listener's partition is still held by the killed {victim}")
    finally:
        if victim:
            await stack.ensure(victim)
        await stack.stop("transcriber#2")
    assert not ([failed] if failed else []) + problems, "; ".join(([failed] if failed else []) + problems)
