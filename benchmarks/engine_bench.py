"""Throughput of the embedded engine, against a no-MVCC baseline measured in the same run
(and against a real FoundationDB cluster when ``FDB_CLUSTER_FILE`` is set).

    .venv/bin/python benchmarks/engine_bench.py            # about 25 s
    .venv/bin/python benchmarks/engine_bench.py --quick    # CI smoke, a few seconds
    .venv/bin/python benchmarks/engine_bench.py --json     # machine-readable

Workloads (each a whole transaction through ``Database.transact``, so the retry loop,
read-your-writes and commit are included):

* ``heartbeat``: a blind ``SET_VERSIONSTAMPED_VALUE`` of one of ``--keys`` keys (what a
  worker does every ``timeout/3``).
* ``range100``: a read-only transaction reading 100 consecutive keys of a table of
  ``--keys`` keys (a rebalance reading a partition).
* ``read1``: one point read (a neighbour check).
* ``simulation``: ``--workers`` trio tasks on trio's virtual clock, each heartbeating
  every second and reading its neighbour's heartbeat every second, for
  ``--virtual-seconds``: the shape of the simulation harness's load. Reported as
  virtual seconds simulated per wall second and transactions per wall second.

The baseline is a plain dict + sorted list doing the same work with a trio checkpoint
per awaited call and no versions, conflicts or read-your-writes: the ratio is the price
of FoundationDB's semantics. The real cluster runs the same transactions one at a time
(its latency, not its throughput).
"""

from __future__ import annotations

import argparse
import bisect
import json
import os
import random
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import trio
import trio.testing

from fdbworkers._backends.engine import Engine
from fdbworkers._db import Database, KeyValue, Transaction, strinc

PREFIX = b"bench/"
STAMP_PARAM = b"\x00" * 10 + (0).to_bytes(4, "little")


def key(i: int) -> bytes:
    return PREFIX + b"%08d" % i


# --------------------------------------------------------------------------------------
# The baseline: the same work without MVCC, conflicts or read-your-writes
# --------------------------------------------------------------------------------------


class BaselineStore:
    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}
        self.keys: list[bytes] = []
        self.version = 0

    def set(self, k: bytes, v: bytes) -> None:
        if k not in self.data:
            bisect.insort(self.keys, k)
        self.data[k] = v

    async def heartbeat(self, k: bytes) -> None:
        await trio.lowlevel.checkpoint()  # the commit
        self.version += 1
        self.set(k, self.version.to_bytes(8, "big") + b"\x00\x00")

    async def get(self, k: bytes) -> bytes | None:
        await trio.lowlevel.checkpoint()
        return self.data.get(k)

    async def get_range(self, b: bytes, e: bytes) -> list[KeyValue]:
        await trio.lowlevel.checkpoint()
        i = bisect.bisect_left(self.keys, b)
        j = bisect.bisect_left(self.keys, e)
        data = self.data
        return [KeyValue(k, data[k]) for k in self.keys[i:j]]


# --------------------------------------------------------------------------------------
# Workloads on a Database
# --------------------------------------------------------------------------------------


async def tx_heartbeat(tr: Transaction, k: bytes) -> None:
    tr.set_versionstamped_value(k, STAMP_PARAM)


async def tx_range(tr: Transaction, b: bytes, e: bytes) -> list[KeyValue]:
    return await tr.get_range(b, e)


async def tx_read(tr: Transaction, k: bytes) -> bytes | None:
    return await tr.get(k)


async def fill(db: Database, n: int) -> None:
    async def chunk(tr: Transaction, lo: int, hi: int) -> None:
        for i in range(lo, hi):
            tr.set(key(i), b"v" * 32)

    for lo in range(0, n, 1000):
        await db.transact(chunk, lo, min(n, lo + 1000))


async def timed(n: int, op: Callable[[int], Awaitable[Any]], min_seconds: float) -> float:
    """Operations per second of ``op(i)`` (at least ``n`` calls and ``min_seconds``)."""
    done = 0
    t0 = time.perf_counter()
    while True:
        for i in range(n):
            await op(done + i)
        done += n
        elapsed = time.perf_counter() - t0
        if elapsed >= min_seconds:
            return done / elapsed


async def bench_db(db: Database, keys: int, n: int, min_seconds: float) -> dict[str, float]:
    rng = random.Random(1)
    await fill(db, keys)
    out = {}
    out["heartbeat"] = await timed(
        n, lambda i: db.transact(tx_heartbeat, key(rng.randrange(keys))), min_seconds
    )

    def rng_range(_i: int) -> Awaitable[list[KeyValue]]:
        start = rng.randrange(max(1, keys - 100))
        return db.transact(tx_range, key(start), key(start + 100))

    out["range100"] = await timed(max(1, n // 5), rng_range, min_seconds)
    out["read1"] = await timed(
        n, lambda i: db.transact(tx_read, key(rng.randrange(keys))), min_seconds
    )
    return out


async def bench_baseline(keys: int, n: int, min_seconds: float) -> dict[str, float]:
    rng = random.Random(1)
    store = BaselineStore()
    for i in range(keys):
        store.set(key(i), b"v" * 32)
    out = {}
    out["heartbeat"] = await timed(
        n, lambda i: store.heartbeat(key(rng.randrange(keys))), min_seconds
    )

    def rng_range(_i: int) -> Awaitable[list[KeyValue]]:
        start = rng.randrange(max(1, keys - 100))
        return store.get_range(key(start), key(start + 100))

    out["range100"] = await timed(max(1, n // 5), rng_range, min_seconds)
    out["read1"] = await timed(n, lambda i: store.get(key(rng.randrange(keys))), min_seconds)
    return out


# --------------------------------------------------------------------------------------
# A simulation-shaped load on the virtual clock
# --------------------------------------------------------------------------------------


async def simulation(workers: int, virtual_seconds: float) -> dict[str, float]:
    engine = Engine(rng=random.Random(7))
    db = engine.open_database()
    health = PREFIX + b"health/"

    async def worker(i: int) -> None:
        me = health + b"%06d" % i
        neighbour = health + b"%06d" % ((i + 1) % workers)
        await trio.sleep(random.Random(i).random())
        while True:
            await db.transact(tx_heartbeat, me)
            await db.transact(tx_read, neighbour)
            await trio.sleep(1.0)

    t0 = time.perf_counter()
    with trio.move_on_after(virtual_seconds):
        async with trio.open_nursery() as nursery:
            for i in range(workers):
                nursery.start_soon(worker, i)
    wall = time.perf_counter() - t0
    txs = engine.stats.transactions_committed + engine.stats.read_only_commits
    # A last range read of everything, as an admin view would do.
    rows = await db.transact(tx_range, health, strinc(health))
    assert len(rows) == workers
    return {
        "workers": workers,
        "virtual_seconds": virtual_seconds,
        "wall_seconds": wall,
        "transactions": txs,
        "transactions_per_second": txs / wall,
        "virtual_per_wall": virtual_seconds / wall,
    }


def run_simulation(workers: int, virtual_seconds: float) -> dict[str, float]:
    async def main() -> dict[str, float]:
        return await simulation(workers, virtual_seconds)

    result: dict[str, float] = trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    return result


# --------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------


async def bench_real(keys: int, n: int, min_seconds: float) -> dict[str, float] | str:
    if not os.environ.get("FDB_CLUSTER_FILE"):
        return "skipped: FDB_CLUSTER_FILE is not set"
    try:
        from fdbworkers._backends.fdb import open_fdb
    except ImportError as e:  # pragma: no cover - the module is part of the package
        return f"skipped: {e}"
    try:
        db = open_fdb()
    except Exception as e:
        return f"skipped: {e}"
    db.default_timeout = 10.0

    async def clear(tr: Transaction) -> None:
        tr.clear_range(PREFIX, strinc(PREFIX))

    try:
        await db.transact(clear)
        return await bench_db(db, keys, n, min_seconds)
    finally:
        await db.transact(clear)
        await db.aclose()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a few seconds, for CI smoke runs")
    ap.add_argument("--keys", type=int, default=10_000, help="table size (default 10000)")
    ap.add_argument("--workers", type=int, default=300, help="simulation workers (default 300)")
    ap.add_argument(
        "--virtual-seconds", type=float, default=300.0, help="simulated time (default 300)"
    )
    ap.add_argument("--json", action="store_true", help="print one JSON document")
    args = ap.parse_args(argv)
    if args.quick:
        keys, n, min_s = min(args.keys, 2_000), 200, 0.2
        workers, vsec = min(args.workers, 50), min(args.virtual_seconds, 20.0)
    else:
        keys, n, min_s = args.keys, 2_000, 1.0
        workers, vsec = args.workers, args.virtual_seconds

    async def micro() -> dict[str, Any]:
        engine = Engine(rng=random.Random(3))
        results: dict[str, Any] = {}
        results["engine"] = await bench_db(engine.open_database(), keys, n, min_s)
        results["baseline"] = await bench_baseline(keys, n, min_s)
        results["real"] = await bench_real(keys, max(20, n // 10), min_s)
        return results

    t_start = time.perf_counter()
    results: dict[str, Any] = trio.run(micro)
    results["simulation"] = run_simulation(workers, vsec)
    results["total_wall_seconds"] = time.perf_counter() - t_start
    results["command"] = " ".join([os.path.basename(sys.executable), *sys.argv])

    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    eng, base, real = results["engine"], results["baseline"], results["real"]
    print(f"{'workload':<12}{'engine tx/s':>14}{'baseline /s':>14}{'engine/base':>13}", end="")
    print(f"{'real tx/s':>12}{'engine/real':>13}" if isinstance(real, dict) else "")
    for name in ("heartbeat", "range100", "read1"):
        line = f"{name:<12}{eng[name]:>14,.0f}{base[name]:>14,.0f}{eng[name] / base[name]:>13.2f}"
        if isinstance(real, dict):
            line += f"{real[name]:>12,.0f}{eng[name] / real[name]:>13.1f}"
        print(line)
    if not isinstance(real, dict):
        print(f"real cluster: {real}")
    sim = results["simulation"]
    print(
        f"simulation: {sim['workers']:.0f} workers x {sim['virtual_seconds']:.0f} virtual s "
        f"({sim['transactions']:.0f} transactions) in {sim['wall_seconds']:.1f} wall s: "
        f"{sim['virtual_per_wall']:.0f}x real time, {sim['transactions_per_second']:,.0f} tx/s"
    )
    print(f"total {results['total_wall_seconds']:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
