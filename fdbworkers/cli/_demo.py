"""``fdbworkers demo``: the whole system on one machine, with a live view and a verdict.

Two halves:

* :class:`DemoHandler` (``cli/_demo_handler.py``) runs inside each worker process
  (``fdbworkers worker --demo-handler``). Each job does a fenced write to the database every
  ``work_interval`` seconds (``job.fence(tr)``: it commits only while the job's claim
  still carries its token), and each run's start and stop, with the fencing token and
  this host's monotonic clock, is appended to a file of the demo's folder.
* :func:`run_demo` orchestrates: a dev server (or a FoundationDB cluster), worker
  processes, jobs, a timeline of faults and operations, the live view, and a summary
  that checks three things from what was recorded (the checks: ``cli/_demo_check.py``):

  - crash detection: the time from the last heartbeat of the killed worker (seen through
    a watch on its health key) to its eviction (seen through the events head watch)
    stays within the bound ``timeout + check_interval + one transaction`` (plus the
    documented observation slack);
  - movement: the jobs that actually started on another worker in each step, against
    the moves the assignment required (moved <= required: no needless move) and the
    optimum (the fewest moves any balanced scheme needs);
  - at most one runner: per job, no two recorded runs overlap and the tokens increase.

All processes run on this host, so their monotonic clocks are one clock (Linux
``CLOCK_MONOTONIC`` is system-wide); nothing compares wall clocks.
"""

from __future__ import annotations

import json
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import trio

from .._core.keys import Layout, RoleSpace
from .._core.liveness import default_check_interval
from .._db import Database, Transaction
from .._errors import FDBError
from .._store.events import EventInfo
from .._store.jobs import tx_add_job, tx_remove_job
from ._demo_check import (
    CheckResult,
    Phase,
    balance_check,
    balanced,
    crash_detection_checks,
    movement_check,
    read_runs,
    rest_check,
    single_runner_check,
)
from ._view import LiveRole, ViewSnapshot, render_plain, render_view

ROLE: Final = "demo"
#: Partitions of the demo role: few jobs, and each reconcile reads two ranges per owned
#: partition, so a small count keeps rebalances quick on a loaded laptop.
DEMO_PARTITIONS: Final = 256


#: Printed once before the plain progress lines (docs/demo.md, "Reading the output").
PLAIN_LEGEND = (
    "legend: every 5 s, 'members WORKER:STATE:JOBS ...' (STATE: ok, suspect, stale, "
    "draining, unknown; JOBS: the jobs it holds) '| jobs TOTAL' and the count of jobs in "
    "each state (owned, moving, unclaimed, orphaned)"
)


# --- the orchestrator -----------------------------------------------------------------


@dataclass(frozen=True)
class DemoOptions:
    duration: float = 45.0
    workers: int = 4
    jobs: int = 40
    worker_timeout: float = 3.0
    #: None: start a dev server; else an address (fdb:PATH, sim://...).
    cluster: str | None = None
    keep: bool = False
    live: bool = False
    op_timeout: float = 5.0
    settle: float = 1.0
    seed: int | None = None
    out: Callable[[str], None] | None = None


@dataclass
class Proc:
    wid: str
    process: trio.Process
    log_path: Path
    started: float
    exited_at: float | None = None
    killed_at: float | None = None
    drained: bool = False


class Demo:
    def __init__(self, options: DemoOptions) -> None:
        self.o = options
        self.rng = random.Random(options.seed)
        self.folder = Path(tempfile.mkdtemp(prefix="fdbworkers-demo-"))
        self.runs_dir = self.folder / "runs"
        self.logs_dir = self.folder / "logs"
        self.runs_dir.mkdir()
        self.logs_dir.mkdir()
        self.procs: dict[str, Proc] = {}
        self.exit_times: dict[int, float] = {}
        self.timeline: list[str] = []
        self.phases: list[Phase] = []
        self.kills: list[dict[str, Any]] = []
        self.evictions: dict[str, tuple[EventInfo, float]] = {}
        self.checks: list[CheckResult] = []
        self.live: LiveRole | None = None
        self.t0 = 0.0
        self.address = ""
        self.root = ""
        self.devserver: trio.Process | None = None
        self.next_worker = 1
        self.out = options.out or (lambda line: print(line, flush=True))
        self._live_view: Any = None

    # -- output ----------------------------------------------------------------------

    def now(self) -> float:
        return trio.current_time() - self.t0

    def note(self, text: str) -> None:
        line = f"[{self.now():5.1f}s] {text}"
        self.timeline.append(line)
        if not self.o.live:
            self.out(line)

    def on_event(self, ev: EventInfo, seen_at: float) -> None:
        if ev.type == "evicted":
            wid = str(ev.data.get("worker", ""))
            self.evictions.setdefault(wid, (ev, seen_at))
        self.note(f"event: {ev.summary()}")

    def frame(self) -> ViewSnapshot:
        assert self.live is not None
        return self.live.snapshot(notes=self.timeline[-12:], title="fdbworkers demo")

    async def _render_loop(self) -> None:
        assert self.live is not None
        if self.o.live:
            while True:
                if self._live_view is not None:
                    self._live_view.update(render_view(self.frame()), refresh=True)
                with trio.move_on_after(0.25):
                    await self.live.wait_changed()
        else:
            self.out(PLAIN_LEGEND)
            while True:
                await trio.sleep(5.0)
                snap = self.frame()
                states = snap.job_states
                who = " ".join(f"{m.id}:{m.state}:{m.jobs}" for m in snap.members)
                self.out(
                    f"[{self.now():5.1f}s] members {who} | jobs {len(snap.jobs)} "
                    + " ".join(f"{k}={v}" for k, v in sorted(states.items()))
                )

    # -- processes -------------------------------------------------------------------

    def _fdbworkers(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "fdbworkers", *args]

    async def _start_devserver(self, nursery: trio.Nursery) -> str:
        ready = self.folder / "devserver.addr"
        log = open(self.logs_dir / "devserver.log", "wb")  # noqa: SIM115, ASYNC230
        self.devserver = await trio.lowlevel.open_process(
            self._fdbworkers(
                "devserver", "--port", "0", "--ready-file", str(ready), "--log-level", "warning"
            ),
            stdout=log,
            stderr=log,
        )
        log.close()
        with trio.fail_after(30):
            while not ready.exists():
                if self.devserver.returncode is not None:
                    raise RuntimeError(
                        f"the dev server exited with code {self.devserver.returncode}; see "
                        f"{self.logs_dir / 'devserver.log'}"
                    )
                await trio.sleep(0.05)
        return ready.read_text().strip()

    async def spawn_worker(self, nursery: trio.Nursery) -> str:
        wid = f"w{self.next_worker}"
        self.next_worker += 1
        path = self.logs_dir / f"{wid}.log"
        log = open(path, "ab")  # noqa: SIM115, ASYNC230
        args = self._fdbworkers(
            "--cluster", self.address, "--root", self.root,
            "--timeout", f"{self.o.op_timeout:g}",
            "worker", "--role", ROLE, "--demo-handler", "--demo-log", str(self.runs_dir),
            "--id", wid, "--timeout", f"{self.o.worker_timeout:g}",
            "--settle", f"{self.o.settle:g}",
            "--grace", "1", "--log-format", "json", "--demo-work-interval", "2",
        )  # fmt: skip
        process = await trio.lowlevel.open_process(
            args, stdout=log, stderr=log, stdin=subprocess.DEVNULL
        )
        log.close()
        p = Proc(wid, process, path, trio.current_time())
        self.procs[wid] = p
        nursery.start_soon(self._reap, p)
        return wid

    async def _reap(self, p: Proc) -> None:
        await p.process.wait()
        p.exited_at = trio.current_time()
        self.exit_times[p.process.pid] = time.monotonic()
        if p.killed_at is None and not p.drained and not self._stopping:
            self.note(f"worker {p.wid} exited unexpectedly with code {p.process.returncode}")

    _stopping = False

    def live_workers(self) -> list[str]:
        return [
            w
            for w, p in self.procs.items()
            if p.exited_at is None and p.killed_at is None and not p.drained
        ]

    # -- waiting for rest ------------------------------------------------------------

    def _at_rest(self, members: set[str], jobs: set[str] | None) -> bool:
        snap = self.frame()
        if {m.id for m in snap.members} != members or not snap.at_rest:
            return False
        if jobs is not None and {j.id for j in snap.jobs} != jobs:
            return False
        # At rest also means balanced: after jobs are added, the plan is rewritten for
        # the new counts at most once per settle window (a worker drifted > 1 job).
        weights = {m.id: m.weight for m in snap.members if not m.drain}
        return balanced({j.id: j.owner for j in snap.jobs}, weights)

    async def wait_rest(self, phase: Phase, *, limit: float, jobs: set[str] | None = None) -> None:
        assert self.live is not None
        members = set(self.live_workers())
        with trio.move_on_after(limit) as scope:
            while not self._at_rest(members, jobs):
                with trio.move_on_after(0.5):
                    await self.live.wait_changed()
            # Stay at rest for a moment (claims and the view agree, nothing in flight).
            await trio.sleep(0.3)
            while not self._at_rest(members, jobs):
                with trio.move_on_after(0.5):
                    await self.live.wait_changed()
        phase.rest_ok = not scope.cancelled_caught
        phase.t_trio = trio.current_time()
        phase.t_mono = time.monotonic()
        snap = self.frame()
        phase.owners = {j.id: j.owner for j in snap.jobs}
        phase.weights = {m.id: m.weight for m in snap.members if not m.drain}
        self.phases.append(phase)
        if phase.rest_ok:
            self.note(
                f"at rest after {phase.name}: {len(snap.jobs)} jobs on {len(snap.members)} workers"
            )
        else:
            self.note(f"NOT at rest {limit:.0f}s after {phase.name}")

    async def until(self, fraction: float) -> None:
        target = self.t0 + self.o.duration * fraction
        await trio.sleep_until(max(target, trio.current_time()))

    # -- the timeline ----------------------------------------------------------------

    # One job per transaction: the job change log keys its entries by the commit's
    # versionstamp, so several changes in one transaction would share one entry.

    async def add_jobs(self, db: Database, space: RoleSpace, ids: list[str]) -> None:
        async def one(jid: str) -> None:
            spec = {"n": int(jid.split("-")[1])}
            await db.transact(tx_add_job, space, jid, spec, 1.0, DEMO_PARTITIONS)

        await _bounded_each(one, ids)

    async def remove_jobs(self, db: Database, space: RoleSpace, ids: list[str]) -> None:
        async def one(jid: str) -> None:
            await db.transact(tx_remove_job, space, jid)

        await _bounded_each(one, ids)

    async def timeline_run(self, db: Database, space: RoleSpace, nursery: trio.Nursery) -> None:
        """The steps at their share of the duration, each waited out until the role is at
        rest: start, a crash, a join, a drain, more jobs, fewer jobs."""
        o = self.o
        rest_limit = max(15.0, o.worker_timeout * 4 + o.settle * 3)
        job_ids = [f"job-{i:03d}" for i in range(1, o.jobs + 1)]
        jobs_now = set(job_ids)
        await self.add_jobs(db, space, job_ids)
        self.note(f"added {len(job_ids)} jobs")
        for _ in range(o.workers):
            await self.spawn_worker(nursery)
        self.note(f"started {o.workers} worker processes ({', '.join(self.procs)})")
        await self.wait_rest(Phase("start", "start"), limit=max(30.0, rest_limit), jobs=jobs_now)

        # 1. a crash
        await self.until(0.15)
        await self._crash_one(jobs_now, rest_limit)

        # 2. a new worker
        await self.until(0.35)
        new = await self.spawn_worker(nursery)
        self.note(f"started worker {new}")
        await self.wait_rest(Phase(f"{new} joined", "join", new), limit=rest_limit, jobs=jobs_now)

        # 3. a drain
        await self.until(0.5)
        await self._drain_one(db, space, new, jobs_now, rest_limit)

        # 4. more jobs
        await self.until(0.65)
        extra = [f"job-{i:03d}" for i in range(o.jobs + 1, o.jobs + 1 + max(1, o.jobs // 4))]
        await self.add_jobs(db, space, extra)
        jobs_now |= set(extra)
        self.note(f"added {len(extra)} jobs")
        await self.wait_rest(
            Phase(f"adding {len(extra)} jobs", "jobs"), limit=rest_limit, jobs=jobs_now
        )

        # 5. fewer jobs
        await self.until(0.8)
        gone = self.rng.sample(job_ids, max(1, o.jobs // 4))
        await self.remove_jobs(db, space, gone)
        jobs_now -= set(gone)
        self.note(f"removed {len(gone)} jobs")
        await self.wait_rest(
            Phase(f"removing {len(gone)} jobs", "jobs"), limit=rest_limit, jobs=jobs_now
        )

        await self.until(1.0)
        self.note("stopping the workers (SIGTERM: they leave gracefully)")

    async def _crash_one(self, jobs_now: set[str], rest_limit: float) -> None:
        """1. SIGKILL the live worker with the median job count; its neighbour must evict it."""
        assert self.live is not None
        snap = self.frame()
        candidates = sorted((m.jobs, m.id) for m in snap.members if m.id in self.live_workers())
        victim = candidates[len(candidates) // 2][1]
        p = self.procs[victim]
        last_hb = self.live.last_heartbeat_seen.get(victim)
        p.process.send_signal(signal.SIGKILL)
        p.killed_at = trio.current_time()
        self.exit_times.setdefault(p.process.pid, time.monotonic())
        self.kills.append({"worker": victim, "at": p.killed_at, "last_heartbeat_before": last_hb})
        self.note(
            f"killed {victim} with SIGKILL (pid {p.process.pid}); its neighbour must evict it"
        )
        bound = self.bound()
        with trio.move_on_after(bound + 10):
            while victim not in self.evictions:
                await self.live.wait_changed()
        await self.wait_rest(
            Phase(f"the crash of {victim}", "leave", victim), limit=rest_limit, jobs=jobs_now
        )

    async def _drain_one(
        self, db: Database, space: RoleSpace, new: str, jobs_now: set[str], rest_limit: float
    ) -> None:
        """3. Drain the first live worker other than the newcomer; it must leave, then exit
        with code 0."""
        from .._store.members import tx_request_drain

        drained = sorted(w for w in self.live_workers() if w != new)[0]
        await db.transact(tx_request_drain, space, drained, "demo")
        self.procs[drained].drained = True
        self.note(f"drain requested for {drained}")
        await self.wait_rest(
            Phase(f"the drain of {drained}", "leave", drained), limit=rest_limit, jobs=jobs_now
        )
        dp = self.procs[drained]
        with trio.move_on_after(10):
            await dp.process.wait()
        if dp.process.returncode is None:
            self.checks.append(
                CheckResult("drained worker exits", False, [f"{drained} still runs"])
            )
        else:
            ok = dp.process.returncode == 0
            self.checks.append(
                CheckResult(
                    "drained worker exits",
                    ok,
                    [f"{drained} exited with code {dp.process.returncode}"],
                )
            )

    def bound(self) -> float:
        t = self.o.worker_timeout
        op = max(0.1, min(t / 3, 5.0))
        return t + default_check_interval(t) + op

    async def stop_all(self) -> None:
        self._stopping = True
        alive = [p for p in self.procs.values() if p.process.returncode is None]
        for p in alive:
            p.process.send_signal(signal.SIGTERM)
        with trio.move_on_after(max(10.0, self.o.worker_timeout * 3)):
            for p in alive:
                await p.process.wait()
        for p in alive:
            if p.process.returncode is None:
                p.process.send_signal(signal.SIGKILL)
                self.exit_times.setdefault(p.process.pid, time.monotonic())
        bad = [
            f"{p.wid}: code {p.process.returncode}"
            for p in alive
            if p.process.returncode not in (0, None)
        ]
        stuck = [p.wid for p in alive if p.process.returncode is None]
        self.checks.append(
            CheckResult(
                "workers leave on SIGTERM",
                not bad and not stuck,
                [f"{len(alive)} worker(s) left gracefully"]
                if not bad and not stuck
                else bad + [f"{w} did not exit" for w in stuck],
            )
        )

    # -- the verdict -----------------------------------------------------------------

    def summarize(self) -> list[str]:
        """Run the checks on what was recorded; the summary's lines."""
        self.checks += crash_detection_checks(
            self.kills,
            self.evictions,
            self.live.last_heartbeat_seen if self.live else {},
            self.o.worker_timeout,
            self.bound(),
        )
        runs = read_runs(self.runs_dir, self.exit_times)
        self.checks.append(movement_check(self.phases, runs))
        self.checks.append(balance_check(self.phases))
        self.checks.append(single_runner_check(runs))
        self.checks.append(rest_check(self.phases))
        lines = ["summary"]
        for c in self.checks:
            lines.append(f"  [{'ok' if c.ok else 'FAIL'}] {c.name}")
            lines.extend(f"         {line}" for line in c.lines)
        ok = all(c.ok for c in self.checks)
        lines.append("result: all checks passed" if ok else "result: SOME CHECKS FAILED")
        if self.o.keep or not ok:
            lines.append(f"logs and run records: {self.folder}")
        return lines

    # -- main ------------------------------------------------------------------------

    async def main(self) -> int:
        o = self.o
        self.t0 = trio.current_time()
        db: Database | None = None
        try:
            async with trio.open_nursery() as nursery:
                if o.cluster is None:
                    self.address = await self._start_devserver(nursery)
                    self.root = "fdbworkers-demo"
                    self.note(f"dev server listening on {self.address}")
                else:
                    self.address = o.cluster
                    self.root = f"fdbworkers-demo/{self.rng.getrandbits(32):08x}"
                    self.note(f"using the cluster {self.address} under root {self.root}")
                from .._backends.connect import open_database

                db = open_database(self.address)
                db.default_timeout = o.op_timeout
                space = Layout.for_root(self.root).role(ROLE)
                self.live = LiveRole(
                    db, space, cluster=self.address, events=6, on_event=self.on_event
                )
                from .._store.members import tx_ensure_role

                await db.transact(tx_ensure_role, space, DEMO_PARTITIONS)
                self.live.started_at = self.t0
                await nursery.start(self.live.run)
                nursery.start_soon(self._render_loop)
                if o.live:
                    from rich.console import Console
                    from rich.live import Live

                    with Live(console=Console(), auto_refresh=False, transient=False) as view:
                        self._live_view = view
                        await self.timeline_run(db, space, nursery)
                        view.update(render_view(self.frame()), refresh=True)
                        self._live_view = None  # the last frame stays: the role at rest
                    await self.stop_all()
                else:
                    await self.timeline_run(db, space, nursery)
                    self.out(render_plain(self.frame()))  # the role at rest, before stopping
                    await self.stop_all()
                nursery.cancel_scope.cancel()
            for line in self.summarize():
                self.out(line)
            self._write_summary()
            return 0 if all(c.ok for c in self.checks) else 1
        finally:
            with trio.CancelScope(shield=True):
                await self._cleanup(db)

    def _write_summary(self) -> None:
        data = {
            "checks": [{"name": c.name, "ok": c.ok, "lines": c.lines} for c in self.checks],
            "timeline": self.timeline,
        }
        (self.folder / "summary.json").write_text(json.dumps(data, indent=2))

    async def _cleanup(self, db: Database | None) -> None:
        for p in self.procs.values():
            if p.process.returncode is None:
                p.process.send_signal(signal.SIGKILL)
        for p in self.procs.values():
            with trio.move_on_after(5):
                await p.process.wait()
        if db is not None and self.o.cluster is not None:
            # A real cluster: remove the demo's root.
            with trio.move_on_after(5):
                try:
                    layout = Layout.for_root(self.root)

                    async def clear(tr: Transaction) -> None:
                        tr.clear_range(layout.prefix, layout.prefix + b"\xff")

                    await db.transact(clear)
                except FDBError:
                    pass
        if db is not None:
            with trio.move_on_after(2):
                await db.aclose()
        if self.devserver is not None and self.devserver.returncode is None:
            self.devserver.send_signal(signal.SIGTERM)
            with trio.move_on_after(5):
                await self.devserver.wait()
            if self.devserver.returncode is None:
                self.devserver.kill()
        if not self.o.keep and all(c.ok for c in self.checks) and self.checks:
            shutil.rmtree(self.folder, ignore_errors=True)


async def _bounded_each(
    fn: Callable[[str], Awaitable[None]], items: list[str], limit: int = 16
) -> None:
    sem = trio.Semaphore(limit)

    async def one(item: str) -> None:
        async with sem:
            await fn(item)

    async with trio.open_nursery() as n:
        for item in items:
            n.start_soon(one, item)


def run_demo(options: DemoOptions) -> int:
    """Run the demo; the exit code (0 when every check passed)."""
    from ._common import configure_logging, interruptible

    configure_logging("warning")
    demo = Demo(options)
    try:
        return trio.run(interruptible, demo.main)
    except BaseException as e:
        from ._common import unwrap

        if isinstance(unwrap(e), KeyboardInterrupt):
            print("interrupted", file=sys.stderr)
            return 130
        raise
