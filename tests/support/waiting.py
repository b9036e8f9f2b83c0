"""Waiting for a condition that other tasks or processes make true."""

from __future__ import annotations

import asyncio
from collections.abc import Callable


async def eventually(condition: Callable[[], bool], within: float) -> None:
    """Return once ``condition()`` holds (another party's state: polled); AssertionError after ``within`` s."""
    for _ in range(int(within / 0.05)):
        if condition():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"not true within {within} s")
