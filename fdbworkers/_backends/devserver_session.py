"""The dev server's side of one connection: a :class:`_Session` reads the client's
requests (frames of :mod:`fdbworkers._backends.wire`), runs each on the engine's
transaction objects and queues the answers; the request handlers, by operation: those
that answer at once or never (writes, options), and those that wait (reads, commit,
``on_error``, watches, versionstamps), run as tasks of the connection.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from typing import Any, Final, Protocol

import anyio
import anyio.abc

from .._db import KeySelector, MutationType, Transaction, Watch
from .._errors import ConfigError, FDBError
from .._log import get_logger
from .engine import EngineDatabase
from .wire import (
    PROTOCOL_VERSION,
    STATUS_EXCEPTION,
    STATUS_OK,
    STATUS_PROTOCOL_ERROR,
    FrameReader,
    ProtocolError,
    encode_frame,
)

log = get_logger("fdbworkers.devserver")

#: A connection that has not said hello within this time is closed.
HANDSHAKE_TIMEOUT: Final = 10.0
#: The most transactions one connection may hold open (a leak guard).
MAX_OPEN_TRANSACTIONS: Final = 100_000
#: The largest frame a connection may send before its hello (a hello is tiny).
MAX_HELLO_FRAME: Final = 64 * 1024
#: The largest frame a client may send after it: its requests are small (the client
#: caps keys and values just above FoundationDB's limits before sending them).
MAX_REQUEST_FRAME: Final = 1024 * 1024
#: Backpressure: while a connection has more reply bytes queued than this (a client
#: that does not read its answers), the server reads no new request from it.
MAX_QUEUED_REPLY_BYTES: Final = 16 * 1024 * 1024
_BATCH_BYTES = 1 << 20


class _Server(Protocol):
    """What a session needs of its server (:class:`~.devserver.DevServer`): its request
    and commit counters, the event that wakes its save loop, an engine handle per client."""

    _requests: int
    _commits: int
    _changed: anyio.Event

    def _open_handle(self, name: str) -> EngineDatabase: ...


# --------------------------------------------------------------------------------------
# One connection
# --------------------------------------------------------------------------------------


class _ServerTransaction:
    __slots__ = ("committed", "deferred", "tr")

    def __init__(self, tr: Transaction) -> None:
        self.tr = tr
        self.deferred: Exception | None = None
        self.committed = False

    def check(self) -> Transaction:
        if self.deferred is not None:
            raise self.deferred
        return self.tr


def _selector(raw: Any) -> KeySelector:
    if not isinstance(raw, list) or len(raw) != 3:
        raise ProtocolError(f"bad key selector {raw!r:.100}")
    key, or_equal, offset = raw
    if not isinstance(key, bytes) or not isinstance(or_equal, bool) or not isinstance(offset, int):
        raise ProtocolError(f"bad key selector {raw!r:.100}")
    return KeySelector(key, or_equal, offset)


def _arg(message: list[Any], i: int, kind: type | tuple[type, ...]) -> Any:
    if i >= len(message) or not isinstance(message[i], kind):
        raise ProtocolError(f"bad {message[0]!r} request {message!r:.200}")
    return message[i]


class _Session:
    """The server side of one connection."""

    def __init__(self, server: _Server, stream: anyio.abc.ByteStream, peer: str) -> None:
        self.server = server
        self.stream = stream
        self.peer = peer
        self.db: EngineDatabase | None = None
        self.trs: dict[int, _ServerTransaction] = {}
        self.requests: dict[int, tuple[anyio.CancelScope, Watch | None]] = {}
        self.send_ch, self.recv_ch = anyio.create_memory_object_stream[bytes](math.inf)
        #: Reply bytes queued and not yet written (see _wait_for_reply_room).
        self.queued_bytes = 0
        self._reply_room = anyio.Event()
        self.nursery: anyio.abc.TaskGroup | None = None
        self.flushed = anyio.Event()
        self.closed = False
        self.log = log.bind(peer=peer)

    # -- answers -------------------------------------------------------------------------
    def answer(self, rid: int, status: int, payload: Any) -> None:
        try:
            frame = encode_frame([rid, status, payload])
        except ProtocolError as e:
            frame = encode_frame(
                [rid, 4100, f"the answer is too large for the dev server protocol ({e})"]
            )
        with contextlib.suppress(anyio.ClosedResourceError, anyio.BrokenResourceError):
            self.send_ch.send_nowait(frame)
            self.queued_bytes += len(frame)

    def answer_error(self, rid: int, e: BaseException) -> None:
        if isinstance(e, FDBError):
            self.answer(rid, e.code, e.description)
        elif isinstance(e, ConfigError | TypeError | ValueError):
            self.answer(rid, STATUS_EXCEPTION, [type(e).__name__, str(e)])
        else:
            self.log.error("devserver_request_failed", error=repr(e))
            self.answer(rid, 4100, f"dev server internal error: {e!r}")

    # -- the connection ------------------------------------------------------------------
    async def run(self) -> None:
        reader = FrameReader(self.stream, max_size=MAX_HELLO_FRAME)
        try:
            async with anyio.create_task_group() as nursery:
                self.nursery = nursery
                if self.closed:
                    nursery.cancel_scope.cancel()
                nursery.start_soon(self._write_loop)
                try:
                    await self._handshake(reader)
                    reader.max_size = MAX_REQUEST_FRAME
                    while True:
                        await self._wait_for_reply_room()
                        message = await reader.receive()
                        if message is None:
                            break
                        self.dispatch(message)
                except ProtocolError as e:
                    self.log.warning("devserver_protocol_error", error=str(e))
                    self.answer(0, STATUS_PROTOCOL_ERROR, str(e))
                    self.send_ch.close()
                    with anyio.move_on_after(1.0):
                        await self.flushed.wait()
                except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as e:
                    self.log.debug("devserver_connection_broken", error=repr(e))
                nursery.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                for st in self.trs.values():
                    if not st.committed:
                        with contextlib.suppress(Exception):
                            st.tr.cancel()
                self.trs.clear()
                if self.db is not None:
                    with contextlib.suppress(Exception):
                        await self.db.aclose()
                await anyio.aclose_forcefully(self.stream)

    async def _handshake(self, reader: FrameReader) -> None:
        hello: list[Any] | None = None
        with anyio.move_on_after(HANDSHAKE_TIMEOUT):
            hello = await reader.receive()
        if hello is None:
            raise ProtocolError("no hello")
        if len(hello) != 3 or hello[0] != "hello" or not isinstance(hello[2], dict):
            raise ProtocolError("the first frame must be a hello")
        if hello[1] != PROTOCOL_VERSION:
            raise ProtocolError(
                f"protocol version mismatch: the client speaks {hello[1]!r}, this dev "
                f"server {PROTOCOL_VERSION} (use the same fdbworkers version on both sides)"
            )
        info = hello[2]
        name = str(info.get("name") or self.peer)
        self.log = self.log.bind(client=name)
        self.db = self.server._open_handle(name)
        self.answer(0, STATUS_OK, {"protocol": PROTOCOL_VERSION, "server": "fdbworkers-devserver"})
        self.log.info("devserver_client_connected")

    async def _write_loop(self) -> None:
        try:
            async for first in self.recv_ch:
                chunks = [first]
                size = len(first)
                while size < _BATCH_BYTES:
                    try:
                        more = self.recv_ch.receive_nowait()
                    except (anyio.WouldBlock, anyio.EndOfStream):
                        break
                    chunks.append(more)
                    size += len(more)
                await self.stream.send(b"".join(chunks))
                self._replies_written(size)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            self.nursery_cancel()
        finally:
            self.flushed.set()

    # -- bounds: frames and reply queues (issue 17) ----------------------------------------
    def _replies_written(self, size: int) -> None:
        self.queued_bytes -= size
        if self.queued_bytes <= MAX_QUEUED_REPLY_BYTES // 2:
            self._reply_room.set()

    async def _wait_for_reply_room(self) -> None:
        """Backpressure: read no new request while too many reply bytes wait to be
        written to this client (it does not read them): the queue stays bounded by the
        limit plus the answers of requests already read."""
        while self.queued_bytes > MAX_QUEUED_REPLY_BYTES:
            self._reply_room = anyio.Event()
            await self._reply_room.wait()

    def close(self) -> None:
        self.closed = True
        self.nursery_cancel()

    def nursery_cancel(self) -> None:
        if self.nursery is not None:
            self.nursery.cancel_scope.cancel()

    # -- requests ------------------------------------------------------------------------
    def dispatch(self, m: list[Any]) -> None:
        op = m[0]
        self.server._requests += 1
        handler = _SYNC_OPS.get(op) if isinstance(op, str) else None
        if handler is not None:
            handler(self, m)
            return
        waiting = _WAITING_OPS.get(op) if isinstance(op, str) else None
        if waiting is None:
            raise ProtocolError(f"unknown request {op!r:.50}")
        rid = _arg(m, 1, int)
        tid = _arg(m, 2, int)
        st = self.trs.get(tid)
        if st is None:
            raise ProtocolError(f"{op} on unknown transaction {tid}")
        waiting(self, rid, st, m)

    def transaction(self, m: list[Any]) -> _ServerTransaction:
        tid = _arg(m, 1, int)
        st = self.trs.get(tid)
        if st is None:
            raise ProtocolError(f"{m[0]} on unknown transaction {tid}")
        return st

    def start(
        self,
        rid: int,
        fn: Callable[[], Any],
        watch: Watch | None = None,
    ) -> None:
        if rid in self.requests:
            raise ProtocolError(f"request id {rid} is already in use")
        scope = anyio.CancelScope()
        self.requests[rid] = (scope, watch)
        assert self.nursery is not None
        self.nursery.start_soon(self._run_request, rid, scope, fn)

    async def _run_request(self, rid: int, scope: anyio.CancelScope, fn: Callable[[], Any]) -> None:
        try:
            with scope:
                result = await fn()
                self.answer(rid, STATUS_OK, result)
        except Exception as e:
            if not scope.cancel_called:
                self.answer_error(rid, e)
        finally:
            self.requests.pop(rid, None)

    def deferred(self, st: _ServerTransaction, fn: Callable[[], None]) -> None:
        """Run a write or option now; keep its error for the next waiting request."""
        try:
            fn()
        except (FDBError, ConfigError, TypeError, ValueError) as e:
            if st.deferred is None:
                st.deferred = e


# -- requests that answer at once or never ------------------------------------------------


def _op_new(s: _Session, m: list[Any]) -> None:
    tid = _arg(m, 1, int)
    if tid in s.trs:
        raise ProtocolError(f"transaction id {tid} is already in use")
    assert s.db is not None
    st = _ServerTransaction(s.db.create_transaction())
    if len(s.trs) >= MAX_OPEN_TRANSACTIONS:
        st.deferred = FDBError(
            2000,
            f"too many open transactions on one dev server connection "
            f"({MAX_OPEN_TRANSACTIONS}); transactions are released when garbage-collected",
        )
    s.trs[tid] = st


def _op_drop(s: _Session, m: list[Any]) -> None:
    for tid in _arg(m, 1, list):
        st = s.trs.pop(tid, None) if isinstance(tid, int) else None
        if st is not None and not st.committed:
            # FDB: destroying an uncommitted transaction fails its watches (1025).
            with contextlib.suppress(Exception):
                st.tr.cancel()


def _op_set(s: _Session, m: list[Any]) -> None:
    st = s.transaction(m)
    key, value = _arg(m, 2, bytes), _arg(m, 3, bytes)
    s.deferred(st, lambda: st.tr.set(key, value))


def _op_clear(s: _Session, m: list[Any]) -> None:
    st = s.transaction(m)
    key = _arg(m, 2, bytes)
    s.deferred(st, lambda: st.tr.clear(key))


def _op_clear_range(s: _Session, m: list[Any]) -> None:
    st = s.transaction(m)
    begin, end = _arg(m, 2, bytes), _arg(m, 3, bytes)
    s.deferred(st, lambda: st.tr.clear_range(begin, end))


def _op_atomic(s: _Session, m: list[Any]) -> None:
    st = s.transaction(m)
    code, key, param = _arg(m, 2, int), _arg(m, 3, bytes), _arg(m, 4, bytes)
    s.deferred(st, lambda: st.tr.atomic_op(MutationType(code), key, param))


def _op_read_conflict(s: _Session, m: list[Any]) -> None:
    st = s.transaction(m)
    begin, end = _arg(m, 2, bytes), _arg(m, 3, bytes)
    s.deferred(st, lambda: st.tr.add_read_conflict_range(begin, end))


def _op_write_conflict(s: _Session, m: list[Any]) -> None:
    st = s.transaction(m)
    begin, end = _arg(m, 2, bytes), _arg(m, 3, bytes)
    s.deferred(st, lambda: st.tr.add_write_conflict_range(begin, end))


def _op_timeout(s: _Session, m: list[Any]) -> None:
    st = s.transaction(m)
    seconds = float(_arg(m, 2, (int, float)))
    s.deferred(st, lambda: st.tr.set_timeout(seconds))


def _op_retry_limit(s: _Session, m: list[Any]) -> None:
    st = s.transaction(m)
    n = _arg(m, 2, int)
    s.deferred(st, lambda: st.tr.set_retry_limit(n))


def _op_reset(s: _Session, m: list[Any]) -> None:
    st = s.transaction(m)
    st.deferred = None
    st.committed = False
    s.deferred(st, st.tr.reset)


def _op_cancel_transaction(s: _Session, m: list[Any]) -> None:
    st = s.transaction(m)
    s.deferred(st, st.tr.cancel)


def _op_max_watches(s: _Session, m: list[Any]) -> None:
    n = _arg(m, 1, int)
    assert s.db is not None
    try:
        s.db.set_max_watches(n)
    except (FDBError, ConfigError) as e:
        s.log.warning("devserver_max_watches_refused", n=n, error=str(e))


def _op_ping(s: _Session, m: list[Any]) -> None:
    s.answer(_arg(m, 1, int), STATUS_OK, None)


def _op_cancel(s: _Session, m: list[Any]) -> None:
    entry = s.requests.pop(_arg(m, 1, int), None)
    if entry is None:
        return
    scope, watch = entry
    if watch is not None:
        watch.cancel()
    scope.cancel()


_SYNC_OPS: Final[dict[str, Callable[[_Session, list[Any]], None]]] = {
    "new": _op_new,
    "drop": _op_drop,
    "set": _op_set,
    "clear": _op_clear,
    "clear_range": _op_clear_range,
    "atomic": _op_atomic,
    "read_conflict": _op_read_conflict,
    "write_conflict": _op_write_conflict,
    "timeout": _op_timeout,
    "retry_limit": _op_retry_limit,
    "reset": _op_reset,
    "cancel_transaction": _op_cancel_transaction,
    "max_watches": _op_max_watches,
    "ping": _op_ping,
    "cancel": _op_cancel,
}


# -- requests that wait ---------------------------------------------------------------------


def _reader(st: _ServerTransaction, snapshot: Any) -> Any:
    tr = st.check()
    return tr.snapshot if snapshot else tr


def _op_get(s: _Session, rid: int, st: _ServerTransaction, m: list[Any]) -> None:
    snapshot, key = _arg(m, 3, bool), _arg(m, 4, bytes)

    async def run() -> bytes | None:
        value: bytes | None = await _reader(st, snapshot).get(key)
        return value

    s.start(rid, run)


def _op_get_key(s: _Session, rid: int, st: _ServerTransaction, m: list[Any]) -> None:
    snapshot = _arg(m, 3, bool)
    selector = KeySelector(_arg(m, 4, bytes), _arg(m, 5, bool), _arg(m, 6, int))

    async def run() -> bytes:
        key: bytes = await _reader(st, snapshot).get_key(selector)
        return key

    s.start(rid, run)


def _op_get_range(s: _Session, rid: int, st: _ServerTransaction, m: list[Any]) -> None:
    snapshot = _arg(m, 3, bool)
    begin, end = _selector(_arg(m, 4, list)), _selector(_arg(m, 5, list))
    limit, reverse = _arg(m, 6, int), _arg(m, 7, bool)

    async def run() -> list[list[bytes]]:
        rows = await _reader(st, snapshot).get_range(begin, end, limit=limit, reverse=reverse)
        return [[k, v] for k, v in rows]

    s.start(rid, run)


def _op_get_read_version(s: _Session, rid: int, st: _ServerTransaction, m: list[Any]) -> None:
    snapshot = _arg(m, 3, bool)

    async def run() -> int:
        version: int = await _reader(st, snapshot).get_read_version()
        return version

    s.start(rid, run)


def _op_commit(s: _Session, rid: int, st: _ServerTransaction, m: list[Any]) -> None:
    async def run() -> int:
        tr = st.check()
        await tr.commit()
        st.committed = True
        s.server._commits += 1
        s.server._changed.set()
        return tr.get_committed_version()

    s.start(rid, run)


def _op_on_error(s: _Session, rid: int, st: _ServerTransaction, m: list[Any]) -> None:
    code = _arg(m, 3, int)

    async def run() -> None:
        await st.tr.on_error(FDBError(code))
        st.deferred = None
        st.committed = False

    s.start(rid, run)


def _op_watch(s: _Session, rid: int, st: _ServerTransaction, m: list[Any]) -> None:
    key = _arg(m, 3, bytes)
    try:
        w = st.check().watch(key)
    except Exception as e:
        if rid in s.requests:
            raise ProtocolError(f"request id {rid} is already in use") from None
        s.answer_error(rid, e)
        return
    s.start(rid, w.wait, watch=w)


def _op_versionstamp(s: _Session, rid: int, st: _ServerTransaction, m: list[Any]) -> None:
    try:
        future = st.check().get_versionstamp()
    except Exception as e:
        s.answer_error(rid, e)
        return
    s.start(rid, future.get)


_WAITING_OPS: Final[dict[str, Callable[[_Session, int, _ServerTransaction, list[Any]], None]]] = {
    "get": _op_get,
    "get_key": _op_get_key,
    "get_range": _op_get_range,
    "get_read_version": _op_get_read_version,
    "commit": _op_commit,
    "on_error": _op_on_error,
    "watch": _op_watch,
    "versionstamp": _op_versionstamp,
}
