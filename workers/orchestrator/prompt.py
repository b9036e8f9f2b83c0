"""Builds the LLM messages of one turn: agent and tone, memory, passages, recent turns, the user's text,
budgeted to the model's context window.

Laid out for the server's prefix cache (a follow-up turn processes only its new tokens): what stays the
same from turn to turn comes first (the agent's prompt and the tone, which the template follows with the
tools; then, in a message of its own, the memory's summary and facts, which change every
``summary_after_turns`` turns at most), then the history in order, then what changes every
turn (the passages found for this question or the note that there are none, the camera) in a system
message just before the user's words. Measured: docs/benchmarks.md, "Local LLM serving"."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from contracts import events as ev
from contracts.events import DependencyStatus, Tone

from .agents import Agent, tone_instruction
from .llm import ChatMessage, LLMError, estimate_messages

#: Told to an agent that searches documents when the search found nothing relevant, or failed.
NO_PASSAGES = "No passage of the user's documents matches this question: say that the documents do not cover it."
SEARCH_DOWN = (
    "The document search is unavailable right now: tell the user that you could not consult their "
    "documents, then answer as best you can without them."
)
PASSAGES_TOO_LONG = (
    "The passages found in the user's documents are too long for this conversation: ask the user for a "
    "narrower question."
)


@dataclass(frozen=True)
class Prompt:
    """The messages of one turn, and what budgeting them to the context window took out."""

    messages: list[ChatMessage]
    passages: list[ev.Passage]  # those the messages cite, numbered [1], [2] ... in this order
    tokens: int  # estimated prompt tokens as sent
    tokens_before: int  # estimated prompt tokens of everything the turn had
    dropped_turns: int = 0
    dropped_passages: int = 0
    dropped_memory: bool = False


def build_prompt(
    agent: Agent,
    tone: Tone | None,
    user_text: str,
    history: Iterable[tuple[str, str]],
    memory: ev.ContextReply | None,
    passages: list[ev.Passage],
    retrieval: DependencyStatus = "ok",
    camera: ev.FrameDescription | None = None,
    budget: int | None = None,
    now: datetime | None = None,
) -> Prompt:
    """The turn's messages within ``budget`` estimated tokens (None: no limit). What goes first when
    they do not fit: the oldest turns of the history, then the memory's summary and facts, then the
    passages, lowest ranked first. The agent's prompt, the tone, the camera and the user's words are
    never cut: when they alone do not fit, LLMError ``llm_context_overflow``."""
    turns = [(t.role, t.text) for t in memory.turns] if memory is not None else list(history)
    summary, facts = (memory.summary, list(memory.facts)) if memory is not None else ("", [])
    kept = list(passages)

    def assemble() -> list[ChatMessage]:
        system = [agent.system_prompt]
        if instruction := tone_instruction(tone if tone is not None else agent.tone):  # the agent's: none chosen
            system.append(instruction)
        volatile = []  # after the history: a new one every turn would make the whole history new to the server
        if now is not None:  # small models answer "what year is it?" from their training otherwise
            zone = getattr(now.tzinfo, "key", None) or now.tzname() or "UTC"
            volatile.append(f"(If the user asks about the date or time: it is {now:%A %d %B %Y, %H:%M}, {zone}.)")
        if kept:
            numbered = "\n".join(
                f"[{i}] ({p.citation.source}{', ' + p.citation.section if p.citation.section else ''}) {p.text}"
                for i, p in enumerate(kept, start=1)
            )
            volatile.append(f"Passages:\n{numbered}")
        elif passages:
            volatile.append(PASSAGES_TOO_LONG)
        elif agent.uses_retrieval:
            volatile.append(NO_PASSAGES if retrieval == "ok" else SEARCH_DOWN)
        if camera is not None:
            volatile.append(f"The user's camera, just now: {camera.text}")
        messages: list[ChatMessage] = [{"role": "system", "content": "\n\n".join(system)}]
        # In a message of its own: chat templates put the tools after the first system message, so the
        # memory there made the server evaluate the tools again (~1,100 tokens, 50 s on 2 cores) whenever it changed.
        if remembered := _remembered(summary, facts):
            messages.append({"role": "system", "content": remembered})
        messages.extend({"role": role, "content": text} for role, text in turns)
        if volatile:
            messages.append({"role": "system", "content": "\n\n".join(volatile)})
        messages.append({"role": "user", "content": user_text})
        return messages

    messages = assemble()
    before = tokens = estimate_messages(messages)
    dropped_turns = 0
    while budget is not None and tokens > budget:
        if turns:
            turns.pop(0)
            dropped_turns += 1
            if turns and turns[0][0] == "assistant":  # a reply without its question goes with it
                turns.pop(0)
                dropped_turns += 1
        elif summary or facts:
            summary, facts = "", []
        elif kept:
            kept.pop()
        else:
            raise LLMError(
                "llm_context_overflow",
                f"the message is too long for the language model: about {tokens} tokens "
                f"with the instructions, and at most {budget} fit",
            )
        messages = assemble()
        tokens = estimate_messages(messages)
    return Prompt(
        messages,
        kept,
        tokens,
        before,
        dropped_turns,
        len(passages) - len(kept),
        memory is not None and bool(memory.summary or memory.facts) and not (summary or facts),
    )


def _remembered(summary: str, facts: list[str]) -> str:
    lines = [f"Earlier in this conversation: {summary}"] if summary else []
    if facts:
        lines.append("What the user told you about themselves: " + "; ".join(facts))
    return "\n\n".join(lines)
