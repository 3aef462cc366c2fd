"""Shared fixtures: one database fixture over both backends, and the clocks they need.

``db`` is parametrized over ``engine`` (the embedded engine, on trio's virtual clock:
``MockClock(autojump_threshold=0)``), ``remote`` (the same engine served by a
``fdbworkers._backends.devserver.DevServer`` in a task group of the fixture, reached by a
``RemoteDatabase`` over an in-memory stream: the dev server protocol, on the virtual
clock too) and ``fdb`` (a real FoundationDB cluster named by
``FDB_CLUSTER_FILE``, on the real clock, marked ``real_fdb``; skipped with the reason
when there is no cluster or no libfdb_c). ``prefix`` is a fresh random key prefix per
test; on the real cluster it is cleared after the test. ``engine`` gives an embedded
engine directly, ``real_db`` a real-cluster database directly.

The clock is chosen per test item: every async test whose backend is the engine (or that
uses the ``engine`` fixture) runs under ``trio.run(..., clock=MockClock(autojump))``
unless it asks for a clock fixture itself; every real-cluster test runs on the real
clock (autojump would skip over real waits for the cluster) under a wall-clock deadline
of ``REAL_TEST_DEADLINE`` seconds, so a hung cluster fails the test instead of the run.
This is done with pytest-trio's own ``pytest.mark.trio(run=...)`` marker, prepended at
collection.

Both event loops: a test module marked ``pytestmark = pytest.mark.anyio`` runs each of
its tests under trio *and* under asyncio (the ``anyio_backend`` fixture below, through
anyio's pytest plugin instead of pytest-trio). Both run on a virtual clock that jumps
to the next timer whenever every task waits: trio's ``MockClock(autojump_threshold=0)``
and, for asyncio, :class:`aio_util.VirtualClockLoop`; real-cluster tests run on the real
clock under the same wall-clock deadline as above. Such tests use anyio's API (task
groups, ``anyio.sleep``, ``anyio.fail_after``...) and fixtures that do not depend on
pytest-trio's (``nursery``, ``autojump_clock``).
"""

from __future__ import annotations

import functools
import inspect
import math
import os
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import lru_cache
from typing import Any

import anyio
import anyio.abc
import pytest
import trio
import trio.testing
from aio_util import VirtualClockLoop

from fdbworkers._db import Database

#: Wall-clock limit of one real-cluster test, fixtures included.
REAL_TEST_DEADLINE = 120.0

BACKENDS = [
    pytest.param("engine", id="engine"),
    # The engine behind the dev server protocol (fdbworkers._backends.remote <-> _devserver),
    # over an in-memory stream, so it runs on the virtual clock too.
    pytest.param("remote", id="remote"),
    pytest.param("fdb", id="fdb", marks=pytest.mark.real_fdb),
]


# --------------------------------------------------------------------------------------
# Is a real cluster here?
# --------------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def real_cluster_unavailable() -> str | None:
    """None when real-cluster tests can run, else the reason they are skipped."""
    if not os.environ.get("FDB_CLUSTER_FILE"):
        return (
            "no real FoundationDB cluster: FDB_CLUSTER_FILE is not set "
            "(./scripts/test starts a local one from ../shared/fdb)"
        )
    from fdbworkers._backends.fdb import fdb_client_info, resolve_cluster_file
    from fdbworkers._errors import FdbworkersError

    try:
        resolve_cluster_file()
        fdb_client_info()
    except FdbworkersError as e:
        return f"real FoundationDB cluster unusable: {e}"
    return None


@lru_cache(maxsize=1)
def real_cluster_unreachable() -> str | None:
    """None when the configured cluster answers within 10 s, else why not. A dead
    cluster makes every real-cluster test fail at once instead of each one waiting out
    its deadline."""
    from fdbworkers._backends.fdb import probe_cluster_blocking

    return probe_cluster_blocking(timeout=10.0)


# --------------------------------------------------------------------------------------
# Clocks: virtual for the engine, real for the cluster
# --------------------------------------------------------------------------------------

TrioRun = Callable[..., Any]


def _virtual_clock_run(
    fn: Callable[[], Awaitable[Any]],
    *,
    clock: trio.abc.Clock | None = None,
    instruments: Any = (),
) -> Any:
    if clock is None:
        clock = trio.testing.MockClock(autojump_threshold=0)
    return trio.run(fn, clock=clock, instruments=instruments)


def _real_clock_run(
    fn: Callable[[], Awaitable[Any]],
    *,
    clock: trio.abc.Clock | None = None,
    instruments: Any = (),
) -> Any:
    if isinstance(clock, trio.testing.MockClock) and clock.autojump_threshold != math.inf:
        raise pytest.UsageError(
            "a real-cluster test cannot run on trio's autojump clock: it would jump "
            "over the waits for the cluster"
        )

    if real_cluster_unavailable() is None:
        reason = real_cluster_unreachable()
        if reason is not None:
            pytest.fail(f"the real FoundationDB cluster is not usable: {reason}")

    async def with_deadline() -> Any:
        with trio.fail_after(REAL_TEST_DEADLINE):
            return await fn()

    return trio.run(with_deadline, clock=clock, instruments=instruments)


def _backend_of(item: pytest.Item) -> str | None:
    callspec = getattr(item, "callspec", None)
    if callspec is not None and "backend" in callspec.params:
        return str(callspec.params["backend"])
    return None


@pytest.hookimpl(trylast=True)  # after pytest-trio's trio_mode marked every async test
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        backend = _backend_of(item)
        if "real_db" in fixtures and item.get_closest_marker("real_fdb") is None:
            item.add_marker(pytest.mark.real_fdb)
        real = item.get_closest_marker("real_fdb") is not None or backend == "fdb"
        if real:
            reason = real_cluster_unavailable()
            if reason is not None:
                item.add_marker(pytest.mark.skip(reason=reason))
        fn = getattr(item, "obj", None)
        if not inspect.iscoroutinefunction(fn):
            continue
        if "anyio_backend" in fixtures and isinstance(item, pytest.Function):
            # Both loops: anyio's plugin runs it, not pytest-trio.
            item.own_markers = [m for m in item.own_markers if m.name != "trio"]
            if real:
                item.obj = _with_real_deadline(item.obj)
            continue
        # A runner of the test's own (e.g. a longer deadline) wins; pytest-trio's
        # trio_mode marks every async test too, with no runner or with trio.run.
        if any(m.kwargs.get("run") not in (None, trio.run) for m in item.iter_markers("trio")):
            continue
        if real or backend == "fdb":
            item.add_marker(pytest.mark.trio(run=_real_clock_run), append=False)
        elif backend in ("engine", "remote") or "engine" in fixtures:
            item.add_marker(pytest.mark.trio(run=_virtual_clock_run), append=False)


# --------------------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------------------


def _with_real_deadline(fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """A real-cluster test on either loop: fail at once when the cluster does not
    answer, and within REAL_TEST_DEADLINE seconds of wall time."""

    @functools.wraps(fn)
    async def bounded(*args: Any, **kwargs: Any) -> Any:
        if real_cluster_unavailable() is None:
            reason = real_cluster_unreachable()
            if reason is not None:
                pytest.fail(f"the real FoundationDB cluster is not usable: {reason}")
        with anyio.fail_after(REAL_TEST_DEADLINE):
            return await fn(*args, **kwargs)

    return bounded


#: The two event loops of the tests that run under both (``pytest.mark.anyio``).
LOOPS = [pytest.param("trio", id="trio"), pytest.param("asyncio", id="asyncio")]


@pytest.fixture(params=LOOPS)
def anyio_backend(request: pytest.FixtureRequest) -> tuple[str, dict[str, Any]]:
    """The loop of a test marked ``pytest.mark.anyio``: trio or asyncio, each on a
    virtual clock of its own (a fresh one per test), or on the real clock for a
    real-cluster test."""
    node = request.node
    real = _backend_of(node) == "fdb" or node.get_closest_marker("real_fdb") is not None
    if request.param == "trio":
        return ("trio", {} if real else {"clock": trio.testing.MockClock(autojump_threshold=0)})
    return ("asyncio", {} if real else {"loop_factory": VirtualClockLoop})


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """``engine``, ``remote`` (the engine behind the dev server protocol) or ``fdb``:
    which backend this run of the test uses."""
    return str(request.param)


async def _open_engine_database() -> Database:
    from fdbworkers._backends.engine import Engine

    opened: Any = Engine().open_database()
    if inspect.isawaitable(opened):
        opened = await opened
    assert isinstance(opened, Database)
    return opened


def _open_real_database() -> Database:
    reason = real_cluster_unavailable()
    if reason is not None:
        pytest.skip(reason)
    from fdbworkers._backends.fdb import open_fdb

    return open_fdb()


async def _open_remote_database(task_group: anyio.abc.TaskGroup) -> Database:
    from fdbworkers._backends.devserver import DevServer
    from fdbworkers._backends.remote import RemoteDatabase

    server = DevServer()
    await task_group.start(functools.partial(server.run, listen=False))
    return RemoteDatabase("memory", 0, connector=server.connect_in_memory)


@pytest.fixture
async def db(backend: str) -> AsyncIterator[Database]:
    """A database of the test's backend: a fresh embedded engine, the same behind the
    dev server's protocol (the server runs in this fixture's task group), or the real
    cluster. Works under pytest-trio and under anyio's plugin (both loops)."""
    async with anyio.create_task_group() as tg:
        if backend == "engine":
            database = await _open_engine_database()
        elif backend == "remote":
            database = await _open_remote_database(tg)
        else:
            database = _open_real_database()
        try:
            yield database
        finally:
            await database.aclose()
            tg.cancel_scope.cancel()


@pytest.fixture
async def real_db() -> AsyncIterator[Database]:
    """A real-cluster database (the test is marked ``real_fdb`` automatically)."""
    database = _open_real_database()
    try:
        yield database
    finally:
        await database.aclose()


@pytest.fixture
async def engine() -> Any:
    """An embedded engine of its own, for engine-only tests (on the virtual clock)."""
    from fdbworkers._backends.engine import Engine

    return Engine()


@pytest.fixture
async def prefix(request: pytest.FixtureRequest) -> AsyncIterator[bytes]:
    """A random key prefix of this test; on the real cluster it is cleared afterwards."""
    p = b"fdbworkers-test/%016x/" % random.getrandbits(64)
    yield p
    real = _backend_of(request.node) == "fdb" or request.node.get_closest_marker("real_fdb")
    if real and real_cluster_unavailable() is None:
        await clear_real_prefix(p)


async def clear_real_prefix(p: bytes) -> None:
    from fdbworkers._backends.fdb import open_fdb
    from fdbworkers._db import Transaction, strinc

    cleaner = open_fdb()
    cleaner.default_timeout = 10.0

    async def clear(tr: Transaction) -> None:
        tr.clear_range(p, strinc(p))

    try:
        await cleaner.transact(clear)
    finally:
        await cleaner.aclose()


# --------------------------------------------------------------------------------------
# How many tests ran on the real cluster
# --------------------------------------------------------------------------------------

_real_outcomes: dict[str, str] = {}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if "real_fdb" not in report.keywords:
        return
    previous = _real_outcomes.get(report.nodeid)
    if report.failed:
        _real_outcomes[report.nodeid] = "failed"
    elif report.skipped and previous is None:
        _real_outcomes[report.nodeid] = "skipped"
    elif report.when == "call" and report.passed and previous is None:
        _real_outcomes[report.nodeid] = "passed"


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _real_outcomes:
        return
    counts = {
        k: sum(1 for v in _real_outcomes.values() if v == k)
        for k in ("passed", "failed", "skipped")
    }
    where = os.environ.get("FDB_CLUSTER_FILE") or "no FDB_CLUSTER_FILE"
    terminalreporter.write_sep("-", "real FoundationDB cluster")
    terminalreporter.write_line(
        f"real-cluster tests ({where}): {counts['passed']} passed, "
        f"{counts['failed']} failed, {counts['skipped']} skipped"
    )
