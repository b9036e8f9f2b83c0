"""recall_memory and set_reminder against the real NATS server (JetStream message schedules) and the real
document store: requests as the orchestrator sends them, replies as the model reads them, the due reminder
as the client's socket sees it. The workers connect as their own NATS users, with their real permissions.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from nats.aio.client import Client as Nats
from nats.aio.msg import Msg

from contracts import events as ev
from contracts.envelope import new_id
from contracts.streams import EVENTS, SCHEDULES
from contracts.subjects import BY_NAME
from tests.support.bus import client_bus, serving
from tests.support.edge_client import connect, running_edge
from tests.support.mongo import database_url, mongo_url
from tests.support.scripted_llm import ScriptedLLM
from tests.support.waiting import eventually as until
from tests.support.waiting import probed
from workers.memory.worker import WORKER as MEMORY
from workers.memory.worker import MemorySettings
from workers.runtime import Bus, running_worker
from workers.runtime.provision import stream_name
from workers.tools.worker import WORKER as TOOLS
from workers.tools.worker import ToolsSettings

__all__ = ["mongo_url"]
PREFIX = "remind"
MAX_REMINDERS = 3


def tools_settings(nats_url: str, prefix: str = PREFIX) -> ToolsSettings:
    return ToolsSettings(nats_url=nats_url, subject_prefix=prefix, max_reminders_per_session=MAX_REMINDERS)


@pytest.fixture(scope="module")
async def edge(nats_url: str) -> AsyncIterator[str]:
    async with running_worker(TOOLS, tools_settings(nats_url)), running_edge(nats_url, subject_prefix=PREFIX) as url:
        yield url


@pytest.fixture
async def bus(nats_url: str) -> AsyncIterator[Bus]:
    """The test's own bus, playing the orchestrator (as the operators' user)."""
    async with client_bus(nats_url, PREFIX) as bus:
        yield bus


def request(
    tool: str, session: str, turn: str = "t1", zone: str | None = None, tenant: str | None = None, **arguments: Any
) -> ev.ToolRequest:
    return ev.ToolRequest(
        session_id=session,
        turn_id=turn,
        producer="orchestrator",
        call_id=new_id(),
        tool=tool,
        arguments=arguments,
        time_zone=zone,
        tenant=tenant,
    )


async def call(bus: Bus, tool: str, session: str, **kwargs: Any) -> ev.ToolReply:
    return await bus.request(f"tools.{tool}", request(tool, session, **kwargs), ev.ToolReply, timeout=3.0)


# ---------------------------------------------------------------- set_reminder


async def test_a_reminder_comes_back_to_the_sessions_client_when_due(edge: str, bus: Bus) -> None:
    client = await connect(edge)
    set_at = time.monotonic()
    reply = await call(
        bus, "set_reminder", client.session_id, zone="Europe/Paris", text="Take the tea out", delay_s=1.5
    )
    assert reply.error == "" and reply.result is not None
    assert reply.result["in_s"] == 1.5 and reply.result["due"].endswith(("+01:00", "+02:00"))
    events = await client.until(lambda e: e["kind"] == "reminder.due", timeout=6.0)
    waited = time.monotonic() - set_at
    due = events[-1]
    assert due["reminder_id"] == reply.result["reminder_id"] and due["text"] == "Take the tea out"
    assert due["session_id"] == client.session_id and due.get("turn_id") is None and due["set_in_turn"] == "t1"
    assert 1.3 <= waited < 4.0, waited  # not before it is due, and soon after (the server's scheduler)
    await client.close()


async def test_bad_reminders_get_an_error_reply_never_silence(edge: str, bus: Bus) -> None:
    session = new_id()
    cases: list[tuple[dict[str, Any], str]] = [
        ({"delay_s": 60}, "text must say"),
        ({"text": "x"}, "either delay_s"),
        ({"text": "x", "delay_s": 0.2}, "at least 1 second"),
        ({"text": "x", "delay_s": 8 * 86_400}, "at most 7 days"),
        ({"text": "x", "at": "yesterday at noon"}, "not an ISO 8601"),
        ({"text": "x" * 501, "delay_s": 60}, "longer than 500"),
    ]
    for arguments, reason in cases:
        reply = await call(bus, "set_reminder", session, **arguments)
        assert reply.result is None and reason in reply.error, (arguments, reply.error)
    reply = await call(bus, "set_reminder", session, zone="Nowhere/Atlantis", text="x", at="2030-01-01T10:00")
    assert "unknown time zone" in reply.error


async def test_reminders_are_bounded_per_session_and_a_repeated_call_sets_one(
    edge: str, bus: Bus, nats_url: str
) -> None:
    session, other = new_id(), new_id()
    ids = []
    for n in range(MAX_REMINDERS):
        reply = await call(bus, "set_reminder", session, text=f"reminder {n}", delay_s=3_600)
        assert reply.result is not None, reply.error
        ids.append(reply.result["reminder_id"])
    again = await call(bus, "set_reminder", session, text="reminder 0", delay_s=3_600)  # the same call, repeated
    assert again.result is not None and again.result["reminder_id"] == ids[0]
    refused = await call(bus, "set_reminder", session, text="one too many", delay_s=3_600)
    assert refused.result is None and f"{MAX_REMINDERS} reminders waiting" in refused.error
    assert (await call(bus, "set_reminder", other, text="another session's", delay_s=3_600)).result is not None
    info = await bus.js.stream_info(
        stream_name(SCHEDULES, PREFIX), subjects_filter=f"{PREFIX}.sched.{session}.reminder.*"
    )
    assert info.state.subjects is not None and len(info.state.subjects) == MAX_REMINDERS  # one schedule per id


async def test_a_reminder_survives_a_restart_of_the_tools_worker(nats_url: str, nc: Nats) -> None:
    prefix = "remindrestart"  # its own streams and consumer: no other test's worker tells its reminders
    session = new_id()
    seen: list[dict[str, Any]] = []

    async def got(msg: Msg) -> None:
        seen.append(json.loads(msg.data))

    await nc.subscribe(BY_NAME["reminder.due"].subject(session, prefix), cb=got)
    async with client_bus(nats_url, prefix) as bus:
        async with running_worker(TOOLS, tools_settings(nats_url, prefix)):
            reply = await call(bus, "set_reminder", session, text="still there?", delay_s=1.5)
            assert reply.result is not None, reply.error
        stopped = time.monotonic()
        await asyncio.sleep(max(0.0, 3.0 - (time.monotonic() - stopped)))  # due while no worker runs
        assert seen == []
        async with running_worker(TOOLS, tools_settings(nats_url, prefix)):
            await until(lambda: len(seen) >= 1, within=10.0)
            await asyncio.sleep(1.0)  # and only once
        assert [(e["kind"], e["text"], e["reminder_id"]) for e in seen] == [
            ("reminder.due", "still there?", reply.result["reminder_id"])
        ]
        recorded = await bus.js.stream_info(
            stream_name(EVENTS, prefix), subjects_filter=BY_NAME["reminder.due"].subject(session, prefix)
        )
        assert recorded.state.messages == 1  # recorded once, for replay and trace
        schedules = await bus.js.stream_info(stream_name(SCHEDULES, prefix))
        assert schedules.state.messages == 0  # the schedule fired (the server removed it), its copy was deleted


# ---------------------------------------------------------------- recall_memory


@pytest.fixture(scope="module")
async def memory(nats_url: str, mongo_url: str) -> AsyncIterator[Bus]:
    async with ScriptedLLM() as llm:
        settings = MemorySettings(
            nats_url=nats_url,
            mongo_url=database_url(mongo_url, "recall_it"),
            subject_prefix="recall",
            llm_base_url=llm.base_url,
            llm_model="scripted",
            summary_after_turns=0,
        )
        async with serving(MEMORY, settings) as bus:
            yield bus


def user(session: str, turn: str, text: str) -> ev.UserTurn:
    return ev.UserTurn(session_id=session, turn_id=turn, text=text, source="typed", producer="edge")


def reply_of(session: str, turn: str, text: str) -> ev.ReplyDone:
    return ev.ReplyDone(session_id=session, turn_id=turn, text=text, agent="general", producer="orchestrator")


async def test_recall_returns_only_the_calling_sessions_turns(memory: Bus) -> None:
    mine, other, tenant_mate = new_id(), new_id(), new_id()
    for event in (
        user(mine, "t1", "My sister Marguerite moved to Lyon last spring."),
        reply_of(mine, "t1", "Lyon is a lovely city."),
        user(mine, "t2", "I like tennis."),
        user(other, "t1", "My sister Beatrice lives in Lyon too."),
        user(tenant_mate, "t1", "Lyon sister secret of someone else"),
        user(mine, "t3", "Where does my sister live?"),  # the turn asking
    ):
        await memory.publish(event, durable=True)

    async def recalled() -> ev.ToolReply:
        return await call(memory, "recall_memory", mine, turn="t3", query="sister Lyon", tenant="acme")

    result = (await probed(recalled, lambda r: r.result is not None and len(r.result["matches"]) == 2)).result
    assert result is not None
    assert [(m["role"], m["text"]) for m in result["matches"]] == [
        ("user", "My sister Marguerite moved to Lyon last spring."),
        ("assistant", "Lyon is a lovely city."),
    ]
    assert "Beatrice" not in json.dumps(result) and "someone else" not in json.dumps(result)
    theirs = (await call(memory, "recall_memory", other, query="Marguerite tennis")).result
    assert theirs is not None and theirs["matches"] == []  # nothing of mine reaches another session
    assert "Nothing earlier" in theirs["text"]


async def test_recall_refuses_bad_arguments_with_an_error_reply(memory: Bus) -> None:
    session = new_id()
    cases: list[tuple[dict[str, Any], str]] = [
        ({}, "query must be"),
        ({"query": "x" * 4_001}, "longer than 4000"),
        ({"query": "sister", "limit": 50}, "limit must be"),
        ({"query": "what did I say?"}, "no words to look for"),
    ]
    for arguments, reason in cases:
        reply = await call(memory, "recall_memory", session, **arguments)
        assert reply.result is None and reason in reply.error, (arguments, reply.error)
