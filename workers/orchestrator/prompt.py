"""Builds the LLM messages of one turn: agent and tone, memory, passages, recent turns, the user's text."""

from __future__ import annotations

from collections.abc import Iterable

from contracts import events as ev
from contracts.events import DependencyStatus, Tone

from .agents import Agent, tone_instruction
from .llm import ChatMessage

#: Told to an agent that searches documents when the search found nothing relevant, or failed.
NO_PASSAGES = "No passage of the user's documents matches this question: say that the documents do not cover it."
SEARCH_DOWN = (
    "The document search is unavailable right now: tell the user that you could not consult their "
    "documents, then answer as best you can without them."
)


def build_messages(
    agent: Agent,
    tone: Tone | None,
    user_text: str,
    history: Iterable[tuple[str, str]],
    memory: ev.ContextReply | None,
    passages: list[ev.Passage],
    retrieval: DependencyStatus = "ok",
    camera: ev.FrameDescription | None = None,
) -> list[ChatMessage]:
    system = [agent.system_prompt]
    if instruction := tone_instruction(tone):
        system.append(instruction)
    if memory is not None:
        if memory.summary:
            system.append(f"Earlier in this conversation: {memory.summary}")
        if memory.facts:
            system.append("What the user told you about themselves: " + "; ".join(memory.facts))
    if passages:
        numbered = "\n".join(
            f"[{i}] ({p.citation.source}{', ' + p.citation.section if p.citation.section else ''}) {p.text}"
            for i, p in enumerate(passages, start=1)
        )
        system.append(f"Passages:\n{numbered}")
    elif agent.uses_retrieval:
        system.append(NO_PASSAGES if retrieval == "ok" else SEARCH_DOWN)
    if camera is not None:
        system.append(f"The user's camera, just now: {camera.text}")
    messages: list[ChatMessage] = [{"role": "system", "content": "\n\n".join(system)}]
    turns = [(t.role, t.text) for t in memory.turns] if memory is not None else list(history)
    messages.extend({"role": role, "content": text} for role, text in turns)
    messages.append({"role": "user", "content": user_text})
    return messages
