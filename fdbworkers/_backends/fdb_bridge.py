"""Bridging FDB futures into the event loop (trio or asyncio).

Every call that talks to the cluster returns an FDB future. We never block on it and
never use a thread per call. There is one C callback for the whole process
(:data:`_CALLBACK`, made once); :func:`_wait` sets it on the future with a fresh integer
token as its parameter and parks the task. libfdb_c calls it on its network thread (or
inline, if the future became ready meanwhile); it only looks the token up, queues the
waiter in the hub of the waiting task's loop and wakes that loop, once for any number
of futures that become ready together:

* under trio (:class:`_TrioHub`, one per run), through the hub's wake-up fd (an
  eventfd on Linux) when a task *leads* (waits on that fd, so a lone transaction's
  wake-up is one scheduler hop), else with one ``run_sync_soon``;
* under asyncio (:class:`_AsyncioHub`, one per loop), with one
  ``loop.call_soon_threadsafe``, whose callback resolves the waiting tasks' futures.

Which loop runs the task is read at each wait (trio marks its thread for sniffio; else
asyncio's running loop), and each hub works with its loop's own primitives: no anyio on
this path. Then the result is read from the ready future without blocking, and the
future destroyed. A cancelled waiter withdraws its token and cancels the FDB future
(reads, commits, ``on_error``), so a late callback finds nothing; a watch is not
cancelled with its waiter: cancelling a ``Watch.wait`` leaves the watch registered, and
``Watch.cancel`` stops it. Errors are libfdb_c's codes, raised as our
:class:`~fdbworkers.FDBError`.
"""

from __future__ import annotations

import collections
import ctypes
import itertools
import os
import socket
import weakref
from collections.abc import Callable
from contextlib import suppress
from typing import TYPE_CHECKING, Any, Final

import sniffio

from . import fdb_capi as _capi
from .fdb_capi import _CALLBACK_TYPE

# --------------------------------------------------------------------------------------
# Futures into the event loop: one C callback for the process, one wake-up per batch
# --------------------------------------------------------------------------------------

if TYPE_CHECKING:
    import asyncio

    import trio
else:
    trio = None  # set by the first trio hub (trio is running then: no import of our own)

#: Set while trio runs a task in this thread (sniffio's marker, which trio sets): the
#: cheapest exact answer to "which loop runs this task?", read at every wait.
_running: Final = sniffio.thread_local


class _Lead:
    """The future of the task that leads (waits on the hub's wake-up fd), once ready."""

    __slots__ = ("done",)

    def __init__(self) -> None:
        self.done = False


def _libc_eventfd_write() -> Callable[[int, int], int] | None:
    """libc's ``eventfd_write`` called with the GIL held (``ctypes.PyDLL``), or None
    where there is none. It never blocks on a non-blocking eventfd, so the network
    thread's callback keeps the GIL to its end instead of handing it to the loop's
    thread in the middle (as ``os.eventfd_write`` and ``socket.send`` do) and waiting
    to get it back."""
    try:
        fn = ctypes.PyDLL(None).eventfd_write
    except (OSError, AttributeError):  # pragma: no cover - no such libc
        return None
    fn.argtypes = (ctypes.c_int, ctypes.c_uint64)
    fn.restype = ctypes.c_int
    return fn


class _EventFdWakeup:
    """How the network thread wakes the leader on Linux: an eventfd, one counter that
    any number of signals add to and one read takes (a few µs cheaper on each side than
    a socket pair, and no GIL hand-off inside the callback)."""

    __slots__ = ("_write", "fd")

    def __init__(self, write: Callable[[int, int], Any]) -> None:
        self.fd: int = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._write = write

    def signal(self) -> None:
        """Any thread. The fd is open while a callback can reach it: the waiters'
        entries hold the hub, which owns this, and only its finalizer closes it."""
        self._write(self.fd, 1)  # (EAGAIN only past 2**64 - 2 unread signals)

    def take(self) -> None:
        with suppress(BlockingIOError):
            os.eventfd_read(self.fd)

    def close(self) -> None:
        with suppress(OSError):
            os.close(self.fd)


class _SocketWakeup:
    """How the network thread wakes the leader elsewhere: a byte on a socket pair."""

    __slots__ = ("_rsock", "_wsock", "fd")

    def __init__(self) -> None:
        self._rsock, self._wsock = socket.socketpair()
        self._rsock.setblocking(False)
        self._wsock.setblocking(False)
        self.fd = self._rsock.fileno()

    def signal(self) -> None:
        with suppress(OSError):  # full (then it is readable anyway) or closed
            self._wsock.send(b"\0")

    def take(self) -> None:
        with suppress(BlockingIOError):
            self._rsock.recv(4096)

    def close(self) -> None:
        self._rsock.close()
        self._wsock.close()


_eventfd_write: Callable[[int, int], Any] | None = None


def _new_wakeup() -> _EventFdWakeup | _SocketWakeup:
    global _eventfd_write
    if hasattr(os, "eventfd"):
        if _eventfd_write is None:
            _eventfd_write = _libc_eventfd_write() or os.eventfd_write
        return _EventFdWakeup(_eventfd_write)
    return _SocketWakeup()  # pragma: no cover - not Linux


class _TrioHub:
    """The futures of one trio run that became ready, and how the run is woken.

    The C callback (FDB's network thread) queues the waiter of a ready future. If a
    task *leads* (waits on the hub's wake-up fd in ``wait_readable``: an eventfd on
    Linux, else a socket pair), the callback signals it, unless it signalled and the
    leader has not taken it yet; the leader wakes (one scheduler hop, the latency of a
    single read), takes the signal and wakes every waiter queued.
    With no leader it schedules :meth:`drain` with ``run_sync_soon`` (two hops), unless
    a drain is already scheduled. Either way one wake-up serves a whole batch of ready
    futures. The flags need no lock: the callback queues before it reads them, and the
    trio side clears them before it empties the queue, so a waiter queued at any moment
    is woken by the pass in progress or by the one it triggered (at worst one extra,
    empty pass)."""

    __slots__ = (
        "call_soon",
        "checkpoint",
        "finished",
        "leader",
        "ready",
        "scheduled",
        "signal",
        "signalled",
        "wakeup",
    )

    def __init__(self) -> None:
        #: ``run_sync_soon`` of the run's token, and what it raises once the run ended.
        self.call_soon = trio.lowlevel.current_trio_token().run_sync_soon
        self.finished: type[BaseException] = trio.RunFinishedError
        self.checkpoint = trio.lowlevel.checkpoint
        self.ready: collections.deque[Any] = collections.deque()
        self.scheduled = False
        self.signalled = False
        self.leader: _Lead | None = None
        self.wakeup = _new_wakeup()
        #: Wake the leader (any thread).
        self.signal: Callable[[], None] = self.wakeup.signal

    def new_event(self) -> trio.Event:
        return trio.Event()

    def dispatch(self, by_leader: bool) -> None:
        """Wake the waiters queued (trio thread)."""
        ready = self.ready
        reschedule = trio.lowlevel.reschedule
        event_type = trio.Event
        while ready:
            waiter = ready.popleft()
            kind = type(waiter)
            if kind is _Lead:
                waiter.done = True
                if not by_leader and waiter is self.leader:
                    self.signal()
            elif kind is event_type:
                waiter.set()
            else:
                reschedule(waiter)

    def take(self) -> None:
        """The leader woke: take the signal, then wake the waiters queued."""
        self.wakeup.take()
        self.signalled = False
        self.dispatch(True)

    def drain(self) -> None:
        """Run by ``run_sync_soon`` when the callback found no leader."""
        self.scheduled = False
        self.dispatch(False)

    def __del__(self) -> None:
        wakeup = getattr(self, "wakeup", None)
        if wakeup is not None:
            wakeup.close()


class _AsyncioHub:
    """The futures of one asyncio loop that became ready, and how the loop is woken.

    The C callback queues the waiter of a ready future (an ``asyncio.Future`` of the
    waiting task, or the ``asyncio.Event`` of a shared future) and, unless a drain is
    already scheduled, schedules :meth:`drain` with ``loop.call_soon_threadsafe``: one
    wake-up of the loop per batch of futures that become ready together, the same flag
    protocol as :class:`_TrioHub` without a leader (asyncio wakes a task from a callback
    in the loop's next pass either way). Holds the loop weakly: the hubs are kept per
    loop in a weak mapping."""

    __slots__ = ("__weakref__", "leader", "loop", "ready", "scheduled", "signalled")

    #: What ``call_soon_threadsafe`` raises once the loop is closed.
    finished: type[BaseException] = RuntimeError

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = weakref.ref(loop)
        self.ready: collections.deque[Any] = collections.deque()
        self.scheduled = False
        self.leader: _Lead | None = None  # never: the callback always schedules a drain
        self.signalled = False

    def call_soon(self, fn: Callable[[], None]) -> None:
        loop = self.loop()
        if loop is None:
            raise RuntimeError("the event loop is gone")
        loop.call_soon_threadsafe(fn)

    def signal(self) -> None:  # pragma: no cover - no leader under asyncio
        pass

    @staticmethod
    async def checkpoint() -> None:
        await _asyncio_sleep(0)

    def new_event(self) -> asyncio.Event:
        event: asyncio.Event = _asyncio_event()
        return event

    def drain(self) -> None:
        """Run in the loop by ``call_soon_threadsafe``: wake the waiters queued."""
        self.scheduled = False
        ready = self.ready
        event_type = _asyncio_event
        while ready:
            waiter = ready.popleft()
            if type(waiter) is event_type:
                waiter.set()
            elif not waiter.done():  # (a cancelled waiter's future is done)
                waiter.set_result(None)


_Hub = _TrioHub | _AsyncioHub

_trio_hubs: Any = None  # trio.lowlevel.RunVar[_TrioHub], made by the first trio hub
_asyncio_hubs: weakref.WeakKeyDictionary[Any, _AsyncioHub] = weakref.WeakKeyDictionary()
_last_asyncio_hub: _AsyncioHub | None = None
_get_running_loop: Any = None
_asyncio_sleep: Any = None
_asyncio_event: Any = None


def _hub() -> _Hub:
    """The hub of the loop running the current task (trio or asyncio)."""
    if _running.name == "trio":
        try:
            hub: _TrioHub = _trio_hubs.get()
        except (LookupError, AttributeError):  # none yet in this run (or in any run)
            return _new_trio_hub()
        return hub
    return _current_asyncio_hub()


def _new_trio_hub() -> _TrioHub:
    global trio, _trio_hubs
    if trio is None:
        import trio  # already imported: it runs this task
    if _trio_hubs is None:
        _trio_hubs = trio.lowlevel.RunVar("fdbworkers_fdb_hub")
    hub = _TrioHub()
    _trio_hubs.set(hub)
    return hub


def _current_asyncio_hub() -> _AsyncioHub:
    global _last_asyncio_hub, _get_running_loop, _asyncio_sleep, _asyncio_event
    if _get_running_loop is None:
        import asyncio

        _asyncio_sleep, _asyncio_event = asyncio.sleep, asyncio.Event
        _get_running_loop = asyncio.get_running_loop
    loop = _get_running_loop()  # RuntimeError outside a loop
    hub = _last_asyncio_hub  # (threads that each run a loop: a miss costs a lookup)
    if hub is not None and hub.loop() is loop:
        return hub
    hub = _asyncio_hubs.get(loop)
    if hub is None:
        hub = _asyncio_hubs[loop] = _AsyncioHub(loop)
    _last_asyncio_hub = hub
    return hub


#: The futures waited on: callback token -> (hub, waiter: a trio task, a trio.Event, a
#: _Lead, an asyncio.Future or an asyncio.Event). The C callback pops its entry, so
#: exactly one of the callback and a cancellation wins it.
_waiters: dict[int, tuple[_Hub, Any]] = {}
_tokens = itertools.count(1)


def _on_ready(_future: Any, token: Any) -> None:
    """The one C callback, on FDB's network thread (or inline, in the loop's thread,
    when the future became ready while the callback was being set). It never blocks and
    never touches the future: identified by ``token``, which a cancelled waiter has
    withdrawn, so a late callback (of a cancelled or destroyed future) finds nothing."""
    entry = _waiters.pop(token, None)
    if entry is None:
        return
    hub, waiter = entry
    hub.ready.append(waiter)
    if hub.leader is not None:
        if not hub.signalled:
            hub.signalled = True
            hub.signal()
    elif not hub.scheduled:
        hub.scheduled = True
        with suppress(hub.finished):  # the loop has ended: nobody waits any more
            hub.call_soon(hub.drain)


_CALLBACK: Final = _CALLBACK_TYPE(_on_ready)  # made once, alive as long as the process


async def _wait(f: int) -> None:
    """Wait until the FDB future ``f`` is ready. A cancelled waiter cancels the future
    (it then completes with 1101); its owner destroys it as always.

    Under trio, the first task to wait while no task leads becomes the leader: it waits
    on the hub's wake-up fd itself, so its own wake-up takes one scheduler hop, and it wakes
    the others whose futures became ready meanwhile. The others park until woken.
    Under asyncio every waiter awaits a future of its own, resolved by the hub's drain."""
    hub = _hub()
    if _capi._c.future_is_ready(f):
        await hub.checkpoint()
        return
    token = next(_tokens)
    if isinstance(hub, _AsyncioHub):
        waiter = _get_running_loop().create_future()
        _waiters[token] = (hub, waiter)
        _capi._c.future_set_callback(f, _CALLBACK, token)
        try:
            await waiter
        except BaseException:
            if _waiters.pop(token, None) is not None:
                _capi._c.future_cancel(f)
            raise
        return
    if hub.leader is None:
        lead = hub.leader = _Lead()
        _waiters[token] = (hub, lead)
        try:
            _capi._c.future_set_callback(f, _CALLBACK, token)
            fd = hub.wakeup.fd
            while not lead.done:
                await trio.lowlevel.wait_readable(fd)
                hub.take()
        except BaseException:
            if _waiters.pop(token, None) is not None:
                _capi._c.future_cancel(f)
            raise
        finally:
            hub.leader = None
            hub.dispatch(False)  # queued after the last take: their callbacks saw a leader
        return
    _waiters[token] = (hub, trio.lowlevel.current_task())
    _capi._c.future_set_callback(f, _CALLBACK, token)

    def abort(_raise_cancel: Any) -> trio.lowlevel.Abort:
        if _waiters.pop(token, None) is None:
            return trio.lowlevel.Abort.FAILED  # its wake-up is already queued
        _capi._c.future_cancel(f)
        return trio.lowlevel.Abort.SUCCEEDED

    await trio.lowlevel.wait_task_rescheduled(abort)


async def _checkpoint() -> None:
    """Let the loop run other tasks (and deliver a cancellation)."""
    await _hub().checkpoint()


class _SharedFuture:
    """An FDB future that any number of tasks may await, more than once (a watch, a
    versionstamp): its callback is set once (libfdb_c takes one per future) and wakes an
    event of the waiting loop (``trio.Event``, ``asyncio.Event``). A cancelled waiter
    leaves the future alone. Owns the future. All its waiters run in one loop."""

    __slots__ = ("_event", "ptr")

    def __init__(self, ptr: int) -> None:
        self.ptr = ptr
        self._event: trio.Event | asyncio.Event | None = None

    @property
    def ready(self) -> bool:
        return bool(_capi._c.future_is_ready(self.ptr))

    async def wait(self) -> None:
        event = self._event
        if event is None:
            hub = _hub()
            if _capi._c.future_is_ready(self.ptr):
                await hub.checkpoint()
                return
            event = self._event = hub.new_event()
            token = next(_tokens)
            _waiters[token] = (hub, event)
            _capi._c.future_set_callback(self.ptr, _CALLBACK, token)
        await event.wait()

    def wake(self) -> None:
        """Wake the waiting tasks now, ready or not (the loop's thread only)."""
        if self._event is not None:
            self._event.set()

    def cancel(self) -> None:
        _capi._c.future_cancel(self.ptr)

    def __del__(self) -> None:
        if _capi._c is not None:
            _capi._c.future_destroy(self.ptr)
