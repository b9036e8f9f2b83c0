"""Tool calls a model wrote as text instead of the API's ``tool_calls``.

Small open models (the embedded Qwen2.5-Coder among them) often *mean* a call but write it as
text: a bare JSON object, a fenced ```json block, or Hermes/Qwen ``<tool_call>`` tags, and a
server without a tool-call parser for the model passes that on as content. When tools were
offered, a reply that starts like one of these is held back (not streamed to the user) until it
ends; if it is one or more ``{"name": ..., "arguments": {...}}`` naming offered tools, it becomes
those calls, else it is released as the text it was.
"""

from __future__ import annotations

import json
import re
from typing import Any

_OPENINGS = ("{", "[", "```", "<tool_call>")
_FENCE = re.compile(r"^```[a-zA-Z]*\s*(.*?)\s*```$", re.DOTALL)
_TAGGED = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.DOTALL)


class TextToolCalls:
    """Fed the streamed text; says what to show now, and at the end which calls the text made."""

    def __init__(self, tool_names: set[str]) -> None:
        self.tool_names = tool_names
        self._held = ""
        self._passing = not tool_names  # no tools offered: nothing to look for

    def feed(self, text: str) -> str:
        """The part of ``text`` to show the user now ('' while it may still be a call)."""
        if self._passing:
            return text
        self._held += text
        start = self._held.lstrip()
        if not start or any(o.startswith(start) or start.startswith(o) for o in _OPENINGS):
            return ""  # looks like (the beginning of) a call: hold it
        self._passing, released, self._held = True, self._held, ""
        return released

    def finish(self) -> tuple[list[tuple[str, str]], str]:
        """The calls the held text made (name, arguments as JSON), or none and the text to show after all."""
        held, self._held = self._held, ""
        calls = parse_calls(held.strip(), self.tool_names) if held.strip() else []
        return (calls, "") if calls else ([], held)


def parse_calls(text: str, tool_names: set[str]) -> list[tuple[str, str]]:
    """The calls in ``text`` if all of it is calls of offered tools, else []."""
    if tagged := _TAGGED.findall(text):
        if _TAGGED.sub("", text).strip():
            return []  # text besides the calls: an answer that mentions a call
        bodies = tagged
    elif fenced := _FENCE.match(text):
        bodies = [fenced.group(1)]
    else:
        bodies = [text]
    found: list[Any] = []
    for body in bodies:
        try:
            value = json.loads(body)
        except ValueError:
            return []
        found.extend(value if isinstance(value, list) else [value])
    calls = []
    for item in found:
        if not isinstance(item, dict) or item.get("name") not in tool_names:
            return []
        arguments = item.get("arguments", item.get("parameters", {}))
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments)
            except ValueError:
                return []
        if not isinstance(arguments, dict):
            return []
        calls.append((str(item["name"]), json.dumps(arguments)))
    return calls
