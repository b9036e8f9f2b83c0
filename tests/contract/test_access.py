"""The bus permissions follow the contracts: who publishes what, who consumes what, and what each
service may do on JetStream (its streams, its durable consumers, its readers, its buckets)."""

from __future__ import annotations

import re
from types import SimpleNamespace
from typing import Any

import pytest

from contracts import events as ev
from contracts.envelope import new_id
from contracts.streams import CONSUMERS, INGEST_FILES, STREAMS, USER_TURNS, VIDEO_OBJECTS, StreamSpec
from contracts.subjects import BY_NAME, PUBLISHERS, SERVICES, SUBJECTS, subject_matches
from ops import access, registry
from workers.runtime import Bus
from workers.runtime.bus import NotAPublisherError
from workers.runtime.consumes import Consumption
from workers.runtime.provision import bucket_name, stream_name
from workers.transcriber.worker import Transcriber

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


# ---------------------------------------------------------------------- JetStream

API = "$JS.API"


def may(granted: access.Permissions, subject: str) -> bool:
    """What the server decides: allowed by some pattern and denied by none."""
    return allowed(granted.publish, subject) and not allowed(granted.deny_publish, subject)


def consumptions(service: str) -> list[Consumption]:
    return registry.load(service).consumptions() if service in registry.WORKERS else []


def records(spec: StreamSpec, name: str) -> bool:
    return any(subject_matches(s, BY_NAME[name].wildcard()) for s in spec.absolute_subjects())


def streams_of(service: str) -> set[str]:
    """The streams a service provisions, from the contracts: it publishes into them or reads them."""
    read = {c.durable.stream for c in consumptions(service) if c.durable}
    read |= {c.stream.name for c in consumptions(service) if c.stream}
    published = [n for n, who in PUBLISHERS.items() if service in who]
    return {s.name for s in STREAMS if s.name in read or any(records(s, n) for n in published)}


@pytest.mark.parametrize("service", SERVICES)
@pytest.mark.parametrize("prefix", ["sb", "cell-2"])
def test_a_service_uses_the_jetstream_api_only_for_what_it_declares(service: str, prefix: str) -> None:
    granted = access.permissions(service, ("sb", "cell-2"))
    own = streams_of(service)
    pulls = {c.durable.durable for c in consumptions(service) if c.durable}
    readers = {c.stream.name for c in consumptions(service) if c.stream}
    buckets = [bucket_name(b, prefix) for b in (INGEST_FILES, VIDEO_OBJECTS) if service in b.users]
    assert may(granted, f"{API}.INFO")
    for spec in STREAMS:
        name = stream_name(spec, prefix)
        for action in ("INFO", "CREATE"):
            assert may(granted, f"{API}.STREAM.{action}.{name}") == (spec.name in own), (service, action, name)
        for action in ("DELETE", "UPDATE", "PURGE"):  # single messages: test_only_the_declared_lookups...
            assert not may(granted, f"{API}.STREAM.{action}.{name}"), (service, action, name)
        # ephemeral consumers (nats-py's form without a name) only on the streams it reads that way
        assert may(granted, f"{API}.CONSUMER.CREATE.{name}") == (spec.name in readers), (service, name)
        assert not may(granted, f"{API}.CONSUMER.CREATE.{name}.spy.{prefix}.ev.>"), (service, name)
        assert not may(granted, f"{API}.CONSUMER.DURABLE.CREATE.{name}.spy"), (service, name)
    for consumer in CONSUMERS:
        on = f"{stream_name(next(s for s in STREAMS if s.name == consumer.stream), prefix)}.{consumer.durable}"
        creates = consumer.durable in pulls or (service == "edge" and consumer == USER_TURNS)
        for subject in (
            f"{API}.CONSUMER.DURABLE.CREATE.{on}",
            f"{API}.CONSUMER.CREATE.{on}",
            f"{API}.CONSUMER.CREATE.{on}.{prefix}.ev.*.turn.user",
            f"{API}.CONSUMER.INFO.{on}",
        ):
            assert may(granted, subject) == creates, (service, subject)
        for subject in (f"{API}.CONSUMER.MSG.NEXT.{on}", f"$JS.ACK.{on}.1.2.3.4.0"):
            assert may(granted, subject) == (consumer.durable in pulls), (service, subject)
        assert not may(granted, f"{API}.CONSUMER.DELETE.{on}"), (service, on)
    for bucket in ("SB_INGEST_FILES", "SB_VIDEO"):
        name = f"OBJ_{bucket if prefix == 'sb' else bucket + '_CELL_2'}"
        mine = name.removeprefix("OBJ_") in buckets
        for subject in (
            f"{API}.STREAM.CREATE.{name}",
            f"{API}.STREAM.PURGE.{name}",
            f"{API}.STREAM.MSG.GET.{name}",
            f"{API}.CONSUMER.CREATE.{name}",
            f"$O.{name.removeprefix('OBJ_')}.M.abc",
        ):
            assert may(granted, subject) == mine, (service, subject)
        assert not may(granted, f"{API}.STREAM.DELETE.{name}") and not may(granted, f"{API}.STREAM.UPDATE.{name}")
    kv = f"KV_{access.lease_bucket(prefix)}"
    assert may(granted, f"{API}.STREAM.CREATE.{kv}") == (service == "transcriber")
    assert not may(granted, f"{API}.STREAM.PURGE.{kv}")
    # a stream of its own making, or another deployment's streams: nothing at all
    for subject in (f"{API}.STREAM.CREATE.FORGE", f"{API}.STREAM.INFO.SB_EVENTS_OTHER", f"{API}.STREAM.LIST"):
        assert not may(granted, subject), (service, subject)


def test_only_the_declared_lookups_fetch_recorded_messages() -> None:
    """Single messages of the events stream: the orchestrator and the voice worker read sessions' settings
    back (workers/runtime/recorded.py); the tools worker deletes the fired copies of its reminders."""
    for service in SERVICES:
        granted = access.permissions(service)
        assert may(granted, f"{API}.STREAM.MSG.GET.SB_EVENTS") == (service in ("orchestrator", "voice")), service
        assert may(granted, f"{API}.STREAM.MSG.DELETE.SB_SCHEDULES") == (service == "tools"), service
        assert not may(granted, f"{API}.STREAM.MSG.DELETE.SB_EVENTS"), service


@pytest.mark.parametrize("service", SERVICES)
def test_a_server_of_any_prefix_grants_the_same_with_any_stream(service: str) -> None:
    """The test suite's shared server (prefixes=None): every stream token is ``*``, nothing else differs."""
    names = {stream_name(s) for s in STREAMS} | {b.bucket for b in (INGEST_FILES, VIDEO_OBJECTS)}
    names |= {f"OBJ_{b.bucket}" for b in (INGEST_FILES, VIDEO_OBJECTS)} | {access.lease_bucket("sb")}
    names.add(f"KV_{access.lease_bucket('sb')}")

    def any_stream(subject: str) -> str:
        return ".".join("*" if token in names else token for token in subject.split("."))

    pinned, wildcard = access.permissions(service), access.permissions(service, None)
    assert tuple(dict.fromkeys(any_stream(s) for s in pinned.publish)) == wildcard.publish
    assert pinned.subscribe == wildcard.subscribe and pinned.deny_publish == wildcard.deny_publish
    assert not any(re.search(r"[A-Za-z]_\*|\*_", s) for s in wildcard.publish)  # a token is whole or `*`


async def test_the_transcriber_opens_the_lease_bucket_it_may_use() -> None:
    class StopError(Exception):
        pass

    opened: list[str] = []

    async def create_key_value(config: Any) -> None:
        opened.append(config.bucket)
        raise StopError

    replica = SimpleNamespace(
        bus=SimpleNamespace(prefix="cell-2", js=SimpleNamespace(create_key_value=create_key_value)),
        settings=SimpleNamespace(lease_ttl_s=3.0, stream_replicas=1),
    )
    with pytest.raises(StopError):
        await Transcriber.open_leases(replica)  # type: ignore[arg-type]
    assert opened == [access.lease_bucket("cell-2")]
