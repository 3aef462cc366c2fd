"""The dev-server client: a :class:`~fdbworkers._db.Database` whose every operation runs
on an embedded engine served by ``fdbworkers devserver`` in another process.

``open_database("sim://HOST:PORT")`` returns a :class:`RemoteDatabase`. It holds one TCP
connection (opened on first use, reopened by a later transaction after a loss); every
seam method is a request over it, executed by the server on the engine's own
transaction objects, so the semantics are the engine's. The wire protocol, shared with
the server (``fdbworkers._backends.devserver``), is in ``fdbworkers._backends.wire``.

Errors are :class:`FDBError` with the engine's code. When the connection is lost (server
stopped or restarted, or silent for ``keepalive_timeout``) every pending operation fails
with 1026 ``connection_failed`` (a commit in flight with 1021 ``commit_unknown_result``:
it may have been applied), and so does every later operation of a transaction that was
using that connection; the next transaction connects again. 1026 is not retryable, so
``Database.transact`` raises it at once instead of retrying against a dead server, and
the worker's loops treat it like any transaction failure ("retry later"). A retryable
error (1021 above, or 1020...) whose ``on_error`` can no longer reach the server is
handled on the client: FDB's backoff, retry limit and timeout, then the next attempt
runs on a new connection.
"""

from __future__ import annotations

import contextlib
import math
import os
import socket
import weakref
from collections.abc import Awaitable, Callable
from typing import Any, Final

import anyio
import anyio.abc
import anyio.lowlevel

from .._db import (
    DEFAULT_MAX_WATCHES,
    MAX_KEY_SIZE,
    MAX_VALUE_SIZE,
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
from .._errors import ConfigError, FDBError
from .._log import get_logger
from .._loop import LoopToken, current_token, spawn_system_task
from .wire import (
    _BATCH_BYTES,
    PROTOCOL_VERSION,
    STATUS_EXCEPTION,
    STATUS_OK,
    STATUS_PROTOCOL_ERROR,
    FrameReader,
    ProtocolError,
    encode_frame,
)

__all__ = [
    "CONNECTION_FAILED",
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_KEEPALIVE_TIMEOUT",
    "ConnectionLostError",
    "RemoteDatabase",
    "RemoteTransaction",
    "open_remote",
]

log = get_logger("fdbworkers.remote")

#: FDB's ``connection_failed``: the error of every operation on a lost connection.
CONNECTION_FAILED: Final = 1026
#: FDB's ``commit_unknown_result``: a commit in flight when the connection was lost.
COMMIT_UNKNOWN_RESULT: Final = 1021
DEFAULT_CONNECT_TIMEOUT: Final = 5.0
#: The client pings every second; a connection silent this long is declared lost.
DEFAULT_KEEPALIVE_TIMEOUT: Final = 10.0
KEEPALIVE_INTERVAL: Final = 1.0
#: The client's own transaction timeout fires this long after the server's, so that
#: while the server is alive its exact answer (1031 from the engine) arrives first.
CLIENT_TIMEOUT_GRACE: Final = 0.25


# --------------------------------------------------------------------------------------
# Framing (shared with the server)
# --------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------


class ConnectionLostError(FDBError):
    """An :class:`FDBError` (1026 ``connection_failed``, or 1021 for a commit in flight)
    caused by losing the connection to the dev server, not by the engine."""


_LOCAL_EXCEPTIONS: Final[dict[str, type[Exception]]] = {
    "ConfigError": ConfigError,
    "TypeError": TypeError,
    "ValueError": ValueError,
}


def _error_of(status: int, payload: Any) -> Exception:
    if status > 0:
        return FDBError(status, payload if isinstance(payload, str) and payload else None)
    if status == STATUS_EXCEPTION and isinstance(payload, list) and len(payload) == 2:
        kind = _LOCAL_EXCEPTIONS.get(str(payload[0]))
        if kind is not None:
            return kind(str(payload[1]))
        return FDBError(4100, f"dev server: {payload[0]}: {payload[1]}")
    return FDBError(4100, f"dev server: unexpected status {status}: {payload!r}")


# --------------------------------------------------------------------------------------
# The connection
# --------------------------------------------------------------------------------------


class _Slot:
    """The answer to one request (or a watch / versionstamp), set once."""

    __slots__ = ("commit", "error", "event", "value")

    def __init__(self, *, commit: bool = False) -> None:
        self.event = anyio.Event()
        self.value: Any = None
        self.error: BaseException | None = None
        self.commit = commit

    @property
    def done(self) -> bool:
        return self.event.is_set()

    def resolve(self, value: Any) -> None:
        if not self.event.is_set():
            self.value = value
            self.event.set()

    def fail(self, error: BaseException) -> None:
        if not self.event.is_set():
            self.error = error
            self.event.set()

    def result(self) -> Any:
        if self.error is not None:
            raise self.error
        return self.value


class _Connection:
    """One TCP connection to the server: a writer task sends queued frames in order, a
    reader task matches answers to requests by id, a keepalive task pings. The tasks
    run in a system task of the loop (a database handle has no task group of its own:
    ``fdbworkers._loop.spawn_system_task``); only the
    writer touches the sending side, so a cancelled caller never leaves half a frame."""

    def __init__(
        self,
        stream: anyio.abc.ByteStream,
        reader: FrameReader,
        address: str,
        keepalive_timeout: float,
    ) -> None:
        self._stream = stream
        self._reader = reader
        self.address = address
        self._keepalive_timeout = keepalive_timeout
        self._send_ch, self._recv_ch = anyio.create_memory_object_stream[bytes](math.inf)
        self._pending: dict[int, _Slot] = {}
        self._next_id = 1
        self._next_tid = 1
        self._dropped: list[int] = []
        self._last_rx = anyio.current_time()
        self._scope = anyio.CancelScope()
        self._token = current_token()
        self.error: ConnectionLostError | None = None

    # -- state ---------------------------------------------------------------------------
    @property
    def alive(self) -> bool:
        if self.error is not None:
            return False
        return self._token.is_current()

    def lost_error(self, *, commit: bool = False) -> ConnectionLostError:
        reason = self.error.description if self.error is not None else "closed"
        if commit:
            return ConnectionLostError(
                COMMIT_UNKNOWN_RESULT,
                f"Transaction may or may not have committed ({reason})",
            )
        return ConnectionLostError(CONNECTION_FAILED, reason)

    def fail(self, reason: str, *, expected: bool = False) -> None:
        """Declare the connection lost: every pending answer fails; idempotent."""
        if self.error is not None:
            return
        self.error = ConnectionLostError(
            CONNECTION_FAILED, f"Network connection failed: dev server {self.address}: {reason}"
        )
        pending, self._pending = self._pending, {}
        for slot in pending.values():
            slot.fail(self.lost_error(commit=slot.commit))
        self._send_ch.close()
        self._scope.cancel()
        if expected:
            log.debug("devserver_connection_closed", address=self.address, reason=reason)
        else:
            log.warning("devserver_connection_lost", address=self.address, reason=reason)

    # -- sending -------------------------------------------------------------------------
    def new_tid(self) -> int:
        tid = self._next_tid
        self._next_tid += 1
        return tid

    def send(self, *message: Any) -> None:
        """Queue a frame (never blocks; dropped silently once the connection is lost:
        the operation that waits next reports the loss)."""
        if self.error is not None:
            return
        with contextlib.suppress(anyio.ClosedResourceError, anyio.BrokenResourceError):
            self._send_ch.send_nowait(encode_frame(list(message)))

    def register(self, slot: _Slot) -> int:
        """A request id whose answer resolves ``slot``."""
        rid = self._next_id
        self._next_id += 1
        if self.error is not None:
            slot.fail(self.lost_error(commit=slot.commit))
        else:
            self._pending[rid] = slot
        return rid

    def forget(self, rid: int) -> None:
        """Stop waiting for ``rid`` and ask the server to cancel it."""
        if self._pending.pop(rid, None) is not None:
            self.send("cancel", rid)

    def drop_later(self, tid: int) -> None:
        """A client transaction was garbage-collected (called from a finalizer: only a
        list append here; the writer sends the ids with its next batch)."""
        self._dropped.append(tid)

    async def call(self, op: str, *args: Any, commit: bool = False, deadline: float) -> Any:
        """Send ``[op, id, *args]`` and wait for its answer. A cancelled or timed-out
        caller withdraws the request (the server cancels it); the connection stays
        usable. Past ``deadline`` raises 1031 transaction_timed_out."""
        if not self.alive:
            raise self.lost_error(commit=False)
        slot = _Slot(commit=commit)
        rid = self.register(slot)
        self.send(op, rid, *args)
        try:
            with anyio.move_on_at(deadline):
                await slot.event.wait()
        finally:
            if not slot.done:
                self.forget(rid)
        if not slot.done:
            raise FDBError(1031)
        return slot.result()

    # -- the tasks -----------------------------------------------------------------------
    async def run(self) -> None:
        try:
            with self._scope:
                async with anyio.create_task_group() as nursery:
                    nursery.start_soon(self._guard, self._read_loop)
                    nursery.start_soon(self._guard, self._write_loop)
                    nursery.start_soon(self._guard, self._keepalive_loop)
        finally:
            self.fail("the connection was closed", expected=True)
            await anyio.aclose_forcefully(self._stream)

    async def close(self) -> None:
        self.fail("the database handle was closed", expected=True)
        await anyio.lowlevel.checkpoint()

    async def _guard(self, fn: Callable[[], Awaitable[None]]) -> None:
        try:
            await fn()
        except ProtocolError as e:
            self.fail(f"protocol error: {e}")
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            self.fail("the connection was closed")
        except OSError as e:
            self.fail(f"{type(e).__name__}: {e}")
        except Exception as e:  # a bug: never let a system task crash the run
            log.exception("devserver_client_internal_error", address=self.address)
            self.fail(f"internal error: {e!r}")

    async def _read_loop(self) -> None:
        while True:
            message = await self._reader.receive()
            if message is None:
                self.fail("the server closed the connection")
                return
            self._last_rx = anyio.current_time()
            if len(message) != 3 or not isinstance(message[0], int):
                raise ProtocolError(f"bad answer {message!r:.200}")
            rid, status, payload = message
            if status == STATUS_PROTOCOL_ERROR:
                self.fail(f"the server reported a protocol error: {payload}")
                return
            slot = self._pending.pop(rid, None)
            if slot is None:
                continue  # a ping, or the answer to a withdrawn request
            if status == STATUS_OK:
                slot.resolve(payload)
            else:
                slot.fail(_error_of(int(status), payload))

    async def _write_loop(self) -> None:
        async for first in self._recv_ch:
            chunks = [first]
            size = len(first)
            while size < _BATCH_BYTES:
                try:
                    more = self._recv_ch.receive_nowait()
                except (anyio.WouldBlock, anyio.EndOfStream):
                    break
                chunks.append(more)
                size += len(more)
            if self._dropped:
                dropped, self._dropped = self._dropped, []
                chunks.append(encode_frame(["drop", dropped]))
            await self._stream.send(b"".join(chunks))

    async def _keepalive_loop(self) -> None:
        while True:
            await anyio.sleep(KEEPALIVE_INTERVAL)
            silent = anyio.current_time() - self._last_rx
            if silent > self._keepalive_timeout:
                self.fail(f"no answer from the server for {silent:.1f} s")
                return
            self.send("ping", 0)


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

    def __init__(self, db: RemoteDatabase) -> None:
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


# --------------------------------------------------------------------------------------
# The database
# --------------------------------------------------------------------------------------

Connector = Callable[[], Awaitable[anyio.abc.ByteStream]]


class RemoteDatabase(Database):
    """A handle on the engine of a dev server (``sim://HOST:PORT``).

    One connection per handle (so its ``max_watches`` and its faults are its own, like
    a database object of libfdb_c); opened on first use, and again by the first
    transaction after a loss. ``connector`` replaces the TCP connection (tests use an
    in-memory stream to the server)."""

    backend = "remote-engine"

    def __init__(
        self,
        host: str,
        port: int,
        *,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        keepalive_timeout: float = DEFAULT_KEEPALIVE_TIMEOUT,
        name: str | None = None,
        connector: Connector | None = None,
    ) -> None:
        super().__init__()
        if not (connect_timeout > 0 and math.isfinite(connect_timeout)):
            raise ConfigError(f"connect_timeout must be > 0 seconds, not {connect_timeout}")
        if not (keepalive_timeout > KEEPALIVE_INTERVAL and math.isfinite(keepalive_timeout)):
            raise ConfigError(
                f"keepalive_timeout must be > {KEEPALIVE_INTERVAL} seconds, not {keepalive_timeout}"
            )
        self.host = host
        self.port = port
        self.connect_timeout = connect_timeout
        self.keepalive_timeout = keepalive_timeout
        self.name = name or f"{socket.gethostname()}:{os.getpid()}"
        self._connector = connector
        self._conn: _Connection | None = None
        self._lock: anyio.Lock | None = None
        self._lock_token: LoopToken | None = None
        self._max_watches = DEFAULT_MAX_WATCHES
        self._max_watches_set = False
        self._watches: weakref.WeakSet[RemoteWatch] = weakref.WeakSet()
        self._closed = False
        self.connects = 0

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"sim://{host}:{self.port}"

    def create_transaction(self) -> RemoteTransaction:
        if self._closed:
            raise FDBError(2000, "the database handle is closed")
        return RemoteTransaction(self)

    def set_max_watches(self, n: int) -> None:
        if not isinstance(n, int) or not 0 <= n <= 1_000_000:
            raise ConfigError(f"max_watches is 0..1000000, not {n}")
        if self._closed:
            raise FDBError(2000, "the database handle is closed")
        self._max_watches = n
        self._max_watches_set = True
        conn = self._live_connection()
        if conn is not None:
            conn.send("max_watches", n)

    def _track_watch(self, w: RemoteWatch) -> None:
        self._watches.add(w)

    async def aclose(self) -> None:
        self._closed = True
        for w in list(self._watches):
            w.cancel()
        self._watches.clear()
        conn, self._conn = self._conn, None
        if conn is not None and conn.alive:
            await conn.close()
        else:
            await anyio.lowlevel.checkpoint()

    # -- connecting ----------------------------------------------------------------------
    def _live_connection(self) -> _Connection | None:
        conn = self._conn
        return conn if conn is not None and conn.alive else None

    async def _connection(self, deadline: float) -> _Connection:
        conn = self._live_connection()
        if conn is not None:
            return conn
        if self._closed:
            raise FDBError(2000, "the database handle is closed")
        token = current_token()
        if self._lock is None or self._lock_token != token:
            self._lock = anyio.Lock()
            self._lock_token = token
        async with self._lock:
            conn = self._live_connection()
            if conn is None:
                conn = await self._connect(deadline)
                self._conn = conn
            return conn

    async def _connect(self, deadline: float) -> _Connection:
        limit = min(deadline, anyio.current_time() + self.connect_timeout)
        stream: anyio.abc.ByteStream | None = None
        try:
            with anyio.move_on_at(limit):
                if self._connector is not None:
                    stream = await self._connector()
                else:
                    stream = await anyio.connect_tcp(self.host, self.port)
                reader = FrameReader(stream)
                await stream.send(
                    encode_frame(
                        [
                            "hello",
                            PROTOCOL_VERSION,
                            {"name": self.name, "pid": os.getpid()},
                        ]
                    )
                )
                answer = await reader.receive()
                conn = self._accept(stream, reader, answer)
                stream = None  # owned by the connection now
                return conn
        except (OSError, anyio.BrokenResourceError, anyio.ClosedResourceError, ProtocolError) as e:
            raise ConnectionLostError(
                CONNECTION_FAILED,
                f"Network connection failed: cannot connect to the dev server {self.address} "
                f"({type(e).__name__}: {e}); is `fdbworkers devserver` running?",
            ) from None
        finally:
            if stream is not None:
                await anyio.aclose_forcefully(stream)
        if anyio.current_time() >= deadline:
            raise FDBError(1031)
        raise ConnectionLostError(
            CONNECTION_FAILED,
            f"Network connection failed: the dev server {self.address} did not answer "
            f"within {self.connect_timeout} s",
        )

    def _accept(
        self, stream: anyio.abc.ByteStream, reader: FrameReader, answer: list[Any] | None
    ) -> _Connection:
        if answer is None:
            raise ProtocolError("the server closed the connection during the handshake")
        if len(answer) != 3 or answer[0] != 0:
            raise ProtocolError(f"bad handshake answer {answer!r:.200}")
        _, status, payload = answer
        if status != STATUS_OK:
            raise ProtocolError(f"the server refused the connection: {payload}")
        conn = _Connection(stream, reader, self.address, self.keepalive_timeout)
        if self._max_watches_set:
            conn.send("max_watches", self._max_watches)
        spawn_system_task(conn.run, name=f"fdbworkers-devserver-client {self.address}")
        self.connects += 1
        log.debug("devserver_connected", address=self.address, server=payload)
        return conn

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("connected" if self._live_connection() else "idle")
        return f"<RemoteDatabase {self.address} {state}>"


def open_remote(host: str, port: int, **options: Any) -> RemoteDatabase:
    """Open a handle on the dev server at ``host:port``; returns at once (nothing is
    contacted until the first transaction needs it)."""
    return RemoteDatabase(host, port, **options)
