"""Per-job health (issue 17, point 3): a job whose runs fail shows as ``failing`` (with
its failures in a row, restarts and last error) in the admin read model, ``status``,
events and statistics; ``park_after`` parks it; a job that then runs ``healthy_after``
seconds without failing is healthy again. On the engine, on a virtual clock, under trio
and under asyncio."""

from __future__ import annotations

import random
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from fdbworkers import ConfigError, JobRunner, WorkerOptions, add_job, open_worker, remove_job
from fdbworkers._backends.engine import Engine
from fdbworkers._core.keys import Layout
from fdbworkers._store.admin import read_role_snapshot
from fdbworkers._store.events import read_recent_events
from fdbworkers._store.views import (
    evaluate_role,
    job_views,
    member_views,
)
from fdbworkers.testing import wait_until

ROOT = "health-test"
ROLE = "h"
LAYOUT = Layout.for_root(ROOT)
SPACE = LAYOUT.role(ROLE)
OPTS = WorkerOptions(timeout=3.0, settle=0.5, partitions=16)

#: Every async test here runs under trio and under asyncio (tests/conftest.py).
pytestmark = pytest.mark.anyio

CLOCKS = (anyio.current_time, anyio.current_time)


async def views(engine: Engine) -> dict[str, Any]:
    snap = await read_role_snapshot(engine.open_database("admin"), SPACE)
    return {j.id: j for j in job_views(snap)}


async def test_a_crash_looping_handler_shows_failing_then_parked() -> None:
    engine = Engine(rng=random.Random(3))
    admin = engine.open_database("admin")
    await add_job(admin, ROLE, "bad", root=ROOT, partitions=16)
    await add_job(admin, ROLE, "good", root=ROOT)
    calls = {"bad": 0, "good": 0}

    async def handler(job: Any) -> None:
        calls[job.id] += 1
        if job.id == "bad":
            raise RuntimeError(f"boom {calls['bad']}")
        await job.stopping.wait()

    db = engine.open_database("w1")
    async with open_worker(db, ROLE, worker_id="w1", root=ROOT, options=OPTS, clocks=CLOCKS) as w:
        runner = JobRunner(
            w, handler, park_after=4, restart_backoff=(0.5, 1.0), rng=random.Random(1)
        )
        async with anyio.create_task_group() as n:
            n.start_soon(runner.run)
            await wait_until(lambda: calls["bad"] == 2, 60)
            await anyio.sleep(0.1)  # the health record commits
            v = await views(engine)
            assert v["good"].health is None and v["good"].health_state == "ok"
            bad = v["bad"]
            assert bad.state == "owned" and bad.health_state == "failing"
            assert bad.health is not None and bad.health.failures == 2
            assert bad.health.last_error == "RuntimeError('boom 2')"
            assert bad.to_json()["health"] == "failing" and bad.to_json()["failures"] == 2
            snap = await read_role_snapshot(admin, SPACE)
            status = evaluate_role(snap, member_views(snap, {}, list(v.values())), list(v.values()))
            check = {c.name: c for c in status.checks}["jobs_running"]
            assert not check.ok and "bad (failing on w1: 2 failure(s)" in check.detail
            assert runner.statistics().jobs_failing == 1
            # Parked after 4 failures in a row: never run again here.
            await wait_until(lambda: calls["bad"] == 4, 60)
            await anyio.sleep(30)
            assert calls["bad"] == 4
            v = await views(engine)
            assert v["bad"].health_state == "parked" and v["bad"].health is not None
            assert v["bad"].health.failures == 4 and v["bad"].health.restarts == 4
            st = runner.statistics()
            assert (st.jobs_parked, st.jobs_failing, st.job_failures) == (1, 0, 4)
            events = [e.type for e in await read_recent_events(admin, LAYOUT, limit=50)]
            assert events.count("job_failing") == 1 and events.count("job_parked") == 1
            # Removing the job clears its record.
            await remove_job(admin, ROLE, "bad", root=ROOT)
            await wait_until(lambda: "bad" not in runner.running, 30)
            snap = await read_role_snapshot(admin, SPACE)
            assert dict(snap.health) == {}
            n.cancel_scope.cancel()


async def test_a_job_that_runs_healthy_after_failing_recovers() -> None:
    engine = Engine(rng=random.Random(4))
    admin = engine.open_database("admin")
    await add_job(admin, ROLE, "flaky", root=ROOT, partitions=16)
    calls = [0]

    async def handler(job: Any) -> None:
        calls[0] += 1
        if calls[0] <= 2:
            raise ValueError("not yet")
        await job.stopping.wait()

    db = engine.open_database("w1")
    async with open_worker(db, ROLE, worker_id="w1", root=ROOT, options=OPTS, clocks=CLOCKS) as w:
        runner = JobRunner(w, handler, restart_backoff=(0.5, 1.0), healthy_after=20.0)
        async with anyio.create_task_group() as n:
            n.start_soon(runner.run)
            await wait_until(lambda: calls[0] == 3, 60)
            await anyio.sleep(1)
            assert (await views(engine))["flaky"].health_state == "failing"
            await anyio.sleep(25)  # runs healthy_after seconds without failing
            assert (await views(engine))["flaky"].health is None
            assert runner.statistics().jobs_failing == 0
            events = [e.type for e in await read_recent_events(admin, LAYOUT, limit=50)]
            assert "job_recovered" in events
            n.cancel_scope.cancel()


async def test_reported_failures_count_like_crashes() -> None:
    """A handler that restarts its own work (--exec does) reports each failed run."""
    engine = Engine(rng=random.Random(5))
    admin = engine.open_database("admin")
    await add_job(admin, ROLE, "proc", root=ROOT, partitions=16)
    runs = [0]

    async def supervisor(job: Any) -> None:
        while not job.parked:
            runs[0] += 1
            job.report_failure("exit code 3")
            await anyio.sleep(1)
        await job.stopping.wait()

    db = engine.open_database("w1")
    async with open_worker(db, ROLE, worker_id="w1", root=ROOT, options=OPTS, clocks=CLOCKS) as w:
        runner = JobRunner(w, supervisor, park_after=3)
        async with anyio.create_task_group() as n:
            n.start_soon(runner.run)
            await wait_until(lambda: runs[0] == 3, 60)
            await anyio.sleep(10)
            assert runs[0] == 3
            j = (await views(engine))["proc"]
            assert j.health_state == "parked" and j.health is not None
            assert j.health.last_error == "exit code 3" and j.health.failures == 3
            n.cancel_scope.cancel()


async def test_a_record_of_an_earlier_owner_does_not_count() -> None:
    """The record names the claim's token: after the job moved (or its owner died and
    the claim was taken over), the old record is ignored."""
    from fdbworkers._core.records import Claim, JobHealth
    from fdbworkers._store.admin import current_health

    claim = Claim(b"\x00" * 9 + b"\x02", "w2", "i2")
    old = JobHealth("w1", "i1", b"\x00" * 9 + b"\x01", "failing", 3, 3, "x", 0.0, 0.0)
    assert current_health(claim, old) is None
    assert current_health(None, old) is None
    mine = JobHealth("w2", "i2", claim.token, "failing", 1, 1, "x", 0.0, 0.0)
    assert current_health(claim, mine) == mine
    assert JobHealth.decode(b"k", mine.encode()) == mine


async def _idle(job: Any) -> None:
    await anyio.lowlevel.checkpoint()


def test_bad_options() -> None:
    bad_options: list[dict[str, Any]] = [
        {"park_after": 0},
        {"park_after": True},
        {"healthy_after": 0},
        {"healthy_after": float("nan")},
    ]
    for bad in bad_options:
        with pytest.raises(ConfigError):
            JobRunner(object(), _idle, **bad)  # type: ignore[arg-type]
