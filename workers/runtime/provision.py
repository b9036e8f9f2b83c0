"""Idempotent provisioning of the JetStream streams and consumers declared in contracts."""

from __future__ import annotations

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

from contracts.streams import ConsumerSpec, ObjectStoreSpec, StreamSpec
from contracts.subjects import DEFAULT_PREFIX

from .logging import get_logger

log = get_logger("provision")


class StreamConflictError(RuntimeError):
    """A stream exists with a config that cannot be changed in place."""


def stream_name(spec: StreamSpec, prefix: str = DEFAULT_PREFIX) -> str:
    """Streams of another prefix (replays, isolated tests) get their own names."""
    return spec.name if prefix == DEFAULT_PREFIX else f"{spec.name}_{prefix.upper()}"


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


async def ensure_stream(js: JetStreamContext, config: StreamConfig) -> str:
    """Create the stream, or update it when only mutable limits differ. Returns what it did."""
    try:
        return await _ensure_stream(js, config)
    except APIError as error:
        raise StreamConflictError(f"NATS refused the config of stream {config.name}: {error.description}") from None


async def _ensure_stream(js: JetStreamContext, config: StreamConfig) -> str:
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
) -> None:
    overrides = max_age_overrides or {}
    for spec in streams:
        outcome = await ensure_stream(js, stream_config(spec, prefix, overrides.get(spec.name), replicas))
        if outcome != "unchanged":
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
