"""The dev-server client: a :class:`~fdbworkers._db.Database` whose every operation runs
on an embedded engine served by ``fdbworkers devserver`` in another process.

``open_database("sim://HOST:PORT")`` returns a :class:`RemoteDatabase`. It holds one TCP
connection (opened on first use, reopened by a later transaction after a loss); every
seam method is a request over it, executed by the server on the engine's own
transaction objects, so the semantics are the engine's. The wire protocol, shared with
the server (``fdbworkers._backends.devserver``), is in ``fdbworkers._backends.wire``;
the connection is in ``fdbworkers._backends.remote_connection``, the transactions in
``fdbworkers._backends.remote_transaction``.

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
    Database,
)
from .._errors import ConfigError, FDBError
from .._log import get_logger
from .._loop import LoopToken, current_token, spawn_system_task
from .remote_connection import (
    CONNECTION_FAILED,
    KEEPALIVE_INTERVAL,
    ConnectionLostError,
    _Connection,
)
from .remote_transaction import RemoteTransaction, RemoteWatch
from .wire import (
    PROTOCOL_VERSION,
    STATUS_OK,
    FrameReader,
    ProtocolError,
    encode_frame,
)

__all__ = [
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_KEEPALIVE_TIMEOUT",
    "RemoteDatabase",
    "open_remote",
]

log = get_logger("fdbworkers.remote")

DEFAULT_CONNECT_TIMEOUT: Final = 5.0
#: The client pings every second; a connection silent this long is declared lost.
DEFAULT_KEEPALIVE_TIMEOUT: Final = 10.0


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
