"""Tools the assistant's model may call, declared as data.

A tool is a request/reply service on the bus: the orchestrator sends a ``ToolRequest`` (its
``arguments`` follow ``parameters``, a JSON Schema) on ``svc.tools.<name>`` and waits at most
``deadline_s`` for a ``ToolReply`` (its ``result`` follows ``result``). Whoever subscribes to the
subject serves the tool, in any language (docs/tools.md). A result may carry ``citations``
(objects shaped like ``events.Citation``): the reply cites them. Each tool becomes a subject
``tools.<name>`` in contracts.subjects and an OpenAI function-calling tool for the agents
allowed it (workers/orchestrator/agents.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .limits import QUERY_CHARS, REMINDER_TEXT_CHARS

JsonSchema = dict[str, Any]


@dataclass(frozen=True)
class ToolSpec:
    name: str  # what the model calls: [a-z_]+
    description: str  # what the model reads to decide when to call it
    parameters: JsonSchema  # JSON Schema of the arguments (an object)
    result: JsonSchema  # JSON Schema of the reply's result
    deadline_s: float  # the orchestrator gives up after this long (and tells the model)

    @property
    def subject_name(self) -> str:
        """Its name in contracts.subjects (the subject is ``svc.tools.<name>``)."""
        return f"tools.{self.name}"

    def function(self) -> dict[str, Any]:
        """The tool as OpenAI's chat completions API takes it, without the bounds the tool checks itself."""
        return {
            "type": "function",
            "function": {"name": self.name, "description": self.description, "parameters": unbounded(self.parameters)},
        }


# Checked by the tool on every call; shown to the model they only cost prompt tokens, and as a
# grammar (ops/tool_calling.py) a maxLength of 4,000 becomes a rule nested 4,000 deep.
_BOUNDS = frozenset({"minLength", "maxLength", "minimum", "maximum", "minItems", "maxItems", "additionalProperties"})


def unbounded(schema: Any) -> Any:
    """``schema`` without size and range bounds, at every depth."""
    if isinstance(schema, dict):
        return {key: unbounded(value) for key, value in schema.items() if key not in _BOUNDS}
    if isinstance(schema, list):
        return [unbounded(item) for item in schema]
    return schema


def _object(properties: dict[str, JsonSchema], required: list[str]) -> JsonSchema:
    return {"type": "object", "properties": properties, "required": required, "additionalProperties": False}


_TEXT: JsonSchema = {"type": "string"}
_NUMBER: JsonSchema = {"type": "number"}
#: Bounds of a reminder's delay: from a second to a week.
REMINDER_MIN_S = 1.0
REMINDER_MAX_S = 7 * 86_400.0
RECALL_MAX_RESULTS = 10
_CITATION: JsonSchema = {
    "type": "object",
    "properties": {"document_id": _TEXT, "source": _TEXT, "title": _TEXT, "section": _TEXT, "score": _NUMBER},
    "required": ["document_id", "source"],
}

TOOLS: tuple[ToolSpec, ...] = (
    ToolSpec(
        "get_time",
        "The current date and time, in the user's time zone unless another IANA zone is asked for.",
        _object({"time_zone": {"type": "string", "maxLength": 64, "description": "IANA zone, e.g. Europe/Paris"}}, []),
        _object(
            {
                "iso": {**_TEXT, "description": "ISO 8601 local date and time with its offset"},
                "time_zone": _TEXT,
                "weekday": _TEXT,
                "text": {**_TEXT, "description": "The date and time in words"},
            },
            ["iso", "time_zone", "weekday", "text"],
        ),
        deadline_s=1.0,
    ),
    ToolSpec(
        "calculate",
        "Evaluate an arithmetic expression exactly: + - * / // % ** (or ^), parentheses, and sqrt, abs, "
        "round, floor, ceil, log, ln, exp, sin, cos, tan, pi, e. A percentage of a number: 15% of 240 is 0.15 * 240.",
        _object({"expression": {"type": "string", "minLength": 1, "maxLength": 500}}, ["expression"]),
        _object({"expression": _TEXT, "value": _NUMBER, "text": _TEXT}, ["expression", "value", "text"]),
        deadline_s=1.0,
    ),
    ToolSpec(
        "convert_units",
        "Convert a quantity between units of length, mass, volume, time, speed, data or temperature, "
        "e.g. 5 mi to km, 70 F to C.",
        _object(
            {
                "value": _NUMBER,
                "from_unit": {"type": "string", "minLength": 1, "maxLength": 32},
                "to_unit": {"type": "string", "minLength": 1, "maxLength": 32},
            },
            ["value", "from_unit", "to_unit"],
        ),
        _object(
            {"value": _NUMBER, "unit": _TEXT, "text": _TEXT},
            ["value", "unit", "text"],
        ),
        deadline_s=1.0,
    ),
    ToolSpec(  # served by the retriever; the ones above by the tools worker
        "search_knowledge",
        "Search the user's documents and knowledge bases; cite the passages you use as [n].",
        _object({"query": {"type": "string", "minLength": 1, "maxLength": QUERY_CHARS}}, ["query"]),
        _object(
            {
                "passages": {
                    "type": "array",
                    "items": _object(
                        {"n": {"type": "integer"}, "text": _TEXT, "source": _TEXT, "section": _TEXT, "score": _NUMBER},
                        ["n", "text", "source", "section", "score"],
                    ),
                },
                "citations": {"type": "array", "items": _CITATION},
            },
            ["passages", "citations"],
        ),
        deadline_s=2.0,
    ),
    ToolSpec(  # served by the memory worker: only the calling session's own memory
        "recall_memory",
        "Look through this conversation's earlier turns and what the user said about themselves, for "
        "something said before that is no longer in view (a name, a number, a plan).",
        _object(
            {
                "query": {
                    "type": "string",
                    "minLength": 1,
                    "maxLength": QUERY_CHARS,
                    "description": "What to look for",
                },
                "limit": {"type": "integer", "minimum": 1, "maximum": RECALL_MAX_RESULTS, "description": "At most (5)"},
            },
            ["query"],
        ),
        _object(
            {
                "matches": {
                    "type": "array",
                    "items": _object(
                        {
                            "role": {"type": "string", "enum": ["user", "assistant"]},
                            "text": _TEXT,
                            "at": {**_TEXT, "description": "When it was said: ISO 8601 in the user's time zone"},
                            "score": _NUMBER,
                        },
                        ["role", "text", "at", "score"],
                    ),
                },
                "facts": {"type": "array", "items": _TEXT},
                "text": _TEXT,
            },
            ["matches", "facts", "text"],
        ),
        deadline_s=2.0,
    ),
    ToolSpec(  # served by the tools worker; the reminder comes back to the session as reminder.due
        "set_reminder",
        "Set a reminder or timer: when it is due the user is told the text. Give delay_s (seconds from now) or "
        "at (an ISO 8601 date and time, in the user's time zone unless it has an offset).",
        _object(
            {
                "text": {"type": "string", "minLength": 1, "maxLength": REMINDER_TEXT_CHARS},
                "delay_s": {"type": "number", "minimum": REMINDER_MIN_S, "maximum": REMINDER_MAX_S},
                "at": {"type": "string", "maxLength": 64, "description": "e.g. 2030-01-31T09:00"},
            },
            ["text"],
        ),
        _object(
            {
                "reminder_id": _TEXT,
                "due": {**_TEXT, "description": "When it is due: ISO 8601 in the user's time zone"},
                "in_s": _NUMBER,
                "text": _TEXT,
            },
            ["reminder_id", "due", "in_s", "text"],
        ),
        deadline_s=2.0,
    ),
)

BY_TOOL: dict[str, ToolSpec] = {t.name: t for t in TOOLS}
