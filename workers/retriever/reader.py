"""Documents read in child processes, within a time budget: one that takes longer is killed with its
process, not waited for.

A thread would not do: pypdf holds the GIL while it parses (the event loop, which answers
retrieval queries, would crawl) and a thread cannot be stopped. Each reader is the one process of
its own supervised pool (workers/speech/pool.py), which respawns it after the kill: a pool per
reader, so the process running a document is known exactly and the kill takes no other
document with it. ``at_once`` documents are read at once (the worker runs as many jobs at once):
a hostile document holds one reader for its budget while the others go on, and a spare reader
stands in while a killed one respawns.
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
    """``read`` runs :func:`~.extract.extract` in an idle child, ``at_once`` documents at a time;
    DocumentError past ``timeout_s``."""

    def __init__(self, timeout_s: float, max_chars: int, at_once: int = 1) -> None:
        self.timeout_s = timeout_s
        self.max_chars = max_chars
        # Each child imports the parsers (pypdf) before it is ready, so no read's budget pays for it.
        # A pool counts our kills as crashes: kills of one child come at least timeout_s apart, so with
        # a crash window that long they never add up to a crash loop (a child dying as it starts still does).
        # One spare: while a killed reader respawns (a second or two on a busy machine) the next document
        # is read by the spare, not held until the new process is up.
        self._pools = [
            ChildPool(f"retriever-{n}", 1, importlib.import_module, extract.__module__, crash_window_s=timeout_s)
            for n in range(at_once + 1)
        ]
        # A document waits here for a reader: the budget counts its own time, not a queue's.
        self._free = asyncio.Semaphore(at_once)
        self._idle = list(self._pools)

    async def start(self) -> None:
        """Spawn the children now rather than for the first documents."""
        await asyncio.gather(*(pool.start() for pool in self._pools))

    async def read(self, data: bytes, content_type: str, source: str) -> Document:
        async with self._free:
            pool = min(self._idle, key=lambda idle: bool(idle.problems()))  # not one still respawning, if any
            self._idle.remove(pool)
            try:
                return await self._read(pool, data, content_type, source)
            finally:
                self._idle.append(pool)

    async def _read(self, pool: ChildPool[str], data: bytes, content_type: str, source: str) -> Document:
        await pool.start()  # after a kill: until the new child is ready, outside the budget
        call = asyncio.ensure_future(pool.call(None, extract, data, content_type, source, self.max_chars))
        try:
            async with asyncio.timeout(self.timeout_s):
                return await asyncio.shield(call)  # on timeout, the call lives on until the kill ends it
        except TimeoutError:
            for pid in pool.pids():  # its only child, running this call
                os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(ChildLost):
                await call  # returns once the pool has seen the death: its next read waits for the new child
            raise DocumentError(f"the document took longer than {self.timeout_s:g} s to read") from None
        finally:
            call.cancel()  # cancelled ourselves (shutdown): the answer is dropped

    def problems(self) -> list[str]:
        """Why documents cannot be read (a child keeps dying), for health; empty when fine."""
        return [problem for pool in self._pools for problem in pool.problems()]

    def shutdown(self) -> None:
        for pool in self._pools:
            pool.shutdown()
