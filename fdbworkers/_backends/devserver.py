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

The connection's side is in :mod:`fdbworkers._backends.devserver_session`, the data
file's format in :mod:`fdbworkers._backends.devserver_data`.

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import anyio
import anyio.abc
import anyio.lowlevel
import anyio.to_thread
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from .._errors import ConfigError
from .._log import get_logger
from .devserver_data import check_data_path, load_data_file, save_data_file
from .devserver_session import _Session
from .engine import Engine, EngineDatabase, FaultPlan
from .engine._mutations import SET
from .engine._ryw import MAX_KEY
from .engine._store import BASE_VERSION, VERSIONS_PER_SECOND

__all__ = [
    "DevServer",
    "DevServerStatistics",
    "check_bind_host",
    "run_devserver",
    "serve",
]

log = get_logger("fdbworkers.devserver")

DEFAULT_SAVE_INTERVAL: Final = 1.0
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
# The server
# --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DevServerStatistics:
    connections_total: int
    connections_open: int
    requests: int
    commits: int
    saves: int
    last_saved_version: int


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
