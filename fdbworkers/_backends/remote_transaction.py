"""The dev-server client's transactions: :class:`RemoteTransaction`, its reads, and the
watches and versionstamps whose answers the server pushes later.

A transaction buffers its writes until its first operation that waits, then binds to
its database's connection (:mod:`fdbworkers._backends.remote_connection`); see
:mod:`fdbworkers._backends.remote` for the error rules on a lost connection.
"""

from __future__ import annotations

import math
import weakref
from typing import Any, Final, Protocol

import anyio

from .._db import (
    MAX_KEY_SIZE,
    MAX_VALUE_SIZE,
    VERSIONSTAMP_SIZE,
    KeyOrSelector,
    KeySelector,
    KeyValue,
    MutationType,
    ReadTransaction,
    Transaction,
    VersionstampFuture,
    Watch,
    backoff_delay,
    check_limit,
    check_retry_limit,
    check_timeout,
)
from .._db import (
    as_selector as _selector,
)
from .._db import (
    check_bytes as _check_bytes,
)
from .._errors import FDBError
from .remote_connection import ConnectionLostError, _Connection, _Slot

__all__ = ["RemoteTransaction", "RemoteVersionstampFuture", "RemoteWatch"]

#: The client's own transaction timeout fires this long after the server's, so that
#: while the server is alive its exact answer (1031 from the engine) arrives first.
CLIENT_TIMEOUT_GRACE: Final = 0.25


class _Handle(Protocol):
    """What a transaction needs of its database (:class:`~.remote.RemoteDatabase`)."""

    @property
    def address(self) -> str: ...

    def _live_connection(self) -> _Connection | None: ...

    async def _connection(self, deadline: float) -> _Connection: ...

    def _track_watch(self, w: RemoteWatch) -> None: ...


# --------------------------------------------------------------------------------------
# Watches and versionstamps
# --------------------------------------------------------------------------------------


class _Pushed:
    """A request whose answer arrives later (watch, versionstamp); possibly buffered
    until its transaction is bound to a connection."""

    def __init__(self, owner: RemoteTransaction, abandoned_code: int) -> None:
        self.slot = _Slot()
        #: The error when its transaction is reset or dropped before it was sent.
        self.abandoned_code = abandoned_code
        #: The transaction, while it is not bound yet (waiting binds it).
        self.owner: RemoteTransaction | None = owner
        self._conn: _Connection | None = None
        self._rid = 0

    def bind(self, conn: _Connection) -> int:
        self.owner = None
        self._conn = conn
        self._rid = conn.register(self.slot)
        return self._rid

    async def wait(self) -> Any:
        if self.owner is not None and not self.slot.done:
            # Its transaction never waited yet: bind it now, so that the server holds
            # the request (and fails it with 1025 if the transaction is dropped).
            await self._bind_owner()
        await self.slot.event.wait()
        return self.slot.result()

    async def _bind_owner(self) -> None:
        # A separate frame, so that no reference to the transaction outlives binding.
        owner = self.owner
        assert owner is not None
        try:
            await owner._ready()
        except FDBError as e:
            self.slot.fail(e)

    def withdraw(self, error: FDBError) -> None:
        """Fail it locally and tell the server to cancel it."""
        if self.slot.done:
            return
        self.slot.fail(error)
        if self._conn is not None:
            self._conn.forget(self._rid)


class RemoteWatch(Watch):
    """A watch held by the server; fires when the server pushes its answer."""

    def __init__(self, key: bytes, owner: RemoteTransaction) -> None:
        self.key = key
        self.pushed = _Pushed(owner, 1025)
        self._cancelled = False

    async def wait(self) -> None:
        # Cancelling a waiting task leaves the watch registered (call ``cancel``).
        await self.pushed.wait()

    def cancel(self) -> None:
        if not self.pushed.slot.done:
            self._cancelled = True
            self.pushed.withdraw(FDBError(1101))

    @property
    def done(self) -> bool:
        return self.pushed.slot.done

    def __repr__(self) -> str:
        state = "pending"
        if self._cancelled:
            state = "cancelled"
        elif self.done:
            state = "failed" if self.pushed.slot.error is not None else "fired"
        return f"<RemoteWatch key={self.key!r} {state}>"


class RemoteVersionstampFuture(VersionstampFuture):
    def __init__(self, owner: RemoteTransaction) -> None:
        # A pending versionstamp of a reset transaction: 1100 broken_promise, as
        # libfdb_c (and the engine) report it.
        self.pushed = _Pushed(owner, 1100)

    async def get(self) -> bytes:
        stamp = await self.pushed.wait()
        if not isinstance(stamp, bytes) or len(stamp) != VERSIONSTAMP_SIZE:
            raise FDBError(4100, f"dev server sent a bad versionstamp {stamp!r}")
        return stamp


# --------------------------------------------------------------------------------------
# Transactions
# --------------------------------------------------------------------------------------


#: Keys and values longer than FDB allows are sent cut to these lengths: the engine only
#: checks their length (2102/2103, or "no such key" for reads) and orders them by the
#: first bytes, which the cut keeps, so the answer is the same and frames stay small.
_KEY_CAP: Final = MAX_KEY_SIZE + 8 + 1
_VALUE_CAP: Final = MAX_VALUE_SIZE + 1


def _k(key: bytes) -> bytes:
    return key if len(key) <= _KEY_CAP else key[:_KEY_CAP]


def _v(value: bytes) -> bytes:
    return value if len(value) <= _VALUE_CAP else value[:_VALUE_CAP]


def _now_or_none() -> float | None:
    try:
        return anyio.current_time()
    except RuntimeError:  # outside a loop: the clock starts at first use
        return None


class _RemoteReads(ReadTransaction):
    """The reads of a :class:`RemoteTransaction`, with or without conflicts."""

    def __init__(self, tr: RemoteTransaction, snapshot: bool) -> None:
        self._tr = tr
        self._snapshot = snapshot

    async def get(self, key: bytes) -> bytes | None:
        _check_bytes(key)
        value = await self._tr._call("get", self._snapshot, _k(key))
        if value is not None and not isinstance(value, bytes):
            raise FDBError(4100, f"dev server sent a bad value {value!r:.100}")
        return value

    async def get_key(self, selector: KeySelector) -> bytes:
        if not isinstance(selector, KeySelector):
            raise TypeError("get_key takes a KeySelector")
        _check_bytes(selector.key)
        key = await self._tr._call(
            "get_key", self._snapshot, _k(selector.key), selector.or_equal, selector.offset
        )
        if not isinstance(key, bytes):
            raise FDBError(4100, f"dev server sent a bad key {key!r:.100}")
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
        rows = await self._tr._call(
            "get_range",
            self._snapshot,
            [_k(b.key), b.or_equal, b.offset],
            [_k(e.key), e.or_equal, e.offset],
            limit,
            bool(reverse),
        )
        return [KeyValue(k, v) for k, v in rows]

    async def get_read_version(self) -> int:
        return int(await self._tr._call("get_read_version", self._snapshot))


class RemoteTransaction(Transaction):
    """A transaction executed by the dev server on one of the engine's transactions.

    Writes are sent without waiting (frames are ordered, so a later read sees them).
    An error the engine raises for such a write (e.g. 2017 used_during_commit) is
    reported by the transaction's next read or commit, as libfdb_c does for the errors
    of its void calls. Until the first operation that waits, nothing touches the
    network: writes are buffered and the transaction is bound to a connection then.
    """

    def __init__(self, db: _Handle) -> None:
        self._db = db
        self._conn: _Connection | None = None
        self._tid = 0
        self._buffer: list[tuple[str, tuple[Any, ...], _Pushed | None]] = []
        self._finalizer: weakref.finalize[Any, Any] | None = None
        self._created = _now_or_none()
        self._bound_at = self._created or 0.0
        self._timeout = 0.0
        self._retry_limit = -1
        self._retries = 0
        self._retries_at_bind = 0
        self._committed_version = -1
        self._cancelled = False
        self.maybe_committed = False
        conn = db._live_connection()
        if conn is not None:
            self._bind(conn)

    # -- binding to a connection ---------------------------------------------------------
    def _bind(self, conn: _Connection) -> None:
        self._conn = conn
        self._tid = conn.new_tid()
        self._bound_at = anyio.current_time()
        self._retries_at_bind = self._retries
        conn.send("new", self._tid)
        self._finalizer = weakref.finalize(self, conn.drop_later, self._tid)
        if self._timeout > 0:
            conn.send("timeout", self._tid, self._server_timeout())
        if self._retry_limit >= 0:
            conn.send("retry_limit", self._tid, self._server_retry_limit())
        buffered, self._buffer = self._buffer, []
        for op, args, pushed in buffered:
            if pushed is None:
                conn.send(op, self._tid, *args)
            elif not pushed.slot.done:
                conn.send(op, pushed.bind(conn), self._tid, *args)

    def _unbind(self) -> None:
        """Forget the server-side transaction (it is dropped); buffered watches fail
        with 1025, buffered versionstamps with 1100."""
        if self._finalizer is not None:
            self._finalizer()  # tells the server to drop it
            self._finalizer = None
        self._conn = None
        self._tid = 0
        buffered, self._buffer = self._buffer, []
        for _op, _args, pushed in buffered:
            if pushed is not None:
                pushed.withdraw(FDBError(pushed.abandoned_code))

    def _server_timeout(self) -> float:
        # The engine measures from its own transaction's creation, which is when we
        # bound; FDB measures from the client transaction's creation.
        return max(0.001, self._timeout - (self._bound_at - self._started()))

    def _server_retry_limit(self) -> int:
        return max(0, self._retry_limit - self._retries_at_bind)

    def _deadline(self) -> float:
        return self._started() + self._timeout if self._timeout > 0 else math.inf

    def _started(self) -> float:
        """When the transaction was created (or reset); outside a loop that is its first
        use inside one."""
        if self._created is None:
            self._created = anyio.current_time()
        return self._created

    async def _ready(self) -> _Connection:
        conn = self._conn
        if conn is None:
            if self._cancelled:
                raise FDBError(1025)
            deadline = self._deadline()
            if anyio.current_time() >= deadline:
                raise FDBError(1031)
            conn = await self._db._connection(deadline)
            if self._conn is None:
                self._bind(conn)
            conn = self._conn
            assert conn is not None
        if not conn.alive:
            raise FDBError(1025) if self._cancelled else conn.lost_error()
        return conn

    async def _call(self, op: str, *args: Any, commit: bool = False) -> Any:
        conn = await self._ready()
        deadline = self._deadline() + CLIENT_TIMEOUT_GRACE
        return await conn.call(op, self._tid, *args, commit=commit, deadline=deadline)

    def _send(self, op: str, *args: Any) -> None:
        conn = self._conn
        if conn is None:
            self._buffer.append((op, args, None))
        else:
            conn.send(op, self._tid, *args)

    def _push(self, op: str, pushed: _Pushed, *args: Any) -> None:
        conn = self._conn
        if conn is None:
            self._buffer.append((op, args, pushed))
        elif conn.alive:
            conn.send(op, pushed.bind(conn), self._tid, *args)
        else:
            pushed.slot.fail(conn.lost_error())

    # -- reads ---------------------------------------------------------------------------
    @property
    def snapshot(self) -> ReadTransaction:
        # A new view each time: the transaction holds no reference to it, so it is
        # freed (and dropped on the server) as soon as the caller lets go of it.
        return _RemoteReads(self, snapshot=True)

    async def get(self, key: bytes) -> bytes | None:
        return await _RemoteReads(self, snapshot=False).get(key)

    async def get_key(self, selector: KeySelector) -> bytes:
        return await _RemoteReads(self, snapshot=False).get_key(selector)

    async def get_range(
        self,
        begin: KeyOrSelector,
        end: KeyOrSelector,
        *,
        limit: int = 0,
        reverse: bool = False,
    ) -> list[KeyValue]:
        return await _RemoteReads(self, snapshot=False).get_range(
            begin, end, limit=limit, reverse=reverse
        )

    async def get_read_version(self) -> int:
        return await _RemoteReads(self, snapshot=False).get_read_version()

    # -- writes --------------------------------------------------------------------------
    def set(self, key: bytes, value: bytes) -> None:
        _check_bytes(key)
        _check_bytes(value, "value")
        self._send("set", _k(key), _v(value))

    def clear(self, key: bytes) -> None:
        _check_bytes(key)
        self._send("clear", _k(key))

    def clear_range(self, begin: bytes, end: bytes) -> None:
        _check_bytes(begin)
        _check_bytes(end)
        self._send("clear_range", _k(begin), _k(end))

    def atomic_op(self, op: MutationType, key: bytes, param: bytes) -> None:
        code = int(MutationType(op))
        _check_bytes(key)
        _check_bytes(param, "param")
        self._send("atomic", code, _k(key), _v(param))

    def add_read_conflict_range(self, begin: bytes, end: bytes) -> None:
        _check_bytes(begin)
        _check_bytes(end)
        if begin > end:
            raise FDBError(2005)
        self._send("read_conflict", _k(begin), _k(end))

    def add_write_conflict_range(self, begin: bytes, end: bytes) -> None:
        _check_bytes(begin)
        _check_bytes(end)
        if begin > end:
            raise FDBError(2005)
        self._send("write_conflict", _k(begin), _k(end))

    def watch(self, key: bytes) -> Watch:
        _check_bytes(key)
        w = RemoteWatch(key, self)
        self._push("watch", w.pushed, _k(key))
        self._db._track_watch(w)
        return w

    def get_versionstamp(self) -> VersionstampFuture:
        f = RemoteVersionstampFuture(self)
        self._push("versionstamp", f.pushed)
        return f

    def get_committed_version(self) -> int:
        return self._committed_version

    # -- options -------------------------------------------------------------------------
    def set_timeout(self, seconds: float) -> None:
        seconds = check_timeout(seconds)
        self._timeout = float(seconds)
        if self._conn is not None:
            self._conn.send("timeout", self._tid, self._server_timeout() if seconds else 0.0)

    def set_retry_limit(self, retries: int) -> None:
        retries = check_retry_limit(retries)
        self._retry_limit = retries
        if self._conn is not None:
            self._conn.send(
                "retry_limit", self._tid, -1 if retries < 0 else self._server_retry_limit()
            )

    # -- lifecycle -----------------------------------------------------------------------
    async def commit(self) -> None:
        version = await self._call("commit", commit=True)
        self._committed_version = int(version)

    async def on_error(self, error: FDBError) -> None:
        if not isinstance(error, FDBError):
            raise TypeError(f"on_error takes an FDBError, not {type(error).__name__}")
        conn = self._conn
        if conn is not None and conn.alive:
            try:
                await self._call("on_error", error.code)
            except ConnectionLostError:
                pass  # the server is gone: the client's own retry rules apply below
            else:
                self._retries += 1
                self._committed_version = -1
                return
        await self._local_on_error(error)

    async def _local_on_error(self, error: FDBError) -> None:
        """FDB's on_error without the server: retry predicate, retry limit, timeout and
        backoff; the next attempt runs on a new connection."""
        if not error.retryable or 0 <= self._retry_limit <= self._retries:
            self.cancel()  # like the engine: the transaction is cancelled (1025 after)
            raise error
        deadline = self._deadline()
        wake = anyio.current_time() + backoff_delay(self._retries)
        if wake >= deadline:
            await anyio.sleep_until(deadline)
            raise FDBError(1031)
        await anyio.sleep_until(wake)
        self._retries += 1
        self._committed_version = -1
        self._unbind()

    def reset(self) -> None:
        self.maybe_committed = False
        self._created = _now_or_none()
        self._timeout = 0.0
        self._retry_limit = -1
        self._retries = 0
        self._committed_version = -1
        self._cancelled = False
        conn = self._conn
        if conn is not None and conn.alive:
            self._bound_at = self._created or 0.0
            self._retries_at_bind = 0
            conn.send("reset", self._tid)
        else:
            self._unbind()

    def cancel(self) -> None:
        self._cancelled = True
        conn = self._conn
        if conn is not None:
            conn.send("cancel_transaction", self._tid)
        else:
            self._unbind()

    def __repr__(self) -> str:
        where = f"tid={self._tid}" if self._conn is not None else "unbound"
        return f"<RemoteTransaction {self._db.address} {where}>"
