"""Probes: after a fault, does a worker do its job again (not only answer discovery)? Each notes the
time since the fault began, or returns the problem."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from contracts import events as ev
from tests.support.speech import silence, synthesize
from workers.runtime.bus import DependencyUnavailableError

from .conversation import Conversation, Fault, Talker
from .harness import Stack

PROBE_S = 20.0
UTTERANCE = "Turn on the lights."


async def poll(fault: Fault, what: str, check: Callable[[], Awaitable[bool]], timeout: float = PROBE_S) -> str | None:
    """Retry ``check`` until it holds; notes the time since the fault began, or returns the problem."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await check():
            fault.notes.append(f"{what} after {time.monotonic() - fault.began:.1f}s")
            return None
        await asyncio.sleep(0.25)
    fault.notes.append(f"{what}: NEVER")
    return f"{fault.label}: {what} not within {timeout:g}s of the restart"


async def poll_once(check: Callable[[], Awaitable[bool]], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(0.2)
    return True


def paced(talk: Conversation) -> list[Talker]:
    return [t for t in talk.talkers if t.pace_s]


async def retriever_again(talk: Conversation, stack: Stack, fault: Fault) -> str | None:
    async def answers() -> bool:
        try:
            reply = await stack.request(
                "retrieval.query",
                ev.RetrievalRequest(
                    producer="chaos", session_id=paced(talk)[0].session_id, query="what is in the handbook"
                ),
                ev.RetrievalReply,
            )
        except DependencyUnavailableError:
            return False
        return not reply.error

    return await poll(fault, "retrieval answers again", answers)


async def transcriber_again(talk: Conversation, stack: Stack, fault: Fault) -> str | None:
    listener = next(t for t in talk.talkers if t.name == "listener")
    before = set(listener.turns)

    async def transcribed() -> bool:
        return any(t.source == "spoken" and t.dones for tid, t in listener.turns.items() if tid not in before)

    speech = await asyncio.to_thread(synthesize, UTTERANCE)
    deadline = time.monotonic() + PROBE_S
    while time.monotonic() < deadline:  # the new replica may take its partitions a few seconds later
        await listener.speak(speech + silence(0.8))
        if await poll_once(transcribed, 4.0):
            fault.notes.append(f"speech transcribed and answered again after {time.monotonic() - fault.began:.1f}s")
            return None
    fault.notes.append("speech transcribed again: NEVER")
    return f"{fault.label}: speech not transcribed and answered within {PROBE_S:g}s of the restart"
