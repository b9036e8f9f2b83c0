"""Generates the committed contract documents: JSON Schemas of every message and the AsyncAPI 3 document.

``just contracts`` writes them; the contract tests fail when the committed copies drift
from the code. ``just contracts-release`` records the current contracts as the released
baseline that breaking-change checks compare against.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from faststream.nats import NatsBroker
from faststream.specification import AsyncAPI

from contracts import compat
from contracts.client import CLIENT_MESSAGES
from contracts.events import ALL_EVENTS
from contracts.subjects import REPLIES, SUBJECTS
from workers.runtime.asyncapi import declared_router

from . import registry

CONTRACTS_DIR = Path(compat.__file__).parent
SCHEMA_DIR = CONTRACTS_DIR / "schemas"
ASYNCAPI_PATH = CONTRACTS_DIR / "asyncapi.json"
VERSION = "0.1.0"


def _dump(data: Any) -> str:
    return json.dumps(data, indent=2, sort_keys=True) + "\n"


def asyncapi_document() -> dict[str, Any]:
    """Every declared subject as a channel, plus what each shipped worker subscribes to."""
    broker = NatsBroker(description="Switchboard bus; the session id is token 2 of per-session subjects")
    for subject in SUBJECTS:
        reply = REPLIES.get(subject.name)
        description = subject.description + (f" (reply: {reply.__name__})" if reply else "")
        if subject.binary:
            description += "; binary payload, this model travels in the Sb-Meta header"
        broker.publisher(subject.template(), schema=subject.message, title=subject.name, description=description)
    for name in registry.WORKERS:
        broker.include_router(declared_router(registry.load(name)))
    spec_doc = AsyncAPI(broker, title="Switchboard", version=VERSION, schema_version="3.0.0")
    doc: dict[str, Any] = spec_doc.to_specification().to_jsonable()
    return doc


def generated_files() -> dict[Path, str]:
    files = {SCHEMA_DIR / f"{cls.kind_name()}.json": _dump(cls.model_json_schema()) for cls in ALL_EVENTS}
    files |= {SCHEMA_DIR / f"client.{cls.__name__}.json": _dump(cls.model_json_schema()) for cls in CLIENT_MESSAGES}
    files[ASYNCAPI_PATH] = _dump(asyncapi_document())
    return files


def stale() -> list[Path]:
    """Committed documents that differ from what the code generates (or are missing)."""
    return [p for p, text in generated_files().items() if not p.exists() or p.read_text() != text]


def write() -> None:
    SCHEMA_DIR.mkdir(exist_ok=True)
    files = generated_files()
    for stale in set(SCHEMA_DIR.glob("*.json")) - set(files):
        stale.unlink()
    for path, text in files.items():
        path.write_text(text)
    print(f"wrote {len(files)} contract documents under {CONTRACTS_DIR}")


def release() -> None:
    """Record the current contracts as released; refuses while they break the last release."""
    current = compat.snapshot()
    if compat.RELEASED_PATH.exists():
        violations = compat.check(compat.load_released(), current)
        if violations:
            print("refusing to release: breaking changes without a version bump:", file=sys.stderr)
            for violation in violations:
                print(f"  {violation}", file=sys.stderr)
            raise SystemExit(1)
    compat.RELEASED_PATH.write_text(_dump(current))
    print(f"released {len(current['messages'])} messages and {len(current['subjects'])} subjects")
