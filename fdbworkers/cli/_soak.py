"""``python -m fdbworkers.cli._soak``: run many simulation seeds (what ./scripts/soak runs).

Prints one line per failing seed with its timeline, a summary at the end, and exits 1
if any seed violated an invariant. ``--jobs-in-parallel`` runs seeds in processes."""

from __future__ import annotations

import argparse
import logging
import sys
import time
import traceback
from concurrent.futures import ProcessPoolExecutor

import structlog
import trio
import trio.testing

from ..testing import SimConfig, Simulation


def seed_trio_scheduler(seed: int) -> None:
    """trio shuffles each batch of runnable tasks with a random generator of its own; a
    seed therefore reproduces the simulation's faults but not always its scheduling.
    trio has no public way to seed it: this private module does it (the public
    fdbworkers.testing does not), and says so if a trio release moves it."""
    try:
        trio._core._run._r.seed(seed)
    except AttributeError:  # pragma: no cover - a trio release without it
        print("soak: cannot seed trio's scheduler: scheduling may vary", file=sys.stderr)


def run_seed(seed: int, config: SimConfig) -> tuple[int, list[str], str]:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL))
    try:
        seed_trio_scheduler(seed)
        report = trio.run(
            Simulation(seed, config).run, clock=trio.testing.MockClock(autojump_threshold=0)
        )
    except BaseException as e:  # a crash of the harness or a worker is a failure too
        if isinstance(e, KeyboardInterrupt):
            raise
        text = "".join(traceback.format_exception(e))
        return seed, [f"crashed: {e!r}"], f"seed {seed} crashed (rerun: --seed {seed}):\n{text}"
    return seed, [str(v) for v in report.violations], report.format()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="scripts/soak", description=__doc__)
    p.add_argument("--seeds", default="0:200", help="a range START:END or one seed (default 0:200)")
    p.add_argument("--seed", type=int, help="run just this seed (prints its timeline)")
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--jobs", type=int, default=30)
    p.add_argument("--duration", type=float, default=80.0, help="virtual seconds per seed")
    p.add_argument("--timeout", type=float, default=3.0)
    p.add_argument("--fault-rate", type=float, default=1 / 8, help="faults per virtual second")
    p.add_argument("--parallel", type=int, default=2, help="processes (default 2)")
    a = p.parse_args(argv)
    if a.workers < 3 or a.jobs < 0 or a.duration < 40 or a.parallel < 1:
        p.error("need --workers >= 3, --jobs >= 0, --duration >= 40, --parallel >= 1")
    config = SimConfig(
        workers=a.workers,
        jobs=a.jobs,
        duration=a.duration,
        timeout=a.timeout,
        fault_rate=a.fault_rate,
    )
    if a.seed is not None:
        seeds = [a.seed]
    else:
        try:
            lo, _, hi = a.seeds.partition(":")
            seeds = list(range(int(lo), int(hi))) if hi else [int(lo)]
        except ValueError:
            p.error(f"--seeds must be START:END, got {a.seeds!r}")
    start = time.perf_counter()
    failed: list[int] = []
    with ProcessPoolExecutor(max_workers=a.parallel) as pool:
        for seed, violations, text in pool.map(run_seed, seeds, [config] * len(seeds)):
            if violations or a.seed is not None:
                print(text, flush=True)
            if violations:
                failed.append(seed)
    took = time.perf_counter() - start
    print(
        f"soak: {len(seeds) - len(failed)} passed, {len(failed)} failed "
        f"({len(seeds)} seeds, {config}, {took:.1f}s)"
        + (f"; failing seeds: {failed}" if failed else "")
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
