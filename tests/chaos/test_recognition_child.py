"""A recognition child process of the transcriber SIGKILLed while a session speaks.

The transcriber runs VAD and recognition in child processes (workers/transcriber/shards.py); the
harness gives it one, so the session under test is certainly served by the one killed. The
utterance being spoken may be lost (an ``error`` event tells the user so), but the session's
NEXT utterance must be transcribed and answered, and a new session must work too.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time

from tests.support.speech import silence, synthesize

from .conversation import Conversation, Talker, Turn, conversation, healthy
from .harness import Stack

UTTERANCES = ("Turn on the lights.", "Play some music.", "What is the weather like in Paris today?")
ANSWER_S = 20.0


def spoken_since(talker: Talker, before: set[str]) -> list[Turn]:
    return [t for t in talker.heard() if t.source == "spoken" and t.turn_id not in before]


async def utterance_answered(talk: Conversation, talker: Talker, pcm: bytes) -> Turn | None:
    """Speak; the first new spoken turn once it has its reply.done, or None after ANSWER_S."""
    before = set(talker.turns)
    await talker.speak(pcm)
    if await talk.until(lambda: any(t.dones for t in spoken_since(talker, before)), ANSWER_S):
        return next(t for t in spoken_since(talker, before) if t.dones)
    return None


def describe(talker: Talker, before: set[str]) -> str:
    """What a talker heard of its turns since ``before``, for a failure message."""
    kinds = [e["kind"] for tid, t in talker.turns.items() if tid not in before for _, e in t.events]
    loose = [f"{e.get('kind')} {e.get('code', '')} {e.get('message', '')}".strip() for e in talker.loose]
    return f"heard {kinds or 'nothing'}; without a turn: {loose or 'nothing'}"


async def test_killed_recognition_child_is_replaced_and_the_next_utterance_is_answered(stack: Stack) -> None:
    await healthy(stack, "transcriber", "orchestrator", "memory", "edge")
    first, lost, after = [await asyncio.to_thread(synthesize, text) + silence(1.0) for text in UTTERANCES]
    problems: list[str] = []
    async with conversation(stack, "recognition child") as talk:
        speaker = await talk.add("voice", pace_s=None, capabilities=("text", "audio_in"))
        baseline = await utterance_answered(talk, speaker, first)
        assert baseline is not None, f"no spoken turn answered before any fault: {describe(speaker, set())}"

        children = stack.recognition_children()
        assert children, f"the transcriber has no recognition child: children {stack.children('transcriber')}"
        speaking = asyncio.create_task(speaker.speak(lost))
        await asyncio.sleep(1.0)  # mid-utterance (after the lead silence)
        fault = talk.fault("recognition child killed")
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        await speaking
        replaced = await talk.until(lambda: bool(set(stack.recognition_children()) - set(children)), 15.0)
        fault.back_s = time.monotonic() - fault.began if replaced else None

        before = set(speaker.turns)
        answered = await utterance_answered(talk, speaker, after)
        fault.recovered_s = (answered.answered_at or 0.0) - fault.began if answered else None
        if answered is None:
            problems.append(
                "the utterance after the recognition child was killed was never transcribed and "
                f"answered ({describe(speaker, before)})"
            )
        errors = [e for e in speaker.loose if e.get("kind") == "error"] + [
            e for t in speaker.turns.values() for _, e in t.of("error")
        ]
        fault.notes.append(f"error events: {[e['code'] for e in errors] or 'none'}")
        if not replaced:
            fault.notes.append(f"no new recognition child (children now {stack.children('transcriber')})")

        newcomer = await talk.add("newcomer", pace_s=None, capabilities=("text", "audio_in"))
        if await utterance_answered(talk, newcomer, first) is None:
            problems.append(
                f"a new session's utterance was never transcribed and answered ({describe(newcomer, set())})"
            )
        talk.report(fault)
        await talk.settle()
        problems += await talk.verify()
    assert not problems, "; ".join(problems)
