"""Who owns what is stored: knowledge bases and their documents, uploads, video jobs and keyframes.

A session owns what it makes, unless the API key that created it names a **tenant**: then every
session of that tenant owns it together (docs/security.md). Operators' ``public`` bases are read
by every session and written by none. Memory (the conversation) always stays with its session.
The tenant travels in the events that store or read on a session's behalf (``tenant`` fields).
"""

from __future__ import annotations

from typing import Annotated

from pydantic import StringConstraints

#: A tenant's name: a short slug (it becomes part of collection and object names).
TENANT_PATTERN = r"^[a-z0-9][a-z0-9-]{0,31}$"
Tenant = Annotated[str, StringConstraints(pattern=TENANT_PATTERN)]

PUBLIC = "public"  # the operators' shared read-only bases; no session id or tenant owner is spelled so


def owner_of(session_id: str, tenant: str | None) -> str:
    """The owner of what a session stores: its tenant (``<tenant>.tenant``) or the session alone.

    The dot keeps owners apart: session ids and ``public`` have none, and a tenant's name ends at it,
    so no session, tenant or public base can ever be taken for another (``<owner>-<base>`` names)."""
    return f"{tenant}.tenant" if tenant else session_id
