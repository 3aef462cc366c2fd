"""The real backend itself: loading libfdb_c, version fit, addresses, the future bridge,
an unreachable cluster. (Its semantics are pinned by tests/contract on both backends.)"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from fdbworkers._backends import fdb_bridge, fdb_capi
from fdbworkers._backends.connect import ClusterAddress, open_database, parse_cluster_address
from fdbworkers._backends.fdb import check_version_fit, resolve_cluster_file
from fdbworkers._db import Database, Transaction
from fdbworkers._errors import BackendUnavailableError, ConfigError, FDBError

# --------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------


def _run_python(code: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run ``code`` in a fresh interpreter; it prints one JSON object as its last line."""
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=env if env is not None else dict(os.environ),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def _env_without_libfdb_c() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("LD_LIBRARY_PATH", None)
    return env


def _libfdb_c_findable_without_ld_path() -> bool:
    found = _run_python(
        """
        import ctypes.util, json, os
        import fdb
        here = os.path.dirname(fdb.__file__)
        beside = os.path.exists(os.path.join(here, "libfdb_c.so"))
        print(json.dumps({"found": bool(ctypes.util.find_library("fdb_c")) or beside}))
        """,
        _env_without_libfdb_c(),
    )
    return bool(found["found"])


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


@pytest.fixture
def cluster_file(tmp_path: Path) -> str:
    """A cluster file that points at a closed port on 127.0.0.1."""
    path = tmp_path / "unreachable.cluster"
    path.write_text(f"test:unreachable@127.0.0.1:{_closed_port()}\n")
    return str(path)


# --------------------------------------------------------------------------------------
# Importing never loads libfdb_c; a clear error without it
# --------------------------------------------------------------------------------------


def test_import_does_not_load_libfdb_c() -> None:
    result = _run_python(
        """
        import json, sys
        import fdbworkers, fdbworkers._backends.fdb, fdbworkers._backends.connect
        from fdbworkers._core.tuples import Versionstamp, pack, pack_with_versionstamp, unpack
        key = pack(("a", 1, Versionstamp(b"\\x01" * 10, 3)))
        template = pack_with_versionstamp(("log", Versionstamp.incomplete(1)))
        maps = open("/proc/self/maps").read()
        print(json.dumps({
            "loaded": "libfdb_c" in maps,
            "impl": "fdb.impl" in sys.modules,
            "roundtrip": unpack(key) == ("a", 1, Versionstamp(b"\\x01" * 10, 3)),
            "template": template.hex(),
        }))
        """,
        _env_without_libfdb_c(),
    )
    assert result["loaded"] is False
    assert result["impl"] is False
    assert result["roundtrip"] is True
    # 0x02 "log" 0x00, 0x33, 10 x 0xff + user version 1, then the offset of the 0xff (6)
    assert result["template"] == "026c6f6700" + "33" + "ff" * 10 + "0001" + "06000000"


def test_missing_libfdb_c_gives_a_clear_error(cluster_file: str) -> None:
    if _libfdb_c_findable_without_ld_path():
        pytest.skip("libfdb_c is installed system-wide here: cannot test its absence")
    result = _run_python(
        f"""
        import json
        from fdbworkers._errors import BackendUnavailableError
        from fdbworkers._backends.fdb import open_fdb
        from fdbworkers._backends.connect import open_database
        out = {{}}
        for name, fn in [("open_fdb", lambda: open_fdb({cluster_file!r})),
                         ("open_database", lambda: open_database("fdb:{cluster_file}"))]:
            try:
                fn()
                out[name] = None
            except BackendUnavailableError as e:
                out[name] = str(e)
        print(json.dumps(out))
        """,
        _env_without_libfdb_c(),
    )
    for message in result.values():
        assert message is not None
        assert "libfdb_c" in message
        assert "foundationdb-clients" in message
        assert "LD_LIBRARY_PATH" in message
        assert "memory" in message  # the embedded engine as the alternative


# --------------------------------------------------------------------------------------
# Version fit
# --------------------------------------------------------------------------------------

FIT = {
    "binding_version": "7.3.79",
    "header_api_version": 730,
    "library_max_api_version": 730,
    "library_version": "7.3.79",
    "api_version": 730,
}


def test_version_fit_accepts_the_supported_combination() -> None:
    check_version_fit(**FIT)  # type: ignore[arg-type]
    check_version_fit(**{**FIT, "api_version": 710})  # type: ignore[arg-type]
    check_version_fit(**{**FIT, "selected_api_version": 730})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("change", "mentions"),
    [
        ({"binding_version": "8.0.2", "header_api_version": 800}, ["8.0.2", "7.3"]),
        ({"binding_version": "7.1.61", "header_api_version": 710}, ["7.1.61", "7.3"]),
        ({"library_max_api_version": 710, "library_version": "7.1.3"}, ["730", "710", "7.1.3"]),
        ({"api_version": 740}, ["740", "730"]),
        ({"api_version": 520}, ["520"]),
        ({"selected_api_version": 720}, ["720", "730"]),
    ],
)
def test_version_misfit_names_both_versions(change: dict[str, Any], mentions: list[str]) -> None:
    with pytest.raises(BackendUnavailableError) as info:
        check_version_fit(**{**FIT, **change})
    for text in mentions:
        assert text in str(info.value)


@pytest.mark.real_fdb
def test_newer_binding_header_is_refused_by_the_real_library(cluster_file: str) -> None:
    """A binding that announces API 740 (like the 8.x line) against libfdb_c 7.3."""
    result = _run_python(
        f"""
        import json
        import fdb
        fdb.LATEST_API_VERSION = 740
        from fdbworkers._errors import BackendUnavailableError
        from fdbworkers._backends.fdb import open_fdb
        try:
            open_fdb({cluster_file!r})
            print(json.dumps({{"error": None}}))
        except BackendUnavailableError as e:
            print(json.dumps({{"error": str(e)}}))
        """
    )
    assert result["error"] is not None
    assert "740" in result["error"] and "730" in result["error"]


@pytest.mark.real_fdb
def test_one_api_version_per_process(cluster_file: str) -> None:
    result = _run_python(
        f"""
        import json
        from fdbworkers._errors import BackendUnavailableError
        from fdbworkers._backends.fdb import open_fdb
        open_fdb({cluster_file!r})
        try:
            open_fdb({cluster_file!r}, api_version=720)
            print(json.dumps({{"error": None}}))
        except BackendUnavailableError as e:
            print(json.dumps({{"error": str(e)}}))
        """
    )
    assert result["error"] is not None
    assert "720" in result["error"] and "730" in result["error"]


# --------------------------------------------------------------------------------------
# Cluster files and addresses
# --------------------------------------------------------------------------------------


def test_resolve_cluster_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cluster_file: str
) -> None:
    assert resolve_cluster_file(cluster_file) == cluster_file
    monkeypatch.setenv("FDB_CLUSTER_FILE", cluster_file)
    assert resolve_cluster_file() == cluster_file
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_cluster_file(str(tmp_path / "nope.cluster"))
    monkeypatch.setenv("FDB_CLUSTER_FILE", str(tmp_path / "gone.cluster"))
    with pytest.raises(ConfigError, match="FDB_CLUSTER_FILE"):
        resolve_cluster_file()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("memory", ClusterAddress("memory")),
        ("memory:", ClusterAddress("memory")),
        ("MEMORY", ClusterAddress("memory")),
        ("sim://127.0.0.1:4500", ClusterAddress("sim", host="127.0.0.1", port=4500)),
        ("sim://localhost:1/", ClusterAddress("sim", host="localhost", port=1)),
        ("sim://[::1]:4500", ClusterAddress("sim", host="::1", port=4500)),
        ("fdb", ClusterAddress("fdb")),
        ("fdb:", ClusterAddress("fdb")),
        (
            "fdb:/etc/foundationdb/fdb.cluster",
            ClusterAddress("fdb", "/etc/foundationdb/fdb.cluster"),
        ),
    ],
)
def test_parse_cluster_address(text: str, expected: ClusterAddress) -> None:
    assert parse_cluster_address(text) == expected
    assert parse_cluster_address(str(expected)) == expected


def test_a_cluster_file_path_is_an_address(cluster_file: str) -> None:
    assert parse_cluster_address(cluster_file) == ClusterAddress("fdb", cluster_file)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("memory:foo", "takes no argument"),
        ("sim://", "expected sim://HOST:PORT"),
        ("sim://host", "port is missing"),
        ("sim://:4500", "host is missing"),
        ("sim://host:0", "not 1..65535"),
        ("sim://host:70000", "not 1..65535"),
        ("sim://host:http", "not 1..65535"),
        ("sim:host:1", "expected sim://HOST:PORT"),
        ("fdb://host:4500", "cluster file"),
        ("redis://x", "unknown cluster address scheme"),
        ("/no/such/fdb.cluster", "neither a known form nor a file"),
    ],
)
def test_bad_cluster_addresses(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_cluster_address(text)


def test_a_folder_is_not_a_cluster_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="folder"):
        parse_cluster_address(str(tmp_path))


def test_open_database_without_an_address(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FDBWORKERS_CLUSTER", raising=False)
    monkeypatch.delenv("FDB_CLUSTER_FILE", raising=False)
    with pytest.raises(ConfigError, match="FDBWORKERS_CLUSTER") as info:
        open_database()
    assert "memory" in str(info.value) and "FDB_CLUSTER_FILE" in str(info.value)
    monkeypatch.setenv("FDBWORKERS_CLUSTER", "sim://127.0.0.1:1")
    remote = open_database()  # the dev-server client: connects on first use
    assert remote.backend == "remote-engine"
    monkeypatch.setenv("FDBWORKERS_CLUSTER", "bogus://")
    with pytest.raises(ConfigError, match="unknown cluster address scheme"):
        open_database()


def test_open_database_falls_back_to_fdb_cluster_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("FDBWORKERS_CLUSTER", raising=False)
    monkeypatch.setenv("FDB_CLUSTER_FILE", str(tmp_path / "missing.cluster"))
    # it chose the real backend: the error is about that cluster file
    with pytest.raises(ConfigError, match=r"missing\.cluster"):
        open_database()


def test_open_database_memory_is_a_fresh_engine() -> None:
    from fdbworkers._backends import engine as _engine

    if not hasattr(_engine, "Engine"):
        pytest.skip("the embedded engine is not here yet")

    async def write(tr: Transaction) -> None:
        tr.set(b"k", b"v")

    async def get(tr: Transaction) -> bytes | None:
        return await tr.get(b"k")

    async def main() -> None:
        a, b = open_database("memory"), open_database("memory:")
        assert a.backend == b.backend == "engine"
        await a.transact(write)
        assert await a.transact(get) == b"v"
        assert await b.transact(get) is None  # each 'memory' is its own engine
        await a.aclose()
        await b.aclose()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


# --------------------------------------------------------------------------------------
# The future bridge (with stand-in futures: no libfdb_c needed)
# --------------------------------------------------------------------------------------


class FakeFutures:
    """Stands in for libfdb_c's future functions (``fdb._c``): futures are ints; one
    callback per future, called inline when the future is already ready."""

    def __init__(self, real: Any) -> None:
        self.real = real  # the real functions, for transactions collected meanwhile
        self.ready: set[int] = set()
        self.cancelled: set[int] = set()
        self.destroyed: set[int] = set()
        self.callbacks: dict[int, int] = {}  # future -> callbacks set on it
        self._pending: dict[int, tuple[Any, int]] = {}
        self._lock = threading.Lock()

    def future_is_ready(self, f: int) -> int:
        return int(f in self.ready)

    def future_set_callback(self, f: int, callback: Any, token: int) -> int:
        with self._lock:
            assert f not in self._pending, "libfdb_c allows one callback per future"
            self.callbacks[f] = self.callbacks.get(f, 0) + 1
            if f not in self.ready:
                self._pending[f] = (callback, token)
                return 0
        callback(f, token)  # the ctypes callback object, called through C
        return 0

    def set_ready(self, f: int) -> None:
        with self._lock:
            self.ready.add(f)
            pending = self._pending.pop(f, None)
        if pending is not None:
            pending[0](f, pending[1])

    def future_cancel(self, f: int) -> None:
        self.cancelled.add(f)
        self.set_ready(f)

    def future_destroy(self, f: int) -> None:
        self.destroyed.add(f)

    def __getattr__(self, name: str) -> Any:
        # e.g. transaction_destroy of a real transaction garbage-collected during a test
        return getattr(self.real, name)


@pytest.fixture
def fake_c(monkeypatch: pytest.MonkeyPatch) -> FakeFutures:
    fake = FakeFutures(fdb_capi._c)
    monkeypatch.setattr(fdb_capi, "_c", fake)
    return fake


@pytest.fixture(params=["eventfd", "socketpair"])
def wakeup_kind(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both ways the network thread wakes the leader: an eventfd written through libc
    with the GIL held (Linux), and the socket pair used where there is no eventfd."""
    kind: str = request.param
    if kind == "socketpair":
        monkeypatch.setattr(fdb_bridge, "_new_wakeup", fdb_bridge._SocketWakeup)
    elif not hasattr(os, "eventfd"):  # pragma: no cover - not Linux
        pytest.skip("no eventfd on this platform")
    return kind


async def test_bridge_wakes_from_another_thread(fake_c: FakeFutures, wakeup_kind: str) -> None:
    before = threading.active_count()
    timer = threading.Timer(0.05, fake_c.set_ready, (1,))  # stands in for FDB's network thread
    timer.start()
    with trio.fail_after(5):
        await fdb_bridge._wait(1)
    timer.join()
    assert fake_c.callbacks == {1: 1}
    assert not fake_c.cancelled
    assert threading.active_count() <= before + 1  # no thread of ours per call
    assert not fdb_bridge._waiters


async def test_bridge_of_a_ready_future_returns_at_once(fake_c: FakeFutures) -> None:
    fake_c.ready.add(1)
    await fdb_bridge._wait(1)
    assert fake_c.callbacks == {}


async def test_bridge_callback_fired_inline_while_registering(
    fake_c: FakeFutures, monkeypatch: pytest.MonkeyPatch
) -> None:
    def ready_on_register(f: int, callback: Any, token: int) -> int:
        fake_c.ready.add(f)
        return FakeFutures.future_set_callback(fake_c, f, callback, token)

    monkeypatch.setattr(fake_c, "future_set_callback", ready_on_register)
    with trio.fail_after(5):
        await fdb_bridge._wait(1)
    assert fake_c.callbacks == {1: 1}


async def test_many_ready_futures_take_one_wake_up(
    fake_c: FakeFutures, monkeypatch: pytest.MonkeyPatch
) -> None:
    wake_ups = 0
    drain = fdb_bridge._TrioHub.drain
    new_wakeup = fdb_bridge._new_wakeup

    def counting_wakeup() -> Any:
        wakeup = new_wakeup()
        signal = wakeup.signal

        class Counting:
            fd, take, close = wakeup.fd, wakeup.take, wakeup.close

            def signal(self) -> None:
                nonlocal wake_ups
                wake_ups += 1
                signal()

        return Counting()

    def counting_drain(hub: Any) -> None:
        nonlocal wake_ups
        wake_ups += 1
        drain(hub)

    monkeypatch.setattr(fdb_bridge, "_new_wakeup", counting_wakeup)
    monkeypatch.setattr(fdb_bridge._TrioHub, "drain", counting_drain)
    woken: list[int] = []

    async def waiter(f: int) -> None:
        await fdb_bridge._wait(f)
        woken.append(f)

    # A leader (the first waiter) wakes the others: one signal of the hub's wake-up fd.
    async with trio.open_nursery() as nursery:
        for f in range(100):
            nursery.start_soon(waiter, f)
        await trio.testing.wait_all_tasks_blocked()
        for f in range(100):  # all ready before the trio thread runs again
            fake_c.set_ready(f)
    assert sorted(woken) == list(range(100))
    assert wake_ups == 1

    # No leader (it was cancelled): one drain through run_sync_soon.
    woken.clear()
    wake_ups = 0

    async def cancelled_leader(task_status: trio.TaskStatus[trio.CancelScope]) -> None:
        with trio.CancelScope() as scope:
            task_status.started(scope)
            await fdb_bridge._wait(100)

    async with trio.open_nursery() as nursery:
        leader_scope = await nursery.start(cancelled_leader)
        await trio.testing.wait_all_tasks_blocked()
        for f in range(101, 200):
            nursery.start_soon(waiter, f)
        await trio.testing.wait_all_tasks_blocked()
        leader_scope.cancel()
        await trio.testing.wait_all_tasks_blocked()
        for f in range(101, 200):
            fake_c.set_ready(f)
    assert sorted(woken) == list(range(101, 200))
    assert wake_ups == 1
    assert fake_c.cancelled == {100}


async def test_cancelled_waiter_cancels_the_future(fake_c: FakeFutures) -> None:
    with trio.move_on_after(0.05):
        await fdb_bridge._wait(1)
    assert fake_c.cancelled == {1}  # its late callback found no waiter
    assert not fdb_bridge._waiters


@pytest.mark.parametrize("leads", [True, False])
async def test_cancelled_waiter_whose_wake_up_is_queued(fake_c: FakeFutures, leads: bool) -> None:
    # The callback won the race against the cancellation: the future is not cancelled.
    # A parked waiter returns normally (it is never rescheduled twice) and the
    # cancellation is delivered at its next checkpoint; the leader raises Cancelled.
    async def ready_then_cancel(cancel_scope: trio.CancelScope) -> None:
        await trio.testing.wait_all_tasks_blocked()
        fake_c.set_ready(1)  # queues the wake-up...
        cancel_scope.cancel()  # ...then the waiter is cancelled before it ran

    returned = False
    async with trio.open_nursery() as nursery:
        if not leads:
            nursery.start_soon(fdb_bridge._wait, 2)  # the leader
            await trio.testing.wait_all_tasks_blocked()
        with trio.CancelScope() as scope:
            nursery.start_soon(ready_then_cancel, scope)
            await fdb_bridge._wait(1)
            returned = True
            await trio.lowlevel.checkpoint()
        fake_c.set_ready(2)
    assert returned is not leads
    assert scope.cancelled_caught
    assert not fake_c.cancelled


async def test_cancelled_watch_waiter_keeps_the_future(fake_c: FakeFutures) -> None:
    shared = fdb_bridge._SharedFuture(1)
    with trio.move_on_after(0.05):
        await shared.wait()
    assert not fake_c.cancelled
    # waiting again registers no second callback
    threading.Timer(0.05, fake_c.set_ready, (1,)).start()
    with trio.fail_after(5):
        await shared.wait()
    assert fake_c.callbacks == {1: 1}
    del shared
    assert fake_c.destroyed == {1}


def test_callback_after_the_run_finished_is_harmless(fake_c: FakeFutures) -> None:
    async def main() -> None:
        with trio.move_on_after(0.01):
            await fdb_bridge._SharedFuture(1).wait()

    trio.run(main)
    fake_c.set_ready(1)  # the trio run is over: RunFinishedError is swallowed


# --------------------------------------------------------------------------------------
# The same bridge under asyncio: one call_soon_threadsafe per batch of ready futures
# --------------------------------------------------------------------------------------


def _run_asyncio(main: Callable[[], Awaitable[None]]) -> None:
    async def bounded() -> None:
        async with asyncio.timeout(10):
            await main()

    asyncio.run(bounded())


async def _all_blocked() -> None:
    """Let every task of the loop run until it waits (no timers in these tests)."""
    for _ in range(10):
        await asyncio.sleep(0)


@pytest.fixture
def wake_ups(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the asyncio hub's wake-ups of its loop (``call_soon_threadsafe`` calls)."""
    calls: list[int] = []
    call_soon = fdb_bridge._AsyncioHub.call_soon

    def counting(hub: Any, fn: Any) -> None:
        calls.append(1)
        call_soon(hub, fn)

    monkeypatch.setattr(fdb_bridge._AsyncioHub, "call_soon", counting)
    return calls


def test_asyncio_bridge_wakes_from_another_thread(fake_c: FakeFutures, wake_ups: list[int]) -> None:
    async def main() -> None:
        before = threading.active_count()
        timer = threading.Timer(0.05, fake_c.set_ready, (1,))  # FDB's network thread
        timer.start()
        await fdb_bridge._wait(1)
        timer.join()
        assert threading.active_count() <= before + 1  # no thread of ours per call

    _run_asyncio(main)
    assert fake_c.callbacks == {1: 1}
    assert not fake_c.cancelled
    assert wake_ups == [1]
    assert not fdb_bridge._waiters


def test_asyncio_bridge_of_a_ready_future_and_an_inline_callback(
    fake_c: FakeFutures, monkeypatch: pytest.MonkeyPatch
) -> None:
    def ready_on_register(f: int, callback: Any, token: int) -> int:
        fake_c.ready.add(f)
        return FakeFutures.future_set_callback(fake_c, f, callback, token)

    async def main() -> None:
        fake_c.ready.add(1)
        await fdb_bridge._wait(1)
        assert fake_c.callbacks == {}
        monkeypatch.setattr(fake_c, "future_set_callback", ready_on_register)
        await fdb_bridge._wait(2)

    _run_asyncio(main)
    assert fake_c.callbacks == {2: 1}


@pytest.mark.parametrize("from_thread", [False, True])
def test_asyncio_many_ready_futures_take_one_wake_up(
    fake_c: FakeFutures, wake_ups: list[int], from_thread: bool
) -> None:
    woken: list[int] = []

    async def waiter(f: int) -> None:
        await fdb_bridge._wait(f)
        woken.append(f)

    def ready_all() -> None:
        for f in range(100):
            fake_c.set_ready(f)

    async def main() -> None:
        tasks = [asyncio.create_task(waiter(f)) for f in range(100)]
        await _all_blocked()
        if from_thread:  # all ready on FDB's network thread before the loop runs again
            network = threading.Thread(target=ready_all)
            network.start()
            network.join()
        else:
            ready_all()
        await asyncio.gather(*tasks)

    _run_asyncio(main)
    assert sorted(woken) == list(range(100))
    assert wake_ups == [1]
    assert not fake_c.cancelled


def test_asyncio_cancelled_waiter_cancels_the_future(fake_c: FakeFutures) -> None:
    async def main() -> None:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05):
                await fdb_bridge._wait(1)

    _run_asyncio(main)
    assert fake_c.cancelled == {1}  # its late callback found no waiter
    assert not fdb_bridge._waiters


def test_asyncio_cancelled_waiter_whose_wake_up_is_queued(fake_c: FakeFutures) -> None:
    # The callback won the race against the cancellation: the FDB future is not
    # cancelled, the task raises CancelledError, and the drain skips its future.
    async def main() -> None:
        task = asyncio.create_task(fdb_bridge._wait(1))
        await _all_blocked()
        fake_c.set_ready(1)  # queues the wake-up...
        task.cancel()  # ...then the waiter is cancelled before it ran
        with pytest.raises(asyncio.CancelledError):
            await task
        await _all_blocked()  # the drain ran

    _run_asyncio(main)
    assert not fake_c.cancelled
    assert not fdb_bridge._waiters


def test_asyncio_cancelled_watch_waiter_keeps_the_future(fake_c: FakeFutures) -> None:
    async def main() -> None:
        shared = fdb_bridge._SharedFuture(1)
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05):
                await shared.wait()
        assert not fake_c.cancelled
        # two waiters, and waiting again registers no second callback
        waiters = [asyncio.create_task(shared.wait()) for _ in range(2)]
        threading.Timer(0.05, fake_c.set_ready, (1,)).start()
        await asyncio.gather(*waiters)
        await shared.wait()
        del shared, waiters

    _run_asyncio(main)
    assert fake_c.callbacks == {1: 1}
    assert fake_c.destroyed == {1}


def test_asyncio_callback_after_the_loop_closed_is_harmless(fake_c: FakeFutures) -> None:
    async def main() -> None:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.01):
                await fdb_bridge._SharedFuture(1).wait()

    _run_asyncio(main)
    fake_c.set_ready(1)  # the loop is closed: call_soon_threadsafe's RuntimeError is swallowed


def test_each_loop_has_its_own_hub() -> None:
    hubs: list[Any] = []

    async def hub() -> None:
        hubs.append(fdb_bridge._hub())
        hubs.append(fdb_bridge._hub())

    _run_asyncio(hub)
    _run_asyncio(hub)
    trio.run(hub)
    assert hubs[0] is hubs[1] and hubs[2] is hubs[3] and hubs[4] is hubs[5]
    assert isinstance(hubs[0], fdb_bridge._AsyncioHub)
    assert isinstance(hubs[4], fdb_bridge._TrioHub)
    assert len({id(h) for h in hubs}) == 3


# --------------------------------------------------------------------------------------
# The real library: an unreachable cluster, cancellation, a closed handle
# --------------------------------------------------------------------------------------


@pytest.mark.real_fdb
async def test_unreachable_cluster_fails_with_1031_within_the_timeout(cluster_file: str) -> None:
    from fdbworkers._backends.fdb import open_fdb

    start = trio.current_time()
    db = open_fdb(cluster_file)
    assert trio.current_time() - start < 1.0  # open_fdb returns at once
    db.default_timeout = 1.0

    async def read(tr: Transaction) -> bytes | None:
        return await tr.get(b"k")

    start = trio.current_time()
    with trio.fail_after(15), pytest.raises(FDBError) as info:
        await db.transact(read)
    assert info.value.code == 1031
    assert 0.9 <= trio.current_time() - start < 5.0
    await db.aclose()


@pytest.mark.real_fdb
async def test_cancelling_a_read_on_an_unreachable_cluster_returns_promptly(
    cluster_file: str,
) -> None:
    from fdbworkers._backends.fdb import open_fdb

    db = open_fdb(cluster_file)
    tr = db.create_transaction()
    start = trio.current_time()
    with trio.move_on_after(0.2) as scope:
        await tr.get(b"k")
    assert scope.cancelled_caught
    assert trio.current_time() - start < 2.0
    await db.aclose()


async def test_closed_handle_refuses_new_transactions(real_db: Database) -> None:
    await real_db.aclose()
    await real_db.aclose()  # idempotent
    with pytest.raises(FDBError) as info:
        real_db.create_transaction()
    assert info.value.code == 2000
    assert "closed" in repr(real_db)


async def test_real_database_options(real_db: Database) -> None:
    assert real_db.backend == "fdb"
    real_db.set_max_watches(100)
    with pytest.raises(ConfigError):
        real_db.set_max_watches(2_000_000)
    tr = real_db.create_transaction()
    with pytest.raises(ConfigError):
        tr.set_timeout(-1)
    with pytest.raises(ConfigError):
        tr.set_retry_limit(-2)
    with pytest.raises(TypeError):
        tr.set("k", b"v")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="limit"):
        await tr.get_range(b"a", b"b", limit=-1)
    tr.set_timeout(1e-6)  # rounds up to 1 ms, not 0 (which would disable it)
    await trio.sleep(0.05)
    with pytest.raises(FDBError) as info:
        await tr.get(b"k")
    assert info.value.code == 1031


@pytest.mark.real_fdb
def test_blocking_probe(cluster_file: str) -> None:
    from fdbworkers._backends.fdb import probe_cluster_blocking

    assert probe_cluster_blocking(timeout=10.0) is None  # the configured cluster answers
    reason = probe_cluster_blocking(cluster_file, timeout=0.5)
    assert reason is not None and "did not answer within 0.5 s" in reason
    assert "does not exist" in (probe_cluster_blocking("/no/such.cluster") or "")
