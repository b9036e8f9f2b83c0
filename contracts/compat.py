"""Schema compatibility: what counts as a breaking change, checked against the last release.

``contracts/released.json`` is the snapshot of the last released contracts (message
schemas with their versions, and subject patterns). A change to a message is breaking
when it removes or renames a field, changes a field's type, or adds a required field; it
is allowed only if that message's ``VERSION`` is bumped. Removing or renaming a subject
is always breaking. ``just contracts-release`` records a new snapshot.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from .client import CLIENT_MESSAGES, PROTOCOL_VERSION
from .envelope import Event
from .events import ALL_EVENTS
from .subjects import SUBJECTS, Subject

RELEASED_PATH = Path(__file__).with_name("released.json")
_NOISE = {"title", "description", "default", "examples"}


@dataclass(frozen=True)
class Violation:
    target: str
    rule: str
    detail: str

    def __str__(self) -> str:
        return f"{self.target}: {self.rule}: {self.detail}"


def message_schema(cls: type[Event]) -> dict[str, Any]:
    return cls.model_json_schema()


def snapshot(
    events: tuple[type[Event], ...] = ALL_EVENTS,
    subjects: tuple[Subject, ...] = SUBJECTS,
    client: tuple[type[BaseModel], ...] = CLIENT_MESSAGES,
) -> dict[str, Any]:
    """The contracts as data: what a release records and what the checker compares.

    Bus messages are versioned one by one (``VERSION``); the WebSocket protocol's frames all
    together (``PROTOCOL_VERSION``).
    """
    return {
        "messages": {cls.kind_name(): {"version": cls.VERSION, "schema": message_schema(cls)} for cls in events},
        "client": {cls.__name__: {"version": PROTOCOL_VERSION, "schema": cls.model_json_schema()} for cls in client},
        "subjects": {s.name: s.pattern for s in subjects},
    }


def load_released(path: Path = RELEASED_PATH) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def _normalise(node: Any, defs: dict[str, Any]) -> Any:
    """Inline $refs and drop documentation so that only the shape is compared."""
    if isinstance(node, dict):
        if "$ref" in node:
            return _normalise(defs[node["$ref"].rsplit("/", 1)[-1]], defs)
        return {k: _normalise(v, defs) for k, v in sorted(node.items()) if k not in _NOISE and k != "$defs"}
    if isinstance(node, list):
        return [_normalise(v, defs) for v in node]
    return node


def _fields(schema: dict[str, Any]) -> tuple[dict[str, Any], set[str]]:
    defs = schema.get("$defs", {})
    props = {name: _normalise(prop, defs) for name, prop in schema.get("properties", {}).items()}
    return props, set(schema.get("required", []))


def check(released: dict[str, Any], current: dict[str, Any]) -> list[Violation]:
    """Every breaking change from ``released`` to ``current`` not covered by a version bump."""
    found: list[Violation] = []
    for section in ("messages", "client"):
        found.extend(_check_messages(released.get(section, {}), current.get(section, {})))
    for name, pattern in released["subjects"].items():
        now_pattern = current["subjects"].get(name)
        if now_pattern is None:
            found.append(Violation(name, "removed subject", pattern))
        elif now_pattern != pattern:
            found.append(Violation(name, "renamed subject", f"{pattern} -> {now_pattern}"))
    return found


def _check_messages(released: dict[str, Any], current: dict[str, Any]) -> list[Violation]:
    found: list[Violation] = []
    for kind, old in released.items():
        new = current.get(kind)
        if new is None:
            found.append(Violation(kind, "removed message", "message kind no longer exists"))
            continue
        if new["version"] < old["version"]:
            found.append(Violation(kind, "version went down", f"{old['version']} -> {new['version']}"))
            continue
        if new["version"] > old["version"]:
            continue  # a bump is the visible, deliberate act that allows a breaking change
        old_props, old_required = _fields(old["schema"])
        new_props, new_required = _fields(new["schema"])
        for name, shape in old_props.items():
            if name not in new_props:
                found.append(Violation(kind, "removed or renamed field", name))
            elif new_props[name] != shape:
                found.append(Violation(kind, "changed type", name))
        for name in sorted(new_required - old_required):
            found.append(Violation(kind, "new required field", name))
    return found
