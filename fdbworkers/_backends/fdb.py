"""The real backend: FoundationDB through its official Python binding.

This is the only module of fdbworkers that imports the ``fdb`` package. It holds
:class:`FdbDatabase`, the :class:`~fdbworkers._db.Database` seam implemented over
libfdb_c, opened with :func:`open_fdb`. The tuple layer is pure and lives in
:mod:`fdbworkers._core.tuples` (byte-for-byte the binding's encoding, checked by a test).

Importing this module never loads libfdb_c: ``fdb.impl`` (which ``dlopen``-s the
library, selects the API version and starts the network thread) is imported by
:func:`open_fdb`. After that the binding is only the loader: transactions and futures
go straight to libfdb_c's C functions through ctypes function objects of our own
(:mod:`fdbworkers._backends.fdb_capi`), without the binding's per-call Python objects.
The transactions are in :mod:`fdbworkers._backends.fdb_transaction`; how their FDB
futures wake the event loop (trio or asyncio) is in :mod:`fdbworkers._backends.fdb_bridge`.

An unreachable cluster
----------------------
:func:`open_fdb` returns at once; reads against an unreachable cluster wait for it like
FDB does (forever, by default). Callers set ``db.default_timeout`` (the CLI does), or a
timeout on the transaction, which turns the wait into error 1031 transaction_timed_out.
"""

from __future__ import annotations

import math
import os
import re
import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Final

from .._db import Database
from .._errors import BackendUnavailableError, ConfigError, FDBError
from .._log import get_logger
from . import fdb_capi as _capi
from .fdb_bridge import _checkpoint
from .fdb_capi import _bind_c_api, _convert, _error, _out
from .fdb_transaction import FdbTransaction, FdbWatch

__all__ = [
    "DEFAULT_API_VERSION",
    "DEFAULT_CLUSTER_FILE",
    "FdbDatabase",
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
        if _capi._c is None:
            _capi._c = _bind_c_api(impl._capi)
        return fdb


@contextmanager
def _translated() -> Iterator[None]:
    """Turn the binding's ``fdb.FDBError`` into ours (calls still made through it)."""
    import fdb.impl

    try:
        yield
    except fdb.impl.FDBError as e:
        raise _convert(e) from None


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
        err = _capi._c.database_create_transaction(handle.dpointer, o.ptr_ref)
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
