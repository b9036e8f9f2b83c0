"""The bus permissions follow the contracts: who publishes what, who consumes what."""

from __future__ import annotations

import pytest

from contracts import events as ev
from contracts.envelope import new_id
from contracts.subjects import BY_NAME, PUBLISHERS, SERVICES, SUBJECTS, subject_matches
from ops import access, registry
from workers.runtime import Bus
from workers.runtime.bus import NotAPublisherError

SESSION = new_id()


def concrete(name: str, prefix: str = "sb") -> str:
    spec = BY_NAME[name]
    params = {"partition": "3"} if "{partition}" in spec.pattern else {}
    if "{worker}" in spec.pattern:
        params["worker"] = "memory"
    if "{reminder_id}" in spec.pattern:
        params["reminder_id"] = "r1"
    return spec.subject(SESSION if spec.per_session else None, prefix, **params)


def allowed(patterns: tuple[str, ...], subject: str) -> bool:
    return any(subject_matches(p, subject) for p in patterns)


def test_every_subject_names_its_publishers_among_the_services() -> None:
    assert set(PUBLISHERS) == {s.name for s in SUBJECTS}
    assert {who for names in PUBLISHERS.values() for who in names} <= set(SERVICES)


@pytest.mark.parametrize("service", SERVICES)
def test_a_service_may_publish_exactly_what_the_contracts_give_it(service: str) -> None:
    granted = access.permissions(service).publish
    for name, who in PUBLISHERS.items():
        if name == "deadletter":
            continue
        for prefix in ("sb", "replay-1"):
            assert allowed(granted, concrete(name, prefix)) == (service in who), (service, name)
    own, other = (f"sb.dlq.{service}", "sb.dlq.someone-else")
    assert allowed(granted, own) == (service in PUBLISHERS["deadletter"]) and not allowed(granted, other)


@pytest.mark.parametrize("worker", registry.WORKERS)
def test_a_worker_may_subscribe_to_what_its_handlers_consume(worker: str) -> None:
    granted = access.permissions(worker).subscribe
    for consumption in registry.load(worker).consumptions():
        if consumption.delivery in ("direct", "partitioned"):
            assert allowed(granted, concrete(consumption.subject)), (worker, consumption.subject)
    assert not allowed(granted, "sb.ev.x.turn.anything-not-declared")
    assert allowed(granted, f"_INBOX_{worker}.abc") and not allowed(granted, "_INBOX_edge.abc")


def test_the_edge_reads_its_sessions_client_subjects_and_not_the_workers_input() -> None:
    granted = access.permissions("edge").subscribe
    assert allowed(granted, concrete("reply.done")) and allowed(granted, concrete("audio.out"))
    assert not allowed(granted, concrete("audio.in")) and not allowed(granted, concrete("ingest.job"))


async def test_the_bus_refuses_a_service_publishing_what_is_not_its_own() -> None:
    bus = Bus(producer="orchestrator")  # not even connected: the check comes first
    turn = ev.UserTurn(session_id=SESSION, turn_id="t1", producer="orchestrator", text="forged", source="typed")
    with pytest.raises(NotAPublisherError, match=r"orchestrator does not publish 'turn\.user'.*edge, transcriber"):
        await bus.publish(turn)
    with pytest.raises(NotAPublisherError):
        await Bus(producer="edge").request("retrieval.query", turn, ev.RetrievalReply, timeout=1)
