"""The real backend: FoundationDB through its official Python binding.

This is the only module of fdbworkers that imports the ``fdb`` package. It holds
:class:`FdbDatabase`, the :class:`~fdbworkers._db.Database` seam implemented over
libfdb_c, opened with :func:`open_fdb`. The tuple layer is pure and lives in
:mod:`fdbworkers._core.tuples` (byte-for-byte the binding's encoding, checked by a test).

Importing this module never loads libfdb_c: ``fdb.impl`` (which ``dlopen``-s the
library, selects the API version and starts the network thread) is imported by
:func:`open_fdb`. After that the binding is only the loader: transactions and futures
go straight to libfdb_c's C functions through ctypes function objects of our own
(:func:`_bind_c_api`), without the binding's per-call Python objects.

Bridging FDB futures into the event loop (trio or asyncio)
----------------------------------------------------------
Every call that talks to the cluster returns an FDB future. We never block on it and
never use a thread per call. There is one C callback for the whole process
(:data:`_CALLBACK`, made once); :func:`_wait` sets it on the future with a fresh integer
token as its parameter and parks the task. libfdb_c calls it on its network thread (or
inline, if the future became ready meanwhile); it only looks the token up, queues the
waiter in the hub of the waiting task's loop and wakes that loop, once for any number
of futures that become ready together:

* under trio (:class:`_TrioHub`, one per run), through a byte on the hub's socket when a
  task *leads* (waits on that socket, so a lone transaction's wake-up is one scheduler
  hop), else with one ``run_sync_soon``;
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

An unreachable cluster
----------------------
:func:`open_fdb` returns at once; reads against an unreachable cluster wait for it like
FDB does (forever, by default). Callers set ``db.default_timeout`` (the CLI does), or a
timeout on the transaction, which turns the wait into error 1031 transaction_timed_out.
"""

from __future__ import annotations

import collections
import ctypes
import itertools
import math
import os
import re
import socket
import struct
import threading
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, Final

import sniffio

from .._db import (
    VERSIONSTAMP_SIZE,
    Database,
    KeyOrSelector,
    KeySelector,
    KeyValue,
    MutationType,
    ReadTransaction,
    Transaction,
    VersionstampFuture,
    Watch,
    check_limit,
    check_retry_limit,
    check_timeout,
)
from .._db import (
    as_selector as _selector,
)
from .._db import (
    check_bytes as _check_key,
)
from .._errors import BackendUnavailableError, ConfigError, FDBError
from .._log import get_logger

__all__ = [
    "DEFAULT_API_VERSION",
    "DEFAULT_CLUSTER_FILE",
    "FdbDatabase",
    "FdbTransaction",
    "check_version_fit",
    "fdb_client_info",
    "open_fdb",
    "probe_cluster_blocking",
    "resolve_cluster_file",
]

log = get_logger("fdbworkers.fdb")

#: The FDB API version fdbworkers is written and tested against.
DEFAULT_API_VERSION: Final = 730
#: The oldest API version whose semantics the seam relies on (persistent timeout and
#: retry limit across on_error: 610; 4-byte versionstamp offsets: 520; 630: tenants).
MIN_API_VERSION: Final = 630
#: The binding release line we support (pyproject: foundationdb>=7.3,<7.4).
SUPPORTED_BINDING: Final = (7, 3)
#: libfdb_c's default cluster file on Linux.
DEFAULT_CLUSTER_FILE: Final = "/etc/foundationdb/fdb.cluster"

# --------------------------------------------------------------------------------------
# Loading libfdb_c and checking that the versions fit
# --------------------------------------------------------------------------------------

_INSTALL_HINT = (
    "Install the FoundationDB client library 7.3 (the foundationdb-clients 7.3.x package "
    "puts libfdb_c.so in /usr/lib), or start the process with LD_LIBRARY_PATH pointing "
    "at the folder that holds libfdb_c.so, or use the embedded engine instead "
    "(cluster address 'memory')."
)


def _parse_version(text: str) -> tuple[int, ...]:
    parts: list[int] = []
    for piece in text.split("."):
        digits = "".join(ch for ch in piece if ch.isdigit())
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


def check_version_fit(
    *,
    binding_version: str,
    header_api_version: int,
    library_max_api_version: int,
    library_version: str | None,
    api_version: int,
    selected_api_version: int | None = None,
) -> None:
    """Raise :class:`BackendUnavailableError` naming both sides when the binding, the
    C library and the requested API version do not fit together (pure).

    The binding passes its newest API version as the "header version" when it selects
    the API version, and libfdb_c refuses a header version newer than it knows: the
    8.x binding (header 740+) cannot load libfdb_c 7.3 (max 730)."""
    lib = f"libfdb_c ({library_version})" if library_version else "the installed libfdb_c"
    parsed = _parse_version(binding_version)
    if parsed and parsed[:2] != SUPPORTED_BINDING:  # () = no package metadata: header check
        want = ".".join(map(str, SUPPORTED_BINDING))
        raise BackendUnavailableError(
            f"the foundationdb Python binding is {binding_version}, but fdbworkers needs "
            f"the {want}.x line (pip install 'foundationdb>={want},<7.4') to match "
            f"{lib} (API version {library_max_api_version})"
        )
    if header_api_version > library_max_api_version:
        raise BackendUnavailableError(
            f"the foundationdb Python binding {binding_version} needs a client library "
            f"that supports API version {header_api_version}, but {lib} supports at most "
            f"{library_max_api_version}: install libfdb_c from the same release line as "
            f"the binding, or a binding that matches the library"
        )
    if not MIN_API_VERSION <= api_version <= header_api_version:
        raise BackendUnavailableError(
            f"API version {api_version} is not usable: fdbworkers needs "
            f"{MIN_API_VERSION}..{header_api_version} with binding {binding_version} "
            f"and {lib}"
        )
    if selected_api_version is not None and selected_api_version != api_version:
        raise BackendUnavailableError(
            f"this process already selected FDB API version {selected_api_version}; "
            f"it cannot switch to {api_version} (one API version per process)"
        )


_load_lock = threading.Lock()


def _binding_version() -> str:
    """The installed foundationdb distribution's version: the ``Version:`` line of its
    METADATA beside the package (importlib.metadata would load the email package,
    about 1.6 MB, into every worker process), else importlib.metadata's answer."""
    import glob

    import fdb

    site = os.path.dirname(os.path.dirname(os.path.abspath(fdb.__file__)))
    found = glob.glob(os.path.join(glob.escape(site), "foundationdb-*.dist-info", "METADATA"))
    for path in found if len(found) == 1 else ():
        try:
            with open(path, encoding="utf-8") as f:
                for line in f:
                    if line.startswith("Version:"):
                        return line.split(":", 1)[1].strip()
                    if not line.strip():
                        break  # the end of the headers
        except OSError:  # pragma: no cover - unreadable metadata
            break
    import importlib.metadata

    try:
        return importlib.metadata.version("foundationdb")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - vendored fdb
        return "unknown"


def _load_impl() -> Any:
    """Import ``fdb.impl`` (which loads libfdb_c) or explain what is missing."""
    try:
        import fdb.impl as impl
    except Exception as e:
        raise BackendUnavailableError(
            f"the FoundationDB client library libfdb_c could not be loaded ({e}). " + _INSTALL_HINT
        ) from e
    return impl


def _library_version(impl: Any) -> str | None:
    """libfdb_c's own version. Only after an API version is selected: before that
    ``fdb_get_client_version`` crashes the process."""
    import ctypes

    import fdb

    if not fdb.is_api_version_selected():
        return None
    try:
        fn = impl._capi.fdb_get_client_version
    except AttributeError:  # pragma: no cover - very old libraries
        return None
    fn.restype = ctypes.c_char_p
    fn.argtypes = []
    raw = fn()
    return raw.decode("ascii", "replace").split(",")[0] if raw else None


def fdb_client_info() -> dict[str, Any]:
    """What this process would use: binding version, library path and version, max API
    version. Loads libfdb_c (raises :class:`BackendUnavailableError` without it)."""
    import fdb

    impl = _load_impl()
    return {
        "binding_version": _binding_version(),
        "header_api_version": int(fdb.LATEST_API_VERSION),
        "library_path": getattr(impl._capi, "_name", None),
        "library_version": _library_version(impl),
        "library_max_api_version": int(impl._capi.fdb_get_max_api_version()),
    }


def _ensure_started(api_version: int) -> Any:
    """Load libfdb_c, check versions, select the API version and start the network
    thread (each once per process). Returns the ``fdb`` module."""
    import fdb

    with _load_lock:
        impl = _load_impl()
        selected = int(fdb.get_api_version()) if fdb.is_api_version_selected() else None
        check_version_fit(
            binding_version=_binding_version(),
            header_api_version=int(fdb.LATEST_API_VERSION),
            library_max_api_version=int(impl._capi.fdb_get_max_api_version()),
            library_version=_library_version(impl) or getattr(impl._capi, "_name", None),
            api_version=api_version,
            selected_api_version=selected,
        )
        if selected is None:
            try:
                fdb.api_version(api_version)
            except RuntimeError as e:  # pragma: no cover - ruled out by the check above
                raise BackendUnavailableError(str(e)) from e
        try:
            impl.init()
        except impl.FDBError as e:
            if e.code != 2000:  # 2000: the network is already running
                raise _convert(e) from e
        global _c
        if _c is None:
            _c = _bind_c_api(impl._capi)
        return fdb


# --------------------------------------------------------------------------------------
# libfdb_c, called directly
# --------------------------------------------------------------------------------------

#: libfdb_c's functions as ctypes function objects of our own (no ``errcheck`` hooks;
#: errors are returned codes), bound once the library is loaded (:func:`_bind_c_api`).
_c: Any = None

#: ``FDBCallback``: ``void (*)(FDBFuture* future, void* callback_parameter)``.
_CALLBACK_TYPE: Final = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p)

_STREAMING_EXACT: Final = 0
_STREAMING_WANT_ALL: Final = -2
_OPTION_TIMEOUT: Final = 500
_OPTION_RETRY_LIMIT: Final = 501
_CONFLICT_READ: Final = 0
_CONFLICT_WRITE: Final = 1


class _KeyValue(ctypes.Structure):
    """``FDBKeyValue`` (packed to 4 bytes in fdb_c.h)."""

    _pack_ = 4
    _fields_ = (
        ("key", ctypes.c_void_p),
        ("key_length", ctypes.c_int),
        ("value", ctypes.c_void_p),
        ("value_length", ctypes.c_int),
    )


def _bind_c_api(lib: Any) -> Any:
    """Our own function objects over the loaded library ``lib`` (the binding's CDLL),
    with the signatures of fdb_c.h at API version 730 (the ones the binding declares).
    They release the GIL during the call, like the binding's."""
    vp, i, i64 = ctypes.c_void_p, ctypes.c_int, ctypes.c_int64
    ptr = ctypes.POINTER

    def fn(name: str, restype: Any, *argtypes: Any) -> Any:
        f = lib._FuncPtr((name, lib))
        f.restype = restype
        f.argtypes = argtypes
        return f

    return SimpleNamespace(
        get_error=fn("fdb_get_error", ctypes.c_char_p, i),
        future_cancel=fn("fdb_future_cancel", None, vp),
        future_destroy=fn("fdb_future_destroy", None, vp),
        future_is_ready=fn("fdb_future_is_ready", i, vp),
        future_set_callback=fn("fdb_future_set_callback", i, vp, _CALLBACK_TYPE, vp),
        future_get_error=fn("fdb_future_get_error", i, vp),
        future_get_int64=fn("fdb_future_get_int64", i, vp, ptr(i64)),
        future_get_key=fn("fdb_future_get_key", i, vp, ptr(vp), ptr(i)),
        future_get_value=fn("fdb_future_get_value", i, vp, ptr(i), ptr(vp), ptr(i)),
        future_get_keyvalue_array=fn(
            "fdb_future_get_keyvalue_array", i, vp, ptr(ptr(_KeyValue)), ptr(i), ptr(i)
        ),
        database_create_transaction=fn("fdb_database_create_transaction", i, vp, ptr(vp)),
        transaction_destroy=fn("fdb_transaction_destroy", None, vp),
        transaction_cancel=fn("fdb_transaction_cancel", None, vp),
        transaction_reset=fn("fdb_transaction_reset", None, vp),
        transaction_set_option=fn("fdb_transaction_set_option", i, vp, i, vp, i),
        transaction_get_read_version=fn("fdb_transaction_get_read_version", vp, vp),
        transaction_get=fn("fdb_transaction_get", vp, vp, vp, i, i),
        transaction_get_key=fn("fdb_transaction_get_key", vp, vp, vp, i, i, i, i),
        transaction_get_range=fn(
            "fdb_transaction_get_range", vp, vp, vp, i, i, i, vp, i, i, i, i, i, i, i, i, i
        ),
        transaction_set=fn("fdb_transaction_set", None, vp, vp, i, vp, i),
        transaction_clear=fn("fdb_transaction_clear", None, vp, vp, i),
        transaction_clear_range=fn("fdb_transaction_clear_range", None, vp, vp, i, vp, i),
        transaction_atomic_op=fn("fdb_transaction_atomic_op", None, vp, vp, i, vp, i, i),
        transaction_add_conflict_range=fn(
            "fdb_transaction_add_conflict_range", i, vp, vp, i, vp, i, i
        ),
        transaction_watch=fn("fdb_transaction_watch", vp, vp, vp, i),
        transaction_commit=fn("fdb_transaction_commit", vp, vp),
        transaction_get_committed_version=fn(
            "fdb_transaction_get_committed_version", i, vp, ptr(i64)
        ),
        transaction_get_versionstamp=fn("fdb_transaction_get_versionstamp", vp, vp),
        transaction_on_error=fn("fdb_transaction_on_error", vp, vp, i),
    )


class _Out(threading.local):
    """Output parameters of the ``fdb_future_get_*`` calls, one set per thread (the GIL
    is released during a call, so two threads must not share them)."""

    def __init__(self) -> None:
        self.flag = ctypes.c_int()
        self.length = ctypes.c_int()
        self.ptr = ctypes.c_void_p()
        self.i64 = ctypes.c_int64()
        self.kvs = ctypes.POINTER(_KeyValue)()
        self.flag_ref = ctypes.byref(self.flag)
        self.length_ref = ctypes.byref(self.length)
        self.ptr_ref = ctypes.byref(self.ptr)
        self.i64_ref = ctypes.byref(self.i64)
        self.kvs_ref = ctypes.byref(self.kvs)


_out: Any = _Out()
_string_at = ctypes.string_at


def _convert(e: Any) -> FDBError:
    """The binding's ``fdb.FDBError`` as ours (for the calls still made through it)."""
    return _error(int(e.code))


def _known_codes() -> frozenset[int]:
    from .._errors import FDB_ERRORS

    return frozenset(FDB_ERRORS)


_KNOWN_CODES: Final = _known_codes()


def _error(code: int) -> FDBError:
    """Our :class:`FDBError` for a code libfdb_c returned."""
    if code in _KNOWN_CODES or _c is None:
        return FDBError(code)
    raw = _c.get_error(code)
    return FDBError(code, raw.decode("utf-8", "replace") if raw else None)


def _value_of(f: int) -> bytes | None:
    o = _out
    err = _c.future_get_value(f, o.flag_ref, o.ptr_ref, o.length_ref)
    if err:
        raise _error(err)
    if not o.flag.value:
        return None
    n = o.length.value
    return _string_at(o.ptr.value, n) if n else b""


def _key_of(f: int) -> bytes:
    o = _out
    err = _c.future_get_key(f, o.ptr_ref, o.length_ref)
    if err:
        raise _error(err)
    n = o.length.value
    return _string_at(o.ptr.value, n) if n else b""


def _int64_of(f: int) -> int:
    o = _out
    err = _c.future_get_int64(f, o.i64_ref)
    if err:
        raise _error(err)
    return int(o.i64.value)


def _rows_of(f: int) -> tuple[list[KeyValue], bool]:
    """The rows of a range read future and whether there are more."""
    o = _out
    err = _c.future_get_keyvalue_array(f, o.kvs_ref, o.length_ref, o.flag_ref)
    if err:
        raise _error(err)
    at = _string_at
    rows = [
        KeyValue(at(kv.key, kv.key_length), at(kv.value, kv.value_length))
        for kv in o.kvs[: o.length.value]
    ]
    return rows, bool(o.flag.value)


@contextmanager
def _translated() -> Iterator[None]:
    """Turn the binding's ``fdb.FDBError`` into ours (calls still made through it)."""
    import fdb.impl

    try:
        yield
    except fdb.impl.FDBError as e:
        raise _convert(e) from None


def _check_error(f: int) -> None:
    err = _c.future_get_error(f)
    if err:
        raise _error(err)


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
    """The future of the task that leads (waits on the hub's socket), once ready."""

    __slots__ = ("done",)

    def __init__(self) -> None:
        self.done = False


class _TrioHub:
    """The futures of one trio run that became ready, and how the run is woken.

    The C callback (FDB's network thread) queues the waiter of a ready future. If a
    task *leads* (waits on the hub's socket in ``wait_readable``), the callback sends
    one byte, unless one was sent and not yet taken; the leader wakes (one scheduler
    hop, the latency of a single read), takes the bytes and wakes every waiter queued.
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
        "rsock",
        "scheduled",
        "signalled",
        "wsock",
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
        self.rsock, self.wsock = socket.socketpair()
        self.rsock.setblocking(False)
        self.wsock.setblocking(False)

    def signal(self) -> None:
        """Wake the leader (any thread)."""
        with suppress(OSError):  # full (then it is readable anyway) or closed
            self.wsock.send(b"\0")

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
        """The leader woke: take the bytes, then wake the waiters queued."""
        with suppress(BlockingIOError):
            self.rsock.recv(4096)
        self.signalled = False
        self.dispatch(True)

    def drain(self) -> None:
        """Run by ``run_sync_soon`` when the callback found no leader."""
        self.scheduled = False
        self.dispatch(False)

    def __del__(self) -> None:
        for sock in (getattr(self, "rsock", None), getattr(self, "wsock", None)):
            if sock is not None:
                sock.close()


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
    on the hub's socket itself, so its own wake-up takes one scheduler hop, and it wakes
    the others whose futures became ready meanwhile. The others park until woken.
    Under asyncio every waiter awaits a future of its own, resolved by the hub's drain."""
    hub = _hub()
    if _c.future_is_ready(f):
        await hub.checkpoint()
        return
    token = next(_tokens)
    if isinstance(hub, _AsyncioHub):
        waiter = _get_running_loop().create_future()
        _waiters[token] = (hub, waiter)
        _c.future_set_callback(f, _CALLBACK, token)
        try:
            await waiter
        except BaseException:
            if _waiters.pop(token, None) is not None:
                _c.future_cancel(f)
            raise
        return
    if hub.leader is None:
        lead = hub.leader = _Lead()
        _waiters[token] = (hub, lead)
        try:
            _c.future_set_callback(f, _CALLBACK, token)
            rsock = hub.rsock
            while not lead.done:
                await trio.lowlevel.wait_readable(rsock)
                hub.take()
        except BaseException:
            if _waiters.pop(token, None) is not None:
                _c.future_cancel(f)
            raise
        finally:
            hub.leader = None
            hub.dispatch(False)  # queued after the last take: their callbacks saw a leader
        return
    _waiters[token] = (hub, trio.lowlevel.current_task())
    _c.future_set_callback(f, _CALLBACK, token)

    def abort(_raise_cancel: Any) -> trio.lowlevel.Abort:
        if _waiters.pop(token, None) is None:
            return trio.lowlevel.Abort.FAILED  # its wake-up is already queued
        _c.future_cancel(f)
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
        return bool(_c.future_is_ready(self.ptr))

    async def wait(self) -> None:
        event = self._event
        if event is None:
            hub = _hub()
            if _c.future_is_ready(self.ptr):
                await hub.checkpoint()
                return
            event = self._event = hub.new_event()
            token = next(_tokens)
            _waiters[token] = (hub, event)
            _c.future_set_callback(self.ptr, _CALLBACK, token)
        await event.wait()

    def wake(self) -> None:
        """Wake the waiting tasks now, ready or not (the loop's thread only)."""
        if self._event is not None:
            self._event.set()

    def cancel(self) -> None:
        _c.future_cancel(self.ptr)

    def __del__(self) -> None:
        if _c is not None:
            _c.future_destroy(self.ptr)


# --------------------------------------------------------------------------------------
# Transactions
# --------------------------------------------------------------------------------------


class _FdbReads(ReadTransaction):
    """Reads of a transaction (``_snap`` 0) or of its snapshot view (1)."""

    _ptr: int
    _snap: int

    async def get(self, key: bytes) -> bytes | None:
        if type(key) is not bytes:
            _check_key(key)
        f = _c.transaction_get(self._ptr, key, len(key), self._snap)
        try:
            await _wait(f)
            return _value_of(f)
        finally:
            _c.future_destroy(f)

    async def get_many(self, keys: Sequence[bytes]) -> list[bytes | None]:
        for key in keys:
            _check_key(key)
        ptr, snap = self._ptr, self._snap
        futures = [_c.transaction_get(ptr, key, len(key), snap) for key in keys]
        try:
            waited = False
            for f in futures:
                if not _c.future_is_ready(f):
                    await _wait(f)
                    waited = True
            if not waited:
                await _checkpoint()
            return [_value_of(f) for f in futures]
        finally:
            for f in futures:
                _c.future_destroy(f)

    async def get_key(self, selector: KeySelector) -> bytes:
        if not isinstance(selector, KeySelector):
            raise TypeError("get_key takes a KeySelector")
        key = selector.key
        _check_key(key)
        f = _c.transaction_get_key(
            self._ptr, key, len(key), selector.or_equal, selector.offset, self._snap
        )
        try:
            await _wait(f)
            return _key_of(f)
        finally:
            _c.future_destroy(f)

    async def get_range(
        self,
        begin: KeyOrSelector,
        end: KeyOrSelector,
        *,
        limit: int = 0,
        reverse: bool = False,
    ) -> list[KeyValue]:
        check_limit(limit)
        b = _selector(begin)
        e = _selector(end)
        # EXACT asks for `limit` rows in one batch, WANT_ALL for everything as early as
        # possible; either may still stop early on byte limits ("more"), so we continue
        # from the last key like the binding's own iterator does.
        mode = _STREAMING_EXACT if limit > 0 else _STREAMING_WANT_ALL
        out: list[KeyValue] = []
        remaining = limit
        iteration = 1
        while True:
            f = _c.transaction_get_range(
                self._ptr,
                b.key,
                len(b.key),
                b.or_equal,
                b.offset,
                e.key,
                len(e.key),
                e.or_equal,
                e.offset,
                remaining,
                0,
                mode,
                iteration,
                self._snap,
                reverse,
            )
            try:
                await _wait(f)
                rows, more = _rows_of(f)
            finally:
                _c.future_destroy(f)
            out.extend(rows)
            count = len(rows)
            if not more or count == 0:
                return out
            if limit > 0:
                remaining -= count
                if remaining <= 0:
                    return out
            iteration += 1
            if reverse:
                e = KeySelector.first_greater_or_equal(rows[-1].key)
            else:
                b = KeySelector.first_greater_than(rows[-1].key)

    async def get_read_version(self) -> int:
        f = _c.transaction_get_read_version(self._ptr)
        try:
            await _wait(f)
            return _int64_of(f)
        finally:
            _c.future_destroy(f)


class _FdbSnapshot(_FdbReads):
    """The snapshot view of a transaction (reads add no read conflict ranges)."""

    _snap = 1

    def __init__(self, owner: FdbTransaction) -> None:
        self._owner = owner  # keeps the transaction (and its pointer) alive
        self._ptr = owner._ptr


class FdbWatch(Watch):
    """A watch: an FDB void future that outlives its transaction."""

    def __init__(self, future: int, key: bytes) -> None:
        self._future = _SharedFuture(future)
        self.key = key
        self._cancelled = False
        #: Set when we fail the watch ourselves (its transaction was cancelled).
        self._error: FDBError | None = None

    async def wait(self) -> None:
        # Cancelling the waiting task does not cancel the watch (call ``cancel``).
        if self._error is None:
            await self._future.wait()
        else:
            await _checkpoint()
        if self._error is not None:
            # The FDB future may still be pending: never block on it.
            raise FDBError(self._error.code, self._error.description)
        _check_error(self._future.ptr)

    def cancel(self) -> None:
        self._cancelled = True
        self._future.cancel()

    def _fail_cancelled(self) -> None:
        """Fail the watch with 1025 because its transaction was cancelled uncommitted.

        libfdb_c 7.3 does not reliably do this itself: after
        ``fdb_transaction_cancel`` the watch future of an uncommitted transaction
        sometimes never becomes ready (about one run in twenty in a fresh process), so
        ``wait`` would hang. We record the error, wake the waiters, and cancel the FDB
        future so that it no longer counts against ``max_watches``."""
        if self._error is not None or self._cancelled or self._future.ready:
            return
        self._error = FDBError(1025)
        self._future.cancel()
        self._future.wake()

    @property
    def done(self) -> bool:
        # libfdb_c completes a cancelled future on its network thread, a moment later.
        return self._cancelled or self._error is not None or self._future.ready

    def __repr__(self) -> str:
        state = "cancelled" if self._cancelled else ("done" if self.done else "pending")
        return f"<FdbWatch key={self.key!r} {state}>"


class FdbVersionstampFuture(VersionstampFuture):
    def __init__(self, future: int) -> None:
        self._future = _SharedFuture(future)

    async def get(self) -> bytes:
        await self._future.wait()
        stamp = _key_of(self._future.ptr)
        if len(stamp) != VERSIONSTAMP_SIZE:  # pragma: no cover - libfdb_c guarantees it
            raise FDBError(1000, f"versionstamp of {len(stamp)} bytes")
        return stamp


#: set_timeout's option parameter per timeout (seconds, a float already checked).
_timeout_params: dict[float, bytes] = {}


class FdbTransaction(_FdbReads, Transaction):
    """A transaction over libfdb_c's ``FDBTransaction``; see :class:`Transaction`."""

    _snap = 0

    def __init__(self, db: FdbDatabase, ptr: int) -> None:
        self._ptr = ptr
        self._db = db
        self.maybe_committed = False
        self._snapshot: _FdbSnapshot | None = None
        #: Watches created since the last reset, commit or on_error: the ones that
        #: ``cancel`` must fail with 1025 (None: none).
        self._uncommitted_watches: list[FdbWatch] | None = None

    def __del__(self) -> None:
        if _c is not None:
            _c.transaction_destroy(self._ptr)

    # -- reads -------------------------------------------------------------------------
    @property
    def snapshot(self) -> ReadTransaction:
        if self._snapshot is None:
            self._snapshot = _FdbSnapshot(self)
        return self._snapshot

    # -- writes ------------------------------------------------------------------------
    def set(self, key: bytes, value: bytes) -> None:
        if type(key) is not bytes or type(value) is not bytes:
            _check_key(key)
            _check_key(value, "value")
        _c.transaction_set(self._ptr, key, len(key), value, len(value))

    def clear(self, key: bytes) -> None:
        if type(key) is not bytes:
            _check_key(key)
        _c.transaction_clear(self._ptr, key, len(key))

    def clear_range(self, begin: bytes, end: bytes) -> None:
        _check_key(begin)
        _check_key(end)
        _c.transaction_clear_range(self._ptr, begin, len(begin), end, len(end))

    def atomic_op(self, op: MutationType, key: bytes, param: bytes) -> None:
        if type(op) is not MutationType:
            op = MutationType(op)
        if type(key) is not bytes or type(param) is not bytes:
            _check_key(key)
            _check_key(param, "param")
        _c.transaction_atomic_op(self._ptr, key, len(key), param, len(param), op)

    def set_versionstamped_value(self, key: bytes, value: bytes) -> None:
        if type(key) is not bytes or type(value) is not bytes:
            _check_key(key)
            _check_key(value, "param")
        _c.transaction_atomic_op(
            self._ptr, key, len(key), value, len(value), MutationType.SET_VERSIONSTAMPED_VALUE
        )

    def _conflict_range(self, begin: bytes, end: bytes, kind: int) -> None:
        _check_key(begin)
        _check_key(end)
        err = _c.transaction_add_conflict_range(self._ptr, begin, len(begin), end, len(end), kind)
        if err:
            raise _error(err)

    def add_read_conflict_range(self, begin: bytes, end: bytes) -> None:
        self._conflict_range(begin, end, _CONFLICT_READ)

    def add_write_conflict_range(self, begin: bytes, end: bytes) -> None:
        self._conflict_range(begin, end, _CONFLICT_WRITE)

    def watch(self, key: bytes) -> Watch:
        _check_key(key)
        w = FdbWatch(_c.transaction_watch(self._ptr, key, len(key)), key)
        self._db._track_watch(w)
        if self._uncommitted_watches is None:
            self._uncommitted_watches = []
        self._uncommitted_watches.append(w)
        return w

    def get_versionstamp(self) -> VersionstampFuture:
        return FdbVersionstampFuture(_c.transaction_get_versionstamp(self._ptr))

    def get_committed_version(self) -> int:
        o = _out
        err = _c.transaction_get_committed_version(self._ptr, o.i64_ref)
        if err:
            raise _error(err)
        return int(o.i64.value)

    # -- options -----------------------------------------------------------------------
    def _set_int_option(self, option: int, value: int) -> None:
        err = _c.transaction_set_option(self._ptr, option, struct.pack("<q", value), 8)
        if err:
            raise _error(err)

    def set_timeout(self, seconds: float) -> None:
        # Most transactions get one of a few timeouts: their option parameter is kept.
        param = _timeout_params.get(seconds) if type(seconds) is float else None
        if param is None:
            checked = check_timeout(seconds)
            ms = 0 if checked == 0 else max(1, math.ceil(checked * 1000))
            param = struct.pack("<q", min(ms, 2**31 - 1))
            if type(seconds) is float and len(_timeout_params) < 64:
                _timeout_params[seconds] = param
        err = _c.transaction_set_option(self._ptr, _OPTION_TIMEOUT, param, 8)
        if err:
            raise _error(err)

    def set_retry_limit(self, retries: int) -> None:
        retries = check_retry_limit(retries)
        self._set_int_option(_OPTION_RETRY_LIMIT, min(retries, 2**31 - 1))

    # -- lifecycle ---------------------------------------------------------------------
    async def commit(self) -> None:
        f = _c.transaction_commit(self._ptr)
        try:
            await _wait(f)
            err = _c.future_get_error(f)
        finally:
            _c.future_destroy(f)
        # Committed, the watches now belong to the database (a later cancel leaves them);
        # failed, they fail with the commit's error (libfdb_c does that).
        self._uncommitted_watches = None
        if err:
            raise _error(err)

    async def on_error(self, error: FDBError) -> None:
        # FDB's own on_error: its retry predicate, backoff, retry limit and timeout.
        # The watches of the failed attempt fail with its error (libfdb_c does that).
        self._uncommitted_watches = None
        f = _c.transaction_on_error(self._ptr, error.code)
        try:
            await _wait(f)
            err = _c.future_get_error(f)
        finally:
            _c.future_destroy(f)
        if err:
            raise _error(err)

    def reset(self) -> None:
        self.maybe_committed = False
        # libfdb_c fails the uncommitted watches with 1025 on reset itself.
        self._uncommitted_watches = None
        _c.transaction_reset(self._ptr)

    def cancel(self) -> None:
        _c.transaction_cancel(self._ptr)
        # libfdb_c 7.3 sometimes leaves the watch future of a cancelled uncommitted
        # transaction pending forever; fail those watches with 1025 ourselves.
        watches, self._uncommitted_watches = self._uncommitted_watches, None
        for w in watches or ():
            w._fail_cancelled()

    def __repr__(self) -> str:
        return f"<FdbTransaction maybe_committed={self.maybe_committed}>"


# --------------------------------------------------------------------------------------
# The database
# --------------------------------------------------------------------------------------


class FdbDatabase(Database):
    """A FoundationDB database handle (one libfdb_c database object of its own, so its
    options such as ``max_watches`` do not leak to other handles)."""

    backend = "fdb"

    def __init__(self, handle: Any, fdb_module: Any, cluster_file: str, api_version: int):
        super().__init__()
        #: The binding's ``fdb.impl.Database``: owns the database pointer.
        self._handle: Any = handle
        self._fdb = fdb_module
        self.cluster_file = cluster_file
        self.api_version = api_version
        self._watches: weakref.WeakSet[FdbWatch] = weakref.WeakSet()

    def create_transaction(self) -> FdbTransaction:
        handle = self._handle
        if handle is None:
            raise FDBError(2000, "the database handle is closed")
        o = _out
        err = _c.database_create_transaction(handle.dpointer, o.ptr_ref)
        if err:
            raise _error(err)
        return FdbTransaction(self, o.ptr.value)

    def set_max_watches(self, n: int) -> None:
        if not 0 <= n <= 1_000_000:
            raise ConfigError(f"max_watches is 0..1000000, not {n}")
        if self._handle is None:
            raise FDBError(2000, "the database handle is closed")
        with _translated():
            self._handle.options.set_max_watches(n)

    def _track_watch(self, w: FdbWatch) -> None:
        self._watches.add(w)

    async def aclose(self) -> None:
        for w in list(self._watches):
            if not w.done:
                w.cancel()
        self._watches.clear()
        self._handle = None
        await _checkpoint()

    def __repr__(self) -> str:
        state = "closed" if self._handle is None else "open"
        return (
            f"<FdbDatabase {state} cluster_file={self.cluster_file!r} "
            f"api_version={self.api_version}>"
        )


def resolve_cluster_file(cluster_file: str | None = None) -> str:
    """The cluster file libfdb_c would use: the argument, else ``FDB_CLUSTER_FILE``,
    else ``/etc/foundationdb/fdb.cluster``. Raises :class:`ConfigError` if it does not
    exist or cannot be read."""
    source = "argument"
    path = cluster_file
    if not path:
        path = os.environ.get("FDB_CLUSTER_FILE") or None
        source = "FDB_CLUSTER_FILE"
    if not path:
        path = DEFAULT_CLUSTER_FILE
        source = "default location"
    if not os.path.isfile(path):
        raise ConfigError(
            f"FoundationDB cluster file {path!r} ({source}) does not exist: pass the "
            f"cluster file, or set FDB_CLUSTER_FILE"
        )
    if not os.access(path, os.R_OK):
        raise ConfigError(f"FoundationDB cluster file {path!r} ({source}) is not readable")
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read(10_000)
    except OSError as e:
        raise ConfigError(f"FoundationDB cluster file {path!r} ({source}): {e}") from e
    problem = check_connection_string(text)
    if problem is not None:
        raise ConfigError(f"FoundationDB cluster file {path!r} ({source}) {problem}")
    return os.path.abspath(path)


_CONNECTION_STRING = re.compile(
    r"^[A-Za-z0-9_]+:[A-Za-z0-9]+@"
    r"(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9_.-]+):[0-9]{1,5}(:tls)?"
    r"(,(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9_.-]+):[0-9]{1,5}(:tls)?)*$"
)


def check_connection_string(text: str) -> str | None:
    """Why ``text`` (a cluster file's content) is not a connection string, or None
    (pure). The form is ``DESCRIPTION:ID@HOST:PORT[,HOST:PORT...]``, ``#`` comments;
    libfdb_c would say only ``connection_string_invalid (2104)``."""
    lines = [ln.strip() for ln in text.splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith("#")]
    if not lines:
        return "is empty: it must hold a connection string DESCRIPTION:ID@HOST:PORT,..."
    first = lines[0].split("#", 1)[0].strip()
    if not _CONNECTION_STRING.match(first):
        shown = first if len(first) <= 60 else first[:57] + "..."
        return (
            f"does not hold a connection string: expected DESCRIPTION:ID@HOST:PORT,... "
            f"(e.g. 'docker:docker@127.0.0.1:4500'), found {shown!r}"
        )
    return None


def open_fdb(
    cluster_file: str | None = None, *, api_version: int = DEFAULT_API_VERSION
) -> FdbDatabase:
    """Open a FoundationDB database through libfdb_c.

    On first use in the process this loads libfdb_c, checks that the binding, the
    library and ``api_version`` fit (else :class:`BackendUnavailableError` naming the
    versions), selects the API version and starts FDB's network thread. It returns at
    once, without contacting the cluster: set ``db.default_timeout`` so that an
    unreachable cluster fails with 1031 instead of waiting forever.
    """
    path = resolve_cluster_file(cluster_file)
    fdb_module = _ensure_started(api_version)
    with _translated():
        handle = fdb_module.impl.create_database(path)
    log.debug("fdb_database_opened", cluster_file=path, api_version=api_version)
    return FdbDatabase(handle, fdb_module, path, api_version)


def probe_cluster_blocking(cluster_file: str | None = None, *, timeout: float = 5.0) -> str | None:
    """Ask the cluster for a read version, **blocking** the calling thread for at most
    ``timeout`` seconds: None if it answered, else why not. For start-up checks outside
    the event loop (test collection, a CLI's first look); never call it from async code."""
    try:
        path = resolve_cluster_file(cluster_file)
        fdb_module = _ensure_started(DEFAULT_API_VERSION)
    except (ConfigError, BackendUnavailableError) as e:
        return str(e)
    handle = fdb_module.impl.create_database(path)
    tr = handle.create_transaction()
    tr.options.set_timeout(max(1, math.ceil(timeout * 1000)))
    try:
        tr.get_read_version().wait()
    except fdb_module.impl.FDBError as e:
        err = _convert(e)
        if err.code == 1031:
            return f"the cluster in {path} did not answer within {timeout:g} s"
        return f"the cluster in {path} failed: {err}"
    return None
