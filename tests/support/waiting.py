"""Waiting for a condition that other tasks or processes make true."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


async def eventually(condition: Callable[[], bool], within: float) -> None:
    """Return once ``condition()`` holds (another party's state: polled); AssertionError after ``within`` s."""
    for _ in range(int(within / 0.05)):
        if condition():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"not true within {within} s")


async def probed(probe: Callable[[], Awaitable[T]], done: Callable[[T], bool], timeout: float = 10.0) -> T:
    """The first value of ``probe()`` (polled) that is ``done``; TimeoutError after ``timeout`` s."""
    async with asyncio.timeout(timeout):
        while True:
            value = await probe()
            if done(value):
                return value
            await asyncio.sleep(0.05)
