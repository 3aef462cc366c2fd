"""A share of any size (issue 18, goal 3): bulk adds, time until every job of a large
share runs, and the keys a worker reads per rebalance.

    eval "$(../shared/fdb/start-local-cluster)"          # or any FDB_CLUSTER_FILE
    .venv/bin/python benchmarks/share_bench.py --part add --jobs 200000 --runs 3
    .venv/bin/python benchmarks/share_bench.py --part run --workers 1 --jobs 1000000
    .venv/bin/python benchmarks/share_bench.py --part run --workers 3 --jobs 300000
    .venv/bin/python benchmarks/share_bench.py --part reads     # the engine: exact keys
    .venv/bin/python benchmarks/share_bench.py --quick          # CI size, ~1 min
    ../shared/fdb/stop-local-cluster "$FDB_LOCAL_CLUSTER_DIR"

Parts:

* ``add``: ``add_jobs`` of ``--jobs`` new jobs on the real cluster, ``--runs`` times
  (min / median / max jobs/s), and in the same run the baseline it replaces: ``add_job``,
  one job per transaction, on 2,000 jobs.
* ``run``: ``--workers`` workers in this process, ``--jobs`` jobs added first; the time
  from starting the workers until every job's handler has started (each exactly once),
  and per worker the keys, range requests and transactions of its share reads and its
  claims. With ``--rebalance`` a worker then joins, and leaves again: the keys each
  worker read in each of those steps. ``--gc freeze`` (the default) calls ``gc.freeze()``
  every second while jobs start (docs/architecture.md, "Very large shares").
* ``reads``: on the embedded engine, exactly: the keys and range requests of one worker's
  full read of its share (``J/N``) and of its read after another worker left (it gains
  about ``J/N^2``), for J up to 1,000,000 and N up to 1,000, P = 65,536. Only the jobs
  of the partitions the read's ranges cover are loaded (an engine with J in its job
  counter): the read touches nothing else.

A million jobs and their claims need about 0.6 GB of storage: the memory engine of
``../shared/fdb/start-local-cluster`` (512 MiB) is too small. ``--migrate-to-ssd``
moves such a throwaway cluster to the ssd engine first (about a minute).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from contextlib import suppress
from pathlib import Path
from typing import Any

import trio
import trio.testing

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import note, quiet_logs, table

from fdbworkers import Job, JobRunner, WorkerOptions, add_job, add_jobs, open_worker
from fdbworkers._backends.engine import Engine
from fdbworkers._core.assign import assign, job_partition
from fdbworkers._core.keys import Layout
from fdbworkers._core.share import plan_ranges
from fdbworkers._db import Database, Transaction
from fdbworkers._store.jobs import JobRecord
from fdbworkers._store.members import tx_ensure_role
from fdbworkers._store.share import read_share
from fdbworkers.testing import wait_until

ROLE = "r"
P = 65_536


# --------------------------------------------------------------------------------------
# The real cluster
# --------------------------------------------------------------------------------------


def open_real() -> Database:
    from fdbworkers._backends.fdb import open_fdb

    db = open_fdb()
    db.default_timeout = 30.0
    return db


async def clear(db: Database, layout: Layout) -> None:
    async def tx(tr: Transaction) -> None:
        tr.clear_range(layout.prefix, layout.prefix + b"\xff")

    with trio.CancelScope(shield=True):
        await db.transact(tx)


def migrate_to_ssd() -> None:
    """Move a memory-engine cluster to the ssd engine (a throwaway one: it is changed)."""
    cluster = os.environ["FDB_CLUSTER_FILE"]
    for command in ("configure storage_migration_type=aggressive", "configure ssd"):
        subprocess.run(["fdbcli", "-C", cluster, "--timeout", "30", "--exec", command], check=True)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        time.sleep(2)
        out = subprocess.run(
            ["fdbcli", "-C", cluster, "--timeout", "10", "--exec", "status json"],
            capture_output=True,
            text=True,
        ).stdout
        try:
            status = json.loads(out)
        except ValueError:
            continue
        roles = [
            r
            for p in status["cluster"]["processes"].values()
            for r in p["roles"]
            if r["role"] == "storage"
        ]
        healthy = status["cluster"].get("data", {}).get("state", {}).get("healthy")
        if roles and healthy and all(r.get("kvstore_total_bytes", 0) > 2e9 for r in roles):
            note("the cluster runs the ssd engine")
            return
    raise RuntimeError("the cluster did not move to the ssd engine within 240 s")


async def add_part(args: argparse.Namespace) -> dict[str, Any]:
    db = open_real()
    rates: list[float] = []
    try:
        for run in range(args.runs):
            layout = Layout.for_root(f"share-bench-{random.getrandbits(24):06x}")
            ids = [(f"j{i:07d}", {"n": i}) for i in range(args.jobs)]
            t = time.perf_counter()
            r = await add_jobs(db, ROLE, ids, root=layout.prefix)
            rates.append(args.jobs / (time.perf_counter() - t))
            note(f"add run {run}: {rates[-1]:,.0f} jobs/s ({r.transactions} transactions)")
            await clear(db, layout)
        layout = Layout.for_root(f"share-bench-{random.getrandbits(24):06x}")
        n = 2000
        t = time.perf_counter()
        for i in range(n):
            await add_job(db, ROLE, f"j{i:07d}", {"n": i}, root=layout.prefix)
        baseline = n / (time.perf_counter() - t)
        await clear(db, layout)
    finally:
        await db.aclose()
    med = statistics.median(rates)
    table(
        f"add_jobs on the real cluster, {args.jobs:,} new jobs per run (spec {{'n': i}}), "
        f"{args.runs} runs; baseline add_job (one job per transaction) on 2,000 jobs",
        ["jobs/s min", "median", "max", "add_job jobs/s", "median / add_job"],
        [(min(rates), med, max(rates), baseline, med / baseline)],
    )
    return {"rates": rates, "baseline": baseline}


class Starts:
    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.live: dict[str, int] = {}
        self.double = 0
        self.all_running = trio.Event()

    async def handler(self, job: Job) -> None:
        n = self.live.get(job.id, 0) + 1
        self.live[job.id] = n
        self.double += n > 1
        if len(self.live) == self.expected:
            self.all_running.set()
        try:
            await trio.sleep_forever()
        finally:
            if self.live[job.id] == 1:
                del self.live[job.id]
            else:
                self.live[job.id] -= 1


def share_stats(runner: JobRunner) -> tuple[int, int, int, int]:
    st = runner.statistics()
    return st.share_keys_read, st.share_requests, st.share_transactions, st.share_reads


async def run_part(args: argparse.Namespace) -> dict[str, Any]:
    db = open_real()
    layout = Layout.for_root(f"share-bench-{random.getrandbits(24):06x}")
    options = WorkerOptions(timeout=args.timeout, settle=2.0)
    out: dict[str, Any] = {"workers": args.workers, "jobs": args.jobs}
    try:
        t = time.perf_counter()
        await add_jobs(
            db, ROLE, ((f"j{i:07d}", None) for i in range(args.jobs)), root=root_of(layout)
        )
        out["add_rate"] = args.jobs / (time.perf_counter() - t)
        note(f"added {args.jobs:,} jobs at {out['add_rate']:,.0f}/s")
        starts = Starts(args.jobs)
        runners: dict[str, JobRunner] = {}
        stall = [0.0]
        async with trio.open_nursery() as nursery:
            if args.gc == "freeze":
                gc.collect()
                gc.freeze()

                async def freezer() -> None:
                    while True:
                        await trio.sleep(1.0)
                        gc.collect(1)  # the young generations: cheap
                        gc.freeze()

                nursery.start_soon(freezer)

            async def lag() -> None:  # the longest the event loop did not get a turn
                last = time.perf_counter()
                while True:
                    await trio.sleep(0.05)
                    now = time.perf_counter()
                    stall[0] = max(stall[0], now - last - 0.05)
                    last = now

            nursery.start_soon(lag)
            scopes: dict[str, trio.CancelScope] = {}

            async def worker(wid: str, task_status: trio.TaskStatus[None]) -> None:
                with trio.CancelScope() as scope:
                    scopes[wid] = scope
                    async with open_worker(
                        db, ROLE, worker_id=wid, root=root_of(layout), options=options
                    ) as w:
                        runners[wid] = JobRunner(w, starts.handler, grace=1.0)
                        task_status.started()
                        await runners[wid].run()

            t = time.perf_counter()
            for i in range(args.workers):
                await nursery.start(worker, f"w{i}")
            with trio.move_on_after(args.bound):
                await starts.all_running.wait()
            out["all_running_s"] = time.perf_counter() - t
            out["running"] = len(starts.live)
            out["double_runs"] = starts.double
            out["max_loop_stall_s"] = stall[0]
            out["first"] = {wid: share_stats(r) for wid, r in runners.items()}
            note(f"every job running after {out['all_running_s']:.1f} s: {out['running']:,}")
            if args.rebalance:
                for step in ("join", "leave"):
                    before = {wid: share_stats(r) for wid, r in runners.items()}
                    moved_t = time.perf_counter()
                    if step == "join":
                        await nursery.start(worker, "joiner")
                    else:
                        assert runners["joiner"].w is not None
                        await runners["joiner"].w.drain()
                        scopes["joiner"].cancel()
                    await trio.sleep(options.settle + 1.0)

                    def settled(step: str = step) -> bool:
                        live = [r for w, r in runners.items() if step == "join" or w != "joiner"]
                        want: int = args.jobs
                        return (
                            len(starts.live) == want
                            and sum(len(r.running) for r in live) == want
                            and all(len(r.running) == len(r.target) for r in live)
                            and (step != "join" or len(runners["joiner"].running) > 0)
                        )

                    with suppress(trio.TooSlowError):
                        await wait_until(settled, args.bound, step=0.5)
                    after = {wid: share_stats(r) for wid, r in runners.items()}
                    zero = (0, 0, 0, 0)
                    out[step] = {
                        "seconds": time.perf_counter() - moved_t,
                        "reads": {
                            wid: tuple(
                                a - b
                                for a, b in zip(after[wid], before.get(wid, zero), strict=True)
                            )
                            for wid in after
                        },
                    }
                    note(f"{step}: settled after {out[step]['seconds']:.1f} s")
            nursery.cancel_scope.cancel()
        if args.gc == "freeze":
            gc.unfreeze()
    finally:
        await clear(db, layout)
        await db.aclose()
    n = args.workers
    table(
        f"{n} worker(s) x {args.jobs:,} jobs on the real cluster (one process, timeout "
        f"{args.timeout:g} s, gc {args.gc}): time from starting the workers until every job's "
        "handler started, each once",
        ["add jobs/s", "every job running (s)", "jobs running", "double runs",
         "longest event-loop stall (s)"],
        [(out["add_rate"], out["all_running_s"], out["running"], out["double_runs"],
          out["max_loop_stall_s"])],
    )  # fmt: skip
    rows = [
        ("first read", wid, k, args.jobs / n, k / (args.jobs / n), rq, tx, reads)
        for wid, (k, rq, tx, reads) in out["first"].items()
    ]
    for step in ("join", "leave"):
        if step in out:
            rows += [
                (step, wid, k, args.jobs / (n + 1) / (n + 1 if step == "leave" else 1),
                 k / max(1, args.jobs / (n + 1) / (n + 1 if step == "leave" else 1)), rq, tx, reads)
                for wid, (k, rq, tx, reads) in out[step]["reads"].items()
            ]  # fmt: skip
    table(
        "Keys each worker read (share reads: the paged read of owned, gained and changed "
        "partitions), per step",
        ["step", "worker", "keys read", "J/N (first) or J/N^2 (after a leave)", "ratio",
         "range requests", "transactions", "reads"],
        rows,
    )  # fmt: skip
    return out


def root_of(layout: Layout) -> bytes:
    return layout.prefix


# --------------------------------------------------------------------------------------
# Exact keys per read, on the engine
# --------------------------------------------------------------------------------------

_IDS: dict[int, list[tuple[str, int]]] = {}


def ids_with_partitions(j: int) -> list[tuple[str, int]]:
    if j not in _IDS:
        _IDS[j] = [(f"j{i:07d}", job_partition(f"j{i:07d}", P)) for i in range(j)]
    return _IDS[j]


async def exact_read(j: int, parts: set[int]) -> tuple[int, int, int, int]:
    """(keys, requests, transactions, ranges) of a paged read of ``parts`` with J jobs."""
    engine = Engine(rng=random.Random(1))
    db = engine.open_database("loader")
    space = Layout.for_root("share-bench").role(ROLE)
    ranges = plan_ranges(parts, j / P)
    covered = bytearray(P)
    for first, last in ranges:
        covered[first : last + 1] = b"\x01" * (last - first + 1)
    mine = [(jid, p) for jid, p in ids_with_partitions(j) if covered[p]]

    async def ensure(tr: Transaction) -> None:
        await tx_ensure_role(tr, space, P)
        tr.set(space.job_count_key, j.to_bytes(8, "little", signed=True))

    await db.transact(ensure)
    value = JobRecord("", 0).encode()
    for i in range(0, len(mine), 5000):

        async def write(
            tr: Transaction, chunk: Sequence[tuple[str, int]] = mine[i : i + 5000]
        ) -> None:
            for jid, p in chunk:
                tr.set(space.job_key(p, jid), value)

        await db.transact(write)
    reader = engine.open_database("reader")
    share = await read_share(reader.transact, space, parts, P)
    st = reader.engine_stats
    return st.keys_read, sum(st.reads_by_op.values()), share.transactions, len(ranges)


def reads_part(ns: Sequence[int], js: Sequence[int]) -> list[dict[str, Any]]:
    out = []
    for n in ns:
        members = {f"w{i:04d}": 1.0 for i in range(n)}
        a = assign(members, P)
        me = "w0000"
        owned = set(a.partitions_of(me))
        gained: set[int] = set()
        if n > 1:
            after = assign({w: 1.0 for w in members if w != "w0001"}, P)
            gained = set(after.partitions_of(me)) - owned
        for j in js:
            if j > 1_000_000:
                continue
            note(f"reads N={n} J={j:,} ...")
            full = trio.run(
                exact_read, j, owned, clock=trio.testing.MockClock(autojump_threshold=0)
            )
            leave = (
                trio.run(exact_read, j, gained, clock=trio.testing.MockClock(autojump_threshold=0))
                if gained
                else None
            )
            row: dict[str, Any] = {"n": n, "j": j, "full": full, "leave": leave}
            out.append(row)
    table(
        f"Keys and range requests of one worker's reads, exact (embedded engine), P = {P:,}: "
        "the full read of its share, and its read after another worker left (it gains about "
        "P/N^2 partitions). Cost = keys + 32 x requests (the planner's measure)",
        ["N", "J", "full read: keys", "J/N", "keys - J/N", "requests", "transactions",
         "after a leave: keys", "J/N^2", "requests"],
        [
            (r["n"], r["j"], r["full"][0], r["j"] / r["n"], r["full"][0] - r["j"] / r["n"],
             r["full"][1], r["full"][2],
             r["leave"][0] if r["leave"] else "-", r["j"] / r["n"] ** 2 if r["leave"] else "-",
             r["leave"][1] if r["leave"] else "-")
            for r in out
        ],
    )  # fmt: skip
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=["add", "run", "reads", "all"], default="all")
    parser.add_argument("--quick", action="store_true", help="CI size")
    parser.add_argument("--jobs", type=int, default=200_000)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=30.0, help="the workers' timeout")
    parser.add_argument("--bound", type=float, default=900.0, help="give up after (s)")
    parser.add_argument("--gc", choices=["freeze", "default"], default="freeze")
    parser.add_argument("--rebalance", action="store_true", help="then a join and a leave")
    parser.add_argument("--migrate-to-ssd", action="store_true")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    quiet_logs()
    out: dict[str, Any] = {}
    real = bool(os.environ.get("FDB_CLUSTER_FILE"))
    if args.quick:
        args.jobs, args.runs = 20_000, 1
    if args.migrate_to_ssd and real:
        migrate_to_ssd()
    if args.part in ("add", "all") and real:
        out["add"] = trio.run(add_part, args)
    if args.part in ("run", "all") and real:
        out["run"] = trio.run(run_part, args)
    if args.part in ("reads", "all"):
        ns = [1, 10, 100] if args.quick else [1, 3, 10, 100, 1000]
        js = [1_000, 10_000] if args.quick else [1_000, 10_000, 100_000, 1_000_000]
        out["reads"] = reads_part(ns, js)
    if not real and args.part in ("add", "run", "all"):
        note("no FDB_CLUSTER_FILE: the real-cluster parts were skipped")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2, default=str))


if __name__ == "__main__":
    main()
