"""How fdbworkers' cost grows with workers (N) and jobs (J): scale curves on the embedded
engine's virtual clock, plus a wall-clock run of worker processes on a dev server.

    .venv/bin/python benchmarks/scale_bench.py                 # everything (~10-20 min)
    .venv/bin/python benchmarks/scale_bench.py --quick         # CI size, ~20 s
    .venv/bin/python benchmarks/scale_bench.py --part fleet    # only the fleet runs
    .venv/bin/python benchmarks/scale_bench.py --part reads    # only rebalance reads
    .venv/bin/python benchmarks/scale_bench.py --part wallclock --procs 50
    .venv/bin/python benchmarks/scale_bench.py --part big        # 10,000 workers (~1 h)
    .venv/bin/python benchmarks/scale_bench.py --part plan       # make_plan, J up to 10M
    .venv/bin/python benchmarks/scale_bench.py --plots docs/img   # also write PNGs

Parts:

* ``fleet``: N workers and J jobs in one process on one engine, trio's MockClock (the
  figures are about the protocol, not this machine). Per worker and in total, at rest:
  transactions, keys read and written per virtual second, conflicts, watches held. Then
  a crash (time to eviction, time until all its jobs run elsewhere), a join (time to a
  settled balanced map, jobs moved against the optimum) and the keys read by every
  rebalance read (the paged share read, ``_store/share.py``) during the join, and all
  the keys and bytes each worker read from the join until settled.
* ``reads``: the keys and requests of one worker's full rebalance read for J up to
  1,000,000 and N up to 1,000: exact, by loading only the jobs of that worker's
  partitions (and their claims) into an engine whose job counter says J, then running
  the paged share read for those partitions; a worker reads nothing else.
* ``big``: issue 18, goal 4. ``--big-n`` workers (9,000) started in waves of
  ``--big-wave``, each wave at once; the cost at rest per worker; a storm of
  ``--big-storm`` (1,000) simultaneous joins (time until every worker holds its quota,
  conflicts, membership reads per worker per settle window); the cost at rest at
  10,000; one more join (keys each existing worker reads until the map settles); the
  CPU time of every ``make_plan`` (the map computation per change) on the way. One
  process, virtual clock; the process's collector is tuned (see ``big_part``).
* ``plan``: the map computation alone for N up to 10,000 and J up to 10M (the
  per-partition counts of J uniformly hashed jobs): the first plan, the plan after a
  join with the new rendezvous map computed cold, and a worker's own share (decode the
  stored plan, compute its map, take its partitions; or apply the join's delta to the
  plan before, check its digest, and the same), CPU seconds, ``--runs`` times; the
  bytes of the whole plan and of a join's delta.
* ``wallclock``: a dev server and ``--procs`` worker processes (``python -m fdbworkers
  worker --demo-handler``) with real timeouts: CPU per worker at rest, detection and
  reassignment after a SIGKILL against the bound ``timeout + check_interval``.

Baselines in the same run: the per-worker rest cost at the smallest N (ratios against
it show O(1) per worker), and J/N (ratios show O(J/N) reads and moves).
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio
import trio.testing

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    ROLE,
    ROOT,
    fmt,
    job_ids,
    load_jobs,
    note,
    quiet_logs,
    start_devserver,
    table,
    three,
)

from fdbworkers._backends.engine import Engine, EngineDatabase, EngineStatistics
from fdbworkers._backends.remote import RemoteDatabase
from fdbworkers._core.assign import assign, job_partition
from fdbworkers._core.keys import Layout
from fdbworkers._core.plan import Plan, decode_plan, encode_plan, make_plan, plan_chunks
from fdbworkers._core.plan_delta import apply_plan_delta, encode_plan_delta
from fdbworkers._core.records import decode
from fdbworkers._core.share import plan_ranges
from fdbworkers._db import Transaction
from fdbworkers._runner.job import Job
from fdbworkers._runner.runner import JobRunner
from fdbworkers._store import plan as plan_store
from fdbworkers._store.jobs import tx_list_jobs
from fdbworkers._store.members import tx_read_membership
from fdbworkers._store.share import ShareRead, read_share
from fdbworkers._worker_options import WorkerOptions
from fdbworkers.testing import Fleet, FleetWorker, wait_until

LAYOUT = Layout.for_root(ROOT)
SPACE = LAYOUT.role(ROLE)


async def sleeper(job: Job) -> None:
    """A job that runs until it is stopped (no wake-ups of its own)."""
    await trio.sleep_forever()


# --------------------------------------------------------------------------------------
# Counting each rebalance read (the paged share read through the runner)
# --------------------------------------------------------------------------------------


@dataclass
class ReadSample:
    worker: str
    at: float
    partitions: int
    keys: int
    requests: int


READS: list[ReadSample] = []
_orig_read_share = JobRunner._read_share


async def _counted_read_share(self: JobRunner, parts: AbstractSet[int], full: bool) -> ShareRead:
    out = await _orig_read_share(self, parts, full)
    # The paged read's own counts, plus the job counter it reads first.
    READS.append(
        ReadSample(self.w.id, trio.current_time(), len(parts), out.keys + 1, out.requests + 1)
    )
    return out


JobRunner._read_share = _counted_read_share  # type: ignore[method-assign]


# --------------------------------------------------------------------------------------
# Fleet runs on the virtual clock
# --------------------------------------------------------------------------------------


@dataclass
class FleetResult:
    n: int
    j: int
    partitions: int
    timeout: float
    rest_seconds: float
    start_settle: float = 0.0
    wall_seconds: float = 0.0
    rest: dict[str, float] = field(default_factory=dict)
    per_worker_max: dict[str, float] = field(default_factory=dict)
    watches_per_worker: float = 0.0
    watches_max: int = 0
    conflicts_total: int = 0
    crash_to_evict: float = 0.0
    crash_to_reassigned: float = 0.0
    victim_jobs: int = 0
    join_to_settled: float = 0.0
    join_moved: int = 0
    join_newcomer_jobs: int = 0
    join_reads: dict[str, float] = field(default_factory=dict)
    #: Every key any transaction of a worker read from the join until settled
    #: (membership reads included): mean and max over workers.
    join_keys_all: dict[str, float] = field(default_factory=dict)
    #: The bytes of those reads (keys and values): mean and max over workers.
    join_bytes_all: dict[str, float] = field(default_factory=dict)
    double_runners: int = 0
    join_conflicts: int = 0


def _stats(dbs: dict[str, EngineDatabase]) -> dict[str, tuple[EngineStatistics, int, int]]:
    return {
        w: (db.engine_stats.snapshot(), db.stats.transactions, db.stats.conflicts)
        for w, db in dbs.items()
    }


async def fleet_run(
    n: int, j: int, partitions: int, liveness: float, rest: float, seed: int
) -> FleetResult:
    wall0 = time.perf_counter()
    res = FleetResult(n, j, partitions, liveness, rest)
    engine = Engine(rng=random.Random(seed))
    admin = engine.open_database("admin")
    ids = job_ids(j, seed)
    await load_jobs(admin, ids, partitions)
    dbs: dict[str, EngineDatabase] = {}

    def db_for(wid: str) -> EngineDatabase:
        db = engine.open_database(wid)
        dbs[wid] = db
        return db

    opts = WorkerOptions(timeout=liveness, settle=2.0, partitions=partitions)

    def owners(fleet: Fleet) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for fw in fleet.live():
            if fw.runner is not None and fw.worker is not None and fw.worker.lease_valid():
                for jid in fw.runner.running:
                    out.setdefault(jid, []).append(fw.id)
        return out

    def settled(fleet: Fleet, members: int) -> bool:
        live = fleet.live()
        for fw in live:
            w, r = fw.worker, fw.runner
            if w is None or r is None or w.membership is None:
                return False
            if len(w.membership.members) != members or r.assignment is None:
                return False
            if set(r.running) != set(r.target):
                return False
        total = sum(len(fw.runner.running) for fw in live if fw.runner is not None)
        if total != j:
            return False
        return len(owners(fleet)) == j

    async with trio.open_nursery() as nursery:
        fleet = Fleet(
            nursery,
            db_for,
            role=ROLE,
            root=ROOT,
            options=opts,
            handler=sleeper,
            grace=0.1,
            rng=random.Random(seed),
            # On the virtual clock the map is computed inline: a thread would let the
            # autojumping clock run ahead while every task waits for it.
            runner_options={"assign_in_thread": False},
        )
        t0 = trio.current_time()
        for i in range(n):
            await fleet.start(f"w{i:04d}")
        step = 0.25 if j * n <= 1_000_000 else 1.0
        await wait_until(lambda: settled(fleet, n), 600 + n, step)
        res.start_settle = trio.current_time() - t0
        # Let the start-up burst (first resyncs, watch re-arms) pass, then measure rest.
        await trio.sleep(2 * liveness)
        s0 = _stats(dbs)
        tr0 = trio.current_time()
        await trio.sleep(rest)
        s1 = _stats(dbs)
        dt = trio.current_time() - tr0
        per: dict[str, list[float]] = {
            "tx": [],
            "read": [],
            "requests": [],
            "written": [],
            "conflicts": [],
        }
        for w in s1:
            a, ta, ca = s0[w]
            b, tb, cb = s1[w]
            per["tx"].append((tb - ta) / dt)
            per["read"].append((b.keys_read - a.keys_read) / dt)
            per["requests"].append((sum(b.reads_by_op.values()) - sum(a.reads_by_op.values())) / dt)
            per["written"].append((b.keys_written - a.keys_written) / dt)
            per["conflicts"].append(cb - ca)
        res.rest = {k: sum(v) for k, v in per.items()}
        res.per_worker_max = {k: max(v) for k, v in per.items()}
        watches = [db.unfired_watches for db in dbs.values()]
        res.watches_per_worker = sum(watches) / len(watches)
        res.watches_max = max(watches)
        res.conflicts_total = sum(db.stats.conflicts for db in dbs.values())

        # Crash one worker: time to eviction, time until its jobs run elsewhere.
        rng = random.Random(seed)
        victim: FleetWorker = rng.choice(fleet.live())
        assert victim.runner is not None
        victim_jobs = set(victim.runner.running)
        res.victim_jobs = len(victim_jobs)
        member_key = SPACE.member_key(victim.id)
        tc = trio.current_time()
        victim.crash()

        async def gone(tr: Transaction) -> bool:
            return await tr.get(member_key) is None

        evicted_at: float | None = None
        reassigned_at: float | None = None
        with trio.fail_after(10 * liveness + 60):
            while evicted_at is None or reassigned_at is None:
                await trio.sleep(0.05)
                if evicted_at is None and await admin.transact(gone):
                    evicted_at = trio.current_time()
                if reassigned_at is None:
                    running = 0
                    for fw in fleet.live():
                        if fw.runner is not None:
                            running += len(victim_jobs & fw.runner.running.keys())
                    if running >= len(victim_jobs):
                        reassigned_at = trio.current_time()
        res.crash_to_evict = evicted_at - tc
        res.crash_to_reassigned = reassigned_at - tc
        await wait_until(lambda: settled(fleet, n - 1), 120 + n, step)

        # Join one worker: time to a settled balanced map, jobs moved, reads.
        before = {jid: ws[0] for jid, ws in owners(fleet).items()}
        c0 = sum(db.stats.conflicts for db in dbs.values())
        READS.clear()
        sj0 = _stats(dbs)
        tj = trio.current_time()
        newcomer = await fleet.start("w-new")
        await wait_until(lambda: settled(fleet, n), 120 + n, step)
        res.join_to_settled = trio.current_time() - tj
        sj1 = _stats(dbs)
        all_keys = [
            st.keys_read - (sj0[w][0].keys_read if w in sj0 else 0)
            for w, (st, _, _) in sj1.items()
            if w in {fw.id for fw in fleet.live()}
        ]
        res.join_keys_all = {"mean": sum(all_keys) / len(all_keys), "max": max(all_keys)}
        all_bytes = [
            st.bytes_read - (sj0[w][0].bytes_read if w in sj0 else 0)
            for w, (st, _, _) in sj1.items()
            if w in {fw.id for fw in fleet.live()}
        ]
        res.join_bytes_all = {"mean": sum(all_bytes) / len(all_bytes), "max": max(all_bytes)}
        after = owners(fleet)
        res.double_runners = sum(1 for ws in after.values() if len(ws) > 1)
        res.join_moved = sum(1 for jid, ws in after.items() if before.get(jid) != ws[0])
        assert newcomer.runner is not None
        res.join_newcomer_jobs = len(newcomer.runner.running)
        res.join_conflicts = sum(db.stats.conflicts for db in dbs.values()) - c0
        keys = [s.keys for s in READS]
        reqs = [s.requests for s in READS]
        by_worker: dict[str, int] = {}
        for s in READS:
            by_worker[s.worker] = by_worker.get(s.worker, 0) + s.keys
        res.join_reads = {
            "reads": len(READS),
            "keys_mean": sum(keys) / max(1, len(keys)),
            "keys_max": max(keys, default=0),
            "requests_mean": sum(reqs) / max(1, len(reqs)),
            "requests_max": max(reqs, default=0),
            "keys_total": sum(keys),
            "keys_per_worker_max": max(by_worker.values(), default=0),
        }
        assert all(not fw.crashed or not fw.alive for fw in fleet.workers.values())
        if fleet.ledger.violations:
            res.double_runners += len(fleet.ledger.violations)
        nursery.cancel_scope.cancel()
    res.wall_seconds = time.perf_counter() - wall0
    return res


def run_virtual(fn: Any, *args: Any) -> Any:
    return trio.run(fn, *args, clock=trio.testing.MockClock(autojump_threshold=0))


def fleet_part(configs: Sequence[tuple[int, int, float]], args: argparse.Namespace) -> list[Any]:
    results: list[FleetResult] = []
    for n, j, rest in configs:
        note(f"fleet N={n} J={j} P={args.partitions} rest={rest}s ...")
        r = run_virtual(fleet_run, n, j, args.partitions, args.timeout, rest, args.seed)
        note(f"  done in {r.wall_seconds:.1f} s wall")
        note(json.dumps(r.__dict__, default=str))  # each result as soon as it is known
        results.append(r)
    base = results[0]
    base_tx = base.rest["tx"] / base.n
    base_read = base.rest["read"] / base.n
    table(
        f"At rest (virtual clock, timeout {args.timeout:g} s, P = {args.partitions}); "
        f"ratios: per worker against N={base.n}, J={base.j}",
        [
            "N",
            "J",
            "rest (s)",
            "tx/s total",
            "tx/s per worker",
            "ratio",
            "keys read/s per worker",
            "ratio",
            "read requests/s per worker",
            "keys written/s per worker",
            "max tx/s one worker",
            "max keys read/s one worker",
            "watches per worker",
            "conflicts (whole run)",
            "start to settled (s)",
            "wall (s)",
        ],
        [
            (
                r.n,
                r.j,
                r.rest_seconds,
                r.rest["tx"],
                r.rest["tx"] / r.n,
                (r.rest["tx"] / r.n) / base_tx,
                r.rest["read"] / r.n,
                (r.rest["read"] / r.n) / base_read,
                r.rest["requests"] / r.n,
                r.rest["written"] / r.n,
                r.per_worker_max["tx"],
                r.per_worker_max["read"],
                r.watches_per_worker,
                r.conflicts_total,
                r.start_settle,
                r.wall_seconds,
            )
            for r in results
        ],
    )
    bound = args.timeout + min(1.0, args.timeout / 4)
    table(
        f"Crash and join (bound on eviction: timeout + check interval = {bound:g} s)",
        [
            "N",
            "J",
            "crash to eviction (s)",
            "crash to all its jobs running elsewhere (s)",
            "its jobs",
            "join to settled balanced map (s)",
            "jobs moved on join",
            "newcomer's jobs (optimum)",
            "moved / optimum",
            "J/N",
            "two runners",
            "conflicts during join",
        ],
        [
            (
                r.n,
                r.j,
                r.crash_to_evict,
                r.crash_to_reassigned,
                r.victim_jobs,
                r.join_to_settled,
                r.join_moved,
                r.join_newcomer_jobs,
                r.join_moved / max(1, r.join_newcomer_jobs),
                r.j / r.n,
                r.double_runners,
                r.join_conflicts,
            )
            for r in results
        ],
    )
    table(
        "Rebalance reads during the join (every paged share read of every worker, "
        "counted on its own handle)",
        [
            "N",
            "J",
            "reads",
            "keys per read (mean)",
            "keys per read (max)",
            "max keys read by one worker",
            "(J/N + N)",
            "ratio",
            "requests per read (mean)",
            "requests per read (max)",
            "keys total",
            "keys total / J",
            "all keys read per worker, mean",
            "max",
            "max / (J/N + N)",
            "all bytes read per worker, mean",
            "max",
        ],
        [
            (
                r.n,
                r.j,
                int(r.join_reads["reads"]),
                r.join_reads["keys_mean"],
                int(r.join_reads["keys_max"]),
                int(r.join_reads["keys_per_worker_max"]),
                r.j / r.n + r.n,
                r.join_reads["keys_per_worker_max"] / (r.j / r.n + r.n),
                r.join_reads["requests_mean"],
                int(r.join_reads["requests_max"]),
                int(r.join_reads["keys_total"]),
                r.join_reads["keys_total"] / r.j,
                r.join_keys_all["mean"],
                int(r.join_keys_all["max"]),
                r.join_keys_all["max"] / (r.j / r.n + r.n),
                r.join_bytes_all["mean"],
                int(r.join_bytes_all["max"]),
            )
            for r in results
        ],
    )
    return [r.__dict__ for r in results]


# --------------------------------------------------------------------------------------
# One worker's full rebalance read for large J (exact, sampled worker)
# --------------------------------------------------------------------------------------


async def one_read(n: int, j: int, partitions: int, seed: int) -> dict[str, Any]:
    wall0 = time.perf_counter()
    members = {f"w{i:04d}": 1.0 for i in range(n)}
    a = assign(members, partitions)
    me = sorted(members)[seed % n]
    owned = set(a.partitions_of(me))
    engine = Engine(rng=random.Random(seed))
    db = engine.open_database("loader")
    # Generate all J ids, keep only those in the partitions the read's ranges cover (our
    # own, and the gaps it reads through because that is cheaper than another request):
    # the others are never read.
    ranges = plan_ranges(owned, j / partitions)
    covered = {p for first, last in ranges for p in range(first, last + 1)}
    mine = [jid for jid in job_ids(j, seed) if job_partition(jid, partitions) in covered]
    await load_jobs(db, mine, partitions, count=j)
    reader = engine.open_database("reader")
    t = time.perf_counter()
    share = await read_share(reader.transact, SPACE, owned, partitions)
    read_wall = time.perf_counter() - t
    st = reader.engine_stats
    return {
        "n": n,
        "j": j,
        "ranges": len(ranges),
        "whole_role_scan": len(covered) == partitions,
        "partitions_owned": len(owned),
        "jobs_owned": len(share.jobs),
        "keys_read": st.keys_read,
        "requests": sum(st.reads_by_op.values()),
        "transactions": share.transactions,
        "read_wall_s": read_wall,
        "wall_s": time.perf_counter() - wall0,
    }


def reads_part(ns: Sequence[int], js: Sequence[int], args: argparse.Namespace) -> list[Any]:
    out = []
    for n in ns:
        for j in js:
            note(f"rebalance read N={n} J={j} ...")
            out.append(run_virtual(one_read, n, j, args.partitions, args.seed))
    table(
        f"One worker's full rebalance read (the paged share read), P = {args.partitions}; "
        "exact for the sampled worker",
        [
            "N",
            "J",
            "partitions owned",
            "jobs owned",
            "ranges",
            "whole-role scan",
            "keys read",
            "J/N",
            "keys - J/N",
            "range requests",
            "keys + 32 x requests",
            "transactions",
            "engine wall (s)",
        ],
        [
            (
                r["n"],
                r["j"],
                r["partitions_owned"],
                r["jobs_owned"],
                r["ranges"],
                "yes" if r["whole_role_scan"] else "no",
                r["keys_read"],
                r["j"] / r["n"],
                r["keys_read"] - r["j"] / r["n"],
                r["requests"],
                r["keys_read"] + 32 * r["requests"],
                r["transactions"],
                r["read_wall_s"],
            )
            for r in out
        ],
    )
    return out


# --------------------------------------------------------------------------------------
# 10,000 workers on the virtual clock: rest, a storm of joins, one join (issue 18, goal 4)
# --------------------------------------------------------------------------------------

#: make_plan calls during the big run: (virtual time, members, CPU seconds, wall seconds).
PLAN_TIMES: list[tuple[float, int, float, float]] = []
_orig_make_plan = make_plan


def _timed_make_plan(
    prev: Plan | None,
    members: Mapping[str, float],
    counts: Mapping[int, int],
    partitions: int,
    epoch: bytes,
) -> Plan:
    c0, w0 = time.process_time(), time.perf_counter()
    out = _orig_make_plan(prev, members, counts, partitions, epoch)
    PLAN_TIMES.append(
        (trio.current_time(), len(members), time.process_time() - c0, time.perf_counter() - w0)
    )
    return out


plan_store.make_plan = _timed_make_plan  # type: ignore[attr-defined]


def _rss_mb() -> float:
    """Peak resident memory of this process so far (MB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@dataclass
class Window:
    """Per-worker counters over a window of virtual time (the workers alive throughout)."""

    seconds: float
    tx: list[float]
    keys: list[float]
    requests: list[float]
    written: list[float]
    conflicts: int
    membership_reads: list[int]
    membership_full_reads: list[int]


class Counters:
    """Snapshots of every worker's engine and retry-loop counters and membership reads."""

    def __init__(self, dbs: dict[str, EngineDatabase], fleet: Fleet) -> None:
        self.dbs, self.fleet = dbs, fleet

    def snap(self) -> dict[str, tuple[int, int, int, int, int, int, int]]:
        out = {}
        for wid, fw in self.fleet.workers.items():
            if not fw.alive or fw.worker is None:
                continue
            db = self.dbs[wid]
            st = db.engine_stats
            out[wid] = (
                db.stats.transactions,
                st.keys_read,
                sum(st.reads_by_op.values()),
                st.keys_written,
                db.stats.conflicts,
                fw.worker._membership_reads,
                fw.worker._membership_full_reads,
            )
        return out

    @staticmethod
    def window(a: dict[str, Any], b: dict[str, Any], seconds: float, only: set[str]) -> Window:
        ws = [w for w in b if w in a and w in only]
        d = [[b[w][i] - a[w][i] for w in ws] for i in range(7)]
        per = max(seconds, 1e-9)
        return Window(
            seconds,
            [x / per for x in d[0]],
            [x / per for x in d[1]],
            [x / per for x in d[2]],
            [x / per for x in d[3]],
            sum(d[4]),
            d[5],
            d[6],
        )


def _spread(xs: Sequence[float]) -> str:
    if not xs:
        return "-"
    return f"{fmt(min(xs))} / {fmt(statistics.mean(xs))} / {fmt(max(xs))}"


async def big_run(
    n: int, storm: int, j: int, partitions: int, liveness: float, rest: float, wave: int, seed: int
) -> dict[str, Any]:
    """``n`` workers started in waves of ``wave``, then ``storm`` more joining at once,
    then one more; rest measured before the storm and at ``n + storm``."""
    wall0 = time.perf_counter()
    out: dict[str, Any] = {
        "n": n,
        "storm": storm,
        "j": j,
        "partitions": partitions,
        "timeout": liveness,
        "rest_seconds": rest,
    }
    PLAN_TIMES.clear()
    engine = Engine(rng=random.Random(seed))
    admin = engine.open_database("admin")
    await load_jobs(admin, job_ids(j, seed), partitions)
    dbs: dict[str, EngineDatabase] = {}

    def db_for(wid: str) -> EngineDatabase:
        db = engine.open_database(wid)
        dbs[wid] = db
        return db

    opts = WorkerOptions(timeout=liveness, settle=2.0, partitions=partitions)

    def settled(fleet: Fleet, members: int) -> bool:
        running = 0
        for fw in fleet.live():
            w, r = fw.worker, fw.runner
            if w is None or r is None or w.membership is None or r.assignment is None:
                return False
            if len(w.membership.members) != members or len(r.assignment.plan.members) != members:
                return False
            if len(r.running) != len(r.target) or not w.lease_valid():
                return False
            running += len(r.running)
        return running == j

    cpu_at = [time.process_time()]

    def note_phase(name: str, t_virtual: float, w0: float) -> None:
        gc.collect()
        gc.freeze()  # what lives on is not traversed again (see big_part)
        cpu = time.process_time() - cpu_at[0]
        cpu_at[0] = time.process_time()
        out.setdefault("phases", []).append(
            {
                "phase": name,
                "virtual_s": t_virtual,
                "wall_s": time.perf_counter() - w0,
                "cpu_s": cpu,
                "rss_mb": _rss_mb(),
            }
        )
        note(
            f"  {name}: {t_virtual:.2f} virtual s, {time.perf_counter() - w0:.1f} s wall, "
            f"{cpu:.1f} s CPU, peak RSS {_rss_mb():,.0f} MB"
        )

    async with trio.open_nursery() as nursery:
        fleet = Fleet(
            nursery,
            db_for,
            role=ROLE,
            root=ROOT,
            options=opts,
            handler=sleeper,
            grace=0.1,
            rng=random.Random(seed),
            runner_options={"assign_in_thread": False},
        )
        counters = Counters(dbs, fleet)

        async def start_many(ids: Sequence[str]) -> None:
            async with trio.open_nursery() as n2:
                for wid in ids:
                    n2.start_soon(fleet.start, wid)

        # 1. Start n workers, a wave of ``wave`` at a time, each wave at once.
        t0, w0 = trio.current_time(), time.perf_counter()
        for first in range(0, n, wave):
            await start_many([f"w{i:05d}" for i in range(first, min(n, first + wave))])
            await trio.sleep(1.0)
        await wait_until(lambda: settled(fleet, n), 600 + n / 10, 1.0)
        note_phase(f"start {n} in waves of {wave}", trio.current_time() - t0, w0)

        async def measure_rest(label: str) -> Window:
            w0 = time.perf_counter()
            await trio.sleep(2 * liveness)  # the start's or storm's tail passes
            a, ta = counters.snap(), trio.current_time()
            await trio.sleep(rest)
            b = counters.snap()
            win = Counters.window(a, b, trio.current_time() - ta, set(b))
            note_phase(label, 2 * liveness + rest, w0)
            return win

        r1 = await measure_rest(f"rest at N={n}")
        out["rest_before"] = r1.__dict__
        out["watches_before"] = [db.unfired_watches for w, db in dbs.items() if w in fleet.workers]

        # 2. The storm: ``storm`` workers join at once.
        old = {fw.id for fw in fleet.live()}
        plans0 = len(PLAN_TIMES)
        written0 = sum(fw.runner.planner.plans_written for fw in fleet.live() if fw.runner)
        a = counters.snap()
        w0 = time.perf_counter()
        nursery.start_soon(start_many, [f"s{i:05d}" for i in range(storm)])
        took = await wait_until(lambda: settled(fleet, n + storm), 600 + n / 10, 0.25)
        b = counters.snap()
        note_phase(f"storm of {storm} joins into {n}", took, w0)
        win = Counters.window(a, b, took, old)
        new_ids = {f"s{i:05d}" for i in range(storm)}
        newcomers = Counters.window(
            {w: (0,) * 7 for w in new_ids}, b, took, new_ids
        )  # the newcomers' counters started at zero
        out["storm"] = {
            "settle_s": took,
            "conflicts_all": sum(b[w][4] - a.get(w, (0,) * 7)[4] for w in b),
            "old": win.__dict__,
            "new": newcomers.__dict__,
            "plans_computed": len(PLAN_TIMES) - plans0,
            "plans_written": sum(
                fw.runner.planner.plans_written for fw in fleet.live() if fw.runner
            )
            - written0,
            "settle_windows": max(1, math.ceil(took / opts.settle)),
        }

        # 3. Rest at n + storm.
        r2 = await measure_rest(f"rest at N={n + storm}")
        out["rest_after"] = r2.__dict__
        out["watches_after"] = [db.unfired_watches for w, db in dbs.items() if w in fleet.workers]

        # 4. One join: keys each existing worker reads until the map is settled.
        old = {fw.id for fw in fleet.live()}
        plans0 = len(PLAN_TIMES)
        a = counters.snap()
        w0 = time.perf_counter()
        await fleet.start("x-newcomer")
        took = await wait_until(lambda: settled(fleet, n + storm + 1), 120 + n / 10, 0.05)
        b = counters.snap()
        note_phase("one join", took, w0)
        jw = Counters.window(a, b, took, old)
        out["join"] = {
            "settle_s": took,
            "keys_per_worker": [x * took for x in jw.keys],
            "tx_per_worker": [x * took for x in jw.tx],
            "membership_reads": jw.membership_reads,
            "full_reads": sum(jw.membership_full_reads),
            "conflicts": jw.conflicts,
            "newcomer_keys": b["x-newcomer"][1],
            "plans_computed": len(PLAN_TIMES) - plans0,
            # What the same workers read at rest in as long: heartbeats, neighbour reads.
            "rest_keys_same_window": [x * took for x in r2.keys],
        }
        out["make_plan"] = [
            {"at": t, "members": m, "cpu_s": c, "wall_s": w} for t, m, c, w in PLAN_TIMES
        ]
        out["violations"] = len(fleet.ledger.violations)
        nursery.cancel_scope.cancel()
    out["wall_s"] = time.perf_counter() - wall0
    out["rss_mb"] = _rss_mb()
    return out


def big_part(args: argparse.Namespace) -> dict[str, Any]:
    n, storm, j = args.big_n, args.big_storm, args.big_jobs
    note(f"big: {n} workers + a storm of {storm} + one join, J={j}, P={args.partitions} ...")
    # One process holds every worker: millions of long-lived objects. CPython's default
    # collector (a full pass each time the tracked heap grows by a quarter, young passes
    # every 700 allocations) took two thirds of the CPU at N = 2,000. Young passes every
    # 50,000 allocations, and what the start built is frozen (gc.freeze) after each phase.
    old = gc.get_threshold()
    gc.set_threshold(50_000, 20, 100)
    try:
        r: dict[str, Any] = run_virtual(
            big_run,
            n,
            storm,
            j,
            args.partitions,
            args.timeout,
            args.big_rest,
            args.big_wave,
            args.seed,
        )
    finally:
        gc.set_threshold(*old)
        gc.unfreeze()
    rb, ra = r["rest_before"], r["rest_after"]
    table(
        f"At rest (virtual clock, timeout {args.timeout:g} s, {args.big_rest:g} s counted), "
        "per worker: min / mean / max over workers",
        ["N", "tx/s", "keys read/s", "read requests/s", "keys written/s", "watches", "conflicts"],
        [
            (
                n,
                _spread(rb["tx"]),
                _spread(rb["keys"]),
                _spread(rb["requests"]),
                _spread(rb["written"]),
                _spread(r["watches_before"]),
                rb["conflicts"],
            ),
            (
                n + storm,
                _spread(ra["tx"]),
                _spread(ra["keys"]),
                _spread(ra["requests"]),
                _spread(ra["written"]),
                _spread(r["watches_after"]),
                ra["conflicts"],
            ),
        ],
    )
    s = r["storm"]
    windows = s["settle_windows"]
    table(
        f"A storm of {storm} simultaneous joins into {n} (settle 2 s, settle_max 10 s); "
        "per worker: min / mean / max",
        ["figure", "value"],
        [
            ("joins to every worker at its quota, all jobs running (s)", s["settle_s"]),
            ("transaction conflicts, all workers", s["conflicts_all"]),
            ("membership reads per existing worker", _spread(s["old"]["membership_reads"])),
            (
                "membership reads per existing worker per settle window",
                _spread([x / windows for x in s["old"]["membership_reads"]]),
            ),
            (
                "full membership reads (existing workers, total)",
                sum(s["old"]["membership_full_reads"]),
            ),
            ("membership reads per newcomer", _spread(s["new"]["membership_reads"])),
            (
                "keys read per existing worker",
                _spread([x * s["settle_s"] for x in s["old"]["keys"]]),
            ),
            ("plans computed / written", f"{s['plans_computed']} / {s['plans_written']}"),
        ],
    )
    jn = r["join"]
    table(
        f"One join into {n + storm}: keys each existing worker read until the map settled",
        ["figure", "value"],
        [
            ("join to settled (s)", jn["settle_s"]),
            ("keys read per existing worker", _spread(jn["keys_per_worker"])),
            ("(at rest in as long)", _spread(jn["rest_keys_same_window"])),
            ("transactions per existing worker", _spread(jn["tx_per_worker"])),
            ("membership reads per existing worker", _spread(jn["membership_reads"])),
            ("full membership reads (total)", jn["full_reads"]),
            ("conflicts", jn["conflicts"]),
            ("keys read by the newcomer", jn["newcomer_keys"]),
            ("plans computed", jn["plans_computed"]),
        ],
    )
    mp = r["make_plan"]
    table(
        "Every make_plan of the run (the map computation per change, by the plan's writer)",
        ["members", "calls", "CPU s (min / mean / max)", "wall s (max)"],
        [
            (
                m,
                len([p for p in mp if p["members"] == m]),
                _spread([p["cpu_s"] for p in mp if p["members"] == m]),
                max(p["wall_s"] for p in mp if p["members"] == m),
            )
            for m in sorted({p["members"] for p in mp})
        ],
    )
    table(
        "Phases (wall and CPU time of this machine; peak RSS of the one process)",
        ["phase", "virtual s", "wall s", "CPU s", "peak RSS (MB)"],
        [(p["phase"], p["virtual_s"], p["wall_s"], p["cpu_s"], p["rss_mb"]) for p in r["phases"]],
    )
    return r


# --------------------------------------------------------------------------------------
# The map computation alone: make_plan and a worker's own share, J up to 10M
# --------------------------------------------------------------------------------------


def _counts(j: int, partitions: int, seed: int) -> dict[int, int]:
    """Per-partition job counts of ``j`` jobs hashed uniformly (what the plan reads)."""
    import numpy as np

    c = np.random.default_rng(seed).multinomial(j, [1.0 / partitions] * partitions)
    nz = np.flatnonzero(c)
    return dict(zip(nz.tolist(), c[nz].tolist(), strict=True))


def _cpu(fn: Any) -> tuple[Any, float, float]:
    c0, w0 = time.process_time(), time.perf_counter()
    out = fn()
    return out, time.process_time() - c0, time.perf_counter() - w0


def _plan_timings(n: int, j: int, p: int, runs: int, seed: int) -> list[dict[str, Any]]:
    """CPU seconds of the first plan, of the plan after one join (the writer's map of the
    current plan warm, the new rendezvous map cold) and of a worker's own share (decode
    the stored plan, compute its map, take its partitions)."""
    from fdbworkers._core import assign as assign_mod
    from fdbworkers._core import plan as plan_mod

    counts = _counts(j, p, seed)
    members = {f"w{i:05d}": 1.0 for i in range(n)}
    joined = {**members, "w-new": 1.0}
    cpu: dict[str, list[float]] = {}
    nxt: Plan | None = None
    data = b""
    delta: bytes | None = None
    jobs = 0
    for _ in range(runs):
        assign_mod._MAPS.clear()  # nothing of these memberships computed yet
        c0 = time.process_time()
        first = make_plan(None, members, counts, p, b"\x01")
        cpu.setdefault("first plan", []).append(time.process_time() - c0)
        assign_mod._MAPS.clear()
        first.map()  # the writer follows the current plan: its map is warm
        c0 = time.process_time()
        nxt = make_plan(first, joined, counts, p, b"\x02")
        cpu.setdefault("plan after a join (with the new rendezvous map)", []).append(
            time.process_time() - c0
        )
        data = b"".join(plan_chunks(encode_plan(nxt)))
        assign_mod._MAPS.clear()
        plan_mod._PLAN_MEMO.clear()  # another process: nothing decoded or mapped yet
        c0 = time.process_time()
        mine = decode_plan(data).map().partitions_of("w00001")
        cpu.setdefault("a worker's own share (decode, map, its partitions)", []).append(
            time.process_time() - c0
        )
        jobs = sum(counts.get(q, 0) for q in mine)
        delta = encode_plan_delta(first, nxt, len(data))
        assert delta is not None, "a join's delta is smaller than the plan"
        assign_mod._MAPS.clear()
        first = decode_plan(encode_plan(first))  # the reader's own copy, digest not computed
        want = nxt.digest()
        c0 = time.process_time()
        got = apply_plan_delta(first, delta)
        assert got.digest() == want
        got.map().partitions_of("w00001")
        cpu.setdefault(
            "a worker's own share from the delta (apply, check, map, its partitions)", []
        ).append(time.process_time() - c0)
    assert nxt is not None and delta is not None
    return [
        {
            "n": n,
            "j": j,
            "what": what,
            "cpu": sorted(cs),
            "overrides": len(nxt.overrides),
            "plan_bytes": len(data),
            "delta_bytes": len(delta),
            "jobs": jobs,
        }
        for what, cs in cpu.items()
    ]


def plan_part(ns: Sequence[int], js: Sequence[int], args: argparse.Namespace) -> list[Any]:
    rows: list[dict[str, Any]] = []
    for n in ns:
        for j in js:
            note(f"plan N={n} J={j} ...")
            rows += _plan_timings(n, j, args.partitions, args.runs, args.seed)
    table(
        f"The map computation (CPU seconds of this process, {args.runs} runs: min / median / "
        f"max), P = {args.partitions}",
        [
            "N",
            "J",
            "what",
            "CPU s",
            "overrides",
            "plan bytes (zlib)",
            "join's delta bytes (zlib)",
            "jobs of w00001",
        ],
        [
            (
                r["n"],
                r["j"],
                r["what"],
                three(r["cpu"]),
                r["overrides"],
                r["plan_bytes"],
                r["delta_bytes"],
                r["jobs"],
            )
            for r in rows
        ],
    )
    return rows


# --------------------------------------------------------------------------------------
# Wall clock: worker processes on a dev server
# --------------------------------------------------------------------------------------


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        parts = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(parts[11]) + int(parts[12])) / ticks


def wallclock_part(args: argparse.Namespace) -> dict[str, Any]:
    procs_n, jobs_n, timeout = args.procs, args.wall_jobs, args.wall_timeout
    tmp = Path(tempfile.mkdtemp(prefix="fdbw-scale-"))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    server, address = start_devserver(tmp, tmp / "server.log")
    workers: dict[str, subprocess.Popen[bytes]] = {}
    result: dict[str, Any] = {"procs": procs_n, "jobs": jobs_n, "timeout": timeout}
    try:
        note(f"dev server at {address}; adding {jobs_n} jobs")
        # Jobs through the CLI would be one process per job: load them in bulk instead.
        host, port = address[len("sim://") :].rsplit(":", 1)

        async def load() -> None:
            db = RemoteDatabase(host, int(port))
            await load_jobs(db, job_ids(jobs_n, args.seed), args.wall_partitions)
            await db.aclose()

        trio.run(load)
        t_start = time.monotonic()
        for i in range(procs_n):
            wid = f"p{i:03d}"
            workers[wid] = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "fdbworkers",
                    "--cluster",
                    address,
                    "--root",
                    ROOT,
                    "worker",
                    "--role",
                    ROLE,
                    "--id",
                    wid,
                    "--demo-handler",
                    "--timeout",
                    str(timeout),
                    "--settle",
                    "1",
                    "--grace",
                    "0.5",
                    "--log-level",
                    "warning",
                    "--log-format",
                    "json",
                ],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=open(tmp / f"{wid}.log", "w"),  # noqa: SIM115
            )
        note(f"started {procs_n} worker processes; waiting for a settled map")

        # The fleet is observed through one client (no CLI process per poll): claims
        # say who runs what; the audit log's "evicted" event carries its wall time.
        host, port = address[len("sim://") :].rsplit(":", 1)
        layout = Layout.for_root(ROOT)

        async def observe_settled() -> float:
            db = RemoteDatabase(host, int(port))
            t0 = time.monotonic()
            try:
                with trio.fail_after(120 + 2 * procs_n):
                    while True:
                        m, _, _, _ = await db.transact(tx_read_membership, SPACE, None)
                        if len(m.members) == procs_n:
                            jobs, claims = await db.transact(tx_list_jobs, SPACE)
                            owners = {c.wid for c in claims.values()}
                            if (
                                len(jobs) == jobs_n
                                and len(claims) == jobs_n
                                and owners <= set(workers)
                            ):
                                return time.monotonic() - t0
                        await trio.sleep(0.5)
            finally:
                await db.aclose()

        trio.run(observe_settled)
        result["start_to_settled_s"] = time.monotonic() - t_start
        # CPU at rest.
        time.sleep(3)
        pids = {w: p.pid for w, p in workers.items()}
        c0 = {w: _cpu_seconds(pid) for w, pid in pids.items()}
        s0 = _cpu_seconds(server.pid)
        t0 = time.monotonic()
        time.sleep(args.wall_rest)
        dt = time.monotonic() - t0
        cpu = [(_cpu_seconds(pids[w]) - c0[w]) / dt for w in pids]
        result["cpu_per_worker_mean_pct"] = 100 * sum(cpu) / len(cpu)
        result["cpu_per_worker_max_pct"] = 100 * max(cpu)
        result["cpu_server_pct"] = 100 * (_cpu_seconds(server.pid) - s0) / dt
        result["rest_s"] = dt
        # SIGKILL one worker: detection (the eviction event's own wall time) and
        # reassignment (every claim of its jobs held by another worker).
        victim = sorted(workers)[len(workers) // 2]

        ev_begin, ev_end = layout.events_range()

        async def events(tr: Transaction) -> list[Any]:
            return list(await tr.get_range(ev_begin, ev_end))

        async def kill_and_observe() -> dict[str, Any]:
            db = RemoteDatabase(host, int(port))
            try:
                _, claims = await db.transact(tx_list_jobs, SPACE)
                victim_jobs = {j for j, c in claims.items() if c.wid == victim}
                tk = time.time()
                workers[victim].send_signal(signal.SIGKILL)
                evicted = reassigned = None
                with trio.move_on_after(10 * timeout + 30):
                    while evicted is None or reassigned is None:
                        if evicted is None:
                            for kv in await db.transact(events):
                                ev = decode(kv.key, kv.value)
                                if ev.get("type") == "evicted" and ev.get("worker") == victim:
                                    evicted = float(ev["wall_time"]) - tk
                        if reassigned is None:
                            _, claims = await db.transact(tx_list_jobs, SPACE)
                            held = [claims.get(j) for j in victim_jobs]
                            if all(c is not None and c.wid != victim for c in held):
                                reassigned = time.time() - tk
                        await trio.sleep(0.05)
                return {
                    "victim_jobs": len(victim_jobs),
                    "kill_to_evicted_s": evicted,
                    "kill_to_reassigned_s": reassigned,
                }
            finally:
                await db.aclose()

        result.update(trio.run(kill_and_observe))
        workers[victim].wait()
        result.update(
            bound_s=timeout + min(1.0, timeout / 4),
            observation="eviction: its audit-log wall_time; reassignment: claims polled / 50 ms",
        )
    finally:
        for p in workers.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in workers.values():
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    table(
        f"Wall clock: {procs_n} worker processes on a dev server, {jobs_n} jobs, "
        f"timeout {timeout:g} s (this machine: {os.cpu_count()} cores)",
        ["figure", "value"],
        [(k, v) for k, v in result.items()],
    )
    return result


# --------------------------------------------------------------------------------------


def plots(out: dict[str, Any], folder: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    fleet = out.get("fleet") or []
    if fleet:
        fig, ax = plt.subplots(1, 2, figsize=(10, 4))
        for j in sorted({r["j"] for r in fleet}):
            rs = sorted((r for r in fleet if r["j"] == j), key=lambda r: r["n"])
            ns = [r["n"] for r in rs]
            ax[0].plot(ns, [r["rest"]["tx"] / r["n"] for r in rs], "o-", label=f"J={j:,}")
            ax[1].plot(ns, [r["rest"]["read"] / r["n"] for r in rs], "o-", label=f"J={j:,}")
        for a, what in zip(ax, ["transactions/s", "keys read/s"], strict=True):
            a.set_xscale("log")
            a.set_xlabel("workers N")
            a.set_ylabel(f"{what} per worker at rest")
            a.set_ylim(bottom=0)
            a.legend()
            a.grid(alpha=0.3)
        fig.suptitle("Cost at rest per worker (virtual clock)")
        fig.tight_layout()
        p = folder / "scale_rest.png"
        fig.savefig(p, dpi=100)
        plt.close(fig)
        written.append(p)
        fig, ax = plt.subplots(1, 2, figsize=(10, 4))
        for j in sorted({r["j"] for r in fleet}):
            rs = sorted((r for r in fleet if r["j"] == j), key=lambda r: r["n"])
            ns = [r["n"] for r in rs]
            ax[0].plot(ns, [r["crash_to_evict"] for r in rs], "o-", label=f"eviction, J={j:,}")
            ax[0].plot(
                ns, [r["crash_to_reassigned"] for r in rs], "s--", label=f"jobs moved, J={j:,}"
            )
            ax[1].plot(ns, [r["join_to_settled"] for r in rs], "o-", label=f"J={j:,}")
        ax[0].axhline(fleet[0]["timeout"] + min(1.0, fleet[0]["timeout"] / 4), color="grey", ls=":")
        ax[0].set_ylabel("seconds after the crash (dotted: eviction bound)")
        ax[1].set_ylabel("seconds from a join to a settled map")
        for a in ax:
            a.set_xscale("log")
            a.set_xlabel("workers N")
            a.set_ylim(bottom=0)
            a.legend(fontsize=7)
            a.grid(alpha=0.3)
        fig.suptitle("Failover and join (virtual clock)")
        fig.tight_layout()
        p = folder / "scale_failover.png"
        fig.savefig(p, dpi=100)
        plt.close(fig)
        written.append(p)
    reads = out.get("reads") or []
    if reads:
        fig, ax = plt.subplots(figsize=(6, 4))
        for n in sorted({r["n"] for r in reads}):
            rs = sorted((r for r in reads if r["n"] == n), key=lambda r: r["j"])
            ax.plot([r["j"] for r in rs], [r["keys_read"] for r in rs], "o-", label=f"N={n}")
            ax.plot(
                [r["j"] for r in rs],
                [2 * r["j"] / n for r in rs],
                ":",
                color="grey",
            )
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("jobs J")
        ax.set_ylabel("keys read by one worker's rebalance")
        ax.set_title("Rebalance read (dotted: 2J/N)")
        ax.legend()
        ax.grid(alpha=0.3)
        fig.tight_layout()
        p = folder / "scale_reads.png"
        fig.savefig(p, dpi=100)
        plt.close(fig)
        written.append(p)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="CI-size run")
    parser.add_argument(
        "--part", choices=["all", "fleet", "reads", "wallclock", "big", "plan"], default="all"
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=10.0, help="worker timeout (virtual)")
    parser.add_argument("--partitions", type=int, default=65536)
    parser.add_argument("--procs", type=int, default=50, help="wallclock: worker processes")
    parser.add_argument("--wall-jobs", type=int, default=1000)
    parser.add_argument("--wall-timeout", type=float, default=3.0)
    parser.add_argument("--wall-rest", type=float, default=20.0)
    parser.add_argument("--wall-partitions", type=int, default=4096)
    parser.add_argument(
        "--fleet", action="append", metavar="N,J,REST", help="fleet runs instead of the defaults"
    )
    parser.add_argument("--big-n", type=int, default=9000, help="big: workers before the storm")
    parser.add_argument("--big-storm", type=int, default=1000, help="big: joins at once")
    parser.add_argument("--big-jobs", type=int, default=20_000, help="big: jobs")
    parser.add_argument("--big-rest", type=float, default=30.0, help="big: rest counted (s)")
    parser.add_argument("--big-wave", type=int, default=500, help="big: workers started at once")
    parser.add_argument("--plan-n", type=int, action="append", help="plan: members (repeatable)")
    parser.add_argument("--plan-j", type=int, action="append", help="plan: jobs (repeatable)")
    parser.add_argument("--runs", type=int, default=3, help="plan: runs of each timing")
    parser.add_argument("--json", type=Path, help="write all results here")
    parser.add_argument("--plots", type=Path, help="write PNG plots into this folder")
    args = parser.parse_args()
    quiet_logs()
    out: dict[str, Any] = {"args": {k: str(v) for k, v in vars(args).items()}}
    if args.quick:
        args.partitions = min(args.partitions, 1024)
        fleet_cfg = [(5, 100, 10.0), (20, 200, 10.0)]
        reads_ns, reads_js = [10, 100], [1000, 10_000]
        args.procs, args.wall_jobs, args.wall_rest = min(args.procs, 4), 40, 3.0
        args.big_n, args.big_storm, args.big_jobs, args.big_rest = 40, 10, 200, 10.0
        args.big_wave = 20
        plan_ns, plan_js = [100], [10_000]
    else:
        # One process simulates every worker; other sizes with --fleet N,J,REST.
        fleet_cfg = [(n, j, 60.0) for j in (1000, 10_000, 100_000) for n in (10, 100, 1000)]
        reads_ns, reads_js = [10, 100, 1000], [1000, 10_000, 100_000, 1_000_000]
        plan_ns, plan_js = [1000, 10_000], [1_000_000, 10_000_000]
    plan_ns = args.plan_n or plan_ns
    plan_js = args.plan_j or plan_js
    if args.fleet:
        fleet_cfg = [(int(n), int(j), float(r)) for n, j, r in (c.split(",") for c in args.fleet)]
    if args.part in ("all", "fleet"):
        out["fleet"] = fleet_part(fleet_cfg, args)
    if args.part in ("all", "reads"):
        out["reads"] = reads_part(reads_ns, reads_js, args)
    if args.part in ("all", "wallclock"):
        out["wallclock"] = wallclock_part(args)
    if args.part in ("all", "plan"):
        out["plan"] = plan_part(plan_ns, plan_js, args)
    if args.part in ("all", "big"):
        out["big"] = big_part(args)
    if args.plots:
        for p in plots(out, args.plots):
            note(f"wrote {p}")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1, default=str))


if __name__ == "__main__":
    main()
