"""Which Switchboard processes are running (NATS micro-service discovery, ``$SRV.INFO``) and whether
each is healthy (its ``health`` endpoint: the problems its worker and transports report)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from dataclasses import dataclass, field

from nats.aio.client import Client


@dataclass(frozen=True)
class ServiceInstance:
    name: str
    id: str
    version: str
    started_at: float
    problems: tuple[str, ...] = field(default=())  # empty: healthy
    health_subject: str | None = field(default=None, compare=False)
    pid: int | None = field(default=None, compare=False)  # its process on its host, when it says

    @property
    def uptime_s(self) -> float:
        return time.time() - self.started_at


async def discover(nc: Client, wait_s: float = 0.5) -> list[ServiceInstance]:
    """Every micro service that answers a ping within ``wait_s``."""
    inbox = nc.new_inbox()
    found: list[ServiceInstance] = []
    sub = await nc.subscribe(inbox)
    await nc.publish("$SRV.INFO", b"", reply=inbox)
    deadline = time.monotonic() + wait_s
    while (left := deadline - time.monotonic()) > 0:
        try:
            msg = await sub.next_msg(timeout=left)
        except TimeoutError:  # nats' own TimeoutError subclasses it
            break
        if not msg.data:  # a "no responders" status message: nothing runs yet
            continue
        info = json.loads(msg.data)
        metadata = info.get("metadata") or {}
        health = next((e["subject"] for e in info.get("endpoints") or () if e.get("name") == "health"), None)
        found.append(
            ServiceInstance(
                info["name"],
                info["id"],
                info.get("version", ""),
                float(metadata.get("started_at", time.time())),
                health_subject=health,
                pid=int(metadata["pid"]) if str(metadata.get("pid", "")).isdigit() else None,
            )
        )
    await sub.unsubscribe()
    checked = await asyncio.gather(*(_checked(nc, s, wait_s) for s in found))
    return sorted(checked, key=lambda s: (s.name, s.id))


async def _checked(nc: Client, service: ServiceInstance, wait_s: float) -> ServiceInstance:
    """The instance with the problems its health endpoint reports (one that does not answer is a problem)."""
    if service.health_subject is None:
        return service
    try:
        reply = json.loads((await nc.request(service.health_subject, b"", timeout=wait_s)).data)
        problems = tuple(str(p) for p in reply.get("problems") or ())
    except Exception as error:
        problems = (f"health endpoint did not answer ({type(error).__name__})",)
    return dataclasses.replace(service, problems=problems)


def missing(expected: tuple[str, ...], running: list[ServiceInstance]) -> list[str]:
    names = {s.name for s in running}
    return [name for name in expected if name not in names]


def degraded(running: list[ServiceInstance]) -> list[ServiceInstance]:
    return [s for s in running if s.problems]
