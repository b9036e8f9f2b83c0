"""Tools worker.

Serves: one request/reply subject per shipped tool (contracts/tools.py: get_time, calculate,
convert_units, set_reminder), queue group "tools" (stateless: replicas share the calls).
Consumes: reminder.fired through the durable JetStream consumer ``tools-reminders`` (contracts/streams.py
REMINDERS): reminders the NATS server fired when due.
Produces: ToolReply with the result, or an error the model can read (never silence); reminder.job (a
JetStream message schedule in SB_SCHEDULES) and reminder.due (to the session, when due).
Logic: core (plain functions), calculator (safe AST evaluation), units, reminders.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import nats.errors
from nats.js.errors import Error as JetStreamError
from pydantic import Field

from contracts import events as ev
from contracts.streams import REMINDERS, SCHEDULES
from contracts.subjects import BY_NAME
from workers.runtime import Delivery, RuntimeSettings, Worker, consumes, serves
from workers.runtime.bus import headers_for
from workers.runtime.logging import get_logger
from workers.runtime.provision import stream_name

from . import core, reminders

log = get_logger("tools")
#: What a JetStream request can raise while the bus or the stream cannot answer.
_BUS_ERRORS = (TimeoutError, nats.errors.Error, JetStreamError)


class ToolsSettings(RuntimeSettings):
    max_reminders_per_session: int = Field(
        default=20,
        ge=1,
        le=1_000,
        description="Reminders a session may have waiting at once (set_reminder refuses more)",
    )


class ToolsWorker(Worker[ToolsSettings]):
    name = "tools"
    description = "Tools the model calls: date and time, calculator, unit converter, reminders"

    @serves("tools.get_time", queue="tools")
    async def on_get_time(self, call: ev.ToolRequest) -> ev.ToolReply:
        return self._answer(call, lambda: core.current_time(call.arguments, call.time_zone))

    @serves("tools.calculate", queue="tools")
    async def on_calculate(self, call: ev.ToolRequest) -> ev.ToolReply:
        return self._answer(call, lambda: core.calculation(call.arguments))

    @serves("tools.convert_units", queue="tools")
    async def on_convert_units(self, call: ev.ToolRequest) -> ev.ToolReply:
        return self._answer(call, lambda: core.conversion(call.arguments))

    # One at a time: the per-session count is read, then a reminder added (a replica's count stays exact).
    @serves("tools.set_reminder", queue="tools", max_in_flight=1)
    async def on_set_reminder(self, call: ev.ToolRequest) -> ev.ToolReply:
        now = time.time()
        try:
            job = reminders.job(call, now, self.bus.producer)
        except ValueError as error:  # ReminderError, an unknown zone: the model reads why
            log.info("tool refused", tool=call.tool, error=str(error)[:200])
            return self._refuse(call, str(error))
        try:
            waiting = await self._waiting(call.session_id)
            subject = BY_NAME["reminder.job"].subject(call.session_id, self.bus.prefix, reminder_id=job.reminder_id)
            limit = self.settings.max_reminders_per_session
            if subject not in waiting and len(waiting) >= limit:
                return self._refuse(
                    call, f"this conversation has {len(waiting)} reminders waiting, the most it may have"
                )
            await self._schedule(job, subject)
        except _BUS_ERRORS as error:
            log.warning("reminder not set", error=repr(error)[:200])
            return self._refuse(call, "reminders cannot be set right now; try again later")
        log.info("reminder set", session=call.session_id, reminder=job.reminder_id, in_s=round(job.due_at - now, 1))
        return self._answer(call, lambda: reminders.result(job, call.time_zone, now))

    @consumes("reminder.fired", delivery="jetstream", durable=REMINDERS)
    async def on_reminder_fired(self, job: ev.ReminderJob, delivery: Delivery) -> None:
        """Tell the session (stored before the fired copy is acked: a failure is redelivered, a repeat is
        deduplicated by the event's id), then drop the fired copy from the stream."""
        if delivery.subject.split(".")[2] != job.session_id:  # only its own session's subject: never another's
            log.error("a fired reminder names another session; dropped", subject=delivery.subject[:200])
            return
        await self.bus.publish_stored(reminders.due_event(job, self.bus.producer), within_s=5.0)
        log.info(
            "reminder due", session=job.session_id, reminder=job.reminder_id, late_s=round(time.time() - job.due_at, 1)
        )
        try:
            await self.bus.js.delete_msg(stream_name(SCHEDULES, self.bus.prefix), delivery.stream_sequence)
        except _BUS_ERRORS as error:  # kept until the stream's max age: harmless
            log.debug("fired reminder not deleted", error=repr(error)[:200])

    async def _waiting(self, session_id: str) -> set[str]:
        """The subjects of the session's reminders that are not due yet (the server removes a fired schedule)."""
        pattern = BY_NAME["reminder.job"].subject(session_id, self.bus.prefix, reminder_id="*")
        info = await self.bus.js.stream_info(stream_name(SCHEDULES, self.bus.prefix), subjects_filter=pattern)
        return set(info.state.subjects or {})

    async def _schedule(self, job: ev.ReminderJob, subject: str) -> None:
        """Store the reminder as a message schedule; the server fires it on the reminder's fired subject."""
        self.bus.may_publish(BY_NAME["reminder.job"])
        target = BY_NAME["reminder.fired"].subject(job.session_id, self.bus.prefix, reminder_id=job.reminder_id)
        # The server fires it with these headers, less Nats-Msg-Id and the schedule's own, plus Nats-Scheduler.
        headers = headers_for(job) | reminders.schedule_headers(job, target)
        await self.bus.js.publish(subject, job.model_dump_json().encode(), headers=headers)

    def _answer(self, call: ev.ToolRequest, run: Callable[[], dict[str, Any]]) -> ev.ToolReply:
        try:
            result = run()
        except ValueError as error:  # the tools' own refusals (ToolError, unknown zone): the model reads why
            log.info("tool refused", tool=call.tool, error=str(error)[:200])
            return self._refuse(call, str(error))
        return ev.ToolReply(session_id=call.session_id, turn_id=call.turn_id, producer=self.bus.producer, result=result)

    def _refuse(self, call: ev.ToolRequest, why: str) -> ev.ToolReply:
        return ev.ToolReply(
            session_id=call.session_id, turn_id=call.turn_id, producer=self.bus.producer, error=why[:1_000]
        )


WORKER = ToolsWorker
