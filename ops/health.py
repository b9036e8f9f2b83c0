"""Which Switchboard processes are running: NATS micro-service discovery (``$SRV.PING``)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

from nats.aio.client import Client


@dataclass(frozen=True)
class ServiceInstance:
    name: str
    id: str
    version: str
    started_at: float

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
        found.append(ServiceInstance(info["name"], info["id"], info.get("version", ""),
                                     float(metadata.get("started_at", time.time()))))
    await sub.unsubscribe()
    return sorted(found, key=lambda s: (s.name, s.id))


def missing(expected: tuple[str, ...], running: list[ServiceInstance]) -> list[str]:
    names = {s.name for s in running}
    return [name for name in expected if name not in names]
