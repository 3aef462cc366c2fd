"""The dev server (fdbworkers._backends.devserver) and its client (fdbworkers._backends.remote).

The contract suite already runs over the dev server protocol (the ``remote`` backend of
the ``db`` fixture). Here: several clients and processes sharing one server over TCP
(real clock, short waits), the server going away and coming back, persistence, the
loopback-only rule, and the protocol's failure modes on the virtual clock (in-memory
streams).
"""

from __future__ import annotations

import functools
import importlib.util
import os
import random
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import msgpack
import pytest
import trio
import trio.testing

from fdbworkers._backends.connect import open_database
from fdbworkers._backends.devserver import (
    DevServer,
    check_bind_host,
    memory_stream_pair,
    serve,
)
from fdbworkers._backends.devserver_data import DATA_FORMAT, load_data_file, save_data_file
from fdbworkers._backends.engine import FaultPlan
from fdbworkers._backends.remote import RemoteDatabase
from fdbworkers._backends.remote_connection import ConnectionLostError
from fdbworkers._backends.wire import (
    PROTOCOL_VERSION,
    STATUS_PROTOCOL_ERROR,
    FrameReader,
    encode_frame,
)
from fdbworkers._db import Database, KeyValue, Transaction, Watch
from fdbworkers._errors import ConfigError, FDBError

ROOT = Path(__file__).resolve().parent.parent

# --------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------


async def put(db: Database, items: dict[bytes, bytes]) -> None:
    async def fn(tr: Transaction) -> None:
        for k, v in items.items():
            tr.set(k, v)

    await db.transact(fn)


async def read(db: Database, key: bytes) -> bytes | None:
    async def fn(tr: Transaction) -> bytes | None:
        return await tr.get(key)

    return await db.transact(fn)


async def arm_watch(db: Database, key: bytes) -> Watch:
    async def fn(tr: Transaction) -> Watch:
        return tr.watch(key)

    return await db.transact(fn)


async def stamped_commit(db: Database, key: bytes) -> bytes:
    tr = db.create_transaction()
    stamp = tr.get_versionstamp()
    tr.set(key, b"x")
    await tr.commit()
    return await stamp


async def eventually(cond: Callable[[], bool], limit: float = 10.0) -> None:
    # Polls: the conditions are observed from outside (files, another process).
    with trio.fail_after(limit):
        while not cond():  # noqa: ASYNC110
            await trio.sleep(0.02)


def remote(port: int) -> Database:
    db = open_database(f"sim://127.0.0.1:{port}")
    db.default_timeout = 5.0
    return db


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


SERVER_PROCESS = """
import sys
from pathlib import Path
from fdbworkers._backends.devserver import run_devserver
port, data, ready = int(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
run_devserver("127.0.0.1", port, Path(data) if data else None, ready_file=ready,
              save_interval=0.1)
"""


@asynccontextmanager
async def server_process(
    tmp_path: Path, *, port: int = 0, data: Path | None = None
) -> AsyncIterator[tuple[trio.Process, int]]:
    """``run_devserver`` in a child process; yields it and its port once it is ready."""
    ready = tmp_path / f"ready-{os.urandom(4).hex()}"
    log_path = tmp_path / "server.log"
    with open(log_path, "ab") as log_file:  # noqa: ASYNC230 - a local file, opened once
        proc = await trio.lowlevel.open_process(
            [sys.executable, "-c", SERVER_PROCESS, str(port), str(data or ""), str(ready)],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
    try:
        with trio.fail_after(20):
            while not ready.exists():
                if proc.poll() is not None:
                    raise AssertionError(
                        f"dev server exited with {proc.returncode}:\n{log_path.read_text()}"
                    )
                await trio.sleep(0.02)
        address = ready.read_text().strip()
        assert address.startswith("sim://127.0.0.1:"), address
        yield proc, int(address.rsplit(":", 1)[1])
    finally:
        if proc.returncode is None:
            proc.kill()
            with trio.CancelScope(shield=True):
                await proc.wait()


# --------------------------------------------------------------------------------------
# Several clients, one server (TCP, real clock)
# --------------------------------------------------------------------------------------


async def test_two_clients_share_one_engine(nursery: trio.Nursery) -> None:
    port = await nursery.start(serve)
    a, b = remote(port), remote(port)
    assert a.backend == b.backend == "remote-engine"
    await put(a, {b"k/a": b"from a"})
    assert await read(b, b"k/a") == b"from a"
    await put(b, {b"k/b": b"from b"})

    async def both(tr: Transaction) -> list[KeyValue]:
        return await tr.get_range(b"k/", b"k0")

    assert await a.transact(both) == [KeyValue(b"k/a", b"from a"), KeyValue(b"k/b", b"from b")]
    await a.aclose()
    await b.aclose()


async def test_watch_of_one_client_fires_on_the_others_write(nursery: trio.Nursery) -> None:
    port = await nursery.start(serve)
    a, b = remote(port), remote(port)
    await put(a, {b"w": b"1"})
    w = await arm_watch(a, b"w")
    with trio.move_on_after(0.05):
        await w.wait()
    assert not w.done
    await put(b, {b"w": b"2"})
    with trio.fail_after(5):
        await w.wait()
    assert w.done


async def test_conflicts_across_clients(nursery: trio.Nursery) -> None:
    port = await nursery.start(serve)
    a, b = remote(port), remote(port)
    await put(a, {b"c": b"0"})
    ta, tb = a.create_transaction(), b.create_transaction()
    assert await ta.get(b"c") == b"0"
    assert await tb.get(b"c") == b"0"
    ta.set(b"c", b"a")
    tb.set(b"c", b"b")
    await ta.commit()
    with pytest.raises(FDBError) as info:
        await tb.commit()
    assert info.value.code == 1020
    # the retry loop resolves it: read-modify-write from both clients, concurrently
    await put(a, {b"n": b"0"})

    async def incr(tr: Transaction) -> None:
        tr.set(b"n", str(int(await tr.get(b"n") or b"0") + 1).encode())

    async with trio.open_nursery() as n:
        for i in range(20):
            n.start_soon(functools.partial((a, b)[i % 2].transact, incr))
    assert await read(b, b"n") == b"20"
    assert a.stats.conflicts + b.stats.conflicts > 0


async def test_versionstamps_increase_across_clients(nursery: trio.Nursery) -> None:
    port = await nursery.start(serve)
    clients = [remote(port) for _ in range(3)]
    stamps = [await stamped_commit(clients[i % 3], b"vs%d" % i) for i in range(9)]
    assert stamps == sorted(stamps)
    assert len(set(stamps)) == len(stamps)
    concurrent: list[bytes] = []

    async def one(i: int) -> None:
        concurrent.append(await stamped_commit(clients[i % 3], b"vc%d" % i))

    async with trio.open_nursery() as n:
        for i in range(12):
            n.start_soon(one, i)
    assert len(set(concurrent)) == 12
    assert min(concurrent) > max(stamps)


async def test_another_process_talks_to_the_same_server(nursery: trio.Nursery) -> None:
    port = await nursery.start(serve)
    db = remote(port)
    await put(db, {b"from-test": b"hello"})
    snippet = (
        "import trio\n"
        "from fdbworkers._backends.connect import open_database\n"
        "async def main():\n"
        "    db = open_database()  # FDBWORKERS_CLUSTER\n"
        "    db.default_timeout = 5\n"
        "    async def fn(tr):\n"
        "        seen = await tr.get(b'from-test')\n"
        "        tr.set(b'from-child', b'child saw ' + (seen or b'nothing'))\n"
        "    await db.transact(fn)\n"
        "    await db.aclose()\n"
        "    print(db.backend)\n"
        "trio.run(main)\n"
    )
    env = {**os.environ, "FDBWORKERS_CLUSTER": f"sim://127.0.0.1:{port}"}
    with trio.fail_after(20):
        done = await trio.run_process(
            [sys.executable, "-c", snippet], env=env, cwd=ROOT, capture_stdout=True
        )
    assert done.stdout.decode().strip().endswith("remote-engine")
    assert await read(db, b"from-child") == b"child saw hello"


async def test_refuses_non_loopback_hosts() -> None:
    check_bind_host("127.0.0.1")
    check_bind_host("::1")
    check_bind_host("localhost")
    with pytest.raises(ConfigError, match="no authentication"):
        check_bind_host("0.0.0.0")
    check_bind_host("0.0.0.0", allow_remote=True)
    with pytest.raises(ConfigError, match="no authentication"):
        await serve("0.0.0.0", 0)
    with pytest.raises(ConfigError, match="port"):
        await serve("127.0.0.1", 70000)


async def test_unreachable_server_fails_fast_with_connection_failed() -> None:
    db = RemoteDatabase("127.0.0.1", free_port(), connect_timeout=2.0)
    start = trio.current_time()
    with pytest.raises(FDBError) as info:
        await read(db, b"k")
    assert info.value.code == 1026
    assert "devserver" in str(info.value)
    assert not info.value.retryable
    assert trio.current_time() - start < 2.0


# --------------------------------------------------------------------------------------
# The server going away, and persistence (child processes, real clock)
# --------------------------------------------------------------------------------------


async def test_server_killed_operations_fail_then_recover(tmp_path: Path) -> None:
    data = tmp_path / "dev.data"
    async with server_process(tmp_path, data=data) as (proc, port):
        db = remote(port)
        db.default_timeout = 2.0
        await put(db, {b"k": b"1"})
        w = await arm_watch(db, b"k")
        await eventually(data.exists)  # saved (the interval is 0.1 s here)
        proc.kill()
        await proc.wait()
        start = trio.current_time()
        with trio.fail_after(2.0), pytest.raises(FDBError) as info:
            await w.wait()
        assert info.value.code == 1026
        with trio.fail_after(2.0), pytest.raises(FDBError) as info:
            await read(db, b"k")
        assert info.value.code == 1026
        assert trio.current_time() - start < 2.0
    async with server_process(tmp_path, port=port, data=data):
        assert await read(db, b"k") == b"1"  # the next transaction reconnected
        await put(db, {b"k": b"2"})
    assert isinstance(db, RemoteDatabase)
    assert db.connects == 2


async def test_restart_with_data_keeps_data_and_versions_increase(tmp_path: Path) -> None:
    data = tmp_path / "dev.data"
    async with server_process(tmp_path, data=data) as (proc, port):
        db = remote(port)
        await put(db, {b"a": b"1", b"b": b"2" * 1000})
        before = await stamped_commit(db, b"c")
        proc.send_signal(signal.SIGTERM)  # graceful: saves at shutdown
        with trio.fail_after(10):
            await proc.wait()
        assert proc.returncode == 0
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]
    async with server_process(tmp_path, data=data) as (_, port):
        db = remote(port)
        assert await read(db, b"a") == b"1"
        assert await read(db, b"b") == b"2" * 1000
        assert await read(db, b"c") == b"x"
        after = await stamped_commit(db, b"d")
        assert after > before


# --------------------------------------------------------------------------------------
# Failure modes of the protocol (in-memory streams, virtual clock)
# --------------------------------------------------------------------------------------


@pytest.fixture
async def memserver(nursery: trio.Nursery) -> DevServer:
    server = DevServer()
    await nursery.start(functools.partial(server.run, listen=False))
    return server


def memclient(server: DevServer, **options: Any) -> RemoteDatabase:
    return RemoteDatabase("memory", 1, connector=server.connect_in_memory, **options)


async def test_pending_operations_fail_when_the_connection_drops(
    memserver: DevServer, autojump_clock: trio.testing.MockClock
) -> None:
    db = memclient(memserver)
    await put(db, {b"k": b"1"})
    memserver.engine.faults = FaultPlan(latency=(1.0, 1.0))
    reader, committer = db.create_transaction(), db.create_transaction()
    committer.set(b"k", b"2")
    errors: dict[str, int] = {}

    async def run(name: str, fn: Callable[[], Any]) -> None:
        try:
            await fn()
        except FDBError as e:
            errors[name] = e.code

    async with trio.open_nursery() as n:
        n.start_soon(run, "get", functools.partial(reader.get, b"k"))
        n.start_soon(run, "commit", committer.commit)
        await trio.sleep(0.3)
        assert memserver.close_connections() == 1
    # a commit in flight may have been applied: 1021; anything else: 1026
    assert errors == {"get": 1026, "commit": 1021}
    # the same transaction stays failed; a new one reconnects
    with pytest.raises(ConnectionLostError):
        await reader.get(b"k")
    memserver.engine.faults = FaultPlan()
    assert await read(db, b"k") in (b"1", b"2")
    assert db.connects == 2


async def test_retry_loop_survives_a_lost_commit(
    memserver: DevServer, autojump_clock: trio.testing.MockClock
) -> None:
    db = memclient(memserver)
    await put(db, {b"n": b"0"})
    memserver.engine.faults = FaultPlan(latency=(0.5, 0.5))
    attempts: list[bool] = []

    async def incr(tr: Transaction) -> None:
        attempts.append(tr.maybe_committed)
        tr.add(b"counter", (1).to_bytes(8, "little"))

    async with trio.open_nursery() as n:
        n.start_soon(db.transact, incr)
        await trio.sleep(0.4)  # in the commit
        memserver.close_connections()
    assert attempts == [False, True]  # retried after 1021, flagged maybe_committed
    assert db.stats.unknown_results == 1


async def test_silent_server_is_detected(autojump_clock: trio.testing.MockClock) -> None:
    """A server that accepts and then never answers (stopped, half-open connection):
    operations fail with 1026 after the keepalive timeout, or 1031 at the transaction's
    timeout when that comes first; nothing hangs."""

    async def silent_server(stream: anyio.abc.ByteStream) -> None:
        reader = FrameReader(stream)
        await reader.receive()
        await stream.send(encode_frame([0, 0, {}]))
        while await reader.receive() is not None:
            pass

    async with trio.open_nursery() as nursery:

        async def connector() -> anyio.abc.ByteStream:
            client, server = memory_stream_pair()
            nursery.start_soon(silent_server, server)
            return client

        db = RemoteDatabase("silent", 1, connector=connector, keepalive_timeout=5.0)
        start = trio.current_time()
        with pytest.raises(FDBError) as info:
            await db.create_transaction().get(b"k")
        assert info.value.code == 1026
        assert 5.0 <= trio.current_time() - start <= 7.0

        tr = db.create_transaction()
        tr.set_timeout(1.0)
        start = trio.current_time()
        with pytest.raises(FDBError) as info:
            await tr.get(b"k")
        assert info.value.code == 1031
        assert trio.current_time() - start < 2.0
        nursery.cancel_scope.cancel()


async def test_cancelled_request_leaves_the_connection_usable(
    memserver: DevServer, autojump_clock: trio.testing.MockClock
) -> None:
    db = memclient(memserver)
    await put(db, {b"k": b"v"})
    memserver.engine.faults = FaultPlan(latency=(1.0, 1.0))
    tr = db.create_transaction()
    with trio.move_on_after(0.1) as scope:
        await tr.get(b"k")
    assert scope.cancelled_caught
    memserver.engine.faults = FaultPlan()
    assert await tr.get(b"k") == b"v"
    await put(db, {b"k2": b"v2"})
    assert await read(db, b"k2") == b"v2"
    assert db.connects == 1
    assert memserver.statistics().connections_open == 1


async def test_watch_cancel_releases_its_slot_on_the_server(
    memserver: DevServer, autojump_clock: trio.testing.MockClock
) -> None:
    db = memclient(memserver)
    db.set_max_watches(1)
    w1 = await arm_watch(db, b"w")
    w2 = await arm_watch(db, b"w")
    with pytest.raises(FDBError) as info:
        await w2.wait()
    assert info.value.code == 1032  # per connection, like max_watches of a database
    w1.cancel()
    with pytest.raises(FDBError) as info:
        await w1.wait()
    assert info.value.code == 1101
    w3 = await arm_watch(db, b"w")
    other = memclient(memserver)  # another handle has its own limit
    w4 = await arm_watch(other, b"w")
    await put(other, {b"w": b"changed"})
    with trio.fail_after(1):
        await w3.wait()
        await w4.wait()


async def test_watch_and_versionstamp_of_an_abandoned_transaction_fail(
    memserver: DevServer, autojump_clock: trio.testing.MockClock
) -> None:
    db = memclient(memserver)
    tr = db.create_transaction()  # not bound to a connection yet
    w = tr.watch(b"k")
    stamp = tr.get_versionstamp()
    tr.reset()
    with pytest.raises(FDBError) as info:
        await w.wait()
    assert info.value.code == 1025
    with pytest.raises(FDBError) as info:
        await stamp
    assert info.value.code == 1100
    # a watch whose transaction never waited binds it when waited on; the server
    # holds it, and dropping the uncommitted transaction fails it (1025)
    tr2 = db.create_transaction()
    w2 = tr2.watch(b"k")
    async with trio.open_nursery() as n:

        async def waiter() -> None:
            with pytest.raises(FDBError) as info:
                await w2.wait()
            assert info.value.code == 1025

        n.start_soon(waiter)
        await trio.sleep(0.1)
        del tr2
        await trio.sleep(1.5)  # the drop travels with the next keepalive ping


async def test_deferred_errors_and_sync_checks(
    memserver: DevServer, autojump_clock: trio.testing.MockClock
) -> None:
    db = memclient(memserver)
    tr = db.create_transaction()
    tr.set(b"\xff/system", b"v")  # 2004, deferred like libfdb_c
    with pytest.raises(FDBError) as info:
        await tr.get(b"k")
    assert info.value.code == 2004
    tr.reset()
    with pytest.raises(FDBError) as info:
        tr.add_read_conflict_range(b"b", b"a")
    assert info.value.code == 2005
    with pytest.raises(TypeError):
        tr.set("k", b"v")  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        tr.set_timeout(-1)
    with pytest.raises(ConfigError):
        db.set_max_watches(-1)
    tr.set(b"k", b"v" * 100_001)
    with pytest.raises(FDBError) as info:
        await tr.commit()
    assert info.value.code == 2103
    # oversized keys and values never make oversized frames; the answers are the same
    tr.reset()
    huge = b"k" * 200_000
    assert await tr.get(huge) is None
    assert await tr.get_range(huge, huge + b"\x00") == []
    tr.set(b"k", b"v" * 150_000_000)
    with pytest.raises(FDBError) as info:
        await tr.commit()
    assert info.value.code == 2103
    tr.reset()
    tr.set(huge, b"v")
    with pytest.raises(FDBError) as info:
        await tr.commit()
    assert info.value.code == 2102


async def test_protocol_version_mismatch_is_refused(
    memserver: DevServer, autojump_clock: trio.testing.MockClock
) -> None:
    stream = await memserver.connect_in_memory()
    await stream.send(encode_frame(["hello", PROTOCOL_VERSION + 1, {}]))
    answer = await FrameReader(stream).receive()
    assert answer is not None
    assert answer[:2] == [0, STATUS_PROTOCOL_ERROR]
    assert "protocol version mismatch" in answer[2]
    # and a garbage frame closes the connection with a protocol error too
    stream = await memserver.connect_in_memory()
    await stream.send(b"\x00\x00\x00\x03abc")
    answer = await FrameReader(stream).receive()
    assert answer is not None and answer[1] == STATUS_PROTOCOL_ERROR


async def test_closed_handle(memserver: DevServer, autojump_clock: trio.testing.MockClock) -> None:
    db = memclient(memserver)
    w = await arm_watch(db, b"k")
    await db.aclose()
    with pytest.raises(FDBError) as info:
        await w.wait()
    assert info.value.code == 1101
    with pytest.raises(FDBError) as info:
        db.create_transaction()
    assert info.value.code == 2000


async def test_in_process_persistence(tmp_path: Path) -> None:
    # Real clock: saving runs in a worker thread, which the autojump clock would outrun.
    data = tmp_path / "dev.data"
    server = DevServer(data=data, save_interval=0.5)
    async with trio.open_nursery() as n:
        await n.start(functools.partial(server.run, listen=False))
        db = memclient(server)
        await put(db, {b"a": b"1"})
        await eventually(lambda: server.statistics().saves >= 1)
        before = await stamped_commit(db, b"b")
        n.cancel_scope.cancel()
    version, items = load_data_file(data)
    assert items == [(b"a", b"1"), (b"b", b"x")]
    again = DevServer(data=data)
    async with trio.open_nursery() as n:
        await n.start(functools.partial(again.run, listen=False))
        db = memclient(again)
        assert await read(db, b"b") == b"x"
        after = await stamped_commit(db, b"c")
        assert after > before
        assert int.from_bytes(after[:8], "big") > version + 99_000_000  # recovery jump
        n.cancel_scope.cancel()


def test_data_file_format(tmp_path: Path) -> None:
    path = tmp_path / "d"
    assert load_data_file(path) == (0, [])
    save_data_file(path, 42, [(b"a", b"1"), (b"b", b"")])
    assert load_data_file(path) == (42, [(b"a", b"1"), (b"b", b"")])
    assert os.listdir(tmp_path) == ["d"]  # no temporary file left behind
    path.write_bytes(b"\x00garbage")
    with pytest.raises(ConfigError, match="not"):
        load_data_file(path)
    path.write_bytes(msgpack.packb({"format": DATA_FORMAT, "format_version": 99}))
    with pytest.raises(ConfigError, match="format version"):
        load_data_file(path)
    path.write_bytes(
        msgpack.packb({"format": DATA_FORMAT, "format_version": 1, "version": 1, "items": [1]})
    )
    with pytest.raises(ConfigError, match="damaged"):
        load_data_file(path)


async def test_partitioning_one_client_of_the_server(
    memserver: DevServer, autojump_clock: trio.testing.MockClock
) -> None:
    a = memclient(memserver, name="a")
    b = memclient(memserver, name="b")
    await put(a, {b"k": b"1"})
    await put(b, {b"k": b"2"})
    (handle_a,) = [h for h in memserver.client_handles() if h.name == "a"]
    handle_a.partitioned = True
    tr = a.create_transaction()
    tr.set_timeout(1.0)
    with pytest.raises(FDBError) as info:
        await tr.get(b"k")
    assert info.value.code == 1031  # the engine's own timeout, through the server
    assert await read(b, b"k") == b"2"  # the other client is not affected
    handle_a.partitioned = False
    assert await read(a, b"k") == b"2"


def test_transaction_created_outside_trio_and_repr() -> None:
    db = RemoteDatabase("127.0.0.1", 1)
    tr = db.create_transaction()
    tr.set(b"k", b"v")
    tr.set_timeout(1.0)
    assert "unbound" in repr(tr)
    assert repr(db) == "<RemoteDatabase sim://127.0.0.1:1 idle>"
    assert repr(DevServer()).startswith("<DevServer stopped")
    with pytest.raises(ConfigError):
        RemoteDatabase("127.0.0.1", 1, connect_timeout=0)


# --------------------------------------------------------------------------------------
# Workers over the dev server (virtual clock, in-memory streams)
# --------------------------------------------------------------------------------------


async def test_workers_over_the_dev_server_survive_a_restart_and_evict_a_crash(
    memserver: DevServer, autojump_clock: trio.testing.MockClock
) -> None:
    """Each worker on its own RemoteDatabase, as separate processes would be: the dev
    server restarting (every connection dropped, 1 s unreachable) costs failed
    heartbeats, not an eviction; a crashed worker is still evicted and its jobs move."""
    from fdbworkers import WorkerOptions, add_job
    from fdbworkers.testing import Fleet

    options = WorkerOptions(timeout=3.0, settle=0.5, partitions=16)
    root = "devserver-test"
    down = False

    async def connector() -> anyio.abc.ByteStream:
        if down:
            raise ConnectionRefusedError("the dev server is restarting")
        return await memserver.connect_in_memory()

    def client(wid: str) -> Database:
        return RemoteDatabase("memory", 1, connector=connector, name=wid)

    async with trio.open_nursery() as n:
        fleet = Fleet(n, client, root=root, options=options, rng=random.Random(7))
        for i in range(4):
            await fleet.start(f"w{i}")
        admin = client("admin")
        for j in range(12):
            await add_job(admin, "sim", f"job{j}", {"n": j}, root=root, partitions=16)

        def owned_once() -> bool:
            owners = fleet.owners()
            return len(owners) == 12 and all(len(o) == 1 for o in owners.values())

        await eventually(owned_once, 30)
        down = True  # the dev server "restarts"
        assert memserver.close_connections() >= 5
        await trio.sleep(1.0)
        down = False
        await trio.sleep(10)
        failures = 0
        for fw in fleet.live():
            assert fw.worker is not None
            st = fw.worker.statistics()
            assert st.evictions_done == 0 and st.rejoins == 0, (fw.id, st)
            failures += st.heartbeat_failures
        assert failures > 0
        await eventually(owned_once, 30)
        fleet.workers["w2"].crash()
        await eventually(
            lambda: owned_once() and all("w2" not in o for o in fleet.owners().values()), 30
        )
        n.cancel_scope.cancel()


async def test_server_state_is_released(
    memserver: DevServer, autojump_clock: trio.testing.MockClock
) -> None:
    """Transactions the client let go of are dropped on the server (no leak), and
    finished or withdrawn requests leave nothing behind."""
    db = memclient(memserver)
    for i in range(200):
        await put(db, {b"k%d" % i: b"v"})
        assert await read(db, b"k%d" % i) == b"v"
    watches = [await arm_watch(db, b"w%d" % i) for i in range(50)]
    for w in watches:
        w.cancel()
    await trio.sleep(1.5)  # the drops travel with the next batch or keepalive ping
    (session,) = memserver._sessions
    assert len(session.trs) <= 1
    assert session.requests == {}
    assert memserver.client_handles()[0].unfired_watches == 0


def _differential_scripts() -> Any:
    """The engine-vs-real-cluster differential scripts (tests/engine), reused here."""
    path = ROOT / "tests" / "engine" / "test_differential_real.py"
    spec = importlib.util.spec_from_file_location("_fdbworkers_differential", path)
    assert spec is not None and spec.loader is not None, path
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("seed", range(1, 21))
async def test_remote_and_local_engine_agree(
    seed: int, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """Seeded random scripts of interleaved transactions (reads, selectors, ranges,
    atomic ops, conflicts, oversized and system keys, watches, commits): every result
    and error code through the dev server equals the local engine's."""
    diff = _differential_scripts()
    script = diff.make_script(seed)
    prefix = b"diff/"
    local = DevServer(rng=random.Random(seed)).engine.open_database("local")
    server = DevServer(rng=random.Random(seed))
    await nursery.start(functools.partial(server.run, listen=False))
    remote_db = memclient(server)
    expected = await diff.run_script(local, prefix, script)
    got = await diff.run_script(remote_db, prefix, script)
    for i, (want, have) in enumerate(zip(expected, got, strict=True)):
        assert have == want, f"seed {seed}, step {i}: local {want!r}, remote {have!r}"


# --------------------------------------------------------------------------------------
# Bounds (issue 17, point 5): the data folder, frame sizes, reply queues
# --------------------------------------------------------------------------------------


async def test_data_in_a_missing_folder_fails_at_start(tmp_path: Path) -> None:
    from fdbworkers._backends.devserver_data import check_data_path

    missing = tmp_path / "no-such-folder" / "data.db"
    with pytest.raises(ConfigError, match="does not exist"):
        check_data_path(missing)
    with pytest.raises(ConfigError, match="is a folder"):
        check_data_path(tmp_path)
    check_data_path(tmp_path / "data.db")  # a new file in an existing folder is fine
    server = DevServer(data=missing)
    with pytest.raises(ConfigError, match="does not exist"):
        await server.run(listen=False)
    r = await trio.run_process(
        [sys.executable, "-m", "fdbworkers", "devserver", "--port", "0", "--data", str(missing)],
        capture_stdout=True, capture_stderr=True, check=False, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert r.returncode == 2, r.stderr
    assert b"does not exist" in r.stderr and b"listening" not in r.stdout


async def test_a_large_frame_before_the_hello_is_refused_at_its_header(
    memserver: DevServer, autojump_clock: trio.testing.MockClock
) -> None:
    from fdbworkers._backends.devserver_session import MAX_HELLO_FRAME, MAX_REQUEST_FRAME

    stream = await memserver.connect_in_memory()
    await stream.send((128 * 1024 * 1024).to_bytes(4, "big") + b"x" * 1000)
    answer = await FrameReader(stream).receive()
    assert answer is not None and answer[1] == STATUS_PROTOCOL_ERROR
    assert f"at most {MAX_HELLO_FRAME} bytes" in answer[2]
    # After the hello, requests are capped too (far below the 128 MiB of an answer).
    stream = await memserver.connect_in_memory()
    reader = FrameReader(stream)
    await stream.send(encode_frame(["hello", PROTOCOL_VERSION, {"name": "t"}]))
    assert (await reader.receive()) is not None
    await stream.send((MAX_REQUEST_FRAME + 1).to_bytes(4, "big"))
    answer = await reader.receive()
    assert answer is not None and answer[1] == STATUS_PROTOCOL_ERROR
    assert f"at most {MAX_REQUEST_FRAME} bytes" in answer[2]


async def test_a_client_that_reads_no_answers_gets_backpressure(
    memserver: DevServer, autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    import fdbworkers._backends.devserver_session as devserver_module

    limit = 20_000
    monkeypatch.setattr(devserver_module, "MAX_QUEUED_REPLY_BYTES", limit)
    client, server_side = memory_stream_pair(0)  # writes wait for a reader
    sessions_before = set(memserver._sessions)
    assert memserver._nursery is not None
    memserver._nursery.start_soon(memserver._handle, server_side, "lockstep")
    await client.send(encode_frame(["hello", PROTOCOL_VERSION, {"name": "greedy"}]))
    total = 20_000
    sent = 0

    async def sender() -> None:
        nonlocal sent
        for rid in range(1, total + 1):
            await client.send(encode_frame(["ping", rid]))
            sent += 1

    async with trio.open_nursery() as n:
        n.start_soon(sender)
        await trio.sleep(5)  # virtual: the sender is stuck, the server reads no more
        (session,) = set(memserver._sessions) - sessions_before
        assert sent < total, "the server kept reading requests"
        assert session.queued_bytes <= limit + 64, session.queued_bytes
        # Reading the answers lets it go on, to the end.
        reader = FrameReader(client)
        for _ in range(total + 1):  # the hello's answer, then one per ping
            assert await reader.receive() is not None
        assert sent == total
    await client.aclose()


def test_eight_connections_sending_huge_frames_before_hello_use_little_memory(
    tmp_path: Path,
) -> None:
    """The issue's case against a real dev server process: 8 connections each start a
    128 MiB frame before their hello. Each is closed at its length prefix; the server's
    memory stays bounded (it grew from 57 MiB to 1 GiB before)."""
    ready = tmp_path / "addr"
    proc = subprocess.Popen(
        [sys.executable, "-m", "fdbworkers", "devserver", "--port", "0", "--ready-file",
         str(ready), "--log-level", "error"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = 200  # x 0.1 s of waiting, bounded
        while not ready.exists() and deadline:
            deadline -= 1
            subprocess.run(["sleep", "0.1"], check=True)
        port = int(ready.read_text().strip().rsplit(":", 1)[1])

        def rss_kib() -> int:
            for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
            raise AssertionError("no VmRSS")

        before = rss_kib()
        chunk = b"\x00" * (1024 * 1024)
        socks = []
        refused = 0
        for _ in range(8):
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            socks.append(s)
            try:
                s.sendall((128 * 1024 * 1024).to_bytes(4, "big"))
                for _ in range(128):
                    s.sendall(chunk)
            except OSError:
                refused += 1  # closed by the server while we were still sending
        after = rss_kib()
        for s in socks:
            s.close()
        print(f"dev server RSS: {before / 1024:.0f} MiB before, {after / 1024:.0f} MiB after")
        assert refused == 8
        assert after - before < 64 * 1024, (before, after)
    finally:
        proc.terminate()
        proc.wait(timeout=20)
