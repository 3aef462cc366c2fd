"""Latency of fdbworkers' transactions on a real FoundationDB cluster, beside the embedded
engine (in process) and the dev server (over loopback), measured in the same run.

    eval "$(../shared/fdb/start-local-cluster)"      # or any FDB_CLUSTER_FILE
    .venv/bin/python benchmarks/real_cluster_bench.py            # ~1 min
    .venv/bin/python benchmarks/real_cluster_bench.py --quick    # CI size
    ../shared/fdb/stop-local-cluster "$FDB_LOCAL_CLUSTER_DIR"

Without ``FDB_CLUSTER_FILE`` only the engine and the dev server are measured (and the
table says so). Each sample is one whole transaction through ``Database.transact`` (retry
loop and commit included), on the wall clock:

* ``tx_heartbeat``: a snapshot read of the member record + a versionstamped write;
* ``tx_read_membership``: the epoch and all ``--members`` member records (no watches);
* ``tx_read_partitions``: one worker's full rebalance read: the partitions that worker
  owns among ``--members`` members, with ``--jobs`` jobs and their claims;
* ``tx_claim``: a claim of an unclaimed job (reads of our record, the claim, the job;
  a versionstamped write), a different job each time;
* heartbeats from ``--workers`` concurrent workers (one task each, heartbeating in a
  loop for ``--seconds``): transactions per second (a capacity figure: real workers
  heartbeat every timeout/3).

The engine in the same process is the baseline of the ratio columns.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    ROLE,
    ROOT,
    job_ids,
    load_jobs,
    median,
    note,
    pct,
    quiet_logs,
    start_devserver,
    table,
)

from fdbworkers import open_database
from fdbworkers._backends.engine import Engine
from fdbworkers._core.assign import assign
from fdbworkers._core.keys import Layout
from fdbworkers._core.records import MemberRecord
from fdbworkers._db import Database, Transaction
from fdbworkers._store.claims import tx_claim
from fdbworkers._store.jobs import tx_read_partitions
from fdbworkers._store.members import tx_heartbeat, tx_read_membership, tx_register


async def timed(n: int, fn: Callable[[int], Awaitable[Any]]) -> list[float]:
    out = []
    for i in range(n):
        t = time.perf_counter()
        await fn(i)
        out.append(time.perf_counter() - t)
    return out


async def measure(db: Database, args: argparse.Namespace, root: str) -> dict[str, Any]:
    space = Layout.for_root(root).role(ROLE)
    members = {f"w{i:04d}": 1.0 for i in range(args.members)}
    ids = job_ids(args.jobs, args.seed)
    await load_jobs(db, ids, args.partitions, root=root)
    for wid in members:
        rec = MemberRecord(wid, "inc-" + wid, 10.0, 1.0, "bench", os.getpid(), time.time(), {})
        await db.transact(tx_register, space, rec, 3600.0)
    me = "w0000"
    owned = sorted(assign(members, args.partitions).partitions_of(me))
    out: dict[str, Any] = {"partitions_owned": len(owned)}
    n = args.samples

    # Warm up (connections, the first read version).
    for _ in range(20):
        await db.transact(tx_heartbeat, space, me, "inc-" + me)

    out["heartbeat"] = await timed(n, lambda i: db.transact(tx_heartbeat, space, me, "inc-" + me))
    out["membership read"] = await timed(n, lambda i: db.transact(tx_read_membership, space, None))
    jobs_seen: list[int] = []

    async def read_parts(i: int) -> None:
        jobs, _claims = await db.transact(tx_read_partitions, space, owned, snapshot=True)
        jobs_seen.append(len(jobs))

    out["rebalance read"] = await timed(max(5, n // 10), read_parts)
    out["rebalance jobs"] = jobs_seen[0] if jobs_seen else 0
    from fdbworkers._core.assign import job_partition

    claimable = ids[:n]

    async def claim(i: int) -> None:
        jid = claimable[i % len(claimable)]
        p = job_partition(jid, args.partitions)
        await db.transact(tx_claim, space, p, jid, me, "inc-" + me, f"nonce-{i}", frozenset())

    out["claim"] = await timed(min(n, len(claimable)), claim)

    # Heartbeats from many workers at once.
    count = 0
    stop_at = time.perf_counter() + args.seconds

    async def hb_loop(wid: str) -> None:
        nonlocal count
        while time.perf_counter() < stop_at:
            await db.transact(tx_heartbeat, space, wid, "inc-" + wid)
            count += 1

    t0 = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for wid in list(members)[: args.workers]:
            nursery.start_soon(hb_loop, wid)
    out["heartbeats_per_s"] = count / (time.perf_counter() - t0)
    out["heartbeat_conflicts"] = db.stats.conflicts
    return out


async def on_engine(args: argparse.Namespace) -> dict[str, Any]:
    engine = Engine(rng=random.Random(args.seed))
    return await measure(engine.open_database("bench"), args, ROOT)


async def on_address(args: argparse.Namespace, address: str, root: str) -> dict[str, Any]:
    db = open_database(address)
    try:
        return await measure(db, args, root)
    finally:
        begin, end = Layout.for_root(root).range()

        async def clear(tr: Transaction) -> None:
            tr.clear_range(begin, end)

        with trio.move_on_after(30):
            await db.transact(clear)
        await db.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--members", type=int, default=100)
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--partitions", type=int, default=65536)
    parser.add_argument("--workers", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    quiet_logs()
    if args.quick:
        args.samples, args.jobs, args.members, args.workers = 50, 500, 20, 20
        args.seconds, args.partitions = 1.0, 1024
    results: dict[str, dict[str, Any]] = {}
    note("engine (in process) ...")
    results["engine"] = trio.run(on_engine, args)
    tmp = Path(tempfile.mkdtemp(prefix="fdbw-real-"))
    server, address = start_devserver(tmp)
    try:
        note(f"dev server {address} ...")
        results["dev server"] = trio.run(on_address, args, address, ROOT)
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    cf = os.environ.get("FDB_CLUSTER_FILE")
    if cf:
        note(f"FoundationDB ({cf}) ...")
        results["FoundationDB"] = trio.run(on_address, args, f"fdb:{cf}", f"{ROOT}-{os.getpid()}")
    else:
        note("FDB_CLUSTER_FILE is not set: the real cluster is not measured")
    names = list(results)
    rows = []
    base = results["engine"]
    for op in ("heartbeat", "membership read", "rebalance read", "claim"):
        for stat, fn in (("median", median), ("p99", lambda s: pct(s, 0.99))):
            vals = [1000 * fn(results[b][op]) for b in names]
            rows.append(
                [f"{op} {stat} (ms)"] + vals + [v / (1000 * fn(base[op])) for v in vals[1:]]
            )
    rows.append(
        [f"heartbeats/s, {args.workers} workers at once"]
        + [results[b]["heartbeats_per_s"] for b in names]
        + [results[b]["heartbeats_per_s"] / base["heartbeats_per_s"] for b in names[1:]]
    )
    rows.append(
        ["conflicts (all of the above)"]
        + [results[b]["heartbeat_conflicts"] for b in names]
        + ["-" for _ in names[1:]]
    )
    table(
        f"Transaction latency (wall clock, this machine): {args.members} members, "
        f"{args.jobs} jobs, P = {args.partitions} (a rebalance read covers "
        f"{base['partitions_owned']} partitions, {base['rebalance jobs']} jobs); "
        "ratios against the engine",
        ["figure", *names, *[f"{b} / engine" for b in names[1:]]],
        rows,
    )
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
