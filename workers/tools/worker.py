"""Tools worker.

Serves: one request/reply subject per shipped tool (contracts/tools.py: get_time, calculate,
convert_units), queue group "tools" (stateless: replicas share the calls).
Replies: ToolReply with the result, or an error the model can read (never silence).
Logic: core (plain functions), calculator (safe AST evaluation), units.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from contracts import events as ev
from workers.runtime import RuntimeSettings, Worker, serves
from workers.runtime.logging import get_logger

from . import core

log = get_logger("tools")


class ToolsWorker(Worker[RuntimeSettings]):
    name = "tools"
    description = "Tools the model calls: date and time, calculator, unit converter"

    @serves("tools.get_time", queue="tools")
    async def on_get_time(self, call: ev.ToolRequest) -> ev.ToolReply:
        return self._answer(call, lambda: core.current_time(call.arguments, call.time_zone))

    @serves("tools.calculate", queue="tools")
    async def on_calculate(self, call: ev.ToolRequest) -> ev.ToolReply:
        return self._answer(call, lambda: core.calculation(call.arguments))

    @serves("tools.convert_units", queue="tools")
    async def on_convert_units(self, call: ev.ToolRequest) -> ev.ToolReply:
        return self._answer(call, lambda: core.conversion(call.arguments))

    def _answer(self, call: ev.ToolRequest, run: Callable[[], dict[str, Any]]) -> ev.ToolReply:
        reply = {"session_id": call.session_id, "turn_id": call.turn_id, "producer": self.bus.producer}
        try:
            return ev.ToolReply(**reply, result=run())
        except ValueError as error:  # the tools' own refusals (ToolError, unknown zone): the model reads why
            log.info("tool refused", tool=call.tool, error=str(error)[:200])
            return ev.ToolReply(**reply, error=str(error)[:1_000])


WORKER = ToolsWorker
