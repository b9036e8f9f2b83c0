"""The recall_memory and set_reminder tools' logic without the bus: ranking, scoping, bounds, due times."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from contracts import events as ev
from contracts.limits import QUERY_CHARS, REMINDER_TEXT_CHARS
from contracts.tools import BY_TOOL, REMINDER_MAX_S
from workers.memory.recall import Recall, RecallError, score, snippet, terms
from workers.memory.store import Fact, SessionMemory, Summary, Turn
from workers.tools import reminders
from workers.tools.reminders import ReminderError

SESSION, OTHER = "session-recall-1", "session-recall-2"
NOW = 1_800_000_000.0  # 2027-01-15T08:00:00Z


class FakeStore:
    """Turns and facts by session; records which sessions were read."""

    def __init__(self, turns: dict[str, list[Turn]], facts: dict[str, list[Fact]]) -> None:
        self.turns, self.facts = turns, facts
        self.read: list[str] = []

    async def recent_turns(self, session_id: str, limit: int, before: int | None = None) -> list[Turn]:
        self.read.append(session_id)
        return sorted(self.turns.get(session_id, []), key=lambda t: -t.position)[:limit]

    async def session(self, session_id: str, turns: int) -> SessionMemory:
        self.read.append(session_id)
        return SessionMemory([], Summary("s", 1) if turns else None, self.facts.get(session_id, []))


def call(
    tool: str, session: str = SESSION, turn: str = "t9", zone: str | None = None, **arguments: Any
) -> ev.ToolRequest:
    return ev.ToolRequest(
        session_id=session, turn_id=turn, producer="test", call_id="c1", tool=tool, arguments=arguments, time_zone=zone
    )


def turn(position: int, text: str, role: str = "user", turn_id: str | None = None) -> Turn:
    return Turn(role, text, turn_id or f"t{position}", NOW - 1_000 + position, position)  # type: ignore[arg-type]


@pytest.fixture
def store() -> FakeStore:
    return FakeStore(
        {
            SESSION: [
                turn(1, "My sister is called Marguerite and she lives in Lyon."),
                turn(2, "Nice, Lyon is lovely.", "assistant"),
                turn(3, "Our dog Biscuit needs his vaccine on Friday."),
                turn(4, "I will remind you about the dogs.", "assistant"),
                turn(5, "Unrelated chatter about the weather."),
                turn(9, "What did I say about my sister?", turn_id="t9"),  # the asking turn itself
            ],
            OTHER: [turn(1, "My sister is called Beatrice."), turn(2, "Biscuit the dog")],
        },
        {SESSION: [Fact("name", "Their name is Ada")], OTHER: [Fact("sister", "Their sister is Beatrice")]},
    )


def test_terms_drop_stop_words_and_repeats() -> None:
    assert terms("What did I say about my SISTER's name, my sister?") == ["sister", "name"]
    assert terms("what did I say?") == []


def test_score_counts_the_share_of_terms_with_plural_and_longer_forms() -> None:
    assert score(["dog", "vaccine"], "Our dogs need their vaccines") == 1.0
    assert score(["dogs"], "the dog barks") == 1.0
    assert score(["dog", "cat"], "a dog") == 0.5
    assert score(["an"], "and banana") == 0.0


def test_snippet_keeps_the_match_of_a_long_text() -> None:
    text = "x " * 400 + "the secret word is heliotrope " + "y " * 400
    cut = snippet(text, ["heliotrope"])
    assert "heliotrope" in cut and cut.startswith("…") and cut.endswith("…") and len(cut) <= 302


async def test_recall_ranks_the_sessions_own_turns_and_leaves_out_the_question(store: FakeStore) -> None:
    result = await Recall(store).recall(call("recall_memory", query="sister Lyon"))
    texts = [m["text"] for m in result["matches"]]
    assert texts == ["My sister is called Marguerite and she lives in Lyon.", "Nice, Lyon is lovely."]
    assert result["matches"][0]["score"] == 1.0 and result["matches"][1]["score"] == 0.5
    assert result["matches"][0]["role"] == "user" and result["matches"][0]["at"].endswith("+00:00")
    assert "Beatrice" not in str(result) and set(store.read) == {SESSION}


async def test_recall_is_bounded_and_in_the_sessions_zone(store: FakeStore) -> None:
    result = await Recall(store).recall(call("recall_memory", zone="Asia/Tokyo", query="dog", limit=1))
    ((match,),) = (result["matches"],)
    assert match["text"].startswith("I will remind you about the dogs")  # the newer of two equal matches
    assert match["at"].endswith("+09:00")


async def test_recall_finds_facts_and_says_when_nothing_matches(store: FakeStore) -> None:
    assert (await Recall(store).recall(call("recall_memory", query="name")))["facts"] == ["Their name is Ada"]
    nothing = await Recall(store).recall(call("recall_memory", query="volcano"))
    assert nothing["matches"] == [] and nothing["facts"] == [] and "Nothing earlier" in nothing["text"]


@pytest.mark.parametrize(
    ("arguments", "reason"),
    [
        ({}, "query must be"),
        ({"query": "   "}, "query must be"),
        ({"query": 42}, "query must be"),
        ({"query": "x" * (QUERY_CHARS + 1)}, "longer than"),
        ({"query": "dog", "limit": 0}, "limit must be"),
        ({"query": "dog", "limit": 11}, "limit must be"),
        ({"query": "dog", "limit": True}, "limit must be"),
        ({"query": "what did I say?"}, "no words"),
    ],
)
async def test_recall_refuses_bad_arguments(store: FakeStore, arguments: dict[str, Any], reason: str) -> None:
    with pytest.raises(RecallError, match=reason):
        await Recall(store).recall(call("recall_memory", **arguments))


def test_recall_result_schema_is_what_the_contract_says() -> None:
    spec = BY_TOOL["recall_memory"]
    assert spec.parameters["required"] == ["query"] and set(spec.result["required"]) == {"matches", "facts", "text"}


# ---------------------------------------------------------------- reminders


def test_a_delay_makes_a_job_due_then() -> None:
    job = reminders.job(call("set_reminder", text=" Take the cake out ", delay_s=90), NOW, "tools")
    assert job.due_at == NOW + 90 and job.text == "Take the cake out" and job.session_id == SESSION
    assert job.turn_id is None and job.set_in_turn == "t9" and len(job.reminder_id) == 24
    assert reminders.schedule_headers(job, "sb.sched.x.fired.y") == {
        "Nats-Schedule": "@at 2027-01-15T08:01:30.000Z",
        "Nats-Schedule-Target": "sb.sched.x.fired.y",
    }
    result = reminders.result(job, "Europe/Paris", NOW)
    assert result["due"] == "2027-01-15T09:01:30+01:00" and result["in_s"] == 90
    assert "1.5 minutes" in result["text"] and result["reminder_id"] == job.reminder_id


def test_the_same_call_makes_the_same_reminder_and_another_call_another() -> None:
    first = reminders.job(call("set_reminder", text="stretch", delay_s=60), NOW, "tools")
    again = reminders.job(call("set_reminder", text="stretch", delay_s=60), NOW + 5, "tools")
    assert again.reminder_id == first.reminder_id
    other_turn = reminders.job(call("set_reminder", turn="t10", text="stretch", delay_s=60), NOW, "tools")
    other_session = reminders.job(call("set_reminder", session=OTHER, text="stretch", delay_s=60), NOW, "tools")
    later = reminders.job(call("set_reminder", text="stretch", delay_s=120), NOW, "tools")
    assert len({first.reminder_id, other_turn.reminder_id, other_session.reminder_id, later.reminder_id}) == 4


def test_an_iso_time_is_in_the_sessions_zone_unless_it_has_an_offset() -> None:
    local = reminders.job(call("set_reminder", zone="Europe/Paris", text="call", at="2027-01-15T10:00"), NOW, "t")
    assert local.due_at == dt.datetime(2027, 1, 15, 9, 0, tzinfo=dt.UTC).timestamp()
    utc = reminders.job(call("set_reminder", text="call", at="2027-01-15T10:00"), NOW, "t")
    assert utc.due_at == dt.datetime(2027, 1, 15, 10, 0, tzinfo=dt.UTC).timestamp()
    offset = reminders.job(call("set_reminder", zone="Asia/Tokyo", text="call", at="2027-01-15T10:00:00Z"), NOW, "t")
    assert offset.due_at == utc.due_at


@pytest.mark.parametrize(
    ("arguments", "reason"),
    [
        ({"delay_s": 60}, "text must say"),
        ({"text": "  ", "delay_s": 60}, "text must say"),
        ({"text": "x" * (REMINDER_TEXT_CHARS + 1), "delay_s": 60}, "longer than"),
        ({"text": "x"}, "either delay_s"),
        ({"text": "x", "delay_s": 60, "at": "2027-01-15T10:00"}, "either delay_s"),
        ({"text": "x", "delay_s": 0.5}, "at least 1 second ahead"),
        ({"text": "x", "delay_s": -5}, "has passed"),
        ({"text": "x", "delay_s": REMINDER_MAX_S + 1}, "at most 7 days"),
        ({"text": "x", "delay_s": float("inf")}, "number of seconds"),
        ({"text": "x", "delay_s": True}, "number of seconds"),
        ({"text": "x", "delay_s": "60"}, "number of seconds"),
        ({"text": "x", "at": "next tuesday"}, "not an ISO 8601"),
        ({"text": "x", "at": "2020-01-01T00:00Z"}, "has passed"),
        ({"text": "x", "at": "2030-01-01T00:00Z"}, "at most 7 days"),
        ({"text": "x", "at": 5}, "must be an ISO 8601"),
    ],
)
def test_bad_reminders_are_refused_with_the_reason(arguments: dict[str, Any], reason: str) -> None:
    with pytest.raises(ReminderError, match=reason):
        reminders.job(call("set_reminder", **arguments), NOW, "tools")


def test_an_unknown_zone_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown time zone"):
        reminders.job(call("set_reminder", zone="Mars/Olympus", text="x", at="2027-01-15T10:00"), NOW, "tools")


def test_the_due_event_belongs_to_no_turn_and_its_id_is_the_reminders() -> None:
    job = reminders.job(call("set_reminder", text="tea", delay_s=5), NOW, "tools")
    due = reminders.due_event(job, "tools")
    assert due.turn_id is None and due.event_id == f"reminder-{job.reminder_id}" and due.text == "tea"
    assert due.set_at == NOW and due.due_at == NOW + 5 and due.set_in_turn == "t9"
    assert reminders.due_event(job, "tools").event_id == due.event_id  # a redelivery: the same event
