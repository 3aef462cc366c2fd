"""The test fleet: many workers of one role in one process (:class:`Fleet`), each with
its job runner under a cancel scope of its own (crash or leave), and a ledger of job runs
that checks "at most one runner" (G3) as it happens (:class:`RunLedger`). Public through
:mod:`fdbworkers.testing`; the seeded fault simulation on top of it is ``_simulation``.
"""

from __future__ import annotations

import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc

from ._core.states import WorkerState
from ._db import Database
from ._errors import FencedError
from ._loop import current_time, sleep
from ._runner.job import Job
from ._runner.runner import JobRunner
from ._worker import Worker
from ._worker_options import WorkerOptions

Handler = Callable[[Job], Awaitable[None]]

if TYPE_CHECKING:
    import trio

    #: Where a Fleet starts its workers: an anyio task group or a trio nursery.
    TaskSpawner = anyio.abc.TaskGroup | trio.Nursery


async def idle_handler(job: Job) -> None:
    """A job that runs until stopped, checking its lease like a careful handler."""
    while True:
        job.check()
        await sleep(0.5)


@dataclass
class Run:
    job: str
    worker: str
    incarnation: str
    token: bytes
    start: float
    end: float | None = None


@dataclass
class Violation:
    time: float
    kind: str
    detail: str

    def __str__(self) -> str:
        return f"t={self.time:.3f} {self.kind}: {self.detail}"


@dataclass
class RunLedger:
    """Every handler run: start and end time (on the event loop's clock) and token.

    G3 is checked at each start: no other run of the same job may be active on a worker
    whose lease is still valid, and tokens of a job only increase."""

    runs: list[Run] = field(default_factory=list)
    active: dict[str, list[tuple[Run, Worker]]] = field(default_factory=dict)
    last_token: dict[str, bytes] = field(default_factory=dict)
    last_holder: dict[str, tuple[str, str]] = field(default_factory=dict)
    violations: list[Violation] = field(default_factory=list)
    starts: int = 0

    def started(self, job: Job, worker: Worker) -> Run:
        now = current_time()
        self.starts += 1
        for other, ow in self.active.get(job.id, []):
            if ow is not worker and ow.lease_valid():
                self.violations.append(
                    Violation(
                        now,
                        "G3 two runners",
                        f"job {job.id} started on {worker.id} (token {job.token.hex()}) while "
                        f"running on {other.worker} (token {other.token.hex()}) with a valid lease",
                    )
                )
        last = self.last_token.get(job.id)
        last_holder = self.last_holder.get(job.id)
        holder = (worker.id, worker.incarnation)
        # A handler restarted after a crash keeps its claim, so its token; any other
        # start needs a newer one.
        if last is not None and (job.token < last or (job.token == last and holder != last_holder)):
            self.violations.append(
                Violation(
                    now, "G3 token order", f"job {job.id} token {job.token.hex()} <= {last.hex()}"
                )
            )
        self.last_token[job.id] = job.token
        self.last_holder[job.id] = holder
        run = Run(job.id, worker.id, worker.incarnation, job.token, now)
        self.runs.append(run)
        self.active.setdefault(job.id, []).append((run, worker))
        return run

    def ended(self, run: Run) -> None:
        run.end = current_time()
        lst = self.active.get(run.job, [])
        self.active[run.job] = [(r, w) for r, w in lst if r is not run]

    def running_on(self, job_id: str) -> list[str]:
        return [w.id for r, w in self.active.get(job_id, []) if w.lease_valid()]


async def wait_until(cond: Callable[[], bool], limit: float, step: float = 0.05) -> float:
    """Poll ``cond`` every ``step`` seconds (virtual time in tests) until it holds;
    fail after ``limit`` seconds. Returns how long it took."""
    start = current_time()
    with anyio.fail_after(limit):
        while not cond():
            await sleep(step)
    return current_time() - start


class FleetWorker:
    """A worker and its job runner under a cancel scope of their own: ``crash()``
    cancels both without leaving (as kill -9 would), ``stop()`` leaves gracefully."""

    def __init__(self, fleet: Fleet, wid: str, db: Database, options: WorkerOptions) -> None:
        self.fleet = fleet
        self.id = wid
        self.db = db
        self.options = options
        self.worker: Worker | None = None
        self.runner: JobRunner | None = None
        self._scope: anyio.CancelScope | None = None
        self._done = anyio.Event()
        self.crashed = False
        #: ``stop()`` or ``stop_for_restart()`` began: alive until it ends, but leaving.
        self.leaving = False
        self.error: BaseException | None = None
        #: Time this worker's machine "slept" (see suspend()).
        self.slept = 0.0

    def _boot_clock(self) -> float:
        return time.monotonic() + self.slept

    def suspend(self, seconds: float) -> None:
        """The machine slept ``seconds`` that the event loop's clock did not count: the
        boot clock jumps (call it when the worker resumes)."""
        self.slept += seconds

    async def _main(
        self, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        f = self.fleet
        w = Worker(
            self.db,
            f.role,
            self.id,
            self.options,
            root=f.root,
            rng=random.Random(f.rng.random()),
            clocks=(self._boot_clock, time.monotonic),
        )
        self.worker = w
        ledger = f.ledger
        user_handler = f.handler

        async def handler(job: Job) -> None:
            run = ledger.started(job, w)
            try:
                await user_handler(job)
            finally:
                ledger.ended(run)

        self.runner = JobRunner(
            w, handler, grace=f.grace, rng=random.Random(f.rng.random()), **f.runner_options
        )
        started = False
        try:
            with anyio.CancelScope() as scope:
                self._scope = scope
                async with anyio.create_task_group() as n:
                    await n.start(w._run)
                    n.start_soon(self.runner.run)
                    task_status.started()
                    started = True
                    await anyio.sleep_forever()
        except FencedError:
            raise
        except Exception as e:  # a worker that dies of an error is reported, not hidden
            self.error = e
            f.errors.append((current_time(), self.id, e))
        finally:
            self._done.set()
        if not started:  # crashed while registering (crash() during start): not an error
            task_status.started()

    def crash(self) -> None:
        """Vanish without leaving: no more heartbeats, jobs cancelled at once."""
        self.crashed = True
        if self._scope is not None:
            self._scope.cancel()

    async def stop(self) -> None:
        """Leave gracefully (drain)."""
        self.leaving = True
        if self.worker is not None and self.worker.state is WorkerState.ACTIVE:
            await self.worker.drain()
        if self._scope is not None:
            self._scope.cancel()
        await self._done.wait()

    async def stop_for_restart(self) -> None:
        """Leave to come back as the same id (``Worker.leave_for_restart``)."""
        self.leaving = True
        if self.worker is not None and self.worker.state is WorkerState.ACTIVE:
            await self.worker.leave_for_restart()
        if self._scope is not None:
            self._scope.cancel()
        await self._done.wait()

    @property
    def alive(self) -> bool:
        return not self._done.is_set()


class Fleet:
    """Several workers of one role in this process, sharing a ledger of job runs."""

    def __init__(
        self,
        nursery: TaskSpawner,
        db_for: Callable[[str], Database],
        *,
        role: str = "sim",
        root: str | bytes | tuple[str, ...] | None = "fdbworkers-test",
        options: WorkerOptions | None = None,
        handler: Handler = idle_handler,
        grace: float = 0.2,
        rng: random.Random | None = None,
        runner_options: dict[str, Any] | None = None,
    ) -> None:
        self.nursery = nursery
        self.db_for = db_for
        self.role = role
        self.root = root
        self.options = options or WorkerOptions(timeout=3.0, settle=0.5)
        self.handler = handler
        self.grace = grace
        self.rng = rng or random.Random(0)
        self.runner_options = runner_options or {}
        self.ledger = RunLedger()
        #: (time, worker id, error) of every worker that died of an exception.
        self.errors: list[tuple[float, str, BaseException]] = []
        self.workers: dict[str, FleetWorker] = {}

    async def start(self, wid: str, options: WorkerOptions | None = None) -> FleetWorker:
        fw = FleetWorker(self, wid, self.db_for(wid), options or self.options)
        self.workers[wid] = fw
        await self.nursery.start(fw._main)
        return fw

    def live(self) -> list[FleetWorker]:
        return [fw for fw in self.workers.values() if fw.alive]

    def staying(self) -> list[FleetWorker]:
        """The live workers that are not on their way out (a leave still draining is
        alive until it ends, but will not be there to run jobs)."""
        return [fw for fw in self.live() if not fw.leaving]

    def owners(self) -> dict[str, list[str]]:
        """job -> the workers running it right now (with a valid lease)."""
        out: dict[str, list[str]] = {}
        for fw in self.live():
            if fw.runner is None:
                continue
            for jid in fw.runner.running:
                if fw.worker is not None and fw.worker.lease_valid():
                    out.setdefault(jid, []).append(fw.id)
        return out
