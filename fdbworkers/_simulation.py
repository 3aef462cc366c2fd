"""The seeded fault simulation: N workers of a :class:`~fdbworkers._fleet.Fleet` on the
embedded engine, on a virtual clock, under a seeded schedule of faults, with the
guarantees (G1-G4 and liveness) checked against ground truth kept beside the run.
Public through :mod:`fdbworkers.testing`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc

from ._core.states import WorkerState
from ._db import Database
from ._fleet import Fleet, FleetWorker, Handler, Violation, idle_handler
from ._loop import current_time, sleep
from ._runner.job import Job
from ._sim_faults import crash_loop_for, partition_for, restart_later, stall_for
from ._worker import Worker
from ._worker_options import WorkerOptions

if TYPE_CHECKING:
    from ._backends.engine import Engine
    from ._core.keys import Layout, RoleSpace
    from ._core.records import MemberRecord


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
        run = await _SimRun.begin(self)
        async with anyio.create_task_group() as nursery:
            await run.start_fleet(nursery)
            await run.inject_faults()
            stats = await run.quiet_and_check()
            nursery.cancel_scope.cancel()
        return SimReport(self.seed, self.config, self.violations, self.timeline, stats)

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
        self, fleet: Fleet, store: Any, space: RoleSpace, cfg: SimConfig, start: float
    ) -> None:
        """The liveness invariant: a bound after the last fault (a delayed restart is a
        fault too), every job runs on exactly one live worker and every claim belongs to
        a handler that runs."""
        from ._core.records import Claim

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
        jobs = {str(space.unpack(k)[-1]) for k, _ in store.get_range(*space.jobs_range(), version)}
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
        for k, v in store.get_range(*space.claims_range(), version):
            jid = str(space.unpack(k)[-1])
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
            # A fault overlaps if it falls in the eviction's countdown, which starts at
            # the last heartbeat: a worker stalled long before it crashed (seed 14,964)
            # has its checker crash inside that countdown, well before t_crash - timeout.
            start = min(last_ok, t_crash - timeout)
            overlapping = any(start <= t <= bound and t != t_crash for t in fault_times)
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

    def _check_at_rest(self, fleet: Fleet, store: Any, space: RoleSpace, cfg: SimConfig) -> None:
        from ._core.plan import decode_plan

        version = store.read_version()
        jobs: dict[str, int] = {}
        for k, _ in store.get_range(*space.jobs_range(), version):
            t = space.unpack(k)
            jobs[str(t[-1])] = int(t[-2])
        live = [fw for fw in fleet.live() if fw.worker is not None and fw.runner is not None]
        weights = {fw.id: fw.worker.options.weight for fw in live if fw.worker}
        if not weights:
            self._violate("G4 no workers", "no live worker at rest")
            return
        plan_raw = [v for _, v in store.get_range(*space.plan_chunks_range(), version)]
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


class _SimRun:
    """One run of a :class:`Simulation`, in its phases: the engine and the fleet
    (:meth:`begin`, :meth:`start_fleet`), the seeded faults (:meth:`inject_faults`), then
    the quiet period and the checks at its end (:meth:`quiet_and_check`). It keeps the
    ground truth about incarnations that the invariants are checked against."""

    fleet: Fleet
    nursery: anyio.abc.TaskGroup

    def __init__(self, sim: Simulation, engine: Engine, layout: Layout) -> None:
        cfg = sim.config
        self.sim = sim
        self.cfg = cfg
        self.rng = sim.rng
        self.engine = engine
        self.opts = WorkerOptions(timeout=cfg.timeout, settle=cfg.settle, partitions=cfg.partitions)
        self.root = "sim"
        self.space = layout.role("sim")
        self.store = engine.store
        self.start_time = current_time()
        self.admin = engine.open_database("admin")
        # Ground truth about incarnations: (wid, incarnation) -> why it may vanish.
        self.excused: set[tuple[str, str]] = set()
        self.seen_records: dict[tuple[str, str], float] = {}
        # wid, inc, crash time, last ok, its own timeout, the longest check interval of
        # the incarnations that may check it (a restart may change a worker's options)
        self.crashes: list[tuple[str, str, float, float, float, float]] = []
        self.fault_times: list[float] = []
        self.gone_at: dict[tuple[str, str], float] = {}
        self.crashing: set[str] = set()
        self.user_handler = sim.handler
        self.next_id = 0
        self.next_job = cfg.jobs

    @classmethod
    async def begin(cls, sim: Simulation) -> _SimRun:
        """The engine (with the network faults, if any) and the role."""
        from ._backends.engine import Engine, FaultPlan
        from ._core.keys import Layout
        from ._store.members import tx_ensure_role

        cfg = sim.config
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
        engine = Engine(rng=random.Random(sim.rng.random()), faults=faults)
        run = cls(sim, engine, Layout.for_root("sim"))
        await run.admin.transact(tx_ensure_role, run.space, cfg.partitions)
        return run

    def checks(self, live: list[FleetWorker]) -> float:
        return max(
            (fw.worker.options.effective_check_interval for fw in live if fw.worker),
            default=self.opts.effective_check_interval,
        )

    def records(self) -> dict[str, MemberRecord]:
        from ._core.records import MemberRecord

        space = self.space
        out: dict[str, MemberRecord] = {}
        version = self.store.read_version()
        begin, end = space.members_range()
        for k, v in self.store.get_range(begin, end, version):
            wid = str(space.unpack(k)[-1])
            out[wid] = MemberRecord.decode(wid, k, v)
        return out

    async def monitor(self) -> None:
        seen_records, gone_at = self.seen_records, self.gone_at
        ledger = self.fleet.ledger
        while True:
            now = current_time()
            current = {(w, r.incarnation) for w, r in self.records().items()}
            for key in current:
                seen_records.setdefault(key, now)
            for key in list(seen_records):
                if key not in current and key not in gone_at:
                    gone_at[key] = now
                    if key not in self.excused:
                        self.sim._violate(
                            "G2 false eviction",
                            f"{key[0]} incarnation {key[1]} lost its record without a fault",
                        )
                    else:
                        self.sim._note(f"record gone: {key[0]}/{key[1][:6]}")
            for jid in list(ledger.active):
                owners = ledger.running_on(jid)
                if len(owners) > 1:
                    self.sim._violate("G3 two runners", f"job {jid} runs on {owners}")
            await sleep(0.1)

    async def handler(self, job: Job) -> None:
        if job.id in self.crashing:  # an injected crash loop of this job's handler
            await sleep(0.05)
            raise RuntimeError(f"injected crash of {job.id}")
        await self.user_handler(job)

    async def start_fleet(self, nursery: anyio.abc.TaskGroup) -> None:
        """The fleet, its first workers and jobs, and the monitor of ground truth."""
        cfg = self.cfg
        self.nursery = nursery
        self.fleet = Fleet(
            nursery,
            self.engine.open_database,
            role=self.space.role,
            root=self.root,
            options=self.opts,
            handler=self.handler,
            rng=random.Random(self.rng.random()),
            runner_options={"restart_backoff": (0.2, 2.0)},
        )
        for _ in range(cfg.workers):
            await self.join()
        for j in range(cfg.jobs):
            await add_job_for_sim(
                self.admin, self.space.layout, self.space.role, f"j{j}", cfg.partitions
            )
        nursery.start_soon(self.monitor)

    async def join(self) -> None:
        """Start a worker with the next id."""
        wid = f"w{self.next_id}"
        fw = await self.fleet.start(wid)
        self.sim._note(f"start {wid} ({fw.worker.incarnation[:6] if fw.worker else '?'})")
        self.next_id += 1

    async def inject_faults(self) -> None:
        """Faults at seeded random gaps until the quiet period before the end."""
        cfg, rng = self.cfg, self.rng
        t_max = cfg.timeout * (3 if cfg.wide_faults else 1)
        quiet = self.opts.effective_settle_max + 4 * t_max + 5
        t_end_faults = self.start_time + cfg.duration - quiet
        while current_time() < t_end_faults:
            gap = rng.expovariate(cfg.fault_rate)
            if current_time() + gap >= t_end_faults:
                break
            await sleep(gap)
            # A worker still draining after a leave counts as gone: two leaves and a
            # crash within one drain took every worker away (seed 10117).
            live = [fw for fw in self.fleet.staying() if fw.worker is not None]
            kind = self.pick_fault(live)
            await self.inject(kind, live, current_time())

    def pick_fault(self, live: list[FleetWorker]) -> str:
        """The next fault's kind; one that takes a worker away needs three live ones."""
        kinds = ["crash", "partition", "join", "leave", "add", "remove"]
        weights = [3, 3, 2, 1, 2, 1]
        if self.cfg.wide_faults:
            kinds += ["stall", "suspend", "reconfigure", "crashloop", "stall_join"]
            weights += [2, 2, 2, 1, 1]
        kind = self.rng.choices(kinds, weights=weights)[0]
        risky = ("crash", "partition", "leave", "stall", "suspend", "reconfigure")
        if kind in risky and len(live) <= 2:
            kind = "join"
        if kind == "stall_join" and len(live) <= 2:
            kind = "join"
        return kind

    async def inject(self, kind: str, live: list[FleetWorker], now: float) -> None:
        cfg, rng = self.cfg, self.rng
        if kind == "crash":
            self.crash(live, now)
        elif kind == "partition":
            fw = rng.choice(live)
            w = fw.worker
            assert w is not None
            dur = rng.uniform(0.3, 3.0) * cfg.timeout
            self.fault_times.append(now)
            self.sim._note(f"partition {w.id}/{w.incarnation[:6]} for {dur:.2f}s")
            self.nursery.start_soon(partition_for, fw, dur, self.excused, self.sim)
        elif kind == "join":
            self.fault_times.append(now)  # a ring change: checkers change too
            await self.join()
        elif kind == "leave":
            fw = rng.choice(live)
            w = fw.worker
            assert w is not None
            self.excused.add((w.id, w.incarnation))
            self.fault_times.append(now)
            self.sim._note(f"leave {w.id}")
            self.nursery.start_soon(fw.stop)
        elif kind in ("stall", "stall_join", "suspend"):
            await self.stall(kind, live, now)
        elif kind == "reconfigure":
            await self.reconfigure(live, now)
        elif kind == "crashloop":
            jobs_now = [f"j{i}" for i in range(self.next_job)]
            bad = set(rng.sample(jobs_now, min(len(jobs_now), rng.randint(1, 3))))
            dur = rng.uniform(1.0, 8.0)
            self.sim._note(f"crash loop of {sorted(bad)} for {dur:.2f}s")
            self.nursery.start_soon(crash_loop_for, self.crashing, bad, dur, self.sim)
        elif kind == "add":
            jid = f"j{self.next_job}"
            await add_job_for_sim(
                self.admin, self.space.layout, self.space.role, jid, cfg.partitions
            )
            self.sim._note(f"add job {jid}")
            self.next_job += 1
        else:
            jid = f"j{rng.randrange(self.next_job)}"
            await remove_job_for_sim(self.admin, self.space.layout, self.space.role, jid)
            self.sim._note(f"remove job {jid}")

    def record_crash(self, w: Worker, live: list[FleetWorker], now: float) -> None:
        """A crash G1 is checked for. The last heartbeat that may have committed: one in
        flight may commit up to the crash itself."""
        last = w.last_heartbeat_committed or w.lease.last_ok_start or now
        if w.heartbeat_in_flight:
            last = now
        self.crashes.append((w.id, w.incarnation, now, last, w.options.timeout, self.checks(live)))

    def crash(self, live: list[FleetWorker], now: float) -> None:
        fw = self.rng.choice(live)
        w = fw.worker
        assert w is not None
        self.excused.add((w.id, w.incarnation))
        self.record_crash(w, live, now)
        self.fault_times.append(now)
        self.sim._note(f"crash {w.id}/{w.incarnation[:6]}")
        fw.crash()
        if self.rng.random() < 0.5:  # a quick restart with the same id, later
            delay = self.rng.uniform(0.5, 2 * self.cfg.timeout)
            self.nursery.start_soon(restart_later, self.fleet, fw.id, delay, self.sim)

    async def stall(self, kind: str, live: list[FleetWorker], now: float) -> None:
        """A stall, a suspend, or a stall during which a worker joins."""
        rng = self.rng
        fw = rng.choice(live)
        w = fw.worker
        assert w is not None
        dur = rng.uniform(0.3, 2.5) * w.options.timeout
        self.excused.add((w.id, w.incarnation))
        self.fault_times.append(now)
        self.sim._note(f"{kind} {w.id}/{w.incarnation[:6]} for {dur:.2f}s")
        self.nursery.start_soon(stall_for, fw, dur, kind == "suspend", rng.random(), self.sim)
        if kind == "stall_join":  # its settle window ends while it is fenced
            await self.join()

    async def reconfigure(self, live: list[FleetWorker], now: float) -> None:
        """A restart with other options, after a leave or a crash."""
        cfg, rng = self.cfg, self.rng
        fw = rng.choice(live)
        w = fw.worker
        assert w is not None
        self.excused.add((w.id, w.incarnation))
        new_opts = WorkerOptions(
            timeout=rng.choice([cfg.timeout / 2, cfg.timeout, cfg.timeout * 3]),
            settle=rng.uniform(0.2, 1.0),
            weight=rng.choice([0.5, 1.0, 2.0]),
            partitions=cfg.partitions,
        )
        self.fault_times.append(now)
        graceful = rng.random() < 0.5
        if not graceful:
            self.record_crash(w, live, now)
        self.sim._note(
            f"reconfigure {w.id}/{w.incarnation[:6]} "
            f"({'leave' if graceful else 'crash'}): timeout {new_opts.timeout:g}, "
            f"settle {new_opts.settle:.2f}, weight {new_opts.weight:g}"
        )
        if graceful:
            await fw.stop()
        else:
            fw.crash()
        delay = rng.uniform(0.2, 1.5) * w.options.timeout
        self.nursery.start_soon(restart_later, self.fleet, fw.id, delay, self.sim, new_opts)

    async def quiet_and_check(self) -> dict[str, Any]:
        """Quiet: heal, no more faults (delayed restarts still land), then the liveness
        bound, then agreement at rest (G4). Returns the run's statistics."""
        from ._backends.engine import FaultPlan

        sim, cfg, fleet = self.sim, self.cfg, self.fleet
        self.engine.faults = FaultPlan()  # also delivers the watch fires held back
        for fw in fleet.workers.values():
            fw.db.partitioned = False  # type: ignore[attr-defined]
            fw.db.commits_stalled = False  # type: ignore[attr-defined]
        self.crashing.clear()
        sim._event("quiet period starts")  # the liveness bound counts from here at least
        await sim._check_liveness_after_faults(fleet, self.store, self.space, cfg, self.start_time)
        await sleep(max(0.0, self.start_time + cfg.duration - current_time()))
        sim._check_at_rest(fleet, self.store, self.space, cfg)
        sim._check_liveness(
            self.crashes, self.gone_at, self.seen_records, self.fault_times, self.opts
        )
        for t, wid, e in fleet.errors:
            sim.violations.append(Violation(t, "worker error", f"{wid} died of {e!r}"))
        for v in fleet.ledger.violations:
            sim.violations.append(v)
        return {
            "job_starts": fleet.ledger.starts,
            "workers_started": self.next_id,
            "crashes": len(self.crashes),
            "evictions": sum(
                fw.worker.statistics().evictions_done for fw in fleet.workers.values() if fw.worker
            ),
            "engine": self.engine.stats,
        }


async def add_job_for_sim(
    db: Database, layout: Any, role: str, job_id: str, partitions: int
) -> None:
    from ._store.jobs import tx_add_job

    await db.transact(tx_add_job, layout.role(role), job_id, {"sim": True}, 1.0, partitions)


async def remove_job_for_sim(db: Database, layout: Any, role: str, job_id: str) -> None:
    from ._store.jobs import tx_remove_job

    await db.transact(tx_remove_job, layout.role(role), job_id)
