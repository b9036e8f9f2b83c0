"""Partition leases over a real NATS KV bucket: exclusive, balanced, and taken over when a replica dies."""

from __future__ import annotations

import asyncio
from typing import Any

from nats.aio.client import Client
from nats.js.api import KeyValueConfig
from nats.js.errors import NoStreamResponseError

from workers.runtime.bus import flush_ordered
from workers.transcriber.ownership import Leases
from workers.transcriber.partitions import PartitionKeeper


async def test_partitions_are_shared_exclusively_and_taken_over(nc: Client) -> None:
    kv = await nc.jetstream().create_key_value(KeyValueConfig(bucket="lease_test", ttl=1.0))
    a, b = Leases(kv, "a", 8), Leases(kv, "b", 8)
    await a.tick()
    assert set(a.owned) == set(range(8))  # alone: owns everything
    await b.tick()  # b joins: sees two members, nothing free yet
    await a.tick()  # a hands extras back
    await b.tick()
    assert len(a.owned) == len(b.owned) == 4 and not set(a.owned) & set(b.owned)
    # a dies (stops renewing): its leases expire and b takes them over.
    for _ in range(4):
        await asyncio.sleep(0.4)
        await b.tick()
    assert set(b.owned) == set(range(8))
    # a comes back late: its renewals fail and it learns it lost everything.
    _, lost = await a.tick()
    assert len(lost) == 4 and not set(a.owned) & set(b.owned)
    await a.release_all()
    await b.release_all()


async def test_server_maps_each_session_to_one_partition(nc: Client) -> None:
    import re

    from contracts.subjects import AUDIO_PARTITIONS, BY_NAME
    from ops.stack import NATS_CONF

    assert f"partition({AUDIO_PARTITIONS},2)" in re.sub(r"\s", "", NATS_CONF.read_text())
    sub = await nc.subscribe("sb.audio.*.in.*")
    await flush_ordered(nc)
    sessions = [f"session-map-{i:02d}" for i in range(24)]
    for _ in range(2):
        for sid in sessions:
            await nc.publish(BY_NAME["audio.in"].subject(sid), b"", headers={"Sb-Test-Deliberately-Invalid": "1"})
    seen: dict[str, set[str]] = {}
    for _ in range(48):
        msg = await sub.next_msg(timeout=2)
        _, _, sid, _, partition = msg.subject.split(".")
        seen.setdefault(sid, set()).add(partition)
    assert all(len(parts) == 1 for parts in seen.values())  # a session always lands on one partition
    assert len({p for parts in seen.values() for p in parts}) > 1  # and sessions spread out
    assert all(0 <= int(p) < AUDIO_PARTITIONS for parts in seen.values() for p in parts)


class FlakyBucket:
    """The real bucket, but its next ``fail`` renewals raise as when the bucket's NATS node is gone."""

    def __init__(self, kv: Any) -> None:
        self.kv = kv
        self.fail = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.kv, name)

    async def update(self, *args: Any, **kwargs: Any) -> int:
        if self.fail:
            self.fail -= 1
            raise NoStreamResponseError
        return int(await self.kv.update(*args, **kwargs))


class Subscribed:
    def __init__(self) -> None:
        self.owned: set[int] = set()

    async def own(self, partition: int) -> None:
        self.owned.add(partition)

    async def release(self, partition: int) -> None:
        self.owned.discard(partition)


async def test_a_replica_whose_renewal_failed_hears_its_partitions_again_at_the_next_renewal(nc: Client) -> None:
    # Seen in the cluster suite: the node holding the bucket died for 3 s, every renewal failed and
    # released the partitions; once renewals worked again the leases still counted them as held, so
    # nothing was claimed back and the transcriber heard no audio until it was restarted.
    kv = await nc.jetstream().create_key_value(KeyValueConfig(bucket="lease_flaky", ttl=30.0))
    bucket = FlakyBucket(kv)
    subscription = Subscribed()

    async def nothing(*_: Any) -> None:
        return None

    keeper = PartitionKeeper(
        Leases(bucket, "a", 8),  # type: ignore[arg-type]
        subscription,
        30.0,
        released=nothing,
        flush=nothing,
        every_tick=nothing,
    )
    await keeper.tick()
    assert subscription.owned == set(range(8))
    bucket.fail = 1
    await keeper.tick()
    assert subscription.owned == set() and keeper.problems()
    await keeper.tick()  # the bucket answers again; our leases (TTL 30 s) are still in our name
    assert subscription.owned == set(range(8)) and keeper.problems() == []
    await keeper.leases.release_all()
