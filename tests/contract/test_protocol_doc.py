"""docs/protocol.md names every error code a client can receive (its `protocol_error` and `error` tables).

`protocol_error` codes are a Literal in contracts/client.py. `error` codes are strings in the workers' code:
found here where they are made (the orchestrator's LLMError and refusals, the transcriber's notices, any
ErrorEvent with a literal code). The voice worker's `tts_*` codes are documented in docs/voice.md and the
video worker's `video_<error_code>` in docs/video.md, both linked from the protocol.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import get_args

from contracts.client import ProtocolError

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "protocol.md"
MADE = (  # (where, how a code literal is written there)
    ("workers/orchestrator", r"LLMError\(\s*\"([a-z_]+)\""),
    ("workers/orchestrator", r"\.refuse\(\s*\w+,\s*\"([a-z_]+)\""),
    ("workers/transcriber", r"tell\(\s*\w+,\s*\"([a-z_]+)\""),
    ("edge", r"ErrorEvent\([^)]*?code=\"([a-z_]+)\""),
    ("workers", r"ErrorEvent\([^)]*?code=\"([a-z_]+)\""),
)


def documented(doc: str) -> set[str]:
    """The codes in the first column of the doc's tables."""
    return set(re.findall(r"^\| `([a-z_]+)` \|", doc, re.MULTILINE))


def test_every_protocol_error_code_is_documented() -> None:
    codes = set(get_args(ProtocolError.model_fields["code"].annotation))
    assert codes - documented(DOC.read_text()) == set()


def test_every_error_event_code_is_documented() -> None:
    found: set[str] = set()
    for folder, pattern in MADE:
        for path in (ROOT / folder).rglob("*.py"):
            found |= set(re.findall(pattern, path.read_text(), re.DOTALL))
    assert {"llm_timeout", "internal", "turn_not_answered", "recognition_lost", "turn_not_accepted"} <= found, found
    assert found - documented(DOC.read_text()) == set()
