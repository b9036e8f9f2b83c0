"""Idempotent provisioning of the JetStream streams and consumers declared in contracts.

A service provisions only what it uses (``used_streams``): the NATS user it connects as may create
those streams and consumers, look at them and nothing else (ops/access.py). It may not change a
stream either: one that differs from the contracts is reported and left for an operator
(``sb provision``, connected as ``ops``) to update.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from typing import Any

from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    ConsumerInfo,
    DeliverPolicy,
    DiscardPolicy,
    ObjectStoreConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import APIError, NotFoundError
from nats.js.object_store import ObjectStore

from contracts.streams import STREAMS, USER_TURNS, ConsumerSpec, ObjectStoreSpec, StreamSpec
from contracts.subjects import BY_NAME, DEFAULT_PREFIX, PUBLISHERS, SERVICES, subject_matches

from .consumes import Consumption
from .logging import get_logger

log = get_logger("provision")


class StreamConflictError(RuntimeError):
    """A stream exists with a config that cannot be changed in place."""


def stream_name(spec: StreamSpec, prefix: str = DEFAULT_PREFIX) -> str:
    """Streams of another prefix (replays, isolated tests) get their own names."""
    return spec.name if prefix == DEFAULT_PREFIX else f"{spec.name}_{prefix.upper()}"


# The durable consumers the edge creates before any worker runs: the user turns it accepts are kept for
# the orchestrator even when none has started yet.
EDGE_CONSUMERS: tuple[ConsumerSpec, ...] = (USER_TURNS,)


def used_streams(service: str, consumptions: Iterable[Consumption] = ()) -> tuple[StreamSpec, ...]:
    """The declared streams ``service`` provisions (creates when missing): those recording what it
    publishes (``contracts.subjects.PUBLISHERS``) and those its durable consumers and recorded
    readers read. Anyone else (``ops``, a test's own worker) provisions them all."""
    if service not in SERVICES:
        return STREAMS
    published = [BY_NAME[name].wildcard() for name, who in PUBLISHERS.items() if service in who]
    read = {c.durable.stream for c in consumptions if c.durable} | {c.stream.name for c in consumptions if c.stream}
    return tuple(
        spec
        for spec in STREAMS
        if spec.name in read or any(subject_matches(s, p) for s in spec.absolute_subjects() for p in published)
    )


def stream_of(consumer: ConsumerSpec) -> StreamSpec:
    """The declared stream a durable consumer reads."""
    for spec in STREAMS:
        if spec.name == consumer.stream:
            return spec
    raise LookupError(f"consumer {consumer.durable} reads unknown stream {consumer.stream}")


def stream_config(
    spec: StreamSpec, prefix: str = DEFAULT_PREFIX, max_age_s: float | None = None, replicas: int = 1
) -> StreamConfig:
    """``replicas``: the most copies the deployment keeps (its servers); each stream declares how many it wants."""
    max_age = max_age_s if max_age_s is not None else spec.max_age_s
    return StreamConfig(
        name=stream_name(spec, prefix),
        description=spec.description,
        subjects=spec.absolute_subjects(prefix),
        retention=RetentionPolicy(spec.retention),
        storage=StorageType(spec.storage),
        max_age=max_age,
        max_bytes=spec.max_bytes,
        max_msg_size=spec.max_msg_size,
        duplicate_window=min(spec.duplicate_window_s, max_age),
        discard=DiscardPolicy.OLD,
        num_replicas=min(spec.replicas, replicas),
        allow_msg_schedules=spec.allow_msg_schedules or None,  # unset, not false: as the server reports it
        # The server turns rollups on with schedules (a schedule replaces its subject's last one): say so, or
        # every start would see a difference and update the stream.
        allow_rollup_hdrs=spec.allow_msg_schedules,
    )


def consumer_config(spec: ConsumerSpec, prefix: str = DEFAULT_PREFIX, after: int = 0) -> ConsumerConfig:
    """``after``: a consumer re-created after the server lost it resumes after that stream sequence."""
    filters = [f"{prefix}.{s.split('.', 1)[1]}" for s in spec.filter_subjects]
    start: dict[str, Any] = (
        {"deliver_policy": DeliverPolicy.BY_START_SEQUENCE, "opt_start_seq": after + 1}
        if after
        else {"deliver_policy": DeliverPolicy(spec.deliver)}
    )
    return ConsumerConfig(
        **start,
        durable_name=spec.durable,
        description=spec.description,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=spec.ack_wait_s,
        max_deliver=spec.max_deliver,
        max_ack_pending=spec.max_ack_pending,
        filter_subjects=filters,
    )


# Fields NATS refuses to change on an existing stream.
_IMMUTABLE = ("retention", "storage")


async def ensure_stream(js: JetStreamContext, config: StreamConfig, update: bool = True) -> str:
    """Create the stream, or update it when only mutable limits differ. Returns what it did.

    ``update=False`` (a service's user may not update streams): a stream that differs is left as it is
    and a warning names the difference ("outdated"); an operator applies it."""
    try:
        return await _ensure_stream(js, config, update)
    except APIError as error:
        raise StreamConflictError(f"NATS refused the config of stream {config.name}: {error.description}") from None


async def _ensure_stream(js: JetStreamContext, config: StreamConfig, update: bool) -> str:
    assert config.name is not None
    try:
        existing = (await js.stream_info(config.name)).config
    except NotFoundError:
        await js.add_stream(config)
        return "created"
    for field in _IMMUTABLE:
        have, want = getattr(existing, field), getattr(config, field)
        if have != want:
            raise StreamConflictError(
                f"stream {config.name} exists with {field}={_value(have)} but contracts declare "
                f"{field}={_value(want)}; NATS cannot change it in place. Back it up and delete it "
                f"(nats stream rm {config.name}) or fix contracts/streams.py"
            )
    wanted: dict[str, Any] = {k: v for k, v in config.as_dict().items() if k != "sealed"}
    current = {k: v for k, v in existing.as_dict().items() if k in wanted}
    if current == wanted:
        return "unchanged"
    if not update:
        differences = {k: f"{_value(current.get(k))} -> {_value(v)}" for k, v in wanted.items() if current.get(k) != v}
        log.warning(
            "stream differs from the contracts; left as it is (an operator updates it: sb provision)",
            stream=config.name,
            differences=differences,
        )
        return "outdated"
    await js.update_stream(config)
    return "updated"


def _value(v: Any) -> str:
    return str(getattr(v, "value", v))


async def provision(
    js: JetStreamContext,
    streams: tuple[StreamSpec, ...],
    consumers: tuple[ConsumerSpec, ...] = (),
    prefix: str = DEFAULT_PREFIX,
    max_age_overrides: dict[str, float] | None = None,
    replicas: int = 1,
    update: bool = True,
) -> None:
    """``update=False`` for a service: it creates what is missing and reports what differs (``ensure_stream``)."""
    overrides = max_age_overrides or {}
    for spec in streams:
        outcome = await ensure_stream(js, stream_config(spec, prefix, overrides.get(spec.name), replicas), update)
        if outcome not in ("unchanged", "outdated"):
            log.info("stream provisioned", stream=spec.name, outcome=outcome)
    by_name = {s.name: stream_name(s, prefix) for s in streams}
    for consumer in consumers:
        await ensure_consumer(js, by_name.get(consumer.stream, consumer.stream), consumer_config(consumer, prefix))


async def ensure_consumer(js: JetStreamContext, stream: str, config: ConsumerConfig) -> ConsumerInfo:
    """Create the durable consumer, or update an existing one in place. Where a consumer starts is fixed
    at its creation (NATS refuses to change it: error 10012), so an existing one keeps its own start."""
    assert config.durable_name is not None
    try:
        existing = (await js.consumer_info(stream, config.durable_name)).config
    except NotFoundError:
        return await js.add_consumer(stream, config)
    config = replace(
        config,
        deliver_policy=existing.deliver_policy,
        opt_start_seq=existing.opt_start_seq,
        opt_start_time=existing.opt_start_time,
    )
    return await js.add_consumer(stream, config)


def bucket_name(spec: ObjectStoreSpec, prefix: str = DEFAULT_PREFIX) -> str:
    """Buckets of another prefix get their own names, like streams."""
    return spec.bucket if prefix == DEFAULT_PREFIX else f"{spec.bucket}_{prefix.upper().replace('-', '_')}"


async def object_store(js: JetStreamContext, spec: ObjectStoreSpec, prefix: str = DEFAULT_PREFIX) -> ObjectStore:
    """The bucket, created on first use with the declared limits and TTL (idempotent)."""
    name = bucket_name(spec, prefix)
    try:
        return await js.object_store(name)
    except NotFoundError:
        config = ObjectStoreConfig(bucket=name, description=spec.description, max_bytes=spec.max_bytes, ttl=spec.ttl_s)
        return await js.create_object_store(name, config=config)
