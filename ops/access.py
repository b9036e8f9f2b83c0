"""Who may do what on the bus: one NATS user per service, its permissions derived from the contracts.

A service publishes the subjects ``contracts.subjects.PUBLISHERS`` gives it (and its own dead
letters), subscribes to what its handlers declare (``@consumes``/``@serves``; the edge: its
sessions' client subjects), uses the object stores that name it, and receives replies and
JetStream deliveries on an inbox of its own (``_INBOX_<user>``, so nobody reads another's
replies). Operators' tools (``sb ...``) and the tests connect as ``ops``, allowed everything.
The prefix token of every subject is a wildcard: replays and tests run under other prefixes.

``just up`` and the test fixtures generate the credentials on first use into a folder of the
run directory (``credentials.json``, mode 0600; the server's configuration holds only bcrypt
hashes); deleting that folder rotates them at the next start.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bcrypt

from contracts.streams import INGEST_FILES, VIDEO_OBJECTS
from contracts.subjects import BY_NAME, PUBLISHERS, SERVICES, client_subjects
from workers.runtime.worker import OPERATOR as OPS
from workers.runtime.worker import inbox_prefix

from . import registry

USERS: tuple[str, ...] = (*SERVICES, OPS)
CREDENTIALS = "credentials.json"
CONFIG = "nats.conf"
ANY_PREFIX = "*"
_BCRYPT_ROUNDS = 6  # the passwords are 32 random bytes: the hash guards the file, not a weak secret

# What every service needs of JetStream: provisioning its streams and consumers, pulling, acking,
# flow control of ordered reads. (Per-consumer API subjects would be tighter; the streams'
# prefixes make their names differ per deployment.)
_JETSTREAM = ("$JS.API.>", "$JS.ACK.>", "$JS.FC.>")
_SERVICE_DISCOVERY = "$SRV.>"  # nats.micro: PING, INFO, STATS and the health endpoint
# The transcriber's partition leases live in a key-value bucket of its own making.
_KEY_VALUE_USERS = ("transcriber",)


@dataclass(frozen=True)
class Permissions:
    publish: tuple[str, ...]
    subscribe: tuple[str, ...]


def _wild(name: str) -> str:
    return BY_NAME[name].wildcard(ANY_PREFIX)


def permissions(service: str) -> Permissions:
    """What ``service`` may publish and subscribe to (NATS wildcards, any subject prefix)."""
    if service not in SERVICES:
        raise ValueError(f"unknown service {service!r}; services: {', '.join(SERVICES)}")
    publish = [_wild(name) for name, who in PUBLISHERS.items() if service in who and name != "deadletter"]
    if service in PUBLISHERS["deadletter"]:
        publish.append(BY_NAME["deadletter"].subject(prefix=ANY_PREFIX, worker=service))
    publish += [*_JETSTREAM, _SERVICE_DISCOVERY] if service == "edge" else _JETSTREAM
    if any(service in spec.users for spec in (INGEST_FILES, VIDEO_OBJECTS)):
        publish.append("$O.>")
    if service in _KEY_VALUE_USERS:
        publish.append("$KV.>")
    if service == "edge":
        subscribe = client_subjects("*", ANY_PREFIX)
    else:
        subscribe = [
            _wild(c.subject) for c in registry.load(service).consumptions() if c.delivery in ("direct", "partitioned")
        ]
    subscribe += [f"{inbox_prefix(service)}.>", _SERVICE_DISCOVERY]
    return Permissions(tuple(dict.fromkeys(publish)), tuple(dict.fromkeys(subscribe)))


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


def authorization(passwords: dict[str, str]) -> dict[str, Any]:
    """The server's ``authorization`` block: bcrypt hashes and each user's permissions."""
    users: list[dict[str, Any]] = []
    for user in USERS:
        hashed = bcrypt.hashpw(passwords[user].encode(), bcrypt.gensalt(_BCRYPT_ROUNDS)).decode()
        if user == OPS:
            allowed: dict[str, Any] = {"publish": {"allow": [">"]}, "subscribe": {"allow": [">"]}}
        else:
            granted = permissions(user)
            allowed = {
                "publish": {"allow": list(granted.publish)},
                "subscribe": {"allow": list(granted.subscribe)},
                "allow_responses": True,  # replies to the requests it serves
            }
        users.append({"user": user, "password": hashed, "permissions": allowed})
    return {"users": users}


def server_config(base: Path, folder: Path) -> Path:
    """``base`` (infra/nats.conf) plus the users, written to ``folder``; returns its path.

    Rewritten at every start, so permissions follow the code; the passwords stay."""
    passwords = credentials(folder)
    # NATS's configuration format reads JSON values.
    text = base.read_text() + "\nauthorization " + json.dumps(authorization(passwords), indent=2) + "\n"
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
