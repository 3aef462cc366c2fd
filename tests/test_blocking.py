"""The blocking façade (fdbworkers/_blocking.py): a worker on an event loop in a
background thread, plain functions as handlers, stopped cleanly.

These run on the real clock (a loop in another thread has no virtual clock), on the
embedded engine, under both loops of the background thread; every wait is bounded.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest

from fdbworkers import (
    BlockingJob,
    BlockingTransaction,
    BlockingWorker,
    ConfigError,
    FencedError,
    JobRunner,
    WorkerState,
)
from fdbworkers._backends.engine import Engine

#: Wall-clock bound of every wait here.
BOUND = 30.0
LOOPS = [pytest.param("asyncio", id="asyncio"), pytest.param("trio", id="trio")]


def wait_for(event: threading.Event, what: str) -> None:
    assert event.wait(BOUND), f"{what} did not happen within {BOUND} s"


@pytest.mark.parametrize("backend", LOOPS)
def test_a_blocking_handler_runs_fences_and_stops_with_the_worker(backend: str) -> None:
    running = threading.Event()
    committed = threading.Event()
    outcome: dict[str, Any] = {}

    def handler(job: BlockingJob) -> None:
        outcome["spec"] = job.spec
        job.check()  # a valid lease: no error
        running.set()

        def checkpoint(tr: BlockingTransaction) -> None:
            job.fence(tr)
            tr.set(b"checkpoint/" + job.id.encode(), job.token)

        while not job.stopping.wait(0.05):
            job.db.transact(checkpoint)
            committed.set()
        try:
            job.check()
        except FencedError as e:
            outcome["check_after_stop"] = e

    worker = BlockingWorker("memory", "r", timeout=3.0, settle=0.2, backend=backend)
    with worker:
        assert worker.state is WorkerState.ACTIVE
        assert worker.add_job("j1", {"n": 1})
        runner = worker.run_jobs(handler, grace=5)
        assert isinstance(runner, JobRunner)
        wait_for(running, "the handler's start")
        wait_for(committed, "a fenced commit")
        stored = worker.db.transact(lambda tr: tr.get(b"checkpoint/j1"))
        assert stored is not None and len(stored) == 10
        stats = worker.call(runner.statistics)
        assert stats.running == 1 and stats.handler_crashes == 0
    assert not worker.running
    assert worker.worker.state is WorkerState.LEFT
    assert outcome["spec"] == {"n": 1}
    assert isinstance(outcome["check_after_stop"], FencedError)


@pytest.mark.parametrize("backend", LOOPS)
def test_many_jobs_added_at_once_and_keys_read_together(backend: str) -> None:
    started: set[str] = set()
    lock = threading.Lock()
    all_started = threading.Event()

    def handler(job: BlockingJob) -> None:
        with lock:
            started.add(job.id)
            if len(started) == 50:
                all_started.set()
        job.stopping.wait()

    def write(tr: BlockingTransaction) -> None:
        tr.set(b"a", b"1")
        tr.set(b"b", b"2")

    with BlockingWorker("memory", "r", timeout=3.0, settle=0.2, backend=backend) as worker:
        added = worker.add_jobs({f"j{i}": {"n": i} for i in range(50)})
        assert (added.added, added.updated, added.unchanged) == (50, 0, 0)
        again = worker.add_jobs([(f"j{i}", {"n": i}) for i in range(50)])
        assert (again.added, again.unchanged) == (0, 50)
        worker.run_jobs(handler, grace=1)
        wait_for(all_started, "50 handlers' start")
        worker.db.transact(write)
        values = worker.db.transact(lambda tr: tr.get_many([b"a", b"x", b"b"]))
        assert values == [b"1", None, b"2"]
        assert worker.db.transact(lambda tr: tr.get_many([b"b"], snapshot=True)) == [b"2"]


@pytest.mark.parametrize("backend", LOOPS)
def test_a_removed_job_stops_its_handler_and_a_crash_is_restarted(backend: str) -> None:
    calls: list[str] = []
    stopped = threading.Event()
    crashed_twice = threading.Event()

    def handler(job: BlockingJob) -> None:
        calls.append(job.id)
        if job.id == "bad":
            if calls.count("bad") >= 2:
                crashed_twice.set()
            raise RuntimeError("boom")
        job.stopping.wait(BOUND)
        stopped.set()

    with BlockingWorker("memory", "r", timeout=3.0, settle=0.2, backend=backend) as worker:
        worker.add_job("good")
        worker.add_job("bad")
        runner = worker.run_jobs(handler, grace=5, restart_backoff=(0.01, 0.02))
        wait_for(crashed_twice, "a restart after a crash")
        assert worker.remove_job("good")
        wait_for(stopped, "the removed job's stop")
        assert worker.call(runner.statistics).handler_crashes >= 2


@pytest.mark.parametrize("backend", LOOPS)
def test_changes_end_when_the_worker_stops(backend: str) -> None:
    engine = Engine()
    seen: list[Any] = []
    first = threading.Event()
    done = threading.Event()
    worker = BlockingWorker(engine.open_database("w"), "r", timeout=3.0, backend=backend)
    worker.start()
    try:

        def consume() -> None:
            with worker.changes() as changes:
                for change in changes:  # the first, then none until the worker stops
                    seen.append(change)
                    first.set()
            done.set()

        consumer = threading.Thread(target=consume)
        consumer.start()
        wait_for(first, "the first change")
    finally:
        worker.stop()
    wait_for(done, "the end of the iteration")
    consumer.join(BOUND)
    assert seen and worker.id in seen[0].added


def test_bad_arguments_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="db must be"):
        BlockingWorker(None, "r")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="backend"):
        BlockingWorker("memory", "r", backend="curio")
    with pytest.raises(ConfigError, match="timeout"):
        BlockingWorker("memory", "r", timeout="5").start()
    worker = BlockingWorker("memory", "r", timeout=3.0)
    with worker, pytest.raises(ConfigError, match="handler"):
        worker.run_jobs("not a function")  # type: ignore[arg-type]


def test_stop_from_a_handler_is_refused() -> None:
    result: list[BaseException] = []
    tried = threading.Event()

    def handler(job: BlockingJob) -> None:
        try:
            worker.stop()
        except RuntimeError as e:
            result.append(e)
        tried.set()
        job.stopping.wait(BOUND)

    with BlockingWorker("memory", "r", timeout=3.0, settle=0.2) as worker:
        worker.add_job("j")
        worker.run_jobs(handler)
        wait_for(tried, "the handler's stop()")
    assert len(result) == 1 and "handler" in str(result[0])
