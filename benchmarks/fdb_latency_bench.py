"""Latency of the real backend's future bridge, against the binding's blocking wait.

    eval "$(../shared/fdb/start-local-cluster)"
    .venv/bin/python benchmarks/fdb_latency_bench.py [--reads 2000] [--concurrency 200]

Measures, on the cluster named by FDB_CLUSTER_FILE:
  * sequential ``get`` latency through ``FdbTransaction.get`` (on_ready + run_sync_soon),
  * the same reads with the binding's blocking ``wait()`` (which blocks the event loop:
    the baseline the bridge must stay close to),
  * concurrent read-modify-write transactions per second, and the largest gap a 5 ms
    ticker task sees meanwhile (how long the event loop was ever held up).
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

import trio

from fdbworkers._backends.fdb import FdbDatabase, open_fdb
from fdbworkers._db import Transaction

PREFIX = b"fdbworkers-bench/latency/"


def _percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)

    def pct(p: float) -> float:
        return ordered[min(len(ordered) - 1, int(p * len(ordered)))] * 1e6

    return {
        "p50_us": round(pct(0.50), 1),
        "p99_us": round(pct(0.99), 1),
        "mean_us": round(statistics.fmean(ordered) * 1e6, 1),
    }


async def _bridged_reads(db: FdbDatabase, n: int) -> list[float]:
    out = []
    for i in range(n):
        tr = db.create_transaction()
        await tr.get_read_version()
        start = time.perf_counter()
        await tr.get(PREFIX + b"k%d" % (i % 100))
        out.append(time.perf_counter() - start)
    return out


async def _blocking_reads(db: FdbDatabase, n: int) -> list[float]:
    out = []
    for i in range(n):
        tr = db._handle.create_transaction()  # the binding's own transaction
        tr.get_read_version().wait()
        start = time.perf_counter()
        tr.get(PREFIX + b"k%d" % (i % 100)).wait()  # blocks the loop (baseline)
        out.append(time.perf_counter() - start)
        await trio.lowlevel.checkpoint()
    return out


async def _concurrent(db: FdbDatabase, transactions: int) -> dict[str, Any]:
    max_gap = 0.0
    done = trio.Event()

    async def ticker() -> None:
        nonlocal max_gap
        last = time.perf_counter()
        while not done.is_set():
            await trio.sleep(0.005)
            now = time.perf_counter()
            max_gap = max(max_gap, now - last - 0.005)
            last = now

    async def work(tr: Transaction, i: int) -> None:
        key = PREFIX + b"hot/%d" % (i % 50)
        n = int(await tr.get(key) or b"0")
        tr.set(key, b"%d" % (n + 1))

    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(ticker)
        async with trio.open_nursery() as workers:
            for i in range(transactions):
                workers.start_soon(db.transact, work, i)
        done.set()
    elapsed = time.perf_counter() - start
    return {
        "transactions": transactions,
        "seconds": round(elapsed, 3),
        "per_second": round(transactions / elapsed, 1),
        "retries": db.stats.retries,
        "ticker_max_gap_ms": round(max_gap * 1000, 2),
    }


async def main(reads: int, concurrency: int) -> dict[str, Any]:
    db = open_fdb()
    db.default_timeout = 30.0

    async def seed(tr: Transaction) -> None:
        tr.clear_range(PREFIX, PREFIX + b"\xff")
        for i in range(100):
            tr.set(PREFIX + b"k%d" % i, b"v" * 100)

    async def clean(tr: Transaction) -> None:
        tr.clear_range(PREFIX, PREFIX + b"\xff")

    await db.transact(seed)
    try:
        await _bridged_reads(db, 100)  # warm up
        bridged = _percentiles(await _bridged_reads(db, reads))
        blocking = _percentiles(await _blocking_reads(db, reads))
        concurrent = await _concurrent(db, concurrency)
    finally:
        await db.transact(clean)
        await db.aclose()
    return {"get_bridged": bridged, "get_blocking_wait": blocking, "concurrent": concurrent}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reads", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=300)
    args = parser.parse_args()
    print(json.dumps(trio.run(main, args.reads, args.concurrency), indent=2))
