"""Checking a message seen on the wire against the contracts (used by the contract tap and `sb tail`)."""

from __future__ import annotations

from collections.abc import Mapping

from pydantic import ValidationError

from . import headers as h
from .subjects import Subject, find

#: Subjects of the NATS system itself (inboxes, JetStream API, service discovery, KV, objects).
SYSTEM_PREFIXES = ("_INBOX.", "$JS.", "$SRV.", "$KV.", "$O.", "$SYS.", "_R_.")


def declared(subject: str) -> Subject | None:
    """The declared subject for a concrete subject under any prefix (replays use other prefixes)."""
    prefix = subject.split(".", 1)[0]
    return find(subject, prefix)


def check_message(subject: str, headers: Mapping[str, str] | None, data: bytes) -> str | None:
    """None when the message is declared and valid, else what is wrong with it."""
    if subject.startswith(SYSTEM_PREFIXES):
        return None
    spec = declared(subject)
    if spec is None:
        return f"{subject}: subject is not declared in contracts/subjects.py"
    body = (headers or {}).get(h.META, "") if spec.binary else data
    if spec.binary and not body:
        return f"{subject}: binary message without its {h.META} header"
    try:
        event = spec.message.model_validate_json(body)
    except ValidationError as error:
        return f"{subject}: payload is not a valid {spec.message.__name__}: {error.errors()[0]['msg']}"
    session = getattr(event, "session_id", None)
    if spec.per_session and session != subject.split(".")[2]:
        return f"{subject}: session_id {session!r} does not match the subject"
    return None
