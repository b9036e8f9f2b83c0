"""Which transcriber replica owns which partition of the audio: leases in a NATS KV bucket.

The server's subject mapping (infra/nats.conf) puts every session's audio on one of
``PARTITIONS`` subjects (``<prefix>.audio.<session>.in.<partition>``). Each partition is
owned by exactly one live replica: the owner renews its lease every tick; a replica that
dies stops renewing, its leases expire after the bucket's TTL and live replicas claim
them. Replicas claim up to a fair share (partitions / live replicas), so load spreads out.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field

from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError, NoKeysError, NotFoundError
from nats.js.kv import KeyValue


@dataclass
class Leases:
    kv: KeyValue
    replica: str
    partitions: int
    owned: dict[int, int] = field(default_factory=dict)  # partition -> revision of our lease

    async def tick(self) -> tuple[set[int], set[int]]:
        """Renew, rebalance and claim. Returns the partitions gained and lost by this tick."""
        lost = await self._renew()
        await self.kv.put(f"member.{self.replica}", b"1")
        members = max(1, len(await self._members()))
        fair = math.ceil(self.partitions / members)
        for partition in sorted(self.owned)[fair:]:  # hand extras to replicas that joined
            await self._release(partition)
            lost.add(partition)
        gained: set[int] = set()
        for partition in range(self.partitions):
            if len(self.owned) >= fair:
                break
            if partition not in self.owned and await self._claim(partition):
                gained.add(partition)
        return gained, lost

    def forget(self) -> None:
        """After a failed renewal our leases may have lapsed: hold none until claimed again (our own
        unexpired ones are taken straight back by the next tick)."""
        self.owned.clear()

    async def release_all(self) -> None:
        for partition in list(self.owned):
            await self._release(partition)
        with contextlib.suppress(KeyNotFoundError, NotFoundError):
            await self.kv.delete(f"member.{self.replica}")

    async def _renew(self) -> set[int]:
        lost: set[int] = set()
        for partition, revision in list(self.owned.items()):
            try:
                self.owned[partition] = await self.kv.update(_key(partition), self.replica.encode(), last=revision)
            except (KeyWrongLastSequenceError, KeyNotFoundError, NotFoundError):
                # Our lease expired (we were too slow) and someone else may hold it now.
                del self.owned[partition]
                lost.add(partition)
        return lost

    async def _claim(self, partition: int) -> bool:
        try:
            self.owned[partition] = await self.kv.create(_key(partition), self.replica.encode())
        except KeyWrongLastSequenceError:
            return await self._adopt(partition)
        return True

    async def _adopt(self, partition: int) -> bool:
        """A lease still held in our name (we forgot it after a failed renewal) is ours again."""
        try:
            entry = await self.kv.get(_key(partition))
        except (KeyNotFoundError, NotFoundError):
            return False
        if entry.value != self.replica.encode() or entry.revision is None:
            return False
        self.owned[partition] = entry.revision
        return True

    async def _release(self, partition: int) -> None:
        revision = self.owned.pop(partition)
        with contextlib.suppress(KeyWrongLastSequenceError, KeyNotFoundError, NotFoundError):
            await self.kv.delete(_key(partition), last=revision)

    async def _members(self) -> list[str]:
        try:
            return [k for k in await self.kv.keys() if k.startswith("member.")]
        except (NoKeysError, NotFoundError):
            return []


def _key(partition: int) -> str:
    return f"p.{partition}"
