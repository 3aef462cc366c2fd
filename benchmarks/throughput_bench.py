"""Transaction throughput and latency on a real FoundationDB cluster: the bare binding,
the raw binding under trio, the seam (``db.transact``) and fdbworkers' own heartbeat and
claim transactions, side by side in one process and one run.

    eval "$(../shared/fdb/start-local-cluster)"      # or any FDB_CLUSTER_FILE
    .venv/bin/python benchmarks/throughput_bench.py            # 3 runs, ~2-4 min
    .venv/bin/python benchmarks/throughput_bench.py --quick    # CI size
    .venv/bin/python benchmarks/throughput_bench.py --loop asyncio   # the same under asyncio
    ../shared/fdb/stop-local-cluster "$FDB_LOCAL_CLUSTER_DIR"

Throughput: ``--tasks`` concurrent tasks run ``--transactions`` transactions in all, each
one *heartbeat-shaped*: a point read of a member key, a ``SET_VERSIONSTAMPED_VALUE`` of a
health key, a commit (read version, read and commit: three round trips). Paths:

* ``bare binding``: the binding alone, blocking, pipelined (``--tasks`` transactions in
  flight: all reads issued, then each waited, written and committed, then all commits
  waited): the floor a Python client reaches without an event loop;
* ``raw binding, trio``: the same transaction under trio with the minimal bridge (one
  ``on_ready`` per future whose callback does ``run_sync_soon(event.set)``), no retry
  loop beyond ``on_error``; with ``--loop asyncio``, ``raw binding, asyncio``: one
  ``on_ready`` per future whose callback does ``loop.call_soon_threadsafe``;
* ``seam db.transact``: the heartbeat-shaped function through ``Database.transact``;
* ``tx_heartbeat``: fdbworkers' heartbeat of ``--tasks`` registered members;
* ``tx_claim``: fdbworkers' claim of a different unclaimed job each time (member record,
  claim and job read, a versionstamped claim written).

Latency: one task, the bare binding (blocking ``wait``) and the seam interleaved sample by
sample: a point read on a transaction whose read version is known, the commit of one
versionstamped write, and a whole heartbeat-shaped transaction.

Every figure is given as min / median / max over ``--runs`` runs, and as a ratio against
the bare binding measured in the same run. Beside transactions per second (wall clock:
on a shared machine it follows whatever else runs), each path's CPU time per
transaction: the whole process's (FDB's network thread included) and the calling
thread's (the event loop's thread, or the blocking caller), which other processes
disturb less. ``--loop`` picks the event loop (trio by default).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import time
from collections.abc import Awaitable, Callable
from contextlib import suppress
from pathlib import Path
from typing import Any

import anyio
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import ROLE, job_ids, load_jobs, median, note, pct, quiet_logs, table

from fdbworkers import open_database
from fdbworkers._core.assign import job_partition
from fdbworkers._core.keys import Layout
from fdbworkers._core.records import MemberRecord, stamped_value
from fdbworkers._db import Database, Transaction
from fdbworkers._errors import FDBError
from fdbworkers._store.claims import tx_claim
from fdbworkers._store.members import tx_heartbeat, tx_register

PARTITIONS = 1024
#: A heartbeat's versionstamped value (the placeholder, a small msgpack tail, the offset).
STAMPED = stamped_value({"wall_time": 1.0, "incarnation": "inc-w0000"})


class Keys:
    def __init__(self, root: str, tasks: int) -> None:
        self.layout = Layout.for_root(root)
        self.space = self.layout.role(ROLE)
        self.wids = [f"w{i:04d}" for i in range(tasks)]
        self.member = [self.space.member_key(w) for w in self.wids]
        self.health = [self.space.health_key(w) for w in self.wids]


# --- the bare binding: blocking and pipelined ------------------------------------------


def bare_pipelined(handle: Any, keys: Keys, tasks: int, total: int) -> int:
    """``total`` heartbeat-shaped transactions, ``tasks`` at a time, blocking; returns
    how many attempts were retried."""
    retries = 0
    done = 0
    while done < total:
        n = min(tasks, total - done)
        trs = [handle.create_transaction() for _ in range(n)]
        reads = [tr.get(keys.member[i]) for i, tr in enumerate(trs)]
        commits = []
        for i, (tr, f) in enumerate(zip(trs, reads, strict=True)):
            _ = f.value
            tr.set_versionstamped_value(keys.health[i], STAMPED)
            commits.append(tr.commit())
        for i, (tr, c) in enumerate(zip(trs, commits, strict=True)):
            try:
                c.wait()
            except Exception as e:  # the binding's FDBError: retry the old-fashioned way
                while True:
                    retries += 1
                    tr.on_error(e).wait()
                    try:
                        _ = tr.get(keys.member[i]).value
                        tr.set_versionstamped_value(keys.health[i], STAMPED)
                        tr.commit().wait()
                        break
                    except Exception as e2:
                        e = e2
        done += n
    return retries


# --- the raw binding under trio ---------------------------------------------------------


async def _raw_wait(future: Any, token: trio.lowlevel.TrioToken) -> None:
    event = trio.Event()

    def ready(_f: Any) -> None:
        with suppress(trio.RunFinishedError):
            token.run_sync_soon(event.set)

    future.on_ready(ready)
    await event.wait()


async def raw_trio_tx(handle: Any, keys: Keys, i: int, token: trio.lowlevel.TrioToken) -> None:
    tr = handle.create_transaction()
    while True:
        try:
            f = tr.get(keys.member[i])
            await _raw_wait(f, token)
            _ = f.value
            tr.set_versionstamped_value(keys.health[i], STAMPED)
            c = tr.commit()
            await _raw_wait(c, token)
            c.wait()
            return
        except Exception as e:
            if not hasattr(e, "code"):
                raise
            f = tr.on_error(e)
            await _raw_wait(f, token)
            f.wait()


async def _raw_wait_asyncio(future: Any, loop: asyncio.AbstractEventLoop) -> None:
    done = loop.create_future()

    def ready(_f: Any) -> None:
        with suppress(RuntimeError):  # the loop is closed
            loop.call_soon_threadsafe(done.set_result, None)

    future.on_ready(ready)
    await done


async def raw_asyncio_tx(handle: Any, keys: Keys, i: int, loop: asyncio.AbstractEventLoop) -> None:
    tr = handle.create_transaction()
    while True:
        try:
            f = tr.get(keys.member[i])
            await _raw_wait_asyncio(f, loop)
            _ = f.value
            tr.set_versionstamped_value(keys.health[i], STAMPED)
            c = tr.commit()
            await _raw_wait_asyncio(c, loop)
            c.wait()
            return
        except Exception as e:
            if not hasattr(e, "code"):
                raise
            f = tr.on_error(e)
            await _raw_wait_asyncio(f, loop)
            f.wait()


def under_trio() -> bool:
    import sniffio

    return sniffio.current_async_library() == "trio"


async def checkpoint() -> None:
    if under_trio():
        await trio.lowlevel.checkpoint()
    else:
        await asyncio.sleep(0)


# --- the seam and the project's transactions -------------------------------------------


async def hb_shaped(tr: Transaction, member: bytes, health: bytes) -> None:
    await tr.get(member)
    tr.set_versionstamped_value(health, STAMPED)


class Meter:
    """Wall time, process CPU time and this thread's CPU time over a block."""

    def __enter__(self) -> Meter:
        self.wall = -time.perf_counter()
        self.cpu = -time.process_time()
        self.thread = -time.thread_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall += time.perf_counter()
        self.cpu += time.process_time()
        self.thread += time.thread_time()

    def figures(self, total: int) -> tuple[float, float, float]:
        """(transactions/s, process CPU µs per transaction, this thread's CPU µs)."""
        return total / self.wall, 1e6 * self.cpu / total, 1e6 * self.thread / total


async def run_concurrent(
    tasks: int, total: int, op: Callable[[int, int], Awaitable[Any]]
) -> tuple[float, float, float]:
    """Figures (see Meter) of ``op(task, n)`` run by ``tasks`` tasks, ``total`` in all."""
    per_task, extra = divmod(total, tasks)

    async def worker(i: int) -> None:
        for n in range(per_task + (1 if i < extra else 0)):
            await op(i, n)

    with Meter() as m:
        if under_trio():
            async with trio.open_nursery() as nursery:
                for i in range(tasks):
                    nursery.start_soon(worker, i)
        else:
            async with asyncio.TaskGroup() as group:
                for i in range(tasks):
                    group.create_task(worker(i))
    return m.figures(total)


async def one_run(
    db: Database, keys: Keys, jobs: list[str], args: argparse.Namespace, run: int
) -> dict[str, tuple[float, float, float]]:
    handle = db._handle  # type: ignore[attr-defined]
    tasks, total = args.tasks, args.transactions
    space = keys.space
    out: dict[str, tuple[float, float, float]] = {}

    with Meter() as m:
        bare_pipelined(handle, keys, tasks, total)
    out["bare binding"] = m.figures(total)
    await checkpoint()

    if under_trio():
        token = trio.lowlevel.current_trio_token()
        out["raw binding, trio"] = await run_concurrent(
            tasks, total, lambda i, n: raw_trio_tx(handle, keys, i, token)
        )
    else:
        loop = asyncio.get_running_loop()
        out["raw binding, asyncio"] = await run_concurrent(
            tasks, total, lambda i, n: raw_asyncio_tx(handle, keys, i, loop)
        )
    out["seam db.transact"] = await run_concurrent(
        tasks, total, lambda i, n: db.transact(hb_shaped, keys.member[i], keys.health[i])
    )
    out["tx_heartbeat"] = await run_concurrent(
        tasks,
        total,
        lambda i, n: db.transact(tx_heartbeat, space, keys.wids[i], "inc-" + keys.wids[i]),
    )

    async def clear_claims(tr: Transaction) -> None:
        tr.clear_range(*space.claims_range())

    await db.transact(clear_claims)
    per_task = -(-total // tasks)

    async def claim(i: int, n: int) -> None:
        jid = jobs[(i * per_task + n) % len(jobs)]
        wid = keys.wids[i]
        await db.transact(
            tx_claim,
            space,
            job_partition(jid, PARTITIONS),
            jid,
            wid,
            "inc-" + wid,
            f"nonce-{run}-{n}",
            frozenset(),
        )

    out["tx_claim"] = await run_concurrent(tasks, total, claim)
    return out


# --- latency ----------------------------------------------------------------------------


async def latency(db: Database, keys: Keys, samples: int, seed: int) -> dict[str, list[float]]:
    """Interleaved samples (seconds) of the bare binding and the seam, one task."""
    handle = db._handle  # type: ignore[attr-defined]
    rng = random.Random(seed)
    out: dict[str, list[float]] = {
        f"{what} {path}": []
        for what in ("get", "commit", "heartbeat tx")
        for path in ("bare", "seam")
    }

    def bare_get(k: bytes) -> float:
        tr = handle.create_transaction()
        tr.get_read_version().wait()
        t = time.perf_counter()
        _ = tr.get(k).value
        return time.perf_counter() - t

    async def seam_get(k: bytes) -> float:
        tr = db.create_transaction()
        await tr.get_read_version()
        t = time.perf_counter()
        await tr.get(k)
        return time.perf_counter() - t

    def bare_commit(k: bytes) -> float:
        tr = handle.create_transaction()
        tr.get_read_version().wait()
        tr.set_versionstamped_value(k, STAMPED)
        t = time.perf_counter()
        tr.commit().wait()
        return time.perf_counter() - t

    async def seam_commit(k: bytes) -> float:
        tr = db.create_transaction()
        await tr.get_read_version()
        tr.set_versionstamped_value(k, STAMPED)
        t = time.perf_counter()
        await tr.commit()
        return time.perf_counter() - t

    def bare_tx(i: int) -> float:
        t = time.perf_counter()
        tr = handle.create_transaction()
        _ = tr.get(keys.member[i]).value
        tr.set_versionstamped_value(keys.health[i], STAMPED)
        tr.commit().wait()
        return time.perf_counter() - t

    async def seam_tx(i: int) -> float:
        t = time.perf_counter()
        await db.transact(hb_shaped, keys.member[i], keys.health[i])
        return time.perf_counter() - t

    n_keys = len(keys.member)
    for s in range(samples):
        i = s % n_keys
        bare_first = rng.random() < 0.5
        for _ in range(2):
            if bare_first:
                out["get bare"].append(bare_get(keys.member[i]))
                out["commit bare"].append(bare_commit(keys.health[i]))
                out["heartbeat tx bare"].append(bare_tx(i))
                await checkpoint()
            else:
                out["get seam"].append(await seam_get(keys.member[i]))
                out["commit seam"].append(await seam_commit(keys.health[i]))
                out["heartbeat tx seam"].append(await seam_tx(i))
            bare_first = not bare_first
    return out


# --- main -------------------------------------------------------------------------------


def spread(values: list[float]) -> str:
    def f(x: float) -> str:
        if x >= 100:
            return f"{x / 1000:.1f}k" if x >= 1000 else f"{x:.0f}"
        return f"{x:.2f}"

    vs = sorted(values)
    if len(vs) == 1:
        return f(vs[0])
    return f"{f(vs[0])} / {f(median(vs))} / {f(vs[-1])}"


async def main_async(args: argparse.Namespace) -> None:
    root = f"fdbworkers-bench-tp-{os.getpid()}"
    db = open_database(f"fdb:{os.environ['FDB_CLUSTER_FILE']}")
    db.default_timeout = 60.0
    keys = Keys(root, args.tasks)
    jobs = job_ids(args.transactions, args.seed)
    try:
        note(f"registering {args.tasks} members, loading {len(jobs)} jobs ...")
        for wid in keys.wids:
            rec = MemberRecord(wid, "inc-" + wid, 10.0, 1.0, "bench", os.getpid(), time.time(), {})
            await db.transact(tx_register, keys.space, rec, 3600.0)
        await load_jobs(db, jobs, PARTITIONS, root=root)
        # Warm up connections and the first read versions.
        await run_concurrent(
            min(args.tasks, 100),
            1000,
            lambda i, n: db.transact(hb_shaped, keys.member[i], keys.health[i]),
        )
        runs: list[dict[str, tuple[float, float, float]]] = []
        lat: list[dict[str, list[float]]] = []
        for r in range(args.runs):
            note(f"run {r + 1}/{args.runs}: throughput ...")
            runs.append(await one_run(db, keys, jobs, args, r))
            note(f"run {r + 1}/{args.runs}: latency ...")
            lat.append(await latency(db, keys, args.samples, args.seed + r))
    finally:
        begin, end = keys.layout.range()

        async def clear(tr: Transaction) -> None:
            tr.clear_range(begin, end)

        with anyio.move_on_after(30), suppress(FDBError):
            await db.transact(clear)
        await db.aclose()

    rows = []
    for path in runs[0]:
        rows.append(
            [
                path,
                spread([r[path][0] for r in runs]),
                spread([r[path][0] / r["bare binding"][0] for r in runs]),
                spread([r[path][1] for r in runs]),
                spread([r[path][2] for r in runs]),
                spread([r[path][2] / r["bare binding"][2] for r in runs]),
            ]
        )
    table(
        f"Heartbeat-shaped transactions under {args.loop}: {args.tasks} concurrent tasks, "
        f"{args.transactions:,} transactions per path and run, min / median / max of "
        f"{args.runs} runs",
        [
            "path",
            "transactions/s",
            "vs bare",
            "process CPU µs/tx",
            "caller thread CPU µs/tx",
            "vs bare",
        ],
        rows,
    )
    rows = []
    for what in ("get", "commit", "heartbeat tx"):
        for stat, fn in (("median", median), ("p99", lambda s: pct(s, 0.99))):
            bare = [1e6 * fn(run[f"{what} bare"]) for run in lat]
            seam = [1e6 * fn(run[f"{what} seam"]) for run in lat]
            rows.append(
                [
                    f"{what} {stat}",
                    spread(bare),
                    spread(seam),
                    spread([s / b for s, b in zip(seam, bare, strict=True)]),
                ]
            )
    table(
        f"Latency (µs), one task, bare binding (blocking wait) and seam interleaved, "
        f"{args.samples} samples each, min / median / max of {args.runs} runs",
        ["figure", "bare binding", "seam", "seam / bare"],
        rows,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="CI size: small and one run")
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--transactions", type=int, default=20_000)
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--loop", choices=("trio", "asyncio"), default="trio")
    args = parser.parse_args()
    if not os.environ.get("FDB_CLUSTER_FILE"):
        print("FDB_CLUSTER_FILE is not set: this benchmark needs a real cluster", file=sys.stderr)
        sys.exit(2)
    if args.quick:
        args.tasks, args.transactions, args.samples, args.runs = 50, 500, 50, 1
    quiet_logs()
    if args.loop == "trio":
        trio.run(main_async, args)
    else:
        asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
