"""Supervised child processes that load models once and run calls for a worker's event loop.

Used by the transcriber (sessions pinned to a child, which keeps their state) and the video
worker (any idle child). A child that dies (SIGKILL, the OOM killer, a segfault in an engine)
is respawned; only the calls and the state it held are lost, and their callers are told so.

Not ``concurrent.futures.ProcessPoolExecutor``: one dead process breaks an executor for good
(every later call raises ``BrokenProcessPool``), it cannot say whose state died, and its
shutdown waits for calls in flight.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import pickle
import signal
import time
import traceback
import zlib
from collections import deque
from collections.abc import Callable
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any, Generic, TypeVar, cast

from prometheus_client import Counter

T = TypeVar("T")
A = TypeVar("A")

CRASHES = Counter("sb_pool_crashes_total", "Child processes of a pool that died unasked", ("pool",))
RESTARTS = Counter("sb_pool_restarts_total", "Child processes of a pool respawned after they died", ("pool",))

FIRST_BACKOFF_S = 0.25  # doubled for each crash of the same child within the crash window
MAX_BACKOFF_S = 8.0
KILL_WAIT_S = 1.0  # a SIGKILLed process is gone at once; this only bounds the wait for its exit status


# The pool's exceptions are BrokenProcessPool, so code written for the executor's failure still catches them.
class ChildLost(BrokenProcessPool):
    """The child running this call, or holding ``key``'s state, died: nothing of the call is left.

    ``key`` is the call's key (None for an unpinned call). Calling again with the same key
    starts fresh state in the respawned child.
    """

    def __init__(self, pool: str, child: int, cause: str, key: str | None) -> None:
        lost = "the call is lost" if key is None else f"the state of {key!r} is lost"
        super().__init__(f"{pool} child {child} {cause}; {lost}")
        self.pool, self.child, self.cause, self.key = pool, child, cause, key


class PoolBroken(BrokenProcessPool):
    """The pool takes no calls: a child could not load its models, kept crashing, or the pool was shut down."""


@dataclass(eq=False)
class _Call:
    key: str | None
    payload: bytes  # (fn, args), pickled when called: arguments that do not pickle fail in the caller
    future: asyncio.Future[Any]


@dataclass(eq=False)
class _Child:
    index: int
    process: BaseProcess | None = None
    conn: Connection[Any, Any] | None = None
    ready: bool = False  # loaded, and takes calls
    running: _Call | None = None  # one call at a time: the engines hold the GIL anyway
    queue: deque[_Call] = field(default_factory=deque)  # calls pinned to this child, waiting
    keys: set[str] = field(default_factory=set)  # keys whose state this process holds
    crashes: deque[float] = field(default_factory=deque)  # monotonic times, within the crash window
    respawn: asyncio.TimerHandle | None = None  # set from a crash until the next process is ready


class ChildPool(Generic[A]):
    """``size`` spawned child processes, each running ``initializer(initarg)`` once (load the
    models) and then calls one at a time.

    Use::

        pool = ChildPool("transcriber", 2, child.load, config)
        await pool.start()                              # every child loaded (else calls wait for it)
        out = await pool.call(session_id, fn, *args)    # pinned: always the same child for a key
        out = await pool.call(None, fn, *args)          # unpinned: any idle child
        pool.forget(session_id)                         # the key holds no state any more (session over)
        pool.problems()                                 # [] when fine; for health
        pool.pids()                                     # the children's process ids
        pool.shutdown()                                 # bounded: children killed after grace_s

    ``fn`` and ``args`` must pickle (module-level functions); the child keeps per-key state in
    its own module globals. A pinned call goes to child ``crc32(key) % size``.

    When a child dies it is respawned after a backoff (0.25 s, doubling up to 8 s); the keys
    that had run calls on it have lost their state, and each is told exactly once, in a call
    for that key: the calls running or queued for it at the death raise :class:`ChildLost`, or,
    if it had none, its next call raises :class:`ChildLost` without running. After that, calls
    for the key run on the new child with fresh state. An unpinned call running on the dead
    child raises :class:`ChildLost` with ``key=None``; unpinned calls still waiting run on
    another child. ``crash_limit`` deaths of one child within ``crash_window_s`` mark the pool
    broken, as does an initializer that raises: every call then raises :class:`PoolBroken`,
    and ``problems()`` says why until the process is restarted.

    The transcriber wires it like this (``Shards.push`` raises what ``call`` raises): on
    ChildLost the session's recognition state is gone (turn in progress, VAD, recognizer): set
    its ``in_turn = False``, publish an ``error`` event for it (if it was in a turn an utterance
    was lost) and go on with the next frames, which start a new utterance. Only that session
    needs resetting: every other session that lost state gets its own ChildLost, in its own
    task. PoolBroken: recognition is down until the worker restarts; tell each session once (its
    later frames fail at once and are dropped). Health adds ``problems()``; ``sb_pool_crashes_total``
    and ``sb_pool_restarts_total`` (label ``pool``) count deaths and respawns.
    """

    def __init__(
        self,
        name: str,
        size: int,
        initializer: Callable[[A], object],
        initarg: A,
        *,
        crash_limit: int = 5,
        crash_window_s: float = 60.0,
    ) -> None:
        self.name = name
        self._initializer, self._initarg = initializer, initarg
        self._crash_limit, self._crash_window_s = crash_limit, crash_window_s
        self._context = multiprocessing.get_context("spawn")  # never fork a process that runs an event loop
        self._children = [_Child(index) for index in range(size)]
        self._unpinned: deque[_Call] = deque()
        self._lost: dict[str, ChildLost] = {}  # keys whose state died while they had no call: told on the next
        self._closed: str | None = None  # why calls are refused: "broken: ..." or "shut down"
        self._changed = asyncio.Event()  # a child became ready, or the pool closed
        self._loop: asyncio.AbstractEventLoop | None = None

    # ------------------------------------------------------------------ calls

    async def start(self) -> None:
        """Spawn the children and wait until every one has loaded (so the first call is not slow);
        later, wait until a respawned child has."""
        self._check_open()
        self._spawn_all()
        while not all(child.ready for child in self._children):
            self._check_open()
            self._changed.clear()
            await self._changed.wait()

    async def call(self, key: str | None, fn: Callable[..., T], *args: object) -> T:
        """``fn(*args)`` in a child: the one of ``key``, or any if None. Raises what ``fn`` raised,
        :class:`ChildLost` or :class:`PoolBroken`."""
        self._check_open()
        self._spawn_all()
        if key is not None and (lost := self._lost.pop(key, None)) is not None:
            raise lost
        call = _Call(key, pickle.dumps((fn, args), pickle.HIGHEST_PROTOCOL), asyncio.get_running_loop().create_future())
        if key is None:
            self._unpinned.append(call)
            for child in self._children:
                self._dispatch(child)
        else:
            child = self._child_of(key)
            child.queue.append(call)
            self._dispatch(child)
        return cast(T, await call.future)

    def forget(self, key: str) -> None:
        """``key`` holds no state in its child any more: a later death is not reported for it."""
        self._child_of(key).keys.discard(key)
        self._lost.pop(key, None)

    def pids(self) -> list[int]:
        """Process ids of the children alive now (for ops tools and tests)."""
        return [
            child.process.pid for child in self._children if child.process is not None and child.process.pid is not None
        ]

    def problems(self) -> list[str]:
        """What keeps the pool from serving at full strength, for health; empty when fine."""
        if self._closed is not None:
            return [f"{self.name} pool {self._closed}"]
        return [
            f"{self.name} child {child.index} restarting after a crash "
            f"({self._recent_crashes(child)} in {self._crash_window_s:g} s)"
            for child in self._children
            if child.respawn is not None
        ]

    def shutdown(self, grace_s: float = 2.0) -> None:
        """End the children: ``grace_s`` for them to exit by themselves (a busy one after its call,
        whose answer is dropped), then SIGKILL. Calls not done raise PoolBroken. Synchronous, so
        that a worker's sync teardown can call it; on the event loop's thread."""
        self._close("shut down", grace_s)

    # ------------------------------------------------------------------ children

    def _child_of(self, key: str) -> _Child:
        return self._children[zlib.crc32(key.encode()) % len(self._children)]

    def _check_open(self) -> None:
        if self._closed is not None:
            raise PoolBroken(f"{self.name} pool {self._closed}")

    def _spawn_all(self) -> None:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
            for child in self._children:
                self._spawn(child)

    def _spawn(self, child: _Child) -> None:
        assert self._loop is not None
        ours, theirs = self._context.Pipe()
        process = self._context.Process(
            target=_serve,
            args=(theirs, self._initializer, self._initarg),
            name=f"{self.name}-{child.index}",
            daemon=True,
        )
        process.start()
        theirs.close()  # only the child holds its end now: its death is an EOF here
        child.process, child.conn, child.ready = process, ours, False
        self._loop.add_reader(ours.fileno(), self._on_readable, child)
        self._loop.add_reader(process.sentinel, self._on_exit, child, process)

    def _dispatch(self, child: _Child) -> None:
        while child.ready and child.running is None and child.conn is not None:
            queue = child.queue or self._unpinned
            if not queue:
                return
            call = queue.popleft()
            if call.future.done():  # its caller was cancelled while it waited
                continue
            child.running = call
            if call.key is not None:
                child.keys.add(call.key)
            try:
                child.conn.send_bytes(call.payload)
            except OSError:
                return  # the child is dying: its exit fails the call

    def _on_readable(self, child: _Child) -> None:
        if not self._receive(child) and child.conn is not None:
            assert self._loop is not None
            self._loop.remove_reader(child.conn.fileno())  # EOF: the exit sentinel does the rest

    def _receive(self, child: _Child) -> bool:
        """Handle one message of the child; False at the end of its pipe."""
        assert child.conn is not None
        try:
            kind, value = child.conn.recv()
        except (EOFError, OSError):
            return False
        except Exception as error:  # an answer that does not unpickle here
            kind, value = "error", error
        if kind == "failed":
            self._close(f"broken: child {child.index} could not start: {value}", 0.0)
            return False
        if kind == "ready":
            child.ready = True
            child.respawn = None
            self._changed.set()
        else:
            call, child.running = child.running, None
            if call is not None and not call.future.done():
                if kind == "ok":
                    call.future.set_result(value)
                else:
                    call.future.set_exception(value)
        self._dispatch(child)
        return True

    def _on_exit(self, child: _Child, process: BaseProcess) -> None:
        child.ready = False  # no new call for it while the answers it sent before dying are read
        while child.conn is not None and child.conn.poll() and self._receive(child):
            pass
        if self._closed is not None or child.process is not process:
            return
        self._release(child, KILL_WAIT_S)
        cause = _cause(process.exitcode)
        CRASHES.labels(self.name).inc()
        child.crashes.append(time.monotonic())
        self._fail_lost(child, cause)
        crashes = self._recent_crashes(child)
        if crashes >= self._crash_limit:
            self._close(
                f"broken: crash loop: child {child.index} died {crashes} times in "
                f"{self._crash_window_s:g} s (last {cause})",
                0.0,
            )
            return
        assert self._loop is not None
        child.respawn = self._loop.call_later(
            min(MAX_BACKOFF_S, FIRST_BACKOFF_S * 2 ** (crashes - 1)), self._restart, child
        )

    def _restart(self, child: _Child) -> None:
        RESTARTS.labels(self.name).inc()
        self._spawn(child)

    def _fail_lost(self, child: _Child, cause: str) -> None:
        """Fail the calls whose state died with ``child``; remember the keys that had no call."""
        lost, child.keys = child.keys, set()
        doomed = [call for call in child.queue if call.key in lost]
        child.queue = deque(call for call in child.queue if call.key not in lost)  # no state yet: the new child
        if child.running is not None:
            doomed.insert(0, child.running)
            child.running = None
        for call in doomed:
            if not call.future.done():
                call.future.set_exception(ChildLost(self.name, child.index, cause, call.key))
        for key in lost - {call.key for call in doomed}:
            self._lost[key] = ChildLost(self.name, child.index, cause, key)

    def _recent_crashes(self, child: _Child) -> int:
        while child.crashes and child.crashes[0] < time.monotonic() - self._crash_window_s:
            child.crashes.popleft()
        return len(child.crashes)

    def _hang_up(self, child: _Child) -> None:
        """Close our end of the child's pipe: an idle child reads EOF and exits by itself."""
        if child.conn is not None:
            if self._loop is not None:
                self._loop.remove_reader(child.conn.fileno())
            child.conn.close()
            child.conn = None

    def _release(self, child: _Child, wait_s: float) -> None:
        """Stop watching the child's process and reap it: ``wait_s`` for it to exit, then SIGKILL."""
        self._hang_up(child)
        process, child.process, child.ready = child.process, None, False
        if process is not None:
            if self._loop is not None:
                self._loop.remove_reader(process.sentinel)
            process.join(wait_s)
            if process.is_alive():
                process.kill()
                process.join(KILL_WAIT_S)

    def _close(self, reason: str, grace_s: float) -> None:
        if self._closed is not None:
            return
        self._closed = reason
        deadline = time.monotonic() + grace_s
        for child in self._children:  # every child is told first, so that they all end within the grace
            if child.respawn is not None:
                child.respawn.cancel()
            self._hang_up(child)
        calls = [
            *self._unpinned,
            *(call for child in self._children for call in (child.running, *child.queue) if call is not None),
        ]
        for child in self._children:
            self._release(child, max(0.0, deadline - time.monotonic()))
            child.running, child.queue = None, deque()
        self._unpinned.clear()
        for call in calls:
            if not call.future.done():
                call.future.set_exception(PoolBroken(f"{self.name} pool {reason}"))
        self._changed.set()


def _cause(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        return f"killed by {signal.Signals(-exitcode).name}"
    return f"exited with code {exitcode}"


# ------------------------------------------------------------------ inside a child process


def _serve(conn: Connection[Any, Any], initializer: Callable[[A], object], initarg: A) -> None:
    """A child's life: load, say so, then run calls one at a time until the pool closes the pipe."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the process group: the pool ends its children
    try:
        initializer(initarg)
    except Exception as error:
        traceback.print_exc()
        conn.send(("failed", f"{type(error).__name__}: {error}"))
        return
    conn.send(("ready", None))
    while True:
        try:
            payload = conn.recv_bytes()
        except EOFError:
            return  # the pool hung up (or died)
        try:
            fn, args = pickle.loads(payload)
            reply: tuple[str, object] = ("ok", fn(*args))
        except Exception as error:
            error.add_note(f"in child process {os.getpid()}:\n{traceback.format_exc()}")
            reply = ("error", error)
        try:
            conn.send(reply)
        except OSError:
            return  # the pool hung up while this call ran
        except Exception as error:  # an answer that does not pickle
            conn.send(("error", RuntimeError(f"the answer could not be sent back: {error!r}")))
