"""Every worker SIGKILLed in turn mid-conversation, and started again ~2 s later.

One long conversation (four typed sessions, a turn a second each) runs through all the kills,
which keeps the wall time small. After each restart a probe checks that the worker does its job
again (not only that it answers discovery), and the time that took is recorded. The orchestrator
is the key case: turns sent while it is down must be answered once it is back.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from contracts import events as ev
from tests.support.speech import synthesize
from workers.runtime.bus import DependencyUnavailableError

from .conversation import Conversation, Fault, conversation, healthy
from .harness import Stack
from .probes import UTTERANCE, paced, poll, retriever_again, transcriber_again

SESSIONS = 4
DOWN_S = 2.0
ORDER = ("orchestrator", "memory", "keywords", "voice", "retriever", "stats", "video", "transcriber")
Probe = Callable[[Conversation, Stack, Fault], Awaitable[str | None]]


async def answers_again(talk: Conversation, stack: Stack, fault: Fault) -> str | None:
    return None if fault.recovered_s is not None else f"{fault.label}: no session was answered again"


async def memory_context_again(talk: Conversation, stack: Stack, fault: Fault) -> str | None:
    async def ok() -> bool:
        return any(
            d.get("memory") == "ok"
            for t in paced(talk)
            for turn in t.turns.values()
            if turn.said and turn.said.sent_at > fault.began + DOWN_S
            for d in turn.dones
        )

    return await poll(fault, "replies use memory again", ok)


async def keywords_again(talk: Conversation, stack: Stack, fault: Fault) -> str | None:
    async def tagged() -> bool:
        return any(
            turn.of("annot.keywords")
            for t in paced(talk)
            for turn in t.turns.values()
            if turn.said and turn.said.sent_at > fault.began + DOWN_S
        )

    return await poll(fault, "turns tagged again", tagged)


async def voice_again(talk: Conversation, stack: Stack, fault: Fault) -> str | None:
    speaker = next(t for t in talk.talkers if t.name == "speaker")
    said = await speaker.say("hello")

    async def spoken() -> bool:
        return any(speaker.turns[tid].of("audio.done") for tid in said.turn_ids if tid in speaker.turns)

    return await poll(fault, "replies spoken again", spoken)


async def stats_again(talk: Conversation, stack: Stack, fault: Fault) -> str | None:
    talker = paced(talk)[0]
    counted = 0

    async def counts() -> bool:
        nonlocal counted
        want = len(talker.heard())
        try:
            counted = (
                await stack.request(
                    "stats.snapshot", ev.StatsRequest(producer="chaos", session_id=talker.session_id), ev.StatsSnapshot
                )
            ).turns
        except DependencyUnavailableError:
            return False
        return counted >= want

    problem = await poll(fault, "stats count every turn again", counts)
    return problem and f"{problem} (counted {counted} of {len(talker.heard())} turns of {talker.name})"


async def video_again(talk: Conversation, stack: Stack, fault: Fault) -> str | None:
    async def answers() -> bool:
        try:
            await stack.request(
                "video.describe",
                ev.FrameDescribeRequest(producer="chaos", session_id=paced(talk)[0].session_id),
                ev.FrameDescription,
            )
        except DependencyUnavailableError:
            return False
        return True

    return await poll(fault, "camera descriptions answered again", answers)


PROBES: dict[str, Probe] = {
    "orchestrator": answers_again,
    "memory": memory_context_again,
    "keywords": keywords_again,
    "voice": voice_again,
    "retriever": retriever_again,
    "stats": stats_again,
    "video": video_again,
    "transcriber": transcriber_again,
}


async def test_every_worker_killed_mid_conversation_answers_every_turn_exactly_once(stack: Stack) -> None:
    await healthy(stack, *ORDER, "edge")
    await asyncio.to_thread(synthesize, UTTERANCE)  # cached now, so the probe never blocks on piper
    failed: list[str] = []
    async with conversation(stack, "worker kill") as talk:
        for i in range(SESSIONS):
            await talk.add(f"w{i}")
        await talk.add("speaker", pace_s=None, capabilities=("text", "audio_out"))
        await talk.add("listener", pace_s=None, capabilities=("text", "audio_in"))
        talk.start()
        await asyncio.sleep(2.0)  # a steady conversation first
        for name in ORDER:
            fault = talk.fault(f"{name} killed")
            ready_s = await stack.restart(name, DOWN_S)
            fault.back_s = time.monotonic() - fault.began
            fault.notes.append(f"ready {ready_s:.1f}s after its start")
            await talk.until_recovered(fault, report=False)
            if problem := await PROBES[name](talk, stack, fault):
                failed.append(problem)
            talk.report(fault)
        await talk.stop_talking()
        await talk.settle()
        problems = await talk.verify()
    assert not failed + problems, "; ".join(failed + problems)
