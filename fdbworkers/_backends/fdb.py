"""The real backend: FoundationDB through its official Python binding.

This is the only module of fdbworkers that imports the ``fdb`` package. It holds
:class:`FdbDatabase`, the :class:`~fdbworkers._db.Database` seam implemented over
libfdb_c, opened with :func:`open_fdb`. The tuple layer is pure and lives in
:mod:`fdbworkers._core.tuples` (byte-for-byte the binding's encoding, checked by a test).

Importing this module never loads libfdb_c: ``fdb.impl`` (which ``dlopen``-s the
library) is imported by :func:`open_fdb`.

Bridging FDB futures into trio
------------------------------
Every binding call that talks to the cluster returns an FDB future. We never block on it
and never use a thread per call: :func:`_wait_ready` registers ``future.on_ready`` (which
libfdb_c calls on its network thread, or inline when the future is already ready); the
callback only does ``trio_token.run_sync_soon(event.set)``, which wakes the waiting task
in the trio thread. Then the result is extracted without blocking (the future is ready).
If the waiting task is cancelled, the FDB future is cancelled too (reads, commits,
``on_error``); a watch is not: cancelling a ``Watch.wait`` leaves the watch registered,
and ``Watch.cancel`` stops it. Every ``fdb.FDBError`` becomes our
:class:`~fdbworkers.FDBError` with the same code.

An unreachable cluster
----------------------
:func:`open_fdb` returns at once; reads against an unreachable cluster wait for it like
FDB does (forever, by default). Callers set ``db.default_timeout`` (the CLI does), or a
timeout on the transaction, which turns the wait into error 1031 transaction_timed_out.
"""

from __future__ import annotations

import importlib.metadata
import math
import os
import re
import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any, Final

import trio

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
        return fdb


# --------------------------------------------------------------------------------------
# Futures and errors
# --------------------------------------------------------------------------------------


def _convert(e: Any) -> FDBError:
    code = int(e.code)
    if code in _KNOWN_CODES:
        return FDBError(code)
    try:
        description = str(e.description)
    except Exception:  # pragma: no cover - description comes from libfdb_c
        description = None
    return FDBError(code, description)


def _known_codes() -> frozenset[int]:
    from .._errors import FDB_ERRORS

    return frozenset(FDB_ERRORS)


_KNOWN_CODES: Final = _known_codes()


@contextmanager
def _translated() -> Iterator[None]:
    """Turn the binding's ``fdb.FDBError`` into ours."""
    import fdb.impl

    try:
        yield
    except fdb.impl.FDBError as e:
        raise _convert(e) from None


class _Bridge:
    """One FDB future awaited from trio: one ``on_ready`` callback per future (libfdb_c
    allows one), fanned out to any number of waiting tasks through a ``trio.Event``."""

    __slots__ = ("_event", "_future", "_registered")

    def __init__(self, future: Any) -> None:
        self._future = future
        self._event: trio.Event | None = None
        self._registered = False

    @property
    def ready(self) -> bool:
        return bool(self._future.is_ready())

    async def wait(self, *, cancel_on_abort: bool) -> None:
        """Wait until the future is ready. A cancelled waiter cancels the FDB future
        when ``cancel_on_abort`` (the future then completes with 1101)."""
        if self._future.is_ready():
            await trio.lowlevel.checkpoint()
            return
        if self._event is None:
            self._event = trio.Event()
        event = self._event
        if not self._registered:
            self._registered = True
            token = trio.lowlevel.current_trio_token()

            def on_ready(_future: Any) -> None:
                # FDB's network thread (or inline, in this thread): never block here.
                with suppress(trio.RunFinishedError):
                    token.run_sync_soon(event.set)

            self._future.on_ready(on_ready)
        try:
            await event.wait()
        except BaseException:
            if cancel_on_abort:
                self._future.cancel()
            raise

    def cancel(self) -> None:
        self._future.cancel()

    def wake(self) -> None:
        """Wake the waiting tasks now, whether or not the FDB future is ready (trio
        thread only)."""
        if self._event is not None:
            self._event.set()


async def _result(future: Any, extract: Any) -> Any:
    """Await a read-like FDB future and extract its result (cancels on abort)."""
    await _Bridge(future).wait(cancel_on_abort=True)
    with _translated():
        return extract(future)


def _value_of(future: Any) -> Any:
    # fdb.impl.Value / Key: ``.value`` is computed once the future is ready.
    return future.value


def _void(future: Any) -> None:
    future.wait()


def _int_of(future: Any) -> int:
    return int(future.wait())


# --------------------------------------------------------------------------------------
# Transactions
# --------------------------------------------------------------------------------------


class _FdbReads(ReadTransaction):
    """Reads over an ``fdb.impl.TransactionRead`` (the transaction or its snapshot)."""

    def __init__(self, reader: Any, streaming: Any) -> None:
        self._reader = reader
        self._streaming = streaming

    async def get(self, key: bytes) -> bytes | None:
        _check_key(key)
        with _translated():
            future = self._reader.get(key)
        value: bytes | None = await _result(future, _value_of)
        return value

    async def get_key(self, selector: KeySelector) -> bytes:
        if not isinstance(selector, KeySelector):
            raise TypeError("get_key takes a KeySelector")
        _check_key(selector.key)
        with _translated():
            future = self._reader.get_key(selector)
        key: bytes = await _result(future, _value_of)
        return key

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
        mode = self._streaming.exact if limit > 0 else self._streaming.want_all
        out: list[KeyValue] = []
        remaining = limit
        iteration = 1
        while True:
            with _translated():
                future = self._reader._get_range(b, e, remaining, mode, iteration, reverse)
            kvs, count, more = await _result(future, lambda f: f.wait())
            out.extend(KeyValue(kv.key, kv.value) for kv in kvs)
            if not more or count == 0:
                return out
            if limit > 0:
                remaining -= count
                if remaining <= 0:
                    return out
            iteration += 1
            if reverse:
                e = KeySelector.first_greater_or_equal(kvs[-1].key)
            else:
                b = KeySelector.first_greater_than(kvs[-1].key)

    async def get_read_version(self) -> int:
        with _translated():
            future = self._reader.get_read_version()
        version: int = await _result(future, _int_of)
        return version


class FdbWatch(Watch):
    """A watch: an FDB void future that outlives its transaction."""

    def __init__(self, future: Any, key: bytes) -> None:
        self._bridge = _Bridge(future)
        self._future = future
        self.key = key
        self._cancelled = False
        #: Set when we fail the watch ourselves (its transaction was cancelled).
        self._error: FDBError | None = None

    async def wait(self) -> None:
        # Cancelling the waiting task does not cancel the watch (call ``cancel``).
        if self._error is None:
            await self._bridge.wait(cancel_on_abort=False)
        else:
            await trio.lowlevel.checkpoint()
        if self._error is not None:
            # The FDB future may still be pending: never block on it.
            raise FDBError(self._error.code, self._error.description)
        with _translated():
            self._future.wait()

    def cancel(self) -> None:
        self._cancelled = True
        self._bridge.cancel()

    def _fail_cancelled(self) -> None:
        """Fail the watch with 1025 because its transaction was cancelled uncommitted.

        libfdb_c 7.3 does not reliably do this itself: after
        ``fdb_transaction_cancel`` the watch future of an uncommitted transaction
        sometimes never becomes ready (about one run in twenty in a fresh process), so
        ``wait`` would hang. We record the error, wake the waiters, and cancel the FDB
        future so that it no longer counts against ``max_watches``."""
        if self._error is not None or self._cancelled or self._bridge.ready:
            return
        self._error = FDBError(1025)
        self._bridge.cancel()
        self._bridge.wake()

    @property
    def done(self) -> bool:
        # libfdb_c completes a cancelled future on its network thread, a moment later.
        return self._cancelled or self._error is not None or self._bridge.ready

    def __repr__(self) -> str:
        state = "cancelled" if self._cancelled else ("done" if self.done else "pending")
        return f"<FdbWatch key={self.key!r} {state}>"


class FdbVersionstampFuture(VersionstampFuture):
    def __init__(self, future: Any) -> None:
        self._bridge = _Bridge(future)
        self._future = future

    async def get(self) -> bytes:
        await self._bridge.wait(cancel_on_abort=False)
        with _translated():
            stamp: bytes = self._future.value
        if len(stamp) != VERSIONSTAMP_SIZE:  # pragma: no cover - libfdb_c guarantees it
            raise FDBError(1000, f"versionstamp of {len(stamp)} bytes")
        return stamp


class FdbTransaction(Transaction):
    """A transaction over ``fdb.impl.Transaction``; see :class:`Transaction`."""

    def __init__(self, db: FdbDatabase, tr: Any, streaming: Any) -> None:
        self._db = db
        self._tr = tr
        self._reads = _FdbReads(tr, streaming)
        self._snapshot = _FdbReads(tr.snapshot, streaming)
        self.maybe_committed = False
        #: Watches created since the last reset, commit or on_error: the ones that
        #: ``cancel`` must fail with 1025.
        self._uncommitted_watches: list[FdbWatch] = []

    # -- reads -------------------------------------------------------------------------
    @property
    def snapshot(self) -> ReadTransaction:
        return self._snapshot

    async def get(self, key: bytes) -> bytes | None:
        return await self._reads.get(key)

    async def get_key(self, selector: KeySelector) -> bytes:
        return await self._reads.get_key(selector)

    async def get_range(
        self,
        begin: KeyOrSelector,
        end: KeyOrSelector,
        *,
        limit: int = 0,
        reverse: bool = False,
    ) -> list[KeyValue]:
        return await self._reads.get_range(begin, end, limit=limit, reverse=reverse)

    async def get_read_version(self) -> int:
        return await self._reads.get_read_version()

    # -- writes ------------------------------------------------------------------------
    def set(self, key: bytes, value: bytes) -> None:
        _check_key(key)
        _check_key(value, "value")
        with _translated():
            self._tr.set(key, value)

    def clear(self, key: bytes) -> None:
        _check_key(key)
        with _translated():
            self._tr.clear(key)

    def clear_range(self, begin: bytes, end: bytes) -> None:
        _check_key(begin)
        _check_key(end)
        with _translated():
            self._tr.clear_range(begin, end)

    def atomic_op(self, op: MutationType, key: bytes, param: bytes) -> None:
        _check_key(key)
        _check_key(param, "param")
        with _translated():
            self._tr._atomic_operation(int(MutationType(op)), key, param)

    def add_read_conflict_range(self, begin: bytes, end: bytes) -> None:
        _check_key(begin)
        _check_key(end)
        with _translated():
            self._tr.add_read_conflict_range(begin, end)

    def add_write_conflict_range(self, begin: bytes, end: bytes) -> None:
        _check_key(begin)
        _check_key(end)
        with _translated():
            self._tr.add_write_conflict_range(begin, end)

    def watch(self, key: bytes) -> Watch:
        _check_key(key)
        with _translated():
            future = self._tr.watch(key)
        w = FdbWatch(future, key)
        self._db._track_watch(w)
        self._uncommitted_watches.append(w)
        return w

    def get_versionstamp(self) -> VersionstampFuture:
        with _translated():
            return FdbVersionstampFuture(self._tr.get_versionstamp())

    def get_committed_version(self) -> int:
        with _translated():
            return int(self._tr.get_committed_version())

    # -- options -----------------------------------------------------------------------
    def set_timeout(self, seconds: float) -> None:
        seconds = check_timeout(seconds)
        ms = 0 if seconds == 0 else max(1, math.ceil(seconds * 1000))
        with _translated():
            self._tr.options.set_timeout(min(ms, 2**31 - 1))

    def set_retry_limit(self, retries: int) -> None:
        retries = check_retry_limit(retries)
        with _translated():
            self._tr.options.set_retry_limit(min(retries, 2**31 - 1))

    # -- lifecycle ---------------------------------------------------------------------
    async def commit(self) -> None:
        with _translated():
            future = self._tr.commit()
        try:
            await _result(future, _void)
        except FDBError:
            # The watches fail with the commit's error (libfdb_c does that).
            self._uncommitted_watches.clear()
            raise
        # Committed: the watches now belong to the database, a later cancel leaves them.
        self._uncommitted_watches.clear()

    async def on_error(self, error: FDBError) -> None:
        # FDB's own on_error: its retry predicate, backoff, retry limit and timeout.
        # The watches of the failed attempt fail with its error (libfdb_c does that).
        self._uncommitted_watches.clear()
        with _translated():
            future = self._tr.on_error(error.code)
        await _result(future, _void)

    def reset(self) -> None:
        self.maybe_committed = False
        # libfdb_c fails the uncommitted watches with 1025 on reset itself.
        self._uncommitted_watches.clear()
        with _translated():
            self._tr.reset()

    def cancel(self) -> None:
        with _translated():
            self._tr.cancel()
        # libfdb_c 7.3 sometimes leaves the watch future of a cancelled uncommitted
        # transaction pending forever; fail those watches with 1025 ourselves.
        watches, self._uncommitted_watches = self._uncommitted_watches, []
        for w in watches:
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
        self._handle: Any = handle
        self._fdb = fdb_module
        self._streaming = fdb_module.StreamingMode
        self.cluster_file = cluster_file
        self.api_version = api_version
        self._watches: weakref.WeakSet[FdbWatch] = weakref.WeakSet()

    def create_transaction(self) -> FdbTransaction:
        if self._handle is None:
            raise FDBError(2000, "the database handle is closed")
        with _translated():
            tr = self._handle.create_transaction()
        return FdbTransaction(self, tr, self._streaming)

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
        await trio.lowlevel.checkpoint()

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
    the event loop (test collection, a CLI's first look); never call it from trio code."""
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
