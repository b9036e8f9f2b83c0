"""Agents, tone presets, the rule-based router that picks an agent per turn (with handoff), and the
handoff tool through which the model itself hands the conversation to another agent.

The agents are configuration: a TOML file (``agents.toml`` beside this module ships today's three;
SB_AGENTS_FILE names another), read and validated once when the orchestrator starts. Its schema is
:class:`AgentsFile`; docs/agents.md describes it."""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from contracts.events import Tone
from contracts.tools import BY_TOOL

TONES: dict[str, str] = {
    "neutral": "",
    "concise": "Answer in as few words as possible; one or two short sentences.",
    "friendly": "Be warm and encouraging; plain words, a light touch.",
    "formal": "Use a formal, precise register; no contractions, no slang.",
}

HANDOFF = "handoff"
#: Context an agent gathers before the model answers (workers/orchestrator/context.py).
CONTEXT_SOURCES = frozenset({"memory", "retrieval", "camera"})
#: What an agent's ``tools`` may name: context sources, tools the model calls (contracts/tools.py), handoff.
KNOWN_TOOLS = frozenset(BY_TOOL) | CONTEXT_SOURCES | {HANDOFF}
#: The agents shipped with Switchboard (the file SB_AGENTS_FILE replaces).
SHIPPED_FILE = Path(__file__).resolve().with_name("agents.toml")

_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")


@dataclass(frozen=True)
class Agent:
    name: str
    description: str
    system_prompt: str
    # Context it gathers ("memory", "retrieval", "camera"), tools the model may call (contracts/tools.py)
    # and "handoff" (the model may hand the conversation to another agent).
    tools: frozenset[str] = field(default_factory=frozenset)
    model: str | None = None  # None: the deployment's default model
    handoff_targets: frozenset[str] | None = None  # agents it may hand to; None: every other one
    tone: Tone | None = None  # the tone of sessions that chose none

    @property
    def uses_retrieval(self) -> bool:
        return "retrieval" in self.tools

    @property
    def uses_memory(self) -> bool:
        return "memory" in self.tools

    @property
    def uses_camera(self) -> bool:
        return "camera" in self.tools

    def may_hand_to(self, name: str) -> bool:
        return name != self.name and (self.handoff_targets is None or name in self.handoff_targets)


# ---------------------------------------------------------------- the file


class AgentsFileError(ValueError):
    """The agents file cannot be read or is not valid; the message names the file, the agent and the field."""


class AgentSpec(BaseModel):
    """One ``[[agent]]`` table of the agents file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="What sessions, handoffs and users call it: a-z, 0-9, _; a letter first")
    description: str = Field(description="What it is for; the model reads it when choosing whom to hand to")
    system_prompt: str = Field(description="Its instructions, first in every prompt it answers")
    model: str | None = Field(default=None, description="LLM model it asks; unset: SB_LLM_MODEL")
    tools: list[str] = Field(default_factory=list, description="Context sources, tools and handoff it may use")
    handoff_targets: list[str] | None = Field(default=None, description="Agents it may hand to; unset: all others")
    tone: Tone | None = Field(default=None, description="Tone of sessions that chose none; unset: neutral")

    @field_validator("name")
    @classmethod
    def _name(cls, name: str) -> str:
        if not _NAME.match(name):
            raise ValueError(f"{name!r} is not a name: 1-64 of a-z, 0-9 and _, starting with a letter")
        return name

    @field_validator("description", "system_prompt", "model")
    @classmethod
    def _not_blank(cls, text: str | None) -> str | None:
        if text is not None and not text.strip():
            raise ValueError("is empty")
        return text

    @field_validator("tools")
    @classmethod
    def _known_tools(cls, tools: list[str]) -> list[str]:
        unknown = [t for t in tools if t not in KNOWN_TOOLS]
        if unknown:
            named = ", ".join(repr(t) for t in unknown)
            raise ValueError(
                f"unknown tool{'s' if len(unknown) > 1 else ''} {named} (known: {', '.join(sorted(KNOWN_TOOLS))})"
            )
        return tools

    def agent(self) -> Agent:
        targets = frozenset(self.handoff_targets) if self.handoff_targets is not None else None
        return Agent(
            self.name, self.description, self.system_prompt, frozenset(self.tools), self.model, targets, self.tone
        )


class AgentsFile(BaseModel):
    """The agents file: ``default`` and one ``[[agent]]`` table per agent (docs/agents.md)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    default: str | None = Field(default=None, description="Agent of sessions that chose none; unset: the first")
    agents: list[AgentSpec] = Field(alias="agent", min_length=1, description="The agents, one [[agent]] table each")

    @model_validator(mode="after")
    def _consistent(self) -> AgentsFile:
        names = [a.name for a in self.agents]
        problems = [
            f"agent {n!r}: name: defined more than once" for n in sorted({n for n in names if names.count(n) > 1})
        ]
        for spec in self.agents:
            for target in spec.handoff_targets or []:
                if target == spec.name:
                    problems.append(f"agent {spec.name!r}: handoff_targets: {target!r} is the agent itself")
                elif target not in names:
                    problems.append(
                        f"agent {spec.name!r}: handoff_targets: unknown agent {target!r} (agents: {', '.join(names)})"
                    )
        if self.default is not None and self.default not in names:
            problems.append(f"default: {self.default!r} is not an agent (agents: {', '.join(names)})")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def default_agent(self) -> str:
        return self.default or self.agents[0].name

    def to_agents(self) -> tuple[Agent, ...]:
        return tuple(spec.agent() for spec in self.agents)


def load_agents(path: Path) -> AgentsFile:
    """The agents file at ``path``, validated; AgentsFileError says what is wrong, in one line.

    A file read before and unchanged since is not read again (settings validation and the
    orchestrator share one reading at start)."""
    try:
        stat = path.stat()
    except OSError as error:
        raise AgentsFileError(f"{path}: cannot be read: {error.strerror or error}") from None
    return _load(str(path), stat.st_mtime_ns, stat.st_size)


@lru_cache(maxsize=8)
def _load(path: str, mtime_ns: int, size: int) -> AgentsFile:
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as error:
        raise AgentsFileError(f"{path}: cannot be read: {error.strerror or error}") from None
    except UnicodeDecodeError:
        raise AgentsFileError(f"{path}: is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as error:
        raise AgentsFileError(f"{path}: is not valid TOML: {error}") from None
    try:
        return AgentsFile.model_validate(data)
    except ValidationError as error:
        raise AgentsFileError(f"{path}: " + "; ".join(_described(error, data))) from None


def _described(error: ValidationError, data: dict[str, Any]) -> list[str]:
    """Each of pydantic's errors as ``agent 'coach': tools: unknown tool 'calcualte' (known: ...)``."""
    raw_agents = data.get("agent")
    parts = []
    for err in error.errors():
        loc = list(err["loc"])
        where = []
        if len(loc) >= 2 and loc[0] == "agent" and isinstance(loc[1], int):
            index = loc[1]
            raw = raw_agents[index] if isinstance(raw_agents, list) and index < len(raw_agents) else None
            name = raw.get("name") if isinstance(raw, dict) else None
            where.append(f"agent {name!r}" if isinstance(name, str) else f"agent #{index + 1}")
            loc = loc[2:]
            fields = list(AgentSpec.model_fields)
        else:
            fields = ["default", "agent"]
        if loc:
            where.append(".".join(str(p) for p in loc if not isinstance(p, int)) or str(loc[0]))
        message = str(err["msg"]).removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            message = f"unknown field (fields: {', '.join(fields)})"
        elif err["type"] == "missing":
            message = "missing"
        parts.append(": ".join([*where, message]))
    return parts


@lru_cache(maxsize=1)
def shipped_agents() -> AgentsFile:
    """The agents shipped with Switchboard (agents.toml beside this module)."""
    return load_agents(SHIPPED_FILE)


def __getattr__(name: str) -> tuple[Agent, ...]:
    if name == "DEFAULT_AGENTS":  # the shipped agents, read from their file (there is no copy in code)
        return shipped_agents().to_agents()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ---------------------------------------------------------------- registry and routing

_HANDOFF = re.compile(r"\b(?:talk to|switch to|hand (?:me )?(?:off|over) to)\s+(?:the\s+)?([a-z][a-z0-9_]*)", re.I)
_KNOWLEDGE_HINTS = re.compile(
    r"\b(?:documents?|docs?|according to|cite|sources?|manuals?|handbooks?|files?|pdfs?)\b", re.I
)


@dataclass(frozen=True)
class Route:
    agent: Agent
    handoff: bool  # True when this turn moved the session to another agent
    hinted: bool = False  # chosen for this turn by its words ("in my documents"): not to be handed away


class AgentRegistry:
    """The agents by name. Without ``agents``: the shipped file's agents (and its default)."""

    def __init__(self, agents: Iterable[Agent] | None = None, default: str | None = None) -> None:
        if agents is None:
            shipped = shipped_agents()
            agents, default = shipped.to_agents(), default or shipped.default_agent
        self._agents = {a.name: a for a in agents}
        if not self._agents:
            raise ValueError("no agents")
        default = default or next(iter(self._agents))
        if default not in self._agents:
            raise ValueError(f"default agent {default!r} is not registered: {sorted(self._agents)}")
        for agent in self._agents.values():
            unknown = sorted((agent.handoff_targets or frozenset()) - set(self._agents))
            if unknown:
                raise ValueError(f"agent {agent.name!r} hands to agents that are not registered: {unknown}")
        self.default = self._agents[default]

    @classmethod
    def from_file(cls, path: Path | None, default: str | None = None) -> AgentRegistry:
        """The agents of the file at ``path`` (None: the shipped file); ``default`` overrides the file's."""
        config = load_agents(path) if path is not None else shipped_agents()
        return cls(config.to_agents(), default or config.default_agent)

    def get(self, name: str | None) -> Agent | None:
        return self._agents.get(name) if name else None

    def names(self) -> list[str]:
        return sorted(self._agents)

    def targets(self, current: Agent) -> list[Agent]:
        """The agents ``current`` may hand to, by name."""
        return [self._agents[name] for name in self.names() if current.may_hand_to(name)]


class Router:
    """Rule-based routing: an explicit handoff request wins, then the session's agent, then keyword hints.

    The session's agent is sticky: once chosen (by settings or handoff) it answers every
    turn until another handoff. A handoff request names one of the agent's handoff targets (a
    session without an agent yet hands from the default agent); another name is no handoff.
    """

    def __init__(self, registry: AgentRegistry) -> None:
        self.registry = registry

    def route(self, text: str, current: str | None) -> Route:
        chosen = self.registry.get(current)
        match = _HANDOFF.search(text)
        if match and (target := self.registry.get(match.group(1).lower())):
            source = chosen or self.registry.default
            if target.name == source.name or source.may_hand_to(target.name):
                return Route(target, handoff=target.name != current)
        if chosen:
            return Route(chosen, handoff=False)
        if _KNOWLEDGE_HINTS.search(text):
            return Route(self.registry.get("knowledge") or self.registry.default, handoff=False, hinted=True)
        return Route(self.registry.default, handoff=False)


def handoff_tool(registry: AgentRegistry, current: Agent) -> dict[str, Any] | None:
    """The handoff tool as the model is offered it: the agents ``current`` may hand to, with what each is for."""
    others = registry.targets(current)
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
    if target is None or not current.may_hand_to(target.name):
        allowed = ", ".join(a.name for a in registry.targets(current)) or "none"
        return f"no other agent named {str(named)[:64]!r}; agents: {allowed}"
    return target


def tone_instruction(tone: Tone | None) -> str:
    return TONES.get(tone or "neutral", "")
