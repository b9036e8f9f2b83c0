"""Who may do what on the bus: one NATS user per service, its permissions derived from the contracts.

A service publishes the subjects ``contracts.subjects.PUBLISHERS`` gives it (and its own dead
letters), subscribes to what its handlers declare (``@consumes``/``@serves``; the edge: its
sessions' client subjects), and receives replies and JetStream deliveries on an inbox of its own
(``_INBOX_<user>``, so nobody reads another's replies). The prefix token of every subject is a
wildcard: replays and tests run under other prefixes.

On JetStream (``$JS.API``) it may do what its declarations need (``jetstream_use``), no more:

- the streams it provisions (``provision.used_streams``: those recording what it publishes, those
  it reads): look at them and create them when missing; never update, purge or delete one;
- its own durable consumers (``@consumes(delivery="jetstream", durable=...)``): create or update
  them (every form nats-py uses), pull, ack; the edge creates the orchestrator's turns consumer
  (``provision.EDGE_CONSUMERS``) and does nothing else with it; nobody deletes a durable, nor
  looks at, pulls from or acks another service's (denied by name);
- ``recorded`` readers (the stats worker): ephemeral consumers on the streams they read;
- what the code does beyond those declarations, listed below (``_LOOKS_UP``, ``_DELETES_FROM``,
  the transcriber's lease bucket);
- the object stores whose ``ObjectStoreSpec.users`` name it, and the transcriber its key-value
  bucket: their streams (``OBJ_<bucket>``, ``KV_<bucket>``) whole, less update and delete.

Stream names carry the deployment's subject prefix (``SB_EVENTS``, ``SB_EVENTS_<PREFIX>``), and a
JetStream API subject's stream token can only be matched whole, so the JetStream grants name the
streams of the ``prefixes`` given (default: ``contracts.subjects.DEFAULT_PREFIX``). ``prefixes=None``
puts ``*`` in every stream token instead, with the same structure: for a server hosting many
prefixes at once (the test suite's), where a service may then use any stream in the ways it
may use its own.

Operators' tools (``sb ...``) and the tests connect as ``ops``, allowed everything.

``just up`` and the test fixtures generate the credentials on first use into a folder of the
run directory (``credentials.json``, mode 0600; the server's configuration holds only bcrypt
hashes); deleting that folder rotates them at the next start.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bcrypt

from contracts.streams import (
    CONSUMERS,
    EVENTS,
    INGEST_FILES,
    SCHEDULES,
    VIDEO_OBJECTS,
    ConsumerSpec,
    ObjectStoreSpec,
    StreamSpec,
)
from contracts.subjects import BY_NAME, DEFAULT_PREFIX, PUBLISHERS, SERVICES, client_subjects
from workers.runtime.provision import EDGE_CONSUMERS, bucket_name, stream_name, stream_of, used_streams
from workers.runtime.worker import OPERATOR as OPS
from workers.runtime.worker import inbox_prefix

from . import registry

USERS: tuple[str, ...] = (*SERVICES, OPS)
CREDENTIALS = "credentials.json"
CONFIG = "nats.conf"
ANY_PREFIX = "*"
ANY_STREAM = "*"  # the stream token of every JetStream grant when the server hosts any prefix (prefixes=None)
_BCRYPT_ROUNDS = 6  # the passwords are 32 random bytes: the hash guards the file, not a weak secret

API = "$JS.API"
_SERVICE_DISCOVERY = "$SRV.>"  # nats.micro: PING, INFO, STATS and the health endpoint
_NEVER = (f"{API}.STREAM.DELETE.>", f"{API}.STREAM.UPDATE.>")  # no service's user, whatever else it may
# What the code does on JetStream beyond its declarations (each service's integration tests run it as its user):
_LOOKS_UP: dict[str, tuple[StreamSpec, ...]] = {  # messages fetched by subject (workers/runtime/recorded.py)
    "orchestrator": (EVENTS,),  # sessions' settings and tenants, whether a redelivered turn was answered
    "voice": (EVENTS,),  # sessions' settings and tenants
}
_DELETES_FROM: dict[str, tuple[StreamSpec, ...]] = {"tools": (SCHEDULES,)}  # a fired reminder's stored copy
_KEY_VALUE_USERS = ("transcriber",)  # its partition leases (workers/transcriber/worker.py: open_leases)
_OBJECT_STORES = (INGEST_FILES, VIDEO_OBJECTS)


def lease_bucket(prefix: str) -> str:
    """The transcriber's key-value bucket of partition leases (its stream: ``KV_<bucket>``)."""
    return f"sb_transcriber_{prefix}"


@dataclass(frozen=True)
class Permissions:
    publish: tuple[str, ...]
    subscribe: tuple[str, ...]
    deny_publish: tuple[str, ...] = ()


@dataclass(frozen=True)
class JetStreamUse:
    """What a service does on JetStream, from its declarations (names of the default prefix)."""

    streams: tuple[StreamSpec, ...]  # provisions: looks at, creates when missing
    provisions: tuple[ConsumerSpec, ...]  # durable consumers it creates or updates
    pulls: tuple[ConsumerSpec, ...]  # durable consumers it reads (pulls, acks)
    readers: tuple[StreamSpec, ...]  # streams read from a start time by ephemeral consumers
    looks_up: tuple[StreamSpec, ...]  # streams it fetches single messages from
    deletes_from: tuple[StreamSpec, ...]  # streams it deletes single messages from
    object_stores: tuple[ObjectStoreSpec, ...]
    key_value: bool  # the transcriber's lease bucket


def jetstream_use(service: str) -> JetStreamUse:
    if service not in SERVICES:
        raise ValueError(f"unknown service {service!r}; services: {', '.join(SERVICES)}")
    consumptions = registry.load(service).consumptions() if service in registry.WORKERS else ()
    pulls = tuple(dict.fromkeys(c.durable for c in consumptions if c.durable is not None))
    return JetStreamUse(
        streams=used_streams(service, consumptions),
        provisions=EDGE_CONSUMERS if service == "edge" else pulls,
        pulls=pulls,
        readers=tuple(dict.fromkeys(c.stream for c in consumptions if c.stream is not None)),
        looks_up=_LOOKS_UP.get(service, ()),
        deletes_from=_DELETES_FROM.get(service, ()),
        object_stores=tuple(spec for spec in _OBJECT_STORES if service in spec.users),
        key_value=service in _KEY_VALUE_USERS,
    )


def _jetstream(service: str, prefixes: Sequence[str] | None) -> tuple[list[str], list[str]]:
    """The JetStream subjects ``service`` may publish to, and those denied it, for the deployment's prefixes."""
    use = jetstream_use(service)
    allow = [f"{API}.INFO"]  # the account's limits and usage
    for prefix in prefixes if prefixes is not None else (None,):

        def stream(spec: StreamSpec, prefix: str | None = prefix) -> str:
            return stream_name(spec, prefix) if prefix is not None else ANY_STREAM

        for spec in use.streams:
            allow += [f"{API}.STREAM.INFO.{stream(spec)}", f"{API}.STREAM.CREATE.{stream(spec)}"]
        for consumer in use.provisions:
            on = f"{stream(stream_of(consumer))}.{consumer.durable}"
            allow += [
                f"{API}.CONSUMER.INFO.{on}",
                f"{API}.CONSUMER.DURABLE.CREATE.{on}",  # nats-py's form for a durable name
                f"{API}.CONSUMER.CREATE.{on}",  # and for a consumer name: without a filter,
                f"{API}.CONSUMER.CREATE.{on}.>",  # and with one
            ]
        for consumer in use.pulls:
            on = f"{stream(stream_of(consumer))}.{consumer.durable}"
            allow += [f"{API}.CONSUMER.MSG.NEXT.{on}", f"$JS.ACK.{on}.>"]
        for spec in use.readers:
            allow += _ephemeral(stream(spec))
        allow += [f"{API}.STREAM.MSG.GET.{stream(spec)}" for spec in use.looks_up]
        allow += [f"{API}.STREAM.MSG.DELETE.{stream(spec)}" for spec in use.deletes_from]
        buckets = [bucket_name(spec, prefix) if prefix is not None else ANY_STREAM for spec in use.object_stores]
        for bucket in buckets:  # deleting or replacing an object purges its chunks
            allow += _bucket("OBJ", bucket, "$O", purge=True)
        if buckets:  # nats-py finds an object's stream by its subject before reading it
            allow.append(f"{API}.STREAM.NAMES")
        if use.key_value:
            allow += _bucket("KV", lease_bucket(prefix) if prefix is not None else ANY_STREAM, "$KV", purge=False)
    deny = list(_NEVER)
    for consumer in CONSUMERS:  # by name, whatever a stream token's wildcard would allow
        on = f"{ANY_STREAM}.{consumer.durable}"
        deny.append(f"{API}.CONSUMER.DELETE.{on}")
        if consumer not in use.provisions:
            deny.append(f"{API}.CONSUMER.INFO.{on}")
        if consumer not in use.pulls:
            deny += [f"{API}.CONSUMER.MSG.NEXT.{on}", f"$JS.ACK.{on}.>"]
    return allow, deny


def _ephemeral(stream: str) -> list[str]:
    """Ephemeral consumers (the server names them): create one (nats-py's form without a name), look at,
    pull from and delete it."""
    return [
        f"{API}.CONSUMER.CREATE.{stream}",
        f"{API}.CONSUMER.INFO.{stream}.*",
        f"{API}.CONSUMER.MSG.NEXT.{stream}.*",
        f"{API}.CONSUMER.DELETE.{stream}.*",
    ]


def _bucket(kind: str, bucket: str, subjects: str, purge: bool) -> list[str]:
    """An object store's or key-value bucket's stream: create and look at it, read its messages (by
    subject, directly, with ordered consumers and their flow control), write to it (and purge it)."""
    name = bucket if bucket == ANY_STREAM else f"{kind}_{bucket}"
    return [
        f"{API}.STREAM.INFO.{name}",
        f"{API}.STREAM.CREATE.{name}",
        f"{API}.STREAM.MSG.GET.{name}",
        f"{API}.DIRECT.GET.{name}",
        f"{API}.DIRECT.GET.{name}.>",
        f"{API}.CONSUMER.CREATE.{name}",  # ordered push consumers (the server names them),
        f"{API}.CONSUMER.INFO.{name}.*",  # looked at, left to expire
        f"$JS.FC.{name}.>",
        f"{subjects}.{bucket}.>",
        *([f"{API}.STREAM.PURGE.{name}"] if purge else []),
    ]


def _wild(name: str) -> str:
    return BY_NAME[name].wildcard(ANY_PREFIX)


def permissions(service: str, prefixes: Sequence[str] | None = (DEFAULT_PREFIX,)) -> Permissions:
    """What ``service`` may publish and subscribe to (NATS wildcards, any subject prefix), its JetStream
    API use named for the streams of ``prefixes`` (None: any stream, see the module's docstring)."""
    if service not in SERVICES:
        raise ValueError(f"unknown service {service!r}; services: {', '.join(SERVICES)}")
    publish = [_wild(name) for name, who in PUBLISHERS.items() if service in who and name != "deadletter"]
    if service in PUBLISHERS["deadletter"]:
        publish.append(BY_NAME["deadletter"].subject(prefix=ANY_PREFIX, worker=service))
    jetstream, deny = _jetstream(service, prefixes)
    publish += jetstream
    if service == "edge":
        publish.append(_SERVICE_DISCOVERY)
        subscribe = client_subjects("*", ANY_PREFIX)
    else:
        subscribe = [
            _wild(c.subject) for c in registry.load(service).consumptions() if c.delivery in ("direct", "partitioned")
        ]
    subscribe += [f"{inbox_prefix(service)}.>", _SERVICE_DISCOVERY]
    return Permissions(tuple(dict.fromkeys(publish)), tuple(dict.fromkeys(subscribe)), tuple(dict.fromkeys(deny)))


def credentials(folder: Path) -> dict[str, str]:
    """The password of every user, made on first use (a missing user gets one; others keep theirs)."""
    path = folder / CREDENTIALS
    known: dict[str, str] = json.loads(path.read_text()) if path.exists() else {}
    if all(user in known for user in USERS):
        return known
    known |= {user: secrets.token_urlsafe(32) for user in USERS if user not in known}
    folder.mkdir(parents=True, exist_ok=True)
    path.touch(exist_ok=True)
    path.chmod(0o600)
    path.write_text(json.dumps(known, indent=2) + "\n")
    return known


def authorization(passwords: dict[str, str], prefixes: Sequence[str] | None = (DEFAULT_PREFIX,)) -> dict[str, Any]:
    """The server's ``authorization`` block: bcrypt hashes and each user's permissions (``prefixes``:
    the subject prefixes whose streams the services use; None: any, see the module's docstring)."""
    users: list[dict[str, Any]] = []
    for user in USERS:
        hashed = bcrypt.hashpw(passwords[user].encode(), bcrypt.gensalt(_BCRYPT_ROUNDS)).decode()
        if user == OPS:
            allowed: dict[str, Any] = {"publish": {"allow": [">"]}, "subscribe": {"allow": [">"]}}
        else:
            granted = permissions(user, prefixes)
            allowed = {
                "publish": {"allow": list(granted.publish), "deny": list(granted.deny_publish)},
                "subscribe": {"allow": list(granted.subscribe)},
                "allow_responses": True,  # replies to the requests it serves
            }
        users.append({"user": user, "password": hashed, "permissions": allowed})
    return {"users": users}


def server_config(base: Path, folder: Path, prefixes: Sequence[str] | None = (DEFAULT_PREFIX,)) -> Path:
    """``base`` (infra/nats.conf) plus the users, written to ``folder``; returns its path.

    Rewritten at every start, so permissions follow the code; the passwords stay. ``prefixes``: the
    deployment's subject prefixes (None: a server hosting any, see the module's docstring)."""
    passwords = credentials(folder)
    # NATS's configuration format reads JSON values.
    text = base.read_text() + "\nauthorization " + json.dumps(authorization(passwords, prefixes), indent=2) + "\n"
    path = folder / CONFIG
    path.touch(exist_ok=True)
    path.chmod(0o600)
    path.write_text(text)
    return path


def url_with_user(urls: str, folder: Path, user: str = OPS) -> str:
    """``nats://user:password@host:port`` for each of the comma-separated server URLs."""
    password = credentials(folder)[user]
    return ",".join(
        f"{scheme}://{user}:{password}@{rest}"
        for scheme, rest in (url.strip().split("://", 1) for url in urls.split(","))
    )


def run_folder(run_dir: Path) -> Path:
    """Where ``just up`` keeps the bus credentials of its own NATS server."""
    return run_dir / "nats-auth"


def operator_env(env: dict[str, str], default_run_dir: Path) -> dict[str, str]:
    """``sb`` tools beside ``just up`` use its users file (as ``ops``), unless credentials are given."""
    if any(env.get(k) for k in ("SB_NATS_USER", "SB_NATS_CREDS", "SB_NATS_USERS_FILE")) or "@" in env.get(
        "SB_NATS_URL", ""
    ):
        return {}
    # Named even before it exists: a stack still starting writes it, and the password is read at connect.
    return {"SB_NATS_USERS_FILE": str(run_folder(Path(env.get("SB_RUN_DIR") or default_run_dir)) / CREDENTIALS)}
