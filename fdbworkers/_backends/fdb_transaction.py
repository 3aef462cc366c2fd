"""The real backend's transactions: :class:`FdbTransaction` over libfdb_c's
``FDBTransaction``, its reads and snapshot view, :class:`FdbWatch` and
:class:`FdbVersionstampFuture`. Each call goes to libfdb_c directly
(:mod:`fdbworkers._backends.fdb_capi`) and waits on the event loop
(:mod:`fdbworkers._backends.fdb_bridge`).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from typing import Protocol

from .._db import (
    VERSIONSTAMP_SIZE,
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
from .._errors import FDBError
from . import fdb_capi as _capi
from .fdb_bridge import _checkpoint, _SharedFuture, _wait
from .fdb_capi import (
    _CONFLICT_READ,
    _CONFLICT_WRITE,
    _OPTION_RETRY_LIMIT,
    _OPTION_TIMEOUT,
    _STREAMING_EXACT,
    _STREAMING_WANT_ALL,
    _check_error,
    _error,
    _int64_of,
    _key_of,
    _out,
    _rows_of,
    _value_of,
)

__all__ = ["FdbTransaction", "FdbVersionstampFuture", "FdbWatch"]


class _Handle(Protocol):
    """What a transaction needs of its database (:class:`~.fdb.FdbDatabase`)."""

    def _track_watch(self, w: FdbWatch) -> None: ...


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
        f = _capi._c.transaction_get(self._ptr, key, len(key), self._snap)
        try:
            await _wait(f)
            return _value_of(f)
        finally:
            _capi._c.future_destroy(f)

    async def get_many(self, keys: Sequence[bytes]) -> list[bytes | None]:
        for key in keys:
            if type(key) is not bytes:
                _check_key(key)
        ptr, snap = self._ptr, self._snap
        futures = [_capi._c.transaction_get(ptr, key, len(key), snap) for key in keys]
        try:
            waited = False
            for f in futures:
                if not _capi._c.future_is_ready(f):
                    await _wait(f)
                    waited = True
            if not waited:
                await _checkpoint()
            return [_value_of(f) for f in futures]
        finally:
            for f in futures:
                _capi._c.future_destroy(f)

    async def get_key(self, selector: KeySelector) -> bytes:
        if not isinstance(selector, KeySelector):
            raise TypeError("get_key takes a KeySelector")
        key = selector.key
        _check_key(key)
        f = _capi._c.transaction_get_key(
            self._ptr, key, len(key), selector.or_equal, selector.offset, self._snap
        )
        try:
            await _wait(f)
            return _key_of(f)
        finally:
            _capi._c.future_destroy(f)

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
            f = _capi._c.transaction_get_range(
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
                _capi._c.future_destroy(f)
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
        f = _capi._c.transaction_get_read_version(self._ptr)
        try:
            await _wait(f)
            return _int64_of(f)
        finally:
            _capi._c.future_destroy(f)


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

    def __init__(self, db: _Handle, ptr: int) -> None:
        self._ptr = ptr
        self._db = db
        self.maybe_committed = False
        self._snapshot: _FdbSnapshot | None = None
        #: Watches created since the last reset, commit or on_error: the ones that
        #: ``cancel`` must fail with 1025 (None: none).
        self._uncommitted_watches: list[FdbWatch] | None = None

    def __del__(self) -> None:
        if _capi._c is not None:
            _capi._c.transaction_destroy(self._ptr)

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
        _capi._c.transaction_set(self._ptr, key, len(key), value, len(value))

    def clear(self, key: bytes) -> None:
        if type(key) is not bytes:
            _check_key(key)
        _capi._c.transaction_clear(self._ptr, key, len(key))

    def clear_range(self, begin: bytes, end: bytes) -> None:
        _check_key(begin)
        _check_key(end)
        _capi._c.transaction_clear_range(self._ptr, begin, len(begin), end, len(end))

    def atomic_op(self, op: MutationType, key: bytes, param: bytes) -> None:
        if type(op) is not MutationType:
            op = MutationType(op)
        if type(key) is not bytes or type(param) is not bytes:
            _check_key(key)
            _check_key(param, "param")
        _capi._c.transaction_atomic_op(self._ptr, key, len(key), param, len(param), op)

    def set_versionstamped_value(self, key: bytes, value: bytes) -> None:
        if type(key) is not bytes or type(value) is not bytes:
            _check_key(key)
            _check_key(value, "param")
        _capi._c.transaction_atomic_op(
            self._ptr, key, len(key), value, len(value), MutationType.SET_VERSIONSTAMPED_VALUE
        )

    def _conflict_range(self, begin: bytes, end: bytes, kind: int) -> None:
        _check_key(begin)
        _check_key(end)
        err = _capi._c.transaction_add_conflict_range(
            self._ptr, begin, len(begin), end, len(end), kind
        )
        if err:
            raise _error(err)

    def add_read_conflict_range(self, begin: bytes, end: bytes) -> None:
        self._conflict_range(begin, end, _CONFLICT_READ)

    def add_write_conflict_range(self, begin: bytes, end: bytes) -> None:
        self._conflict_range(begin, end, _CONFLICT_WRITE)

    def watch(self, key: bytes) -> Watch:
        _check_key(key)
        w = FdbWatch(_capi._c.transaction_watch(self._ptr, key, len(key)), key)
        self._db._track_watch(w)
        if self._uncommitted_watches is None:
            self._uncommitted_watches = []
        self._uncommitted_watches.append(w)
        return w

    def get_versionstamp(self) -> VersionstampFuture:
        return FdbVersionstampFuture(_capi._c.transaction_get_versionstamp(self._ptr))

    def get_committed_version(self) -> int:
        o = _out
        err = _capi._c.transaction_get_committed_version(self._ptr, o.i64_ref)
        if err:
            raise _error(err)
        return int(o.i64.value)

    # -- options -----------------------------------------------------------------------
    def _set_int_option(self, option: int, value: int) -> None:
        err = _capi._c.transaction_set_option(self._ptr, option, struct.pack("<q", value), 8)
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
        err = _capi._c.transaction_set_option(self._ptr, _OPTION_TIMEOUT, param, 8)
        if err:
            raise _error(err)

    def set_retry_limit(self, retries: int) -> None:
        retries = check_retry_limit(retries)
        self._set_int_option(_OPTION_RETRY_LIMIT, min(retries, 2**31 - 1))

    # -- lifecycle ---------------------------------------------------------------------
    async def commit(self) -> None:
        f = _capi._c.transaction_commit(self._ptr)
        try:
            await _wait(f)
            err = _capi._c.future_get_error(f)
        finally:
            _capi._c.future_destroy(f)
        # Committed, the watches now belong to the database (a later cancel leaves them);
        # failed, they fail with the commit's error (libfdb_c does that).
        self._uncommitted_watches = None
        if err:
            raise _error(err)

    async def on_error(self, error: FDBError) -> None:
        # FDB's own on_error: its retry predicate, backoff, retry limit and timeout.
        # The watches of the failed attempt fail with its error (libfdb_c does that).
        self._uncommitted_watches = None
        f = _capi._c.transaction_on_error(self._ptr, error.code)
        try:
            await _wait(f)
            err = _capi._c.future_get_error(f)
        finally:
            _capi._c.future_destroy(f)
        if err:
            raise _error(err)

    def reset(self) -> None:
        self.maybe_committed = False
        # libfdb_c fails the uncommitted watches with 1025 on reset itself.
        self._uncommitted_watches = None
        _capi._c.transaction_reset(self._ptr)

    def cancel(self) -> None:
        _capi._c.transaction_cancel(self._ptr)
        # libfdb_c 7.3 sometimes leaves the watch future of a cancelled uncommitted
        # transaction pending forever; fail those watches with 1025 ourselves.
        watches, self._uncommitted_watches = self._uncommitted_watches, None
        for w in watches or ():
            w._fail_cancelled()

    def __repr__(self) -> str:
        return f"<FdbTransaction maybe_committed={self.maybe_committed}>"
