"""The transcriber's partition keeper (workers/transcriber/partitions.py) without NATS: leases that
say what each tick gained and lost, a subscription that records what it was told."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator

import pytest

from workers.transcriber.partitions import PartitionKeeper


class ScriptedLeases:
    """Each tick answers the next (gained, lost), or raises it; then nothing changes."""

    replica = "replica-a"

    def __init__(self, *ticks: tuple[set[int], set[int]] | Exception) -> None:
        self.ticks = deque(ticks)
        self.released_all = False
        self.forgotten = 0

    async def tick(self) -> tuple[set[int], set[int]]:
        answer = self.ticks.popleft() if self.ticks else (set(), set())
        if isinstance(answer, Exception):
            raise answer
        return answer

    def forget(self) -> None:
        self.forgotten += 1

    async def release_all(self) -> None:
        self.released_all = True


class RecordingSubscription:
    def __init__(self) -> None:
        self.subs: set[int] = set()
        self.log: list[str] = []

    @property
    def owned(self) -> set[int]:
        return set(self.subs)

    async def own(self, partition: int) -> None:
        self.subs.add(partition)
        self.log.append(f"own {partition}")

    async def release(self, partition: int) -> None:
        self.subs.discard(partition)
        self.log.append(f"release {partition}")


def keeper(leases: ScriptedLeases, subscription: RecordingSubscription, ttl_s: float = 3.0) -> PartitionKeeper:
    async def released(partition: int) -> None:
        subscription.log.append(f"sessions of {partition} forgotten")

    async def flush() -> None:
        subscription.log.append("flush")

    async def every_tick() -> None:
        subscription.log.append("idle sessions")

    return PartitionKeeper(leases, subscription, ttl_s, released=released, flush=flush, every_tick=every_tick)


@pytest.fixture(autouse=True)
async def quick() -> AsyncIterator[None]:
    async with asyncio.timeout(1.0):
        yield


async def test_gained_partitions_are_subscribed_then_flushed_and_lost_ones_released_with_their_sessions() -> None:
    subscription = RecordingSubscription()
    keeps = keeper(ScriptedLeases(({1, 2}, set()), ({3}, {1})), subscription)
    await keeps.tick()
    assert sorted(subscription.log[:2]) == ["own 1", "own 2"] and subscription.log[2:] == ["flush"]
    subscription.log.clear()
    await keeps.tick()
    assert subscription.log == ["release 1", "sessions of 1 forgotten", "own 3", "flush"]
    assert subscription.owned == {2, 3} and keeps.problems() == []


async def test_a_lease_that_lapsed_and_was_taken_straight_back_never_left() -> None:
    subscription = RecordingSubscription()
    keeps = keeper(ScriptedLeases(({4}, set()), ({4}, {4})), subscription)
    await keeps.tick()
    subscription.log.clear()
    await keeps.tick()
    assert subscription.log == ["flush"] and subscription.owned == {4}


async def test_a_failed_renewal_releases_everything_and_says_so_until_one_succeeds() -> None:
    subscription = RecordingSubscription()
    keeps = keeper(ScriptedLeases(({1, 2}, set()), ConnectionError("nats is gone"), ({1}, set())), subscription)
    await keeps.tick()
    await keeps.tick()
    assert subscription.owned == set() and keeps.leases.forgotten == 1  # type: ignore[attr-defined]
    [problem] = keeps.problems()
    assert "partition leases cannot be renewed (ConnectionError)" in problem
    await keeps.tick()
    assert subscription.owned == {1} and keeps.problems() == []


async def test_a_renewal_that_never_answers_fails_within_the_ttl() -> None:
    class StuckLeases(ScriptedLeases):
        async def tick(self) -> tuple[set[int], set[int]]:
            if not self.ticks:
                await asyncio.Event().wait()  # a request to a server that is gone, with no timeout of its own
            return await super().tick()

    subscription = RecordingSubscription()
    keeps = keeper(StuckLeases(({1, 2}, set())), subscription, ttl_s=0.05)
    await keeps.tick()
    await keeps.tick()
    assert subscription.owned == set()
    [problem] = keeps.problems()
    assert "(TimeoutError)" in problem


async def test_the_loop_ticks_every_third_of_the_ttl_and_stop_releases_everything() -> None:
    subscription = RecordingSubscription()
    leases = ScriptedLeases(({1}, set()), ({2}, set()))
    keeps = keeper(leases, subscription, ttl_s=0.03)
    await keeps.start()  # the first claim, before start returns
    assert subscription.owned == {1}
    await asyncio.sleep(0.05)  # a tick or two of the loop
    assert subscription.owned == {1, 2} and "idle sessions" in subscription.log
    await keeps.stop()
    assert subscription.owned == set() and leases.released_all
    assert {"sessions of 1 forgotten", "sessions of 2 forgotten"} <= set(subscription.log)


async def test_stop_returns_within_the_ttl_when_a_renewal_hangs_and_swallows_its_cancellation() -> None:
    class SwallowingLeases(ScriptedLeases):
        """As nats-py's flush does while the server is gone: a cancellation is swallowed once."""

        async def tick(self) -> tuple[set[int], set[int]]:
            if not self.ticks:
                try:
                    await asyncio.sleep(10)
                except asyncio.CancelledError:
                    await asyncio.sleep(0.2)
            return await super().tick()

    subscription = RecordingSubscription()
    keeps = keeper(SwallowingLeases(({1}, set())), subscription, ttl_s=0.06)
    await keeps.start()
    await asyncio.sleep(0.03)  # the loop's next tick is under way and hangs
    began = asyncio.get_running_loop().time()
    await keeps.stop()
    assert asyncio.get_running_loop().time() - began < 0.2
