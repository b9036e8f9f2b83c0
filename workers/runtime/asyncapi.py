"""A worker's subscriptions as FastStream declarations, read from its class: the AsyncAPI document's
source (ops/contracts_gen.py) and the contract checks' (ops/contract_checks.py). Nothing is
constructed or connected; FastStream takes each payload's schema from the contract's model."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, get_args, get_origin, get_type_hints

from faststream.nats import JStream, NatsRouter

from contracts.subjects import DEFAULT_PREFIX

from .consumes import Consumption, Delivery
from .provision import stream_name
from .worker import Worker


def declared_router(worker_type: type[Worker[Any]], prefix: str = DEFAULT_PREFIX) -> NatsRouter:
    router = NatsRouter()
    for consumption in worker_type.consumptions():
        router.subscriber(
            _subject(consumption, prefix),
            **_options(consumption, prefix),
            title=consumption.title(worker_type.name),
            description=_description(consumption),
        )(_schema_of(_payload(worker_type, consumption)))
    return router


def _payload(worker_type: type[Worker[Any]], consumption: Consumption) -> Any:
    """What the handler takes: its first parameter's type (a union for a consumer of several subjects)."""
    hints = get_type_hints(getattr(worker_type, consumption.method), include_extras=True)
    hints.pop("return", None)
    first = next(iter(hints.values()), None)
    if consumption.batch > 1 and get_origin(first) is list:  # a batch: list[event] or list[tuple[event, Delivery]]
        (first,) = get_args(first)
        if get_origin(first) is tuple:
            first = get_args(first)[0]
    return consumption.model if first in (None, Delivery) else first


def _subject(consumption: Consumption, prefix: str) -> str:
    contract = consumption.contract
    if consumption.delivery == "recorded" and consumption.filter:
        return f"{prefix}.{consumption.filter}"
    if contract is None and consumption.durable is not None:
        return f"{prefix}.{consumption.durable.filter_subjects[0].split('.', 1)[1]}"
    assert contract is not None
    if consumption.delivery == "partitioned":
        return contract.subject("{session_id}", prefix, partition="{partition}")
    return contract.template(prefix)


def _options(consumption: Consumption, prefix: str) -> dict[str, Any]:
    if consumption.durable is not None:
        return {
            "stream": JStream(stream_name(_stream(consumption.durable.stream), prefix), declare=False),
            "durable": consumption.durable.durable,
            "pull_sub": True,
        }
    return {"queue": consumption.queue} if consumption.queue else {}


def _stream(name: str) -> Any:
    from contracts.streams import STREAMS

    return next(s for s in STREAMS if s.name == name)


def _description(consumption: Consumption) -> str:
    parts = [f"delivery: {consumption.delivery}"]
    if consumption.durable is not None:
        parts.append(
            f"durable consumer {consumption.durable.durable} on " + ", ".join(consumption.durable.filter_subjects)
        )
    if consumption.batch > 1:
        parts.append(f"up to {consumption.batch} messages per call")
    if consumption.stream is not None:
        parts.append(
            f"reads what {consumption.stream.name} recorded" + (" (headers only)" if consumption.headers_only else "")
        )
    if consumption.replies:
        parts.append("request/reply")
    return "; ".join(parts)


def _schema_of(model: Any) -> Callable[[Any], Awaitable[None]]:
    """A stand-in typed with ``model`` for FastStream to read (never called)."""

    async def declared(message: Any) -> None:
        raise NotImplementedError("declared for the AsyncAPI document only")

    declared.__annotations__ = {"message": model or bytes, "return": None}
    return declared
