"""Tools declared as data: valid schemas, a subject each, served by the tools worker, called by the orchestrator."""

from __future__ import annotations

import jsonschema  # type: ignore[import-untyped]

from contracts import events as ev
from contracts.subjects import BY_NAME, PUBLISHERS, REPLIES, WORKERS, Lane
from contracts.tools import TOOLS
from ops import access, registry
from workers.runtime.consumes import consumptions


def test_every_tool_has_valid_schemas_and_its_own_rpc_subject() -> None:
    for tool in TOOLS:
        jsonschema.Draft202012Validator.check_schema(tool.parameters)
        jsonschema.Draft202012Validator.check_schema(tool.result)
        assert tool.parameters["type"] == "object" and 0 < tool.deadline_s <= 10
        subject = BY_NAME[tool.subject_name]
        assert subject.lane is Lane.RPC and subject.message is ev.ToolRequest
        assert subject.subject(prefix="sb") == f"sb.svc.tools.{tool.name}"
        assert REPLIES[tool.subject_name] is ev.ToolReply and PUBLISHERS[tool.subject_name] == ("orchestrator",)


def test_every_tool_is_served_by_one_shipped_worker_that_may_subscribe_to_it() -> None:
    servers: dict[str, list[str]] = {}
    for worker in WORKERS:
        for consumption in consumptions(registry.load(worker)):
            if consumption.subject.startswith("tools."):
                servers.setdefault(consumption.subject, []).append(worker)
                assert consumption.replies and f"*.svc.{consumption.subject}" in access.permissions(worker).subscribe
    served_by = {"search_knowledge": "retriever", "recall_memory": "memory"}
    assert servers == {t.subject_name: [served_by.get(t.name, "tools")] for t in TOOLS}
    assert not [s for s in access.permissions("tools").publish if ".svc." in s]  # it answers on inboxes only
    assert {f"*.svc.tools.{t.name}" for t in TOOLS} <= set(access.permissions("orchestrator").publish)


def test_tool_events_reach_the_client_and_are_recorded() -> None:
    for name in ("tool.call", "tool.result"):
        assert BY_NAME[name].to_client and BY_NAME[name].pattern.startswith("ev.")
        assert PUBLISHERS[name] == ("orchestrator",)


def test_a_due_reminder_reaches_the_client_and_only_the_tools_worker_schedules_one() -> None:
    due = BY_NAME["reminder.due"]
    assert due.to_client and due.pattern.startswith("ev.") and PUBLISHERS["reminder.due"] == ("tools",)
    assert PUBLISHERS["reminder.job"] == ("tools",) and PUBLISHERS["reminder.fired"] == ()  # the server fires it
    granted = access.permissions("tools").publish
    assert {"*.sched.*.reminder.*", "*.ev.*.turn.reminder_due"} <= set(granted)
    assert "*.sched.*.fired.*" not in granted
    assert not any("sched" in s for s in access.permissions("orchestrator").publish)
