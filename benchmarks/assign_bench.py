"""Benchmark of the job-to-worker assignment (fdbworkers._core.assign) against baselines.

    python benchmarks/assign_bench.py                # full sizes, about three minutes
    python benchmarks/assign_bench.py --quick        # CI smoke run, a few seconds
    python benchmarks/assign_bench.py --part direct  # only the first table (~40 s)

Measured in one run, on the same job ids and worker ids:

* ours: ``assign`` with the defaults (``DEFAULT_PARTITIONS``, ``balance="auto"``), and
  with ``balance=None`` (pure rank rendezvous);
* per-job rendezvous: every job hashed against every worker (the ideal that partitions
  approximate). Its placement is computed with numpy; its *time* is also measured the
  naive way (one BLAKE2b per job and worker in Python) on a subset and extrapolated;
* a consistent-hash ring: ``uhashring.HashRing`` (160 virtual nodes per worker, the
  package default), one lookup per job;
* kazoo's ``SetPartitioner`` default ``partition_func`` (sorted members, sorted items,
  round robin), called directly (no ZooKeeper needed).

And first, ours alone: the map without capacities (``balance=None``, one replica)
through the capacity solver and through the direct path ``assign`` takes for few
members; both give the same owners (checked), the times decide the rule of the
threshold (``--part direct``: only this table).

Jobs are real ids (``job-<seed>-<i>``) put in partitions with ``job_partition``.
"Balance" is the largest number of jobs of one worker over the mean (weighted: the
largest ``|jobs / (J * w / W) - 1|``). "Movement" is the jobs that change owner on one
join or one leave, over the jobs that must move (those of the newcomer / the leaver)
and over J/N.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import math
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from _common import three
from numpy.typing import NDArray

from fdbworkers._core import assign as assign_module
from fdbworkers._core.assign import (
    DEFAULT_BALANCE,
    DEFAULT_PARTITIONS,
    assign,
    job_partition,
    stable_hash64,
)
from fdbworkers._core.matching import _Solver, direct_pays, direct_primaries
from fdbworkers._core.rendezvous import _member_keys


def uncached_assign(workers: dict[str, float], partitions: int = DEFAULT_PARTITIONS) -> object:
    """``assign`` without its memo (it remembers the last few memberships)."""
    assign_module._MAPS.clear()
    return assign(workers, partitions)


Owners = NDArray[np.int64]  # job index -> worker index (in a fixed list of names)


@dataclass(frozen=True)
class Sizes:
    bal_jobs: int
    bal_workers: int
    big_jobs: int
    big_workers: int
    weighted_jobs: int
    weighted: tuple[float, ...]
    seeds_bal: int
    seeds_big: int
    events: int
    naive_jobs: int
    p_table: tuple[int, ...]
    direct: tuple[tuple[int, tuple[int, ...]], ...]  # (P, member counts)
    direct_runs: int


FULL = Sizes(
    bal_jobs=100_000,
    bal_workers=100,
    big_jobs=1_000_000,
    big_workers=1000,
    weighted_jobs=100_000,
    weighted=(1.0, 2.0, 4.0) * 10,
    seeds_bal=10,
    seeds_big=2,
    events=3,
    naive_jobs=2000,
    p_table=(4096, 16384, 65536, 262144),
    direct=(
        (DEFAULT_PARTITIONS, (2, 4, 5, 8, 16, 32, 48, 64, 80, 100)),
        (1024, (2, 4, 8, 12, 16, 32)),
        (4097, (2, 4, 8, 12, 16, 32)),
        (100_000, (2, 8, 16, 24, 32, 48)),
    ),
    direct_runs=5,
)
QUICK = Sizes(
    bal_jobs=20_000,
    bal_workers=20,
    big_jobs=100_000,
    big_workers=100,
    weighted_jobs=20_000,
    weighted=(1.0, 2.0, 4.0) * 3,
    seeds_bal=2,
    seeds_big=1,
    events=1,
    naive_jobs=200,
    p_table=(4096, 65536),
    direct=((4097, (2, 8)),),
    direct_runs=3,
)


def log(msg: str = "") -> None:
    print(msg, flush=True)


def timed(fn: Callable[[], object]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


# ------------------------------------------------------------------------- data


@dataclass
class Jobs:
    ids: list[str]
    hashes: NDArray[np.uint64]  # stable_hash64 of each id (per-job rendezvous)

    def partitions(self, p: int) -> Owners:
        return np.array([job_partition(j, p) for j in self.ids], dtype=np.int64)


def make_jobs(count: int, seed: int) -> Jobs:
    ids = [f"job-{seed}-{i}" for i in range(count)]
    hashes = np.array([stable_hash64(j.encode()) for j in ids], dtype=np.uint64)
    return Jobs(ids, hashes)


def worker_ids(count: int, seed: int) -> list[str]:
    return [f"s{seed}-w{i}" for i in range(count)]


# ------------------------------------------------------------------- algorithms


class Algo:
    name = ""

    def owners(self, jobs: Jobs, workers: dict[str, float]) -> list[str]:
        """Owner name of every job."""
        raise NotImplementedError


class Ours(Algo):
    def __init__(self, partitions: int, balance: float | str | None, label: str) -> None:
        self.p = partitions
        self.balance = balance
        self.name = label
        self._parts: dict[int, Owners] = {}

    def parts(self, jobs: Jobs) -> Owners:
        got = self._parts.get(id(jobs))
        if got is None:
            got = jobs.partitions(self.p)
            self._parts[id(jobs)] = got
        return got

    def owners(self, jobs: Jobs, workers: dict[str, float]) -> list[str]:
        a = assign(workers, self.p, balance=self.balance)
        prim = np.array(a.primaries(), dtype=object)
        return list(prim[self.parts(jobs)])


_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def mix64(x: NDArray[np.uint64]) -> NDArray[np.uint64]:
    x = x ^ (x >> np.uint64(30))
    x *= _M1
    x ^= x >> np.uint64(27)
    x *= _M2
    x ^= x >> np.uint64(31)
    return x


class PerJobRendezvous(Algo):
    """Weighted rendezvous of every job against every worker (numpy, chunked)."""

    name = "per-job rendezvous"

    def owners(self, jobs: Jobs, workers: dict[str, float]) -> list[str]:
        names = list(workers)
        keys = np.array([stable_hash64(w.encode()) for w in names], dtype=np.uint64)
        w = np.array([workers[n] for n in names])
        uniform = bool(np.all(w == w[0]))
        out = np.empty(len(jobs.ids), dtype=np.int64)
        step = max(1, 4_000_000 // len(names))
        for s in range(0, len(jobs.ids), step):
            h = mix64(jobs.hashes[s : s + step, None] ^ keys[None, :])
            if uniform:
                out[s : s + step] = h.argmax(axis=1)
            else:
                u = ((h >> np.uint64(11)).astype(np.float64) + 0.5) / 2.0**53
                out[s : s + step] = (-np.log(u) / w).argmin(axis=1)
        return [names[i] for i in out.tolist()]


class Ring(Algo):
    name = "ring (uhashring, 160 vnodes)"

    def owners(self, jobs: Jobs, workers: dict[str, float]) -> list[str]:
        from uhashring import HashRing

        # uhashring multiplies its virtual nodes by an integer weight.
        ring = HashRing(nodes={n: {"weight": max(1, round(w))} for n, w in workers.items()})
        get = ring.get_node
        return [get(j) for j in jobs.ids]


def kazoo_partition_func() -> Callable[[object, str, list[str], list[str]], list[str]]:
    """kazoo's default ``partition_func`` (it does not use ``self``), or the same three
    lines when kazoo (a dev extra) is not installed."""
    try:
        from kazoo.recipe.partitioner import SetPartitioner

        func: Callable[[object, str, list[str], list[str]], list[str]]
        func = SetPartitioner._partitioner
        return func
    except ImportError:

        def same(_: object, me: str, members: list[str], items: list[str]) -> list[str]:
            return sorted(items)[sorted(members).index(me) :: len(members)]

        return same


class Kazoo(Algo):
    """kazoo's SetPartitioner default: sorted items dealt round robin to the sorted
    members (no weights). The whole map with one sort; checked against kazoo's own
    function for a few members."""

    name = "kazoo SetPartitioner"

    def owners(self, jobs: Jobs, workers: dict[str, float]) -> list[str]:
        members = sorted(workers)
        order = sorted(range(len(jobs.ids)), key=jobs.ids.__getitem__)
        out = [""] * len(jobs.ids)
        for k, j in enumerate(order):
            out[j] = members[k % len(members)]
        func = kazoo_partition_func()
        for me in members[:2]:
            assert sorted(func(None, me, members, jobs.ids)) == sorted(
                jobs.ids[j] for j in range(len(out)) if out[j] == me
            )
        return out


# ----------------------------------------------------------------- measurements


def balance(owners: Sequence[str], workers: dict[str, float]) -> float:
    counts: dict[str, int] = dict.fromkeys(workers, 0)
    for o in owners:
        counts[o] += 1
    total_w = math.fsum(workers.values())
    n = len(owners)
    if len(set(workers.values())) == 1:
        return max(counts.values()) / (n / len(workers))
    return max(abs(counts[w] / (n * workers[w] / total_w) - 1.0) for w in workers)


def movement(
    algo: Algo, jobs: Jobs, workers: dict[str, float], events: int, seed: int
) -> list[tuple[float, float]]:
    """(moved / necessary, moved / (J/N)) for ``events`` joins and as many leaves."""
    rnd = np.random.default_rng(seed)
    base = np.array(algo.owners(jobs, workers), dtype=object)
    n, j = len(workers), len(jobs.ids)
    out = []
    for e in range(events):
        new = f"new-{seed}-{e}"
        after = np.array(algo.owners(jobs, {**workers, new: 1.0}), dtype=object)
        moved = int((after != base).sum())
        out.append((moved / max(1, int((after == new).sum())), moved / (j / n)))
        leaver = sorted(workers)[int(rnd.integers(n))]
        rest = {w: v for w, v in workers.items() if w != leaver}
        after = np.array(algo.owners(jobs, rest), dtype=object)
        moved = int((after != base).sum())
        out.append((moved / max(1, int((base == leaver).sum())), moved / (j / n)))
    return out


def fmt_pair(values: Sequence[float]) -> str:
    return f"{statistics.fmean(values):.3f} / {max(values):.3f}"


# ---------------------------------------------------------------------- sections


def section_time(sz: Sizes, results: dict[str, float]) -> None:
    log(f"== Time: one worker computes its share (N={sz.big_workers}, J={sz.big_jobs}) ==")
    workers = dict.fromkeys(worker_ids(sz.big_workers, 0), 1.0)
    me = next(iter(workers))
    jobs = make_jobs(sz.big_jobs, 0)
    t0 = time.perf_counter()
    parts = jobs.partitions(DEFAULT_PARTITIONS)
    t_hash = time.perf_counter() - t0
    # The worker reads its partitions' key ranges; the job -> partition array stands for
    # what it read. Its CPU work per rebalance: the map, its set, its jobs.
    assign_module._MAPS.clear()
    t0 = time.perf_counter()
    a = assign(workers)
    t_assign = time.perf_counter() - t0
    t0 = time.perf_counter()
    mine = a.partitions_of(me)
    t_set = time.perf_counter() - t0
    t0 = time.perf_counter()
    owned = np.zeros(DEFAULT_PARTITIONS, dtype=bool)
    owned[list(mine)] = True
    my_jobs = np.flatnonzero(owned[parts])
    t_jobs = time.perf_counter() - t0
    total = t_assign + t_set + t_jobs
    results["time_ours"] = total
    log(
        f"ours: assign {t_assign:.3f} s + partitions_of {t_set:.4f} s + own jobs "
        f"{t_jobs:.4f} s = {total:.3f} s ({len(mine)} partitions, {my_jobs.size} jobs)"
    )
    log(
        f"  (job ids are put in partitions once, when added: {t_hash / len(jobs.ids) * 1e6:.2f}"
        f" us/job, {t_hash:.2f} s for all; not part of a rebalance)"
    )
    # Naive per-job rendezvous, pure Python, on a subset of jobs.
    names = list(workers)
    sub = jobs.ids[: sz.naive_jobs]
    t0 = time.perf_counter()
    for j in sub:
        jb = j.encode()
        max(names, key=lambda w: hashlib.blake2b(jb + w.encode(), digest_size=8).digest())
    t_naive = (time.perf_counter() - t0) * len(jobs.ids) / len(sub)
    results["time_naive"] = t_naive
    log(
        f"naive per-job rendezvous (Python, BLAKE2b per job x worker; {len(sub)} jobs"
        f" measured, extrapolated): {t_naive:.0f} s"
    )
    subset = make_jobs(max(1, sz.big_jobs // 20), 0)
    t_vec = timed(lambda: PerJobRendezvous().owners(subset, workers)) * 20
    results["time_vectorized"] = t_vec
    log(f"per-job rendezvous, numpy ({len(subset.ids)} jobs measured, extrapolated): {t_vec:.1f} s")
    from uhashring import HashRing

    t_build = timed(lambda: HashRing(nodes=names))
    ring = HashRing(nodes=names)
    t_look = timed(lambda: [ring.get_node(j) for j in jobs.ids])
    results["time_ring"] = t_build + t_look
    log(f"ring: build {t_build:.2f} s + {len(jobs.ids)} lookups {t_look:.2f} s")
    func = kazoo_partition_func()
    t_kazoo = timed(lambda: func(None, me, names, jobs.ids))
    results["time_kazoo"] = t_kazoo
    log(f"kazoo partition_func (sort all job ids, take every N-th): {t_kazoo:.2f} s")
    log("  (ring and kazoo also need every job id: they read all J jobs, not J/N)")
    log()


def section_quality(sz: Sizes, results: dict[str, float]) -> None:
    algos: list[Algo] = [
        Ours(DEFAULT_PARTITIONS, DEFAULT_BALANCE, f"ours (P={DEFAULT_PARTITIONS}, auto)"),
        Ours(DEFAULT_PARTITIONS, None, f"ours (P={DEFAULT_PARTITIONS}, pure)"),
        PerJobRendezvous(),
        Ring(),
        Kazoo(),
    ]
    bal = f"J={sz.bal_jobs} N={sz.bal_workers}"
    big = f"J={sz.big_jobs} N={sz.big_workers}"
    log("== Balance: max jobs of a worker / mean (mean / worst over job sets) ==")
    log(f"{'':34} {bal:>20} {big:>20} {'weighted 1,2,4':>16}")
    bal_jobs = [make_jobs(sz.bal_jobs, s) for s in range(sz.seeds_bal)]
    big_jobs = [make_jobs(sz.big_jobs, s) for s in range(sz.seeds_big)]
    w_jobs = make_jobs(sz.weighted_jobs, 99)
    weighted = {f"w99-{i}": w for i, w in enumerate(sz.weighted)}
    for k, algo in enumerate(algos):
        b1 = [
            balance(
                algo.owners(js, dict.fromkeys(worker_ids(sz.bal_workers, s), 1.0)),
                dict.fromkeys(worker_ids(sz.bal_workers, s), 1.0),
            )
            for s, js in enumerate(bal_jobs)
        ]
        b2 = [
            balance(
                algo.owners(js, dict.fromkeys(worker_ids(sz.big_workers, s), 1.0)),
                dict.fromkeys(worker_ids(sz.big_workers, s), 1.0),
            )
            for s, js in enumerate(big_jobs)
        ]
        wb = "n/a (no weights)" if isinstance(algo, Kazoo) else ""
        if not wb:
            dev = balance(algo.owners(w_jobs, weighted), weighted)
            wb = f"{dev * 100:.1f}%"
            results[f"weighted_{k}"] = dev
        results[f"bal_{k}"] = statistics.fmean(b1)
        results[f"bal_worst_{k}"] = max(b1)
        results[f"big_{k}"] = statistics.fmean(b2)
        log(f"{algo.name:34} {fmt_pair(b1):>20} {fmt_pair(b2):>20} {wb:>16}")
    log()
    log("== Movement: one join / one leave (mean / worst over events) ==")
    log(f"{'':34} {'moved/necessary':>38} {'moved/(J/N)':>38}")
    log(f"{'':34} {bal:>19}{big:>19} {bal:>19}{big:>19}")
    for k, algo in enumerate(algos):
        m1 = movement(
            algo,
            bal_jobs[0],
            dict.fromkeys(worker_ids(sz.bal_workers, 0), 1.0),
            sz.events,
            1,
        )
        events_big = 1 if isinstance(algo, (Ring, PerJobRendezvous)) else sz.events
        m2 = movement(
            algo,
            big_jobs[0],
            dict.fromkeys(worker_ids(sz.big_workers, 0), 1.0),
            events_big,
            2,
        )
        results[f"move_{k}"] = max(r for r, _ in m1 + m2)
        log(
            f"{algo.name:34} {fmt_pair([r for r, _ in m1]):>19}{fmt_pair([r for r, _ in m2]):>19}"
            f" {fmt_pair([r for _, r in m1]):>19}{fmt_pair([r for _, r in m2]):>19}"
        )
    log()


def section_partitions(sz: Sizes) -> None:
    log("== Partition count P (ours, balance='auto') ==")
    log(
        f"{'P':>8} {'N=' + str(sz.bal_workers) + ' balance':>16} {'move':>14}"
        f" {'N=' + str(sz.big_workers) + ' balance':>17} {'move':>14} {'assign s':>9}"
        f" {'partitions/worker':>18}"
    )
    for p in sz.p_table:
        algo = Ours(p, DEFAULT_BALANCE, "")
        b1 = []
        for s in range(min(sz.seeds_bal, 5)):
            js = make_jobs(sz.bal_jobs, s)
            workers = dict.fromkeys(worker_ids(sz.bal_workers, s), 1.0)
            b1.append(balance(algo.owners(js, workers), workers))
        w1 = dict.fromkeys(worker_ids(sz.bal_workers, 0), 1.0)
        m1 = movement(algo, make_jobs(sz.bal_jobs, 0), w1, sz.events, 1)
        js = make_jobs(sz.big_jobs, 0)
        w2 = dict.fromkeys(worker_ids(sz.big_workers, 0), 1.0)
        b2 = balance(algo.owners(js, w2), w2)
        m2 = movement(algo, js, w2, 1, 2)
        t = timed(lambda p=p, w2=w2: uncached_assign(w2, p))  # type: ignore[misc]
        log(
            f"{p:>8} {fmt_pair(b1):>16} {fmt_pair([r for r, _ in m1]):>14} {b2:>17.3f}"
            f" {fmt_pair([r for r, _ in m2]):>14} {t:>9.3f} {p / sz.bal_workers:>18.0f}"
        )
    log()


def _solver_map(weights: tuple[float, ...], keys: NDArray[np.uint64], p: int) -> Owners:
    return _Solver(weights, keys, p, None).solve(1)[0]


def section_direct(sz: Sizes) -> None:
    """The map without capacities (``balance=None``, one owner: the stored plan's base
    map, computed by every survivor on a failover): the capacity solver against the
    direct path (every member's rank of every partition, a running best), which
    ``assign`` takes while ``direct_pays``. Both must give the same owners."""
    log("== Map without capacities: solver vs direct (ms, min/median/max) ==")
    log(
        f"{'P':>7} {'N':>4} {'weights':>8} {'solver':>18} {'direct':>18} "
        f"{'solver/direct':>13} {'assign takes':>12}"
    )
    for p, ns in sz.direct:
        for n in ns:
            ids = worker_ids(n, 7)
            keys = _member_keys(ids)
            for label, weights in (
                ("equal", (1.0,) * n),
                ("1,2,4", tuple((1.0, 2.0, 4.0)[i % 3] for i in range(n))),
            ):
                solved = _solver_map(weights, keys, p)
                if not np.array_equal(solved, direct_primaries(weights, keys, p)):
                    raise AssertionError(f"direct map differs from the solver's: P={p} N={n}")
                ts, td = [], []
                for _ in range(sz.direct_runs):  # interleaved: both see the same load
                    ts.append(timed(functools.partial(_solver_map, weights, keys, p)))
                    td.append(timed(functools.partial(direct_primaries, weights, keys, p)))
                ratio = statistics.median(ts) / statistics.median(td)
                took = "direct" if direct_pays(n, p) else "solver"
                solver_ms, direct_ms = three([t * 1e3 for t in ts]), three([t * 1e3 for t in td])
                log(
                    f"{p:>7} {n:>4} {label:>8} {solver_ms:>18} {direct_ms:>18} "
                    f"{ratio:>13.2f} {took:>12}"
                )
    log()


def section_targets(sz: Sizes, results: dict[str, float]) -> None:
    log("== Targets (issue 5) ==")

    def line(ok: bool, text: str) -> None:
        log(f"[{'PASS' if ok else 'FAIL'}] {text}")

    t = results["time_ours"]
    line(
        t < 1.0,
        f"own share for J={sz.big_jobs}, N={sz.big_workers} in < 1 s: {t:.3f} s "
        f"(ring {results['time_ring']:.1f} s = x{results['time_ring'] / t:.0f}, naive per-job "
        f"rendezvous {results['time_naive']:.0f} s = x{results['time_naive'] / t:.0f})",
    )
    mv = results["move_0"]
    line(mv <= 1.1, f"one join or leave moves <= 1.1x the jobs that must move: worst {mv:.3f}")
    b, ideal, worst = results["bal_0"], results["bal_2"], results["bal_worst_0"]
    line(
        b <= 1.10,
        f"max load <= 1.10x mean, J={sz.bal_jobs} N={sz.bal_workers}: {b:.3f} on average over "
        f"{sz.seeds_bal} job sets (worst {worst:.3f}); ideal per-job hashing {ideal:.3f}, "
        f"ring {results['bal_3']:.3f}",
    )
    wdev = results["weighted_0"]
    line(wdev <= 0.10, f"weighted 1,2,4 within 10% of proportional: worst {wdev * 100:.1f}%")
    log()


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--quick", action="store_true", help="small sizes (CI smoke run)")
    ap.add_argument("--part", choices=["all", "direct"], default="all", help="what to run")
    args = ap.parse_args(argv)
    sz = QUICK if args.quick else FULL
    log(
        f"fdbworkers assignment benchmark ({'quick' if args.quick else 'full'}); "
        f"P={DEFAULT_PARTITIONS}, balance={DEFAULT_BALANCE!r}; numpy {np.__version__}, "
        f"Python {sys.version.split()[0]}"
    )
    log()
    t0 = time.perf_counter()
    results: dict[str, float] = {}
    section_direct(sz)
    if args.part == "direct":
        return 0
    section_time(sz, results)
    section_quality(sz, results)
    section_partitions(sz)
    section_targets(sz, results)
    log(f"done in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
