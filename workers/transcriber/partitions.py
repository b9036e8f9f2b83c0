"""Which audio partitions this transcriber replica hears: its leases (ownership.Leases) kept every
third of their TTL, and the partitioned subscription opened and closed to match. A plain class:
the subscription, the leases and what else runs at each tick are handed in.

A renewal that fails (a NATS hiccup, or no answer within the TTL) releases every partition (another
replica takes them once the leases expire), says so in ``problems()`` until a renewal succeeds, and
the next renewal that reaches the bucket claims a fair share again; the loop goes on. A lease
that lapsed (a busy loop) and was taken straight back never left: its sessions are kept.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import KW_ONLY, dataclass, field
from typing import Protocol

from workers.runtime.logging import get_logger

log = get_logger("transcriber")


class PartitionLeases(Protocol):
    """ownership.Leases."""

    replica: str

    async def tick(self) -> tuple[set[int], set[int]]: ...

    def forget(self) -> None: ...

    async def release_all(self) -> None: ...


class Subscription(Protocol):
    """The worker's partitioned subscription (runtime PartitionedTransport)."""

    @property
    def owned(self) -> set[int]: ...

    async def own(self, partition: int) -> None: ...

    async def release(self, partition: int) -> None: ...


@dataclass(eq=False)
class PartitionKeeper:
    leases: PartitionLeases
    subscription: Subscription
    ttl_s: float  # the leases' TTL: renewed every third of it
    _: KW_ONLY
    released: Callable[[int], Awaitable[None]]  # after its subscription is closed: forget its sessions
    flush: Callable[[], Awaitable[None]]  # after each tick's changes: the subscriptions are live on the server
    every_tick: Callable[[], Awaitable[None]]  # anything else to do each tick
    problem: str = field(default="", init=False)
    _stop: asyncio.Event = field(default_factory=asyncio.Event, init=False)
    _task: asyncio.Task[None] | None = field(default=None, init=False)

    def problems(self) -> list[str]:
        return [self.problem] if self.problem else []

    async def start(self) -> None:
        """A first claim (a started replica owns its share at once), then the loop."""
        await self.tick()
        self._task = asyncio.create_task(self._keep(), name="transcriber-leases")

    async def stop(self) -> None:
        """Release every partition and lease; returns once done, or after the TTL when the server is gone
        (a nats-py call may swallow the cancellation of its caller: waiting on it could take any time)."""
        self._stop.set()
        if self._task is None:
            return
        try:
            await asyncio.wait({self._task}, timeout=self.ttl_s)
        finally:
            self._task.cancel()  # done: nothing happens; stuck on a lost server: it goes, we do not wait

    async def tick(self) -> None:
        try:
            async with asyncio.timeout(self.ttl_s):  # a renewal stuck on a lost server is a failed one
                gained, lost = await self.leases.tick()
            self.problem = ""
        except Exception as error:  # a NATS hiccup must not end ownership handling
            log.warning("lease renewal failed; releasing partitions", error=repr(error)[:200])
            self.problem = f"partition leases cannot be renewed ({type(error).__name__}): hearing no audio"
            # Released here, so forgotten there: the next tick that reaches the bucket claims them again.
            self.leases.forget()
            gained, lost = set(), self.subscription.owned
        # A lease that lapsed (a busy loop) and was taken straight back never left us.
        gained, lost = gained - lost - self.subscription.owned, lost - gained
        for partition in lost:
            await self._release(partition)
        for partition in gained:
            await self.subscription.own(partition)
            log.info("partition owned", partition=partition, replica=self.leases.replica)
        with contextlib.suppress(TimeoutError):  # the subscriptions reach the server when it is back
            async with asyncio.timeout(self.ttl_s):
                await self.flush()

    async def _keep(self) -> None:
        try:
            while not self._stop.is_set():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.ttl_s / 3):
                        await self._stop.wait()
                if not self._stop.is_set():
                    await self.tick()
                await self.every_tick()
        finally:
            for partition in self.subscription.owned:
                await self._release(partition)
            with contextlib.suppress(Exception):
                await self.leases.release_all()

    async def _release(self, partition: int) -> None:
        await self.subscription.release(partition)
        await self.released(partition)
        log.info("partition released", partition=partition, replica=self.leases.replica)
