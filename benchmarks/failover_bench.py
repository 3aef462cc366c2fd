"""Failover, balance, join and restarts on the virtual clock (issue 16's scenarios).

The same scenarios as the peer comparison (N = 5 workers, J = 60 jobs), run through
the library on the embedded engine under trio's virtual clock, so the figures are
deterministic for a seed and free of machine noise: what the protocol itself costs.
Three seeds, min / median / max. The real-cluster figures beside kazoo and tooz come
from ``benchmarks/peer_compare.py``.

    python benchmarks/failover_bench.py             # 3 seeds
    python benchmarks/failover_bench.py --seeds 5
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio
import trio.testing

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import quiet_logs

from fdbworkers import WorkerOptions, add_job
from fdbworkers._backends.engine import Engine
from fdbworkers.testing import Fleet, RunLedger

ROOT = "fdbworkers-bench"
ROLE = "bench"
N = 5
J = 60


def unowned_seconds(ledger: RunLedger, jobs: list[str], t0: float, t1: float) -> float:
    """Job-seconds in [t0, t1] during which a job had no running handler."""
    total = 0.0
    for j in jobs:
        spans = sorted(
            (max(r.start, t0), min(r.end if r.end is not None else t1, t1))
            for r in ledger.runs
            if r.job == j
        )
        covered, cur = 0.0, t0
        for a, b in spans:
            if b <= cur:
                continue
            covered += b - max(a, cur)
            cur = b
        total += (t1 - t0) - covered
    return max(0.0, total)


async def wait_until(pred: Callable[[], bool], limit: float, step: float = 0.01) -> float:
    t0 = trio.current_time()
    with trio.fail_after(limit):
        while not pred():  # noqa: ASYNC110 - polling the fleet's state is the point
            await trio.sleep(step)
    return trio.current_time() - t0


def all_held(fleet: Fleet, jobs: list[str], exclude: str | None = None) -> bool:
    owners = fleet.owners()
    return all(len(owners.get(j, [])) == 1 and owners[j][0] != exclude for j in jobs)


def stable(fleet: Fleet, jobs: list[str]) -> bool:
    if not all_held(fleet, jobs):
        return False
    counts = [len(fw.runner.running) for fw in fleet.live() if fw.runner is not None]
    return max(counts) - min(counts) <= 1


async def scenario(seed: int, kind: str, worker_timeout: float) -> dict[str, Any]:
    engine = Engine(rng=random.Random(seed))
    admin = engine.open_database("admin")
    jobs = [f"job-{seed}-{i:03d}" for i in range(J)]
    for j in jobs:
        await add_job(admin, ROLE, j, root=ROOT)
    opts = WorkerOptions(timeout=worker_timeout, settle=2.0, check_interval=1.0)
    out: dict[str, Any] = {}
    async with trio.open_nursery() as nursery:
        fleet = Fleet(
            nursery,
            engine.open_database,
            role=ROLE,
            root=ROOT,
            options=opts,
            rng=random.Random(seed),
            runner_options={"assign_in_thread": False},
        )
        for i in range(N):
            await fleet.start(f"w{i}")
        await wait_until(lambda: stable(fleet, jobs), 120)
        await trio.sleep(5.0)
        if kind == "balance":
            out["counts"] = sorted(
                len(fw.runner.running) for fw in fleet.live() if fw.runner is not None
            )
        elif kind == "crash":
            victim = fleet.workers["w2"]
            assert victim.worker is not None and victim.runner is not None
            beats: list[float] = []
            victim.worker.on_lease_renewed(lambda: beats.append(trio.current_time()))
            # A few heartbeats; the crash falls anywhere between two (seeded).
            await trio.sleep(5.0 + random.Random(seed).uniform(0.0, worker_timeout / 3))
            last_beat = beats[-1] if beats else None
            its = list(victim.runner.running)
            t0 = trio.current_time()
            victim.crash()
            took = await wait_until(lambda: all_held(fleet, jobs, "w2"), 60)
            out["kill_to_held"] = took
            out["beat_to_held"] = took + (t0 - last_beat if last_beat is not None else 0.0)
            out["unowned"] = unowned_seconds(fleet.ledger, its, t0, t0 + took)
        elif kind == "join":
            t0 = trio.current_time()
            await fleet.start("w-new")
            took = await wait_until(lambda: stable(fleet, jobs), 60)
            out["join_to_stable"] = took
            out["moved"] = sum(1 for r in fleet.ledger.runs if r.start >= t0)
        elif kind in ("restart_handoff", "restart_in_place"):
            t0 = trio.current_time()
            plans0 = plan_seq(fleet)
            for i in range(N):
                fw = fleet.workers[f"w{i}"]
                if kind == "restart_in_place":
                    await fw.stop_for_restart()
                else:
                    await fw.stop()
                await trio.sleep(0.5)  # the process restarts
                await fleet.start(f"w{i}")
                await wait_until(lambda: stable(fleet, jobs), 60)
                await trio.sleep(3.0)
            t1 = trio.current_time()
            plans1 = plan_seq(fleet)
            out["handler_starts"] = sum(1 for r in fleet.ledger.runs if r.start >= t0)
            out["rebalances"] = plans1 - plans0
            out["unowned"] = unowned_seconds(fleet.ledger, jobs, t0, t1)
        out["violations"] = len(fleet.ledger.violations)
        nursery.cancel_scope.cancel()
    return out


def plan_seq(fleet: Fleet) -> int:
    """The sequence number of the stored plan (one per plan written)."""
    return max(
        fw.runner.assignment.plan.seq
        for fw in fleet.live()
        if fw.runner is not None and fw.runner.assignment is not None
    )


def run(seed: int, kind: str, timeout: float) -> dict[str, Any]:
    clock = trio.testing.MockClock(autojump_threshold=0)
    result: dict[str, Any] = trio.run(scenario, seed, kind, timeout, clock=clock)
    return result


def mmm(xs: list[float]) -> str:
    if not xs:
        return "-"
    return f"{min(xs):.2f} / {statistics.median(xs):.2f} / {max(xs):.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    quiet_logs()
    seeds = list(range(1, args.seeds + 1))
    rows: list[tuple[str, str]] = []
    bal = [run(s, "balance", 10.0)["counts"] for s in seeds]
    rows.append(("jobs per worker, N=5, J=60 (fair share 12)", "; ".join(map(str, bal))))
    for t in (4.0, 10.0):
        cr = [run(s, "crash", t) for s in seeds]
        rows.append(
            (f"crash T={t:g}: kill -> every job held (s)", mmm([c["kill_to_held"] for c in cr]))
        )
        rows.append(
            (
                f"crash T={t:g}: last heartbeat -> every job held (s)",
                mmm([c["beat_to_held"] for c in cr]),
            )
        )
        rows.append((f"crash T={t:g}: unowned job-seconds", mmm([c["unowned"] for c in cr])))
    jn = [run(s, "join", 10.0) for s in seeds]
    rows.append(("join 5->6: spawn -> stable (s)", mmm([x["join_to_stable"] for x in jn])))
    rows.append(("join 5->6: handler starts (optimum 10)", mmm([float(x["moved"]) for x in jn])))
    for mode in ("restart_handoff", "restart_in_place"):
        rr = [run(s, mode, 10.0) for s in seeds]
        name = mode.replace("restart_", "rolling restart of 5, ").replace("_", " ")
        rows.append((f"{name}: handler starts", mmm([float(x["handler_starts"]) for x in rr])))
        rows.append((f"{name}: plans written", mmm([float(x["rebalances"]) for x in rr])))
        rows.append((f"{name}: unowned job-seconds", mmm([x["unowned"] for x in rr])))
    print(f"virtual clock, engine, N={N}, J={J}, settle 2 s, check interval 1 s; seeds {seeds}")
    print("| figure | min / median / max |")
    print("|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")


if __name__ == "__main__":
    main()
