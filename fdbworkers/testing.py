"""Test and simulation helpers: many workers in one process, a ledger of job runs that
checks "at most one runner" (G3) as it happens, and a seeded fault simulation on the
embedded engine's virtual clock (:class:`Simulation`). Written with anyio: the helpers
run under trio and under asyncio.

Users can test their own handlers with it::

    async def test_my_handler(autojump_clock):
        sim = Simulation(seed=1, workers=5, jobs=100)
        report = await sim.run(duration=300, handler=my_handler)
        report.raise_for_violations()
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
from ._runner import Job, JobRunner
from ._worker import Worker, WorkerOptions

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
        if self.worker is not None and self.worker.state is WorkerState.ACTIVE:
            await self.worker.drain()
        if self._scope is not None:
            self._scope.cancel()
        await self._done.wait()

    async def stop_for_restart(self) -> None:
        """Leave to come back as the same id (``Worker.leave_for_restart``)."""
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


# --- the seeded fault simulation ----------------------------------------------------


@dataclass(frozen=True)
class SimConfig:
    """Size and fault mix of one simulation run (virtual seconds)."""

    workers: int = 6
    jobs: int = 60
    duration: float = 150.0
    timeout: float = 3.0
    settle: float = 0.5
    partitions: int = 64
    #: Scheduled faults (crash, partition/pause, join, leave, job add/remove) per second.
    fault_rate: float = 1 / 8
    #: Network faults of the engine: latency, spurious conflicts, 1021, watch delays.
    network_faults: bool = True
    #: The wider fault model: commits that stall while reads work, suspends (the boot
    #: clock jumps), restarts with other options (timeout, settle, weight), handler
    #: crash loops, watches that never fire while the fault lasts, settle windows that
    #: end while a worker is fenced.
    wide_faults: bool = True


@dataclass
class SimReport:
    seed: int
    config: SimConfig
    violations: list[Violation]
    timeline: list[str]
    stats: dict[str, Any]

    def format(self) -> str:
        lines = [
            f"simulation seed={self.seed} {self.config}",
            f"reproduce: Simulation(seed={self.seed}, config=...).run() or "
            f"./scripts/soak --seed {self.seed}",
            "violations:",
            *[f"  {v}" for v in self.violations],
            "timeline:",
            *[f"  {t}" for t in self.timeline[-80:]],
        ]
        return "\n".join(lines)

    def raise_for_violations(self) -> None:
        if self.violations:
            raise AssertionError(self.format())


class Simulation:
    """N workers on the embedded engine on the virtual clock, a seeded schedule of
    faults, and the invariants checked from ground truth kept here:

    * G1: a crashed worker's record is gone within ``timeout + check_interval`` (+ one
      transaction) of its last heartbeat that may have committed, when no other fault
      or ring change (join, leave) overlaps; within three timeouts otherwise;
    * G2: no incarnation that was never crashed, partitioned or stopped loses its record;
    * G3: never two runners of one job with valid leases (checked at every start and
      every 50 ms), fencing tokens only increase;
    * G4: once quiet for the settle window plus a few timeouts, every job runs on exactly
      one live worker, the one the assignment names.

    A paused process is modelled as a partitioned one (its database handle hangs);
    what differs, its tasks not running, is what ``job.check()`` covers.
    Run it on a virtual clock: ``trio.run(..., clock=MockClock(autojump_threshold=0))``
    (the code is anyio's, so any loop with a virtual clock does; the suite uses trio).
    """

    def __init__(
        self, seed: int, config: SimConfig | None = None, handler: Handler = idle_handler
    ) -> None:
        self.seed = seed
        self.config = config or SimConfig()
        self.handler = handler
        self.rng = random.Random(seed)
        self.timeline: list[str] = []
        self.violations: list[Violation] = []
        self._last_event = 0.0

    def _note(self, text: str) -> None:
        self.timeline.append(f"t={current_time():9.3f} {text}")

    def _event(self, text: str) -> None:
        """A fault's delayed part (a restart, a heal): the liveness bound counts from
        the last one."""
        self._last_event = max(self._last_event, current_time())
        self._note(text)

    def _violate(self, kind: str, detail: str) -> None:
        v = Violation(current_time(), kind, detail)
        self.violations.append(v)
        self._note(f"VIOLATION {v}")

    async def run(self) -> SimReport:
        from ._backends.engine import Engine, FaultPlan
        from ._core.keys import Layout, MemberRecord
        from ._store.members import tx_ensure_role

        cfg = self.config
        rng = self.rng
        faults = (
            FaultPlan(
                latency=(0.0, 0.05),
                conflict_probability=0.05,
                unknown_result_probability=0.02,
                watch_delay_max=0.3,
                spurious_watch_rate=0.02,
                lost_watch_probability=0.02 if cfg.wide_faults else 0.0,
            )
            if cfg.network_faults
            else FaultPlan()
        )
        engine = Engine(rng=random.Random(rng.random()), faults=faults)
        opts = WorkerOptions(timeout=cfg.timeout, settle=cfg.settle, partitions=cfg.partitions)
        root = "sim"
        layout = Layout.for_root(root)
        role = "sim"
        store = engine.store
        start_time = current_time()
        admin = engine.open_database("admin")
        await admin.transact(tx_ensure_role, layout, role, cfg.partitions)

        # Ground truth about incarnations: (wid, incarnation) -> why it may vanish.
        excused: set[tuple[str, str]] = set()
        seen_records: dict[tuple[str, str], float] = {}
        # wid, inc, crash time, last ok, its own timeout, the longest check interval of
        # the incarnations that may check it (a restart may change a worker's options)
        crashes: list[tuple[str, str, float, float, float, float]] = []

        def checks(live: list[FleetWorker]) -> float:
            return max(
                (fw.worker.options.effective_check_interval for fw in live if fw.worker),
                default=opts.effective_check_interval,
            )

        fault_times: list[float] = []
        gone_at: dict[tuple[str, str], float] = {}

        def records() -> dict[str, MemberRecord]:
            out: dict[str, MemberRecord] = {}
            version = store.read_version()
            begin, end = layout.members_range(role)
            for k, v in store.get_range(begin, end, version):
                wid = str(layout.unpack(k)[-1])
                out[wid] = MemberRecord.decode(wid, k, v)
            return out

        async def monitor() -> None:
            while True:
                now = current_time()
                current = {(w, r.incarnation) for w, r in records().items()}
                for key in current:
                    seen_records.setdefault(key, now)
                for key in list(seen_records):
                    if key not in current and key not in gone_at:
                        gone_at[key] = now
                        if key not in excused:
                            self._violate(
                                "G2 false eviction",
                                f"{key[0]} incarnation {key[1]} lost its record without a fault",
                            )
                        else:
                            self._note(f"record gone: {key[0]}/{key[1][:6]}")
                for jid in list(ledger.active):
                    owners = ledger.running_on(jid)
                    if len(owners) > 1:
                        self._violate("G3 two runners", f"job {jid} runs on {owners}")
                await sleep(0.1)

        crashing: set[str] = set()
        user_handler = self.handler

        async def handler(job: Job) -> None:
            if job.id in crashing:  # an injected crash loop of this job's handler
                await sleep(0.05)
                raise RuntimeError(f"injected crash of {job.id}")
            await user_handler(job)

        async with anyio.create_task_group() as nursery:
            fleet = Fleet(
                nursery,
                engine.open_database,
                role=role,
                root=root,
                options=opts,
                handler=handler,
                rng=random.Random(rng.random()),
                runner_options={"restart_backoff": (0.2, 2.0)},
            )
            next_id = 0

            async def start(wid: str) -> None:
                fw = await fleet.start(wid)
                self._note(f"start {wid} ({fw.worker.incarnation[:6] if fw.worker else '?'})")

            for _ in range(cfg.workers):
                await start(f"w{next_id}")
                next_id += 1
            for j in range(cfg.jobs):
                await add_job_for_sim(admin, layout, role, f"j{j}", cfg.partitions)
            ledger = fleet.ledger
            nursery.start_soon(monitor)

            t_max = cfg.timeout * (3 if cfg.wide_faults else 1)
            quiet = opts.effective_settle_max + 4 * t_max + 5
            t_end_faults = start_time + cfg.duration - quiet
            next_job = cfg.jobs
            while current_time() < t_end_faults:
                gap = rng.expovariate(cfg.fault_rate)
                if current_time() + gap >= t_end_faults:
                    break
                await sleep(gap)
                live = [fw for fw in fleet.live() if fw.worker is not None]
                kinds = ["crash", "partition", "join", "leave", "add", "remove"]
                weights = [3, 3, 2, 1, 2, 1]
                if cfg.wide_faults:
                    kinds += ["stall", "suspend", "reconfigure", "crashloop", "stall_join"]
                    weights += [2, 2, 2, 1, 1]
                kind = rng.choices(kinds, weights=weights)[0]
                risky = ("crash", "partition", "leave", "stall", "suspend", "reconfigure")
                if kind in risky and len(live) <= 2:
                    kind = "join"
                if kind == "stall_join" and len(live) <= 2:
                    kind = "join"
                now = current_time()
                if kind == "crash":
                    fw = rng.choice(live)
                    w = fw.worker
                    assert w is not None
                    excused.add((w.id, w.incarnation))
                    # The last heartbeat that may have committed: one in flight may
                    # commit up to the crash itself.
                    last = w.last_heartbeat_committed or w.lease.last_ok_start or now
                    if w.heartbeat_in_flight:
                        last = now
                    crashes.append(
                        (w.id, w.incarnation, now, last, w.options.timeout, checks(live))
                    )
                    fault_times.append(now)
                    self._note(f"crash {w.id}/{w.incarnation[:6]}")
                    fw.crash()
                    if rng.random() < 0.5:  # a quick restart with the same id, later
                        delay = rng.uniform(0.5, 2 * cfg.timeout)
                        nursery.start_soon(restart_later, fleet, fw.id, delay, self)
                elif kind == "partition":
                    fw = rng.choice(live)
                    w = fw.worker
                    assert w is not None
                    dur = rng.uniform(0.3, 3.0) * cfg.timeout
                    fault_times.append(now)
                    self._note(f"partition {w.id}/{w.incarnation[:6]} for {dur:.2f}s")
                    nursery.start_soon(partition_for, fw, dur, excused, self)
                elif kind == "join":
                    fault_times.append(now)  # a ring change: checkers change too
                    await start(f"w{next_id}")
                    next_id += 1
                elif kind == "leave":
                    fw = rng.choice(live)
                    w = fw.worker
                    assert w is not None
                    excused.add((w.id, w.incarnation))
                    fault_times.append(now)
                    self._note(f"leave {w.id}")
                    nursery.start_soon(fw.stop)
                elif kind in ("stall", "stall_join", "suspend"):
                    fw = rng.choice(live)
                    w = fw.worker
                    assert w is not None
                    dur = rng.uniform(0.3, 2.5) * w.options.timeout
                    excused.add((w.id, w.incarnation))
                    fault_times.append(now)
                    self._note(f"{kind} {w.id}/{w.incarnation[:6]} for {dur:.2f}s")
                    nursery.start_soon(stall_for, fw, dur, kind == "suspend", rng.random(), self)
                    if kind == "stall_join":  # its settle window ends while it is fenced
                        await start(f"w{next_id}")
                        next_id += 1
                elif kind == "reconfigure":
                    fw = rng.choice(live)
                    w = fw.worker
                    assert w is not None
                    excused.add((w.id, w.incarnation))
                    new_opts = WorkerOptions(
                        timeout=rng.choice([cfg.timeout / 2, cfg.timeout, cfg.timeout * 3]),
                        settle=rng.uniform(0.2, 1.0),
                        weight=rng.choice([0.5, 1.0, 2.0]),
                        partitions=cfg.partitions,
                    )
                    fault_times.append(now)
                    graceful = rng.random() < 0.5
                    if not graceful:
                        last = w.last_heartbeat_committed or w.lease.last_ok_start or now
                        if w.heartbeat_in_flight:
                            last = now
                        crashes.append(
                            (w.id, w.incarnation, now, last, w.options.timeout, checks(live))
                        )
                    self._note(
                        f"reconfigure {w.id}/{w.incarnation[:6]} "
                        f"({'leave' if graceful else 'crash'}): timeout {new_opts.timeout:g}, "
                        f"settle {new_opts.settle:.2f}, weight {new_opts.weight:g}"
                    )
                    if graceful:
                        await fw.stop()
                    else:
                        fw.crash()
                    delay = rng.uniform(0.2, 1.5) * w.options.timeout
                    nursery.start_soon(restart_later, fleet, fw.id, delay, self, new_opts)
                elif kind == "crashloop":
                    jobs_now = [f"j{i}" for i in range(next_job)]
                    bad = set(rng.sample(jobs_now, min(len(jobs_now), rng.randint(1, 3))))
                    dur = rng.uniform(1.0, 8.0)
                    self._note(f"crash loop of {sorted(bad)} for {dur:.2f}s")
                    nursery.start_soon(crash_loop_for, crashing, bad, dur, self)
                elif kind == "add":
                    await add_job_for_sim(admin, layout, role, f"j{next_job}", cfg.partitions)
                    self._note(f"add job j{next_job}")
                    next_job += 1
                else:
                    jid = f"j{rng.randrange(next_job)}"
                    await remove_job_for_sim(admin, layout, role, jid)
                    self._note(f"remove job {jid}")

            # Quiet: heal, no more faults (delayed restarts still land), then the liveness
            # bound, then agreement at rest (G4).
            engine.faults = FaultPlan()  # also delivers the watch fires held back
            for fw in fleet.workers.values():
                fw.db.partitioned = False  # type: ignore[attr-defined]
                fw.db.commits_stalled = False  # type: ignore[attr-defined]
            crashing.clear()
            self._event("quiet period starts")  # the liveness bound counts from here at least
            await self._check_liveness_after_faults(fleet, store, layout, role, cfg, start_time)
            await sleep(max(0.0, start_time + cfg.duration - current_time()))
            self._check_at_rest(fleet, store, layout, role, cfg)
            self._check_liveness(crashes, gone_at, seen_records, fault_times, opts)
            for t, wid, e in fleet.errors:
                self.violations.append(Violation(t, "worker error", f"{wid} died of {e!r}"))
            for v in ledger.violations:
                self.violations.append(v)
            stats = {
                "job_starts": ledger.starts,
                "workers_started": next_id,
                "crashes": len(crashes),
                "evictions": sum(
                    fw.worker.statistics().evictions_done
                    for fw in fleet.workers.values()
                    if fw.worker
                ),
                "engine": engine.stats,
            }
            nursery.cancel_scope.cancel()
        return SimReport(self.seed, cfg, self.violations, self.timeline, stats)

    def liveness_bound(self, cfg: SimConfig) -> float:
        """After the last fault, every job runs again within this many seconds, and no
        claim outlives its running handler by more: the largest timeout an incarnation
        may have (3 x, when options change) + its check interval (eviction, or retiring
        a superseded incarnation) + the settle window's cap (a join or restart) + the
        handler restart backoff's cap (2 s here) + a few transactions under the injected
        latency and retries (3 s)."""
        t_max = cfg.timeout * (3 if cfg.wide_faults else 1)
        check = min(1.0, t_max / 4)
        settle_max = max(cfg.settle * 5, 1.0, 5.0 if cfg.wide_faults else 0.0)
        return t_max + check + settle_max + 2.0 + 3.0

    async def _check_liveness_after_faults(
        self, fleet: Fleet, store: Any, layout: Any, role: str, cfg: SimConfig, start: float
    ) -> None:
        """The liveness invariant: a bound after the last fault (a delayed restart is a
        fault too), every job runs on exactly one live worker and every claim belongs to
        a handler that runs."""
        from ._core.keys import Claim

        bound = self.liveness_bound(cfg)
        end = start + cfg.duration
        while True:
            due = self._last_event + bound
            if due >= end - 0.5:
                self._note(
                    f"liveness bound not checked: last fault too late ({self._last_event:.2f})"
                )
                return
            await sleep(max(0.0, due - current_time()))
            if self._last_event + bound <= current_time() + 1e-9:
                break
        version = store.read_version()
        jobs = {
            str(layout.unpack(k)[-1]) for k, _ in store.get_range(*layout.jobs_range(role), version)
        }
        owners = fleet.owners()
        for jid in sorted(jobs):
            if len(owners.get(jid, [])) != 1:
                self._violate(
                    "liveness",
                    f"job {jid} runs on {owners.get(jid, [])} {bound:.1f}s after the last fault",
                )
        running: dict[str, tuple[str, str, bytes]] = {}
        for fw in fleet.live():
            if fw.runner is None or fw.worker is None:
                continue
            for jid, r in fw.runner.running.items():
                running[jid] = (fw.id, fw.worker.incarnation, r.job.token)
        for k, v in store.get_range(*layout.claims_range(role), version):
            jid = str(layout.unpack(k)[-1])
            c = Claim.decode(k, v)
            if jid in jobs and running.get(jid) != (c.wid, c.incarnation, c.token):
                self._violate(
                    "liveness",
                    f"claim of {jid} by {c.wid}/{c.incarnation[:6]} has no running handler "
                    f"{bound:.1f}s after the last fault",
                )

    def _check_liveness(
        self,
        crashes: list[tuple[str, str, float, float, float, float]],
        gone_at: dict[tuple[str, str], float],
        seen: dict[tuple[str, str], float],
        fault_times: list[float],
        opts: WorkerOptions,
    ) -> None:
        slack = 1.0  # one transaction with retries under the injected latency
        for wid, inc, t_crash, last_ok, timeout, check in crashes:
            if (wid, inc) not in seen:
                continue  # crashed while registering, and the registration never committed
            # G1 is stated with the dead incarnation's own timeout (its member record's,
            # which its checker waits out), not the base options' (a restart may change it).
            bound = last_ok + timeout + check + slack
            overlapping = any(t_crash - timeout <= t <= bound and t != t_crash for t in fault_times)
            limit = bound if not overlapping else last_ok + 3 * timeout + 3 * slack
            gone = gone_at.get((wid, inc))
            if gone is None:
                self._violate(
                    "G1 not evicted", f"{wid}/{inc[:6]} crashed at {t_crash:.3f}, never removed"
                )
            elif gone > limit:
                self._violate(
                    "G1 late eviction",
                    f"{wid}/{inc[:6]}: last heartbeat {last_ok:.3f}, removed {gone:.3f} "
                    f"> bound {limit:.3f}{' (overlapping faults)' if overlapping else ''}",
                )

    def _check_at_rest(
        self, fleet: Fleet, store: Any, layout: Any, role: str, cfg: SimConfig
    ) -> None:
        from ._core.plan import decode_plan

        version = store.read_version()
        jobs: dict[str, int] = {}
        for k, _ in store.get_range(*layout.jobs_range(role), version):
            t = layout.unpack(k)
            jobs[str(t[-1])] = int(t[-2])
        live = [fw for fw in fleet.live() if fw.worker is not None and fw.runner is not None]
        weights = {fw.id: fw.worker.options.weight for fw in live if fw.worker}
        if not weights:
            self._violate("G4 no workers", "no live worker at rest")
            return
        plan_raw = [v for _, v in store.get_range(*layout.plan_chunks_range(role), version)]
        if not plan_raw:
            self._violate("G4 no plan", "no stored plan at rest")
            return
        plan = decode_plan(b"".join(plan_raw))
        if not plan.same_members(weights):
            self._violate(
                "G4 plan not converged",
                f"the stored plan is for {sorted(plan.members)}, the members are {sorted(weights)}",
            )
            return
        a = plan.map()
        owners = fleet.owners()
        for jid, p in jobs.items():
            got = owners.get(jid, [])
            if got != [a.owner(p)]:
                self._violate(
                    "G4 not converged",
                    f"job {jid} (partition {p}) runs on {got}, owner is {a.owner(p)}",
                )
        for jid in owners:
            if jid not in jobs:
                self._violate(
                    "G4 removed job runs", f"job {jid} was removed but runs on {owners[jid]}"
                )
        for fw in live:
            assert fw.worker is not None
            if fw.worker.state is not WorkerState.ACTIVE:
                self._violate("G4 worker not active", f"{fw.id} is {fw.worker.state.value} at rest")


async def restart_later(
    fleet: Fleet, wid: str, delay: float, sim: Simulation, options: WorkerOptions | None = None
) -> None:
    await sleep(delay)
    fw = await fleet.start(wid, options)
    sim._event(f"restart {wid} ({fw.worker.incarnation[:6] if fw.worker else '?'})")


async def stall_for(
    fw: FleetWorker, duration: float, suspend: bool, unseen: float, sim: Simulation
) -> None:
    """Commits stall while reads work (a stall), or nothing gets through and part of the
    time goes unseen by the loop clock (a suspend: the boot clock jumps at resume)."""
    db: Any = fw.db
    if suspend:
        db.partitioned = True
    else:
        db.commits_stalled = True
    await sleep(duration)
    db.partitioned = False
    db.commits_stalled = False
    if suspend:
        fw.suspend(unseen * duration)
    sim._event(f"heal {fw.id}")


async def crash_loop_for(
    crashing: set[str], jobs: set[str], duration: float, sim: Simulation
) -> None:
    crashing |= jobs
    await sleep(duration)
    crashing -= jobs
    sim._event(f"crash loop of {sorted(jobs)} ends")


async def partition_for(
    fw: FleetWorker, duration: float, excused: set[tuple[str, str]], sim: Simulation
) -> None:
    w = fw.worker
    if w is None:
        return
    excused.add((w.id, w.incarnation))
    fw.db.partitioned = True  # type: ignore[attr-defined]
    await sleep(duration)
    fw.db.partitioned = False  # type: ignore[attr-defined]
    if fw.worker is not None:
        # A rejoin after the partition is a new incarnation: excuse the old one only.
        sim._event(f"heal {w.id}")


async def add_job_for_sim(
    db: Database, layout: Any, role: str, job_id: str, partitions: int
) -> None:
    from ._store.jobs import tx_add_job

    await db.transact(tx_add_job, layout, role, job_id, {"sim": True}, 1.0, partitions)


async def remove_job_for_sim(db: Database, layout: Any, role: str, job_id: str) -> None:
    from ._store.jobs import tx_remove_job

    await db.transact(tx_remove_job, layout, role, job_id)
