"""``fdbworkers devserver``: the embedded engine served on 127.0.0.1, so that several
processes share one database (``sim://HOST:PORT``; the client is ``fdbworkers._backends.remote``).

The server hosts one :class:`~fdbworkers._backends.engine.Engine` on the event loop's clock and,
for each connection, one database handle of it (``engine.open_database(name)``), so
per-client limits such as ``max_watches`` apply per connection, like a database object
of libfdb_c. Each client transaction is one engine transaction on the server (a
transaction id chosen by the client); every request is executed by calling the seam
method of that transaction, so the semantics are exactly the engine's. Requests that
wait (reads, commit, ``on_error``, watches, versionstamps) run as tasks of the
connection and may be cancelled by the client; the others (writes, options) run at once,
in frame order. An error raised by one of those is kept and raised by the transaction's
next waiting request (libfdb_c reports the errors of its void calls the same way).

Persistence (``data``): at start the latest key-values and the last commit version are
loaded from the file; while running they are saved every ``save_interval`` seconds when
something was committed, and at shutdown, atomically (a temporary file in the same
folder, fsync, rename). Restarting the server loses at most the last interval of
commits, and versions continue above the saved one (versionstamps keep increasing).

It has **no authentication**: anyone who can connect can read and write everything.
It is a development tool; it binds to loopback only unless ``allow_remote`` is given.
Production uses FoundationDB.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import math
import os
import random
import signal
import socket
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import anyio
import anyio.abc
import anyio.lowlevel
import anyio.to_thread
import msgpack
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from .._db import KeySelector, MutationType, Transaction, Watch
from .._errors import ConfigError, FDBError
from .._log import get_logger
from .engine import Engine, EngineDatabase, FaultPlan
from .engine._mutations import SET
from .engine._ryw import MAX_KEY
from .engine._store import BASE_VERSION, VERSIONS_PER_SECOND
from .wire import (
    PROTOCOL_VERSION,
    STATUS_EXCEPTION,
    STATUS_OK,
    STATUS_PROTOCOL_ERROR,
    FrameReader,
    ProtocolError,
    encode_frame,
)

__all__ = [
    "DATA_FORMAT",
    "DevServer",
    "DevServerStatistics",
    "check_bind_host",
    "check_data_path",
    "load_data_file",
    "run_devserver",
    "save_data_file",
    "serve",
]

log = get_logger("fdbworkers.devserver")

#: The ``format`` field of a data file.
DATA_FORMAT: Final = "fdbworkers-devserver-data"
DATA_FORMAT_VERSION: Final = 1
DEFAULT_SAVE_INTERVAL: Final = 1.0
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
#: After loading a data file, versions jump this far (in seconds of versions) above the
#: saved version, like FoundationDB's recovery (MAX_VERSIONS_IN_FLIGHT, 100 s).
RECOVERY_JUMP_SECONDS: Final = 100.0


# --------------------------------------------------------------------------------------
# Binding
# --------------------------------------------------------------------------------------


def check_bind_host(host: str, *, allow_remote: bool = False) -> list[tuple[Any, ...]]:
    """Resolve ``host`` for listening; :class:`ConfigError` when it is not a loopback
    address (unless ``allow_remote``) or cannot be resolved. Returns getaddrinfo rows."""
    try:
        infos = socket.getaddrinfo(host, 0, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError as e:
        raise ConfigError(f"cannot resolve dev server host {host!r}: {e}") from None
    if not infos:
        raise ConfigError(f"dev server host {host!r} resolves to no address")
    if not allow_remote:
        for info in infos:
            address = ipaddress.ip_address(str(info[4][0]).split("%")[0])
            if not address.is_loopback:
                raise ConfigError(
                    f"refusing to serve on {host!r} ({address}): the dev server has no "
                    f"authentication, so it binds to loopback (127.0.0.1, ::1) only. Pass "
                    f"--allow-remote (allow_remote=True) to expose it on a network you trust; "
                    f"production uses FoundationDB"
                )
    return list(infos)


async def _open_listener(host: str, port: int, *, allow_remote: bool) -> anyio.abc.SocketListener:
    if not isinstance(port, int) or not 0 <= port <= 65535:
        raise ConfigError(f"dev server port must be 0..65535 (0: any free port), not {port!r}")
    infos = check_bind_host(host, allow_remote=allow_remote)
    family, type_, proto, _, sockaddr = infos[0]
    sock = socket.socket(family, type_, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((sockaddr[0], port, *sockaddr[2:]))  # a local address: does not block
        sock.listen(128)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return await anyio.abc.SocketListener.from_socket(sock)


class _MemoryByteStream(anyio.abc.ByteStream):
    """One end of an in-memory byte stream pair (see :func:`memory_stream_pair`)."""

    def __init__(
        self, send: MemoryObjectSendStream[bytes], receive: MemoryObjectReceiveStream[bytes]
    ) -> None:
        self._send = send
        self._receive = receive
        self._buffer = b""

    async def receive(self, max_bytes: int = 65536) -> bytes:
        if not self._buffer:
            try:
                self._buffer = await self._receive.receive()
            except anyio.EndOfStream:
                raise anyio.EndOfStream from None
        data, self._buffer = self._buffer[:max_bytes], self._buffer[max_bytes:]
        return data

    async def send(self, item: bytes) -> None:
        if item:
            await self._send.send(bytes(item))
        else:
            await anyio.lowlevel.checkpoint()

    async def send_eof(self) -> None:
        await self._send.aclose()

    async def aclose(self) -> None:
        await self._send.aclose()
        await self._receive.aclose()


def memory_stream_pair(
    buffer: float = math.inf,
) -> tuple[anyio.abc.ByteStream, anyio.abc.ByteStream]:
    """Two connected in-memory byte streams, on any event loop. ``buffer`` chunks may
    wait unread in each direction (default: unbounded, like a socket pair whose buffers
    never fill; 0: every send waits for the peer to receive it)."""
    a_send, b_receive = anyio.create_memory_object_stream[bytes](buffer)
    b_send, a_receive = anyio.create_memory_object_stream[bytes](buffer)
    return _MemoryByteStream(a_send, a_receive), _MemoryByteStream(b_send, b_receive)


def _address(host: str, port: int) -> str:
    return f"sim://[{host}]:{port}" if ":" in host else f"sim://{host}:{port}"


# --------------------------------------------------------------------------------------
# Persistence (pure file format + atomic write)
# --------------------------------------------------------------------------------------


def save_data_file(path: Path, version: int, items: list[tuple[bytes, bytes]]) -> None:
    """Write a data file atomically: a temporary file in the same folder, fsync, rename,
    fsync of the folder (blocking: call it in a thread)."""
    body = msgpack.packb(
        {
            "format": DATA_FORMAT,
            "format_version": DATA_FORMAT_VERSION,
            "version": version,
            "items": [[k, v] for k, v in items],
        },
        use_bin_type=True,
    )
    folder = path.parent
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(body)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def check_data_path(path: Path) -> None:
    """ConfigError unless the data file can be written where it is: its folder exists
    and is writable, and the path is not a folder (checked at start: otherwise every
    save would fail and every commit would be lost)."""
    folder = path.parent
    if path.is_dir():
        raise ConfigError(f"dev server data file {str(path)!r} is a folder")
    if not folder.is_dir():
        raise ConfigError(
            f"the folder of the dev server data file {str(path)!r} does not exist "
            f"({str(folder)!r}): create it first"
        )
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ConfigError(f"the folder of the dev server data file {str(path)!r} is not writable")
    if path.exists() and not os.access(path, os.R_OK | os.W_OK):
        raise ConfigError(f"dev server data file {str(path)!r} is not readable and writable")


def load_data_file(path: Path) -> tuple[int, list[tuple[bytes, bytes]]]:
    """Read a data file: ``(last commit version, sorted key-values)``; ``(0, [])`` when
    the file does not exist. :class:`ConfigError` names the file when it is unusable."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return 0, []
    except OSError as e:
        raise ConfigError(f"cannot read dev server data file {str(path)!r}: {e}") from None
    try:
        doc = msgpack.unpackb(raw, raw=False, strict_map_key=False)
    except Exception as e:
        raise ConfigError(
            f"dev server data file {str(path)!r} is not readable ({e}); move it away to "
            f"start with an empty database"
        ) from None
    if not isinstance(doc, dict) or doc.get("format") != DATA_FORMAT:
        raise ConfigError(f"{str(path)!r} is not a dev server data file")
    if doc.get("format_version") != DATA_FORMAT_VERSION:
        raise ConfigError(
            f"dev server data file {str(path)!r} has format version "
            f"{doc.get('format_version')!r}; this version reads {DATA_FORMAT_VERSION}"
        )
    version = doc.get("version")
    items = doc.get("items")
    if not isinstance(version, int) or version < 0 or not isinstance(items, list):
        raise ConfigError(f"dev server data file {str(path)!r} is damaged")
    out: list[tuple[bytes, bytes]] = []
    for item in items:
        if (
            not isinstance(item, list)
            or len(item) != 2
            or not isinstance(item[0], bytes)
            or not isinstance(item[1], bytes)
        ):
            raise ConfigError(f"dev server data file {str(path)!r} is damaged")
        out.append((item[0], item[1]))
    return version, out


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


@dataclass(frozen=True, slots=True)
class DevServerStatistics:
    connections_total: int
    connections_open: int
    requests: int
    commits: int
    saves: int
    last_saved_version: int


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

    def __init__(self, server: DevServer, stream: anyio.abc.ByteStream, peer: str) -> None:
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


# --------------------------------------------------------------------------------------
# The server
# --------------------------------------------------------------------------------------


class _ShiftedClock:
    """The event loop's clock plus a constant offset (monotonic, like the loop's)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return anyio.current_time() + self.offset


class DevServer:
    """One engine, served to any number of connections (see the module doc).

    ``await server.run(...)`` (or :func:`serve`) loads the data file, listens, saves
    periodically and at shutdown. :meth:`connect_in_memory` gives a client stream
    without TCP (tests, and simulations of several processes on a virtual clock)."""

    def __init__(
        self,
        *,
        data: Path | None = None,
        save_interval: float = DEFAULT_SAVE_INTERVAL,
        rng: random.Random | None = None,
        faults: FaultPlan | None = None,
    ) -> None:
        if not (save_interval > 0 and math.isfinite(save_interval)):
            raise ConfigError(f"save_interval must be > 0 seconds, not {save_interval}")
        self._clock = _ShiftedClock()
        #: The served engine (its clock: the loop's, shifted after loading a data file so
        #: that versions continue above the saved ones).
        self.engine = Engine(clock=self._clock, rng=rng, faults=faults)
        self.data = Path(data) if data is not None else None
        self.save_interval = save_interval
        self._nursery: anyio.abc.TaskGroup | None = None
        self._changed = anyio.Event()
        self._connections_total = 0
        self._connections_open = 0
        self._requests = 0
        self._commits = 0
        self._saves = 0
        self._saved_version = 0
        self._sessions: set[_Session] = set()
        self.host: str | None = None
        self.port: int | None = None

    # -- lifecycle -----------------------------------------------------------------------
    @property
    def address(self) -> str | None:
        """``sim://HOST:PORT`` once listening."""
        if self.host is None or self.port is None:
            return None
        return _address(self.host, self.port)

    async def run(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        listen: bool = True,
        allow_remote: bool = False,
        task_status: anyio.abc.TaskStatus[int] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve until cancelled; ``task_status.started(port)`` once listening (0 with
        ``listen=False``: in-memory connections only)."""
        if self.data is not None:
            check_data_path(self.data)
        listener = await _open_listener(host, port, allow_remote=allow_remote) if listen else None
        try:
            if self.data is not None:
                self._load()
            async with anyio.create_task_group() as nursery:
                self._nursery = nursery
                if listener is not None:
                    self.host = host
                    self.port = int(listener.extra(anyio.abc.SocketAttribute.local_port))
                    nursery.start_soon(listener.serve, self._handle_tcp)
                    log.info("devserver_listening", address=self.address, data=str(self.data))
                if self.data is not None:
                    nursery.start_soon(self._save_loop)
                task_status.started(self.port or 0)
                await anyio.sleep_forever()
        finally:
            self._nursery = None
            with anyio.CancelScope(shield=True):
                if listener is not None:
                    await anyio.aclose_forcefully(listener)
                if self.data is not None:
                    await self.save()

    async def connect_in_memory(self) -> anyio.abc.ByteStream:
        """A client stream connected to this server through memory (no TCP); raises
        :class:`ConnectionRefusedError` when the server is not running."""
        if self._nursery is None:
            raise ConnectionRefusedError(errno.ECONNREFUSED, "the dev server is not running")
        client, server = memory_stream_pair()
        self._nursery.start_soon(self._handle, server, "memory")
        return client

    async def _handle_tcp(self, stream: anyio.abc.SocketStream) -> None:
        try:
            peer = stream.extra(anyio.abc.SocketAttribute.remote_address)
            name = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        except (OSError, anyio.TypedAttributeLookupError):
            name = "tcp"
        with contextlib.suppress(OSError):
            raw = stream.extra(anyio.abc.SocketAttribute.raw_socket)
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        await self._handle(stream, name)

    def client_handles(self) -> list[EngineDatabase]:
        """The engine handle of each open connection (named by the client's hello, by
        default ``host:pid``), e.g. to partition one client: ``h.partitioned = True``."""
        return [s.db for s in self._sessions if isinstance(s.db, EngineDatabase)]

    def close_connections(self) -> int:
        """Drop every client connection (their pending operations fail, as when the
        server restarts); the server keeps running. Returns how many were open."""
        sessions = list(self._sessions)
        for session in sessions:
            session.close()
        return len(sessions)

    async def _handle(self, stream: anyio.abc.ByteStream, peer: str) -> None:
        self._connections_total += 1
        self._connections_open += 1
        session = _Session(self, stream, peer)
        self._sessions.add(session)
        try:
            await session.run()
        except Exception:
            log.exception("devserver_connection_failed", peer=peer)
        finally:
            self._sessions.discard(session)
            self._connections_open -= 1
            log.debug("devserver_client_disconnected", peer=peer)

    def _open_handle(self, name: str) -> EngineDatabase:
        return self.engine.open_database(name)

    def __repr__(self) -> str:
        where = self.address or ("in-memory" if self._nursery is not None else "stopped")
        return (
            f"<DevServer {where} connections={self._connections_open} "
            f"data={str(self.data) if self.data else None}>"
        )

    def statistics(self) -> DevServerStatistics:
        return DevServerStatistics(
            connections_total=self._connections_total,
            connections_open=self._connections_open,
            requests=self._requests,
            commits=self._commits,
            saves=self._saves,
            last_saved_version=self._saved_version,
        )

    # -- persistence ---------------------------------------------------------------------
    def _load(self) -> None:
        assert self.data is not None
        version, items = load_data_file(self.data)
        store = self.engine.store
        if version > 0:
            # Versions continue above the saved one, with FoundationDB's recovery jump:
            # commits after the last save (lost) may have handed out versionstamps.
            store.clock_version()  # the store's clock origin: now
            self._clock.offset = (
                max(0, version - BASE_VERSION) / VERSIONS_PER_SECOND + RECOVERY_JUMP_SECONDS
            )
        if items:
            store.commit(None, [], [], [(SET, k, v) for k, v in items], check_conflicts=False)
        self._saved_version = store.last_commit_version
        log.info(
            "devserver_data_loaded",
            path=str(self.data),
            keys=len(items),
            saved_version=version,
            version=store.last_commit_version,
        )

    def snapshot(self) -> tuple[int, list[tuple[bytes, bytes]]]:
        """The last commit version and every key-value at it (synchronous, consistent)."""
        store = self.engine.store
        version = store.last_commit_version
        return version, list(store.iter_range(b"", MAX_KEY, version))

    async def save(self) -> None:
        """Save the latest key-values now when anything committed since the last save."""
        if self.data is None:
            return
        version, items = self.snapshot()
        if version == self._saved_version:
            return
        await anyio.to_thread.run_sync(save_data_file, self.data, version, items)
        self._saved_version = version
        self._saves += 1
        log.debug("devserver_data_saved", path=str(self.data), keys=len(items), version=version)

    async def _save_loop(self) -> None:
        while True:
            await self._changed.wait()
            self._changed = anyio.Event()
            try:
                await self.save()
            except OSError as e:
                log.error("devserver_save_failed", path=str(self.data), error=str(e))
            await anyio.sleep(self.save_interval)


async def serve(
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    data: Path | None = None,
    allow_remote: bool = False,
    save_interval: float = DEFAULT_SAVE_INTERVAL,
    task_status: anyio.abc.TaskStatus[int] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve a fresh engine (or the one in ``data``) on ``host:port`` until cancelled;
    ``task_status.started(port)`` reports the bound port. Loopback only unless
    ``allow_remote``."""
    server = DevServer(data=data, save_interval=save_interval)
    await server.run(host, port, allow_remote=allow_remote, task_status=task_status)


def run_devserver(
    host: str = "127.0.0.1",
    port: int = 0,
    data: Path | None = None,
    *,
    ready_file: Path | None = None,
    allow_remote: bool = False,
    save_interval: float = DEFAULT_SAVE_INTERVAL,
) -> None:
    """Run the dev server in this thread until SIGINT/SIGTERM (then save and return).
    When listening, ``ready_file`` (if given) receives the address ``sim://HOST:PORT``
    (written atomically), for scripts and tests. Raises :class:`ConfigError` for a bad
    host, port or data file."""
    check_bind_host(host, allow_remote=allow_remote)

    async def main() -> None:
        server = DevServer(data=data, save_interval=save_interval)
        async with anyio.create_task_group() as nursery:
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                await nursery.start(
                    lambda task_status: server.run(
                        host, port, allow_remote=allow_remote, task_status=task_status
                    )
                )
                address = server.address or ""
                if ready_file is not None:
                    _write_ready_file(ready_file, address)
                print(f"fdbworkers devserver listening on {address}", flush=True)
                async for signum in signals:
                    log.info("devserver_stopping", signal=signal.Signals(signum).name)
                    break
                nursery.cancel_scope.cancel()

    anyio.run(main, backend="trio")


def _write_ready_file(path: Path, address: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(address + "\n")
    os.replace(tmp, path)
