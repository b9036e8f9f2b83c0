"""Contract tests: documents match the code, breaking changes need a version bump, subjects are declared.

Each check is also shown failing on a deliberately broken copy.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import json
from typing import Any, Literal

import pytest
from faststream.nats import NatsRouter
from pydantic import Field

from contracts import compat
from contracts import events as ev
from contracts.envelope import Event, TurnEvent
from contracts.subjects import BY_NAME, REPLIES, SUBJECTS
from contracts.validate import check_message
from ops import contracts_gen, registry
from ops.contract_checks import undeclared_subjects
from tests.contract_tap import DELIBERATELY_INVALID, ContractTap
from workers.runtime.asyncapi import declared_router
from workers.runtime.bus import flush_ordered

# ------------------------------------------------------------------ (a) documents match the code


def test_committed_documents_match_the_code() -> None:
    stale = [str(p) for p in contracts_gen.stale()]
    assert not stale, f"contract documents drifted; run `just contracts`: {stale}"


def test_drift_is_detected(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    class UserTurnWithMood(ev.UserTurn):
        mood: str = "calm"

    events = tuple(UserTurnWithMood if c is ev.UserTurn else c for c in ev.ALL_EVENTS)
    monkeypatch.setattr(contracts_gen, "ALL_EVENTS", events)
    drifted = [p.name for p, text in contracts_gen.generated_files().items() if p.read_text() != text]
    assert drifted == ["turn.user.json"]


def test_every_message_has_a_schema_and_a_subject() -> None:
    kinds_with_subject = {s.message.kind_name() for s in SUBJECTS}
    reply_kinds = {c.kind_name() for c in REPLIES.values()}
    assert {c.kind_name() for c in ev.ALL_EVENTS} == kinds_with_subject | reply_kinds
    asyncapi = json.loads(contracts_gen.ASYNCAPI_PATH.read_text())
    assert asyncapi["asyncapi"].startswith("3.")
    assert {s.name for s in SUBJECTS} <= set(asyncapi["channels"])


# ------------------------------------------------------------------ (b) breaking changes


def test_current_contracts_do_not_break_the_release() -> None:
    violations = compat.check(compat.load_released(), compat.snapshot())
    assert not violations, "breaking changes without a version bump:\n" + "\n".join(map(str, violations))


def _with(model: type[Event]) -> dict[str, Any]:
    """The current snapshot with one message replaced by a changed copy of the same kind."""
    events = tuple(model if c.kind_name() == model.kind_name() else c for c in ev.ALL_EVENTS)
    return compat.snapshot(events)


class RenamedField(TurnEvent):
    kind: Literal["turn.user"] = "turn.user"
    body: str  # was `text`
    source: Literal["typed", "spoken"]
    speech_ended_at: float | None = None


class ChangedType(TurnEvent):
    kind: Literal["turn.user"] = "turn.user"
    text: int  # was str
    source: Literal["typed", "spoken"]
    speech_ended_at: float | None = None


class NewRequired(ev.UserTurn):
    language: str


class NewRequiredBumped(ev.UserTurn):
    VERSION = 2
    language: str


class NewOptional(ev.UserTurn):
    language: str | None = Field(default=None)


@pytest.mark.parametrize(
    ("model", "rule"),
    [
        (RenamedField, "removed or renamed field"),
        (ChangedType, "changed type"),
        (NewRequired, "new required field"),
    ],
)
def test_breaking_change_without_bump_fails(model: type[Event], rule: str) -> None:
    violations = compat.check(compat.load_released(), _with(model))
    assert {v.target for v in violations} == {"turn.user"}
    assert rule in {v.rule for v in violations}


def test_bumped_version_allows_the_change_and_optional_fields_are_compatible() -> None:
    assert compat.check(compat.load_released(), _with(NewRequiredBumped)) == []
    assert compat.check(compat.load_released(), _with(NewOptional)) == []


def test_removed_or_renamed_subject_fails() -> None:
    renamed = tuple(
        dataclasses.replace(s, pattern="ev.{session_id}.data.delta") if s.name == "reply.delta" else s for s in SUBJECTS
    )
    removed = tuple(s for s in SUBJECTS if s.name != "interrupt")
    assert [v.rule for v in compat.check(compat.load_released(), compat.snapshot(subjects=renamed))] == [
        "renamed subject"
    ]
    assert [v.rule for v in compat.check(compat.load_released(), compat.snapshot(subjects=removed))] == [
        "removed subject"
    ]


def test_removed_message_fails() -> None:
    released = copy.deepcopy(compat.load_released())
    current = compat.snapshot(tuple(c for c in ev.ALL_EVENTS if c is not ev.AudioOutDone))
    assert [v.rule for v in compat.check(released, current)] == ["removed message"]


# ------------------------------------------------------------------ (c) declared subjects, valid payloads


@pytest.mark.parametrize("name", registry.WORKERS)
def test_worker_uses_only_declared_subjects(name: str) -> None:
    assert undeclared_subjects(declared_router(registry.load(name))) == []


def test_undeclared_subject_is_detected() -> None:
    router = NatsRouter()

    @router.subscriber("sb.ev.{session_id}.data.gossip")
    async def on_gossip(msg: dict[str, Any]) -> None: ...

    @router.subscriber(BY_NAME["turn.user"].template())
    async def on_turn(msg: ev.UserTurn) -> None: ...

    @router.subscriber("replay.ev.>")  # a whole recorded stream (what stats reads) is declared
    async def on_recorded(msg: dict[str, Any]) -> None: ...

    @router.subscriber("sb.ev.*.>")
    async def on_any(msg: dict[str, Any]) -> None: ...

    assert undeclared_subjects(router) == ["sb.ev.*.>", "sb.ev.*.data.gossip"]


def test_wire_check_accepts_valid_and_flags_invalid_messages() -> None:
    turn = ev.UserTurn(session_id="sessionAAAA", turn_id="t1", text="hi", source="typed", producer="t")
    subject = BY_NAME["turn.user"].subject("sessionAAAA")
    assert check_message(subject, {}, turn.model_dump_json().encode()) is None
    assert "not a valid UserTurn" in str(check_message(subject, {}, b'{"kind": "turn.user"}'))
    assert "does not match" in str(
        check_message(BY_NAME["turn.user"].subject("sessionBBBB"), {}, turn.model_dump_json().encode())
    )
    assert "not declared" in str(check_message("sb.ev.sessionAAAA.data.gossip", {}, b"{}"))
    assert "Sb-Meta" in str(check_message(BY_NAME["audio.in"].subject("sessionAAAA"), {}, b"\x00\x00"))


async def test_contract_tap_catches_a_bad_payload_on_the_wire(nats_url: str) -> None:
    import nats

    tap = ContractTap(skip_marked=False)
    listener, sender = await nats.connect(nats_url), await nats.connect(nats_url)
    await tap.start(listener)
    await flush_ordered(listener)
    await sender.publish(
        BY_NAME["reply.delta"].subject("sessionTAP01"),
        b'{"kind": "reply.delta", "text": 5}',
        headers={DELIBERATELY_INVALID: "1"},
    )
    await sender.flush()
    for _ in range(200):  # delivery to the listener is asynchronous
        if tap.violations:
            break
        await asyncio.sleep(0.01)
    await sender.close()
    await listener.close()
    assert len(tap.violations) == 1 and "ReplyDelta" in tap.violations[0]


def test_client_protocol_changes_are_checked_too() -> None:
    from contracts import client

    class Chat(client._Command):
        type: Literal["chat"]
        message: str  # was `text`

    current = compat.snapshot(client=tuple(Chat if c is client.Chat else c for c in client.CLIENT_MESSAGES))
    rules = {(v.target, v.rule) for v in compat.check(compat.load_released(), current)}
    assert ("Chat", "removed or renamed field") in rules
