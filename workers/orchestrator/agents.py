"""Agents, tone presets, the rule-based router that picks an agent per turn (with handoff), and the
handoff tool through which the model itself hands the conversation to another agent."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from contracts.events import Tone

TONES: dict[str, str] = {
    "neutral": "",
    "concise": "Answer in as few words as possible; one or two short sentences.",
    "friendly": "Be warm and encouraging; plain words, a light touch.",
    "formal": "Use a formal, precise register; no contractions, no slang.",
}


@dataclass(frozen=True)
class Agent:
    name: str
    description: str
    system_prompt: str
    # Context it gathers ("memory", "retrieval", "camera"), tools the model may call (contracts/tools.py)
    # and "handoff" (the model may hand the conversation to another agent).
    tools: frozenset[str] = field(default_factory=frozenset)
    model: str | None = None  # None: the deployment's default model

    @property
    def uses_retrieval(self) -> bool:
        return "retrieval" in self.tools

    @property
    def uses_memory(self) -> bool:
        return "memory" in self.tools

    @property
    def uses_camera(self) -> bool:
        return "camera" in self.tools


DEFAULT_AGENTS: tuple[Agent, ...] = (
    Agent(
        "general",
        "Everyday questions and conversation",
        "You are Switchboard, a helpful voice and chat assistant. Replies are spoken aloud, so keep them "
        "short and natural, without markdown.",
        frozenset({"memory", "camera", "get_time", "calculate", "convert_units", "search_knowledge", "handoff"}),
    ),
    Agent(
        "knowledge",
        "Answers from the user's documents, with citations",
        "You answer from the provided passages only and cite them as [1], [2]. If the passages do not "
        "contain the answer, say so.",
        frozenset({"memory", "retrieval", "handoff"}),
    ),
    Agent(
        "coach",
        "Practice and encouragement",
        "You are a patient coach. Ask one question at a time and encourage the user.",
        frozenset({"memory", "calculate", "convert_units", "handoff"}),
    ),
)

_HANDOFF = re.compile(r"\b(?:talk to|switch to|hand (?:me )?(?:off|over) to)\s+(?:the\s+)?([a-z_]+)", re.I)
_KNOWLEDGE_HINTS = re.compile(r"\b(?:document|docs?|according to|cite|source|manual|handbook|file|pdf)\b", re.I)


@dataclass(frozen=True)
class Route:
    agent: Agent
    handoff: bool  # True when this turn moved the session to another agent


class AgentRegistry:
    def __init__(self, agents: tuple[Agent, ...] = DEFAULT_AGENTS, default: str = "general") -> None:
        self._agents = {a.name: a for a in agents}
        if default not in self._agents:
            raise ValueError(f"default agent {default!r} is not registered: {sorted(self._agents)}")
        self.default = self._agents[default]

    def get(self, name: str | None) -> Agent | None:
        return self._agents.get(name) if name else None

    def names(self) -> list[str]:
        return sorted(self._agents)


class Router:
    """Rule-based routing: an explicit handoff request wins, then the session's agent, then keyword hints.

    The session's agent is sticky: once chosen (by settings or handoff) it answers every
    turn until another handoff.
    """

    def __init__(self, registry: AgentRegistry) -> None:
        self.registry = registry

    def route(self, text: str, current: str | None) -> Route:
        match = _HANDOFF.search(text)
        if match and (target := self.registry.get(match.group(1).lower())):
            return Route(target, handoff=target.name != current)
        chosen = self.registry.get(current)
        if chosen:
            return Route(chosen, handoff=False)
        if _KNOWLEDGE_HINTS.search(text):
            return Route(self.registry.get("knowledge") or self.registry.default, handoff=False)
        return Route(self.registry.default, handoff=False)


HANDOFF = "handoff"


def handoff_tool(registry: AgentRegistry, current: Agent) -> dict[str, Any] | None:
    """The handoff tool as the model is offered it: the other agents by name, with what each is for."""
    others = [a for name in registry.names() if (a := registry.get(name)) and a.name != current.name]
    if HANDOFF not in current.tools or not others:
        return None
    described = "; ".join(f"{a.name}: {a.description}" for a in others)
    return {
        "type": "function",
        "function": {
            "name": HANDOFF,
            "description": f"Hand the conversation to the agent better suited to the user's request ({described}).",
            "parameters": {
                "type": "object",
                "properties": {"agent": {"type": "string", "enum": [a.name for a in others]}},
                "required": ["agent"],
                "additionalProperties": False,
            },
        },
    }


def handoff_target(registry: AgentRegistry, current: Agent, arguments: str) -> Agent | str:
    """The agent a handoff call names, or why it names none (for the model)."""
    try:
        named = json.loads(arguments or "{}").get("agent")
    except (ValueError, AttributeError):
        named = None
    target = registry.get(named) if isinstance(named, str) else None
    if target is None or target.name == current.name:
        return f"no other agent named {str(named)[:64]!r}; agents: {', '.join(registry.names())}"
    return target


def tone_instruction(tone: Tone | None) -> str:
    return TONES.get(tone or "neutral", "")
