"""Reminders, the ``set_reminder`` tool's logic: arguments to a due time, the job JetStream keeps, the event.

A reminder is a JetStream message schedule (ADR-51, NATS 2.12+): the worker stores a ``ReminderJob`` on
``sched.<session>.reminder.<id>`` with ``Nats-Schedule: @at <RFC 3339 time>`` and
``Nats-Schedule-Target: sched.<session>.fired.<id>``; when it is due the NATS server stores the same
message on the target (and removes the schedule), and the tools worker, reading the fired copies through
a durable consumer, publishes ``reminder.due`` on the session's events. Nothing waits in a process: a
tools worker stopped before a reminder is due tells it when it is back, once (the consumer's ack).

The id is derived from the session, the turn and the call's own words, so a call made twice (a turn
redelivered after its orchestrator died, the model repeating itself) sets one reminder: a schedule's
subject is its identity and a second one replaces the first.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
from typing import Any

from nats.js.api import Header

from contracts import events as ev
from contracts.limits import REMINDER_TEXT_CHARS
from contracts.tools import REMINDER_MAX_S, REMINDER_MIN_S

from .core import zone


class ReminderError(ValueError):
    """The arguments cannot make a reminder; the message says why, for the model."""


def _span(seconds: float) -> str:
    for unit, size in (("days", 86_400), ("hours", 3_600), ("minutes", 60)):
        if seconds >= size:
            return f"{seconds / size:.3g} {unit}"
    return f"{seconds:g} second" + ("" if seconds == 1 else "s")


def due_at(arguments: dict[str, Any], session_zone: str | None, now: float) -> float:
    """When the reminder is due (epoch s): ``delay_s`` from now, or ``at`` (in the session's zone unless it
    has an offset); from REMINDER_MIN_S to REMINDER_MAX_S ahead."""
    delay, at = arguments.get("delay_s"), arguments.get("at")
    if (delay is None) == (at is None or at == ""):
        raise ReminderError("give either delay_s (seconds from now) or at (an ISO 8601 date and time), not both")
    if delay is not None:
        if isinstance(delay, bool) or not isinstance(delay, int | float) or not math.isfinite(delay):
            raise ReminderError("delay_s must be a number of seconds")
        due = now + float(delay)
    else:
        if not isinstance(at, str) or len(at) > 64:
            raise ReminderError("at must be an ISO 8601 date and time, e.g. 2030-01-31T09:00")
        try:
            when = dt.datetime.fromisoformat(at.strip())
        except ValueError:
            raise ReminderError(f"at {at[:64]!r} is not an ISO 8601 date and time, e.g. 2030-01-31T09:00") from None
        if when.tzinfo is None:
            when = when.replace(tzinfo=zone(session_zone))
        due = when.timestamp()
    ahead = due - now
    if ahead < REMINDER_MIN_S - 1e-6:
        raise ReminderError(
            "that time has passed" if ahead < 0 else f"a reminder must be at least {_span(REMINDER_MIN_S)} ahead"
        )
    if ahead > REMINDER_MAX_S + 1e-6:
        raise ReminderError(f"a reminder can be at most {_span(REMINDER_MAX_S)} ahead")
    return due


def reminder_text(arguments: dict[str, Any]) -> str:
    text = arguments.get("text")
    if not isinstance(text, str) or not text.strip():
        raise ReminderError("text must say what to remind the user of")
    if len(text) > REMINDER_TEXT_CHARS:
        raise ReminderError(f"text is longer than {REMINDER_TEXT_CHARS} characters")
    return text.strip()


def reminder_id(session_id: str, turn_id: str, text: str, when: Any) -> str:
    """The same for the same call in the same turn (a repeated call sets one reminder)."""
    key = "\n".join((session_id, turn_id, text, repr(when)))
    return hashlib.sha256(key.encode()).hexdigest()[:24]


def job(call: ev.ToolRequest, now: float, producer: str) -> ev.ReminderJob:
    """The reminder a ``set_reminder`` call asks for; ReminderError (or UnknownZoneError) when it cannot be."""
    text = reminder_text(call.arguments)
    due = due_at(call.arguments, call.time_zone, now)
    when = call.arguments.get("delay_s", call.arguments.get("at"))
    return ev.ReminderJob(
        session_id=call.session_id,
        turn_id=None,  # it outlives the turn: an interrupt of that turn must not hide it
        producer=producer,
        reminder_id=reminder_id(call.session_id, call.turn_id, text, when),
        text=text,
        due_at=due,
        set_in_turn=call.turn_id,
        published_at=now,
    )


def rfc3339(epoch: float) -> str:
    """UTC, to the millisecond, as the server's ``@at`` takes it."""
    return dt.datetime.fromtimestamp(epoch, dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def schedule_headers(reminder: ev.ReminderJob, target: str) -> dict[str, str]:
    return {Header.SCHEDULE.value: f"@at {rfc3339(reminder.due_at)}", Header.SCHEDULE_TARGET.value: target}


def result(reminder: ev.ReminderJob, session_zone: str | None, now: float) -> dict[str, Any]:
    """What the model reads: the id, when it is due in the user's zone, in how long."""
    where = zone(session_zone)
    local = dt.datetime.fromtimestamp(reminder.due_at, where)
    in_s = round(reminder.due_at - now, 1)
    return {
        "reminder_id": reminder.reminder_id,
        "due": local.isoformat(timespec="seconds"),
        "in_s": in_s,
        "text": f"Reminder set for {local:%A %d %B %Y, %H:%M:%S} ({where.key}), in {_span(in_s)}: {reminder.text}",
    }


def due_event(reminder: ev.ReminderJob, producer: str) -> ev.ReminderDue:
    """The event the session gets when the reminder is due. Its id is the reminder's, so a redelivered fired
    copy is stored and forwarded once (the stream's and the edge's dedupe)."""
    return ev.ReminderDue(
        event_id=f"reminder-{reminder.reminder_id}",
        session_id=reminder.session_id,
        producer=producer,
        reminder_id=reminder.reminder_id,
        text=reminder.text,
        due_at=reminder.due_at,
        set_at=reminder.published_at,
        set_in_turn=reminder.set_in_turn,
    )
