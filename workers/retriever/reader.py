"""Documents read in a child process, within a time budget: one that takes longer is killed with its
process, not waited for.

A thread would not do: pypdf holds the GIL while it parses (the event loop, which answers
retrieval queries, would crawl) and a thread cannot be stopped. The child is the one process of
a supervised pool (workers/speech/pool.py), which respawns it after the kill.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import os
import signal

from workers.speech.pool import ChildLost, ChildPool

from .extract import Document, DocumentError, extract


class Reader:
    """``read`` runs :func:`~.extract.extract` in the child; DocumentError past ``timeout_s``."""

    def __init__(self, timeout_s: float, max_chars: int) -> None:
        self.timeout_s = timeout_s
        self.max_chars = max_chars
        # The child imports the parsers (pypdf) before it is ready, so no read's budget pays for it.
        # The pool counts our kills as crashes: kills come at least timeout_s apart, so with a crash
        # window that long they never add up to a crash loop (a child dying as it starts still does).
        self._pool = ChildPool("retriever", 1, importlib.import_module, extract.__module__, crash_window_s=timeout_s)
        self._one_at_a_time = asyncio.Lock()  # the budget counts this document's time, not a queue's

    async def start(self) -> None:
        """Spawn the child now rather than for the first document."""
        await self._pool.start()

    async def read(self, data: bytes, content_type: str, source: str) -> Document:
        async with self._one_at_a_time:
            await self._pool.start()  # after a kill: until the new child is ready, outside the budget
            call = asyncio.ensure_future(self._pool.call(None, extract, data, content_type, source, self.max_chars))
            try:
                async with asyncio.timeout(self.timeout_s):
                    return await asyncio.shield(call)  # on timeout, the call lives on until the kill ends it
            except TimeoutError:
                for pid in self._pool.pids():  # the only child, running this call
                    os.kill(pid, signal.SIGKILL)
                with contextlib.suppress(ChildLost):
                    await call  # returns once the pool has seen the death: the next read waits for the new child
                raise DocumentError(f"the document took longer than {self.timeout_s:g} s to read") from None
            finally:
                call.cancel()  # cancelled ourselves (shutdown): the answer is dropped

    def problems(self) -> list[str]:
        """Why documents cannot be read (the child keeps dying), for health; empty when fine."""
        return self._pool.problems()

    def shutdown(self) -> None:
        self._pool.shutdown()
