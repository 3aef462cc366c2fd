"""fdbworkers against Apache ZooKeeper + kazoo's ``SetPartitioner`` (the recipe Python
users pick today): the same scenario, side by side, in one run; plus the seed's design
(one versionstamped member-list value, read-modify-write) against ours on the engine.

    .venv/bin/python benchmarks/peer_compare.py            # N=10 workers, J=1000 jobs
    .venv/bin/python benchmarks/peer_compare.py --quick    # CI size (skips ZooKeeper
                                                           # when it is not installed)
    FDB_CLUSTER_FILE=... .venv/bin/python benchmarks/peer_compare.py   # + real cluster

Scenario, identical for every system (each worker is its own OS process; timestamps are
``time.time()`` of this one host):

1. start N workers, wait until every job runs exactly once and all is quiet;
2. **kill** one worker with SIGKILL: time until the others notice (fdbworkers: a
   worker's latest membership no longer has it, i.e. it was evicted; kazoo: a
   partitioner leaves ``ACQUIRED`` because the dead session expired), and until every
   job of the dead worker runs elsewhere;
3. **add** one worker: jobs that changed runner, jobs that were stopped and started again
   (interrupted), time until settled;
4. **rolling restart** of all N: each worker in turn gets SIGTERM (graceful) and a
   replacement with the same id starts; the next one only once everything settled.
   Reported: the longest time any one job had no runner, and the total time some job
   had no runner;
5. throughout: whether any job ever had two runners at once (overlapping run intervals
   on two workers; a SIGKILLed worker's runs end at the kill).

Equal settings: ZooKeeper session timeout = fdbworkers ``timeout`` (``--timeout``, 3 s);
kazoo ``time_boundary`` = fdbworkers ``settle`` (``--settle``, 1 s).

ZooKeeper: the Debian package ``zookeeper`` (``apt-get install zookeeper``); the script
starts a standalone server on 127.0.0.1 on a free port with a temporary data folder and
stops it at the end. fdbworkers runs over a dev server started by the script, and over
the real cluster too when ``FDB_CLUSTER_FILE`` is set.

The seed baseline runs on the embedded engine with 0.5-2 ms of simulated network latency
per operation (virtual clock): N workers join at the same moment, with the seed's
read-modify-write of one member-list value and with ``tx_register``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio
import trio.testing

sys.path.insert(0, str(Path(__file__).resolve().parent))

import itertools

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

from fdbworkers._backends.engine import Engine, FaultPlan
from fdbworkers._core.keys import Layout, MemberRecord, decode, encode, stamped_value
from fdbworkers._db import Transaction
from fdbworkers._store.members import tx_register

ZK_CLASSPATH = "/etc/zookeeper/conf:/usr/share/java/zookeeper.jar"
ZK_MAIN = "org.apache.zookeeper.server.quorum.QuorumPeerMain"


def zookeeper_available() -> str | None:
    """None when ZooKeeper and kazoo can be used, else the reason why not."""
    if not Path("/usr/share/java/zookeeper.jar").exists():
        return "ZooKeeper is not installed (apt-get install zookeeper)"
    if shutil.which("java") is None:
        return "java is not installed (ZooKeeper needs it)"
    try:
        import kazoo  # noqa: F401
    except ImportError:
        return "kazoo is not installed (pip install kazoo; it is in the dev extra)"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --------------------------------------------------------------------------------------
# Child processes: one worker each, printing JSON lines {t, ev, job|n}
# --------------------------------------------------------------------------------------


def _emit(ev: str, **data: Any) -> None:
    sys.stdout.write(json.dumps({"t": time.time(), "ev": ev, **data}) + "\n")
    sys.stdout.flush()


def child_kazoo(args: argparse.Namespace) -> None:
    from kazoo.client import KazooClient

    jobs = job_ids(args.jobs, args.seed)
    zk = KazooClient(hosts=args.address, timeout=args.timeout)
    zk.start(timeout=30)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    qp = zk.SetPartitioner(
        path="/fdbworkers-bench/partitioner",
        set=jobs,
        identifier=args.id,
        time_boundary=args.settle,
    )
    running: set[str] = set()

    def stop_all() -> None:
        for j in sorted(running):
            _emit("stop", job=j)
        running.clear()

    _emit("ready")
    deadline = time.monotonic() + args.max_seconds
    while not stop.is_set() and time.monotonic() < deadline:
        if qp.failed:
            stop_all()
            _emit("failed")
            qp = zk.SetPartitioner(
                path="/fdbworkers-bench/partitioner",
                set=jobs,
                identifier=args.id,
                time_boundary=args.settle,
            )
        elif qp.release:
            stop_all()
            _emit("release")
            qp.release_set()
        elif qp.acquired:
            mine = set(qp)
            if mine != running:
                for j in sorted(mine - running):
                    _emit("start", job=j)
                for j in sorted(running - mine):
                    _emit("stop", job=j)
                running = mine
                _emit("members", n=len(qp._party))
            stop.wait(0.02)
        elif qp.allocating:
            qp.wait_for_acquire(timeout=0.2)
    stop_all()
    qp.finish()
    zk.stop()
    zk.close()
    _emit("left")


def child_fdbworkers(args: argparse.Namespace) -> None:
    from fdbworkers import JobRunner, open_database, open_worker

    # FDBW_BENCH_LOG=20 (info) shows the workers' logs in the kept log folder.
    quiet_logs(int(os.environ.get("FDBW_BENCH_LOG", "40")))

    async def main() -> None:
        db = open_database(args.address)
        with trio.move_on_after(args.max_seconds):
            async with trio.open_nursery() as outer:

                async def on_term() -> None:
                    with trio.open_signal_receiver(signal.SIGTERM) as sigs:
                        async for _ in sigs:
                            outer.cancel_scope.cancel()
                            return

                outer.start_soon(on_term)
                async with open_worker(
                    db,
                    ROLE,
                    worker_id=args.id,
                    root=args.root,
                    timeout=args.timeout,
                    settle=args.settle,
                    partitions=args.partitions,
                ) as worker:

                    async def handler(job: Any) -> None:
                        # A well-behaved handler: returns as soon as the job must stop
                        # (like the kazoo child, which stops at once on a release).
                        _emit("start", job=job.id)
                        try:
                            await job.stopping.wait()
                        finally:
                            _emit("stop", job=job.id)

                    async def members() -> None:
                        async with worker.changes() as changes:
                            async for ch in changes:
                                _emit("members", n=len(ch.members), removed=sorted(ch.removed))

                    async def latest() -> None:
                        # The unsettled membership (what liveness uses): when the
                        # eviction of a dead neighbour is first seen.
                        seen = -1
                        state: tuple[int, int] = (-1, -1)
                        while True:
                            m = worker.latest
                            if m is not None and len(m.members) != seen:
                                seen = len(m.members)
                                _emit("seen", n=seen)
                            stats = runner.statistics()
                            now = (stats.running, stats.target)
                            if now != state:
                                state = now
                                _emit("state", running=now[0], target=now[1])
                            await trio.sleep(0.02)

                    runner = JobRunner(worker, handler, grace=0.5)
                    outer.start_soon(members)
                    outer.start_soon(latest)
                    _emit("ready")
                    await runner.run()
        await db.aclose()
        _emit("left")

    trio.run(main)


# --------------------------------------------------------------------------------------
# The parent: run the scenario against one system
# --------------------------------------------------------------------------------------


@dataclass
class Interval:
    worker: str
    start: float
    end: float | None = None


@dataclass
class Timeline:
    """Every run interval of every job, from the children's lines."""

    jobs: int
    open: dict[str, dict[str, Interval]] = field(default_factory=dict)  # job -> worker -> iv
    done: dict[str, list[Interval]] = field(default_factory=dict)
    events: list[tuple[float, str, str, dict[str, Any]]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    last_change: float = 0.0

    def feed(self, worker: str, line: str) -> None:
        try:
            obj = json.loads(line)
        except ValueError:
            return
        t, ev = float(obj["t"]), str(obj["ev"])
        with self.lock:
            self.events.append((t, worker, ev, obj))
            if ev == "start":
                self.open.setdefault(obj["job"], {})[worker] = Interval(worker, t)
                self.last_change = max(self.last_change, t)
            elif ev == "stop":
                iv = self.open.get(obj["job"], {}).pop(worker, None)
                if iv is not None:
                    iv.end = t
                    self.done.setdefault(obj["job"], []).append(iv)
                self.last_change = max(self.last_change, t)
            elif ev in ("members", "release"):
                self.last_change = max(self.last_change, t)

    def killed(self, worker: str, t: float) -> None:
        with self.lock:
            for job, ivs in self.open.items():
                iv = ivs.pop(worker, None)
                if iv is not None:
                    iv.end = t
                    self.done.setdefault(job, []).append(iv)
            self.last_change = max(self.last_change, t)

    def owners(self) -> dict[str, list[str]]:
        with self.lock:
            return {j: list(ws) for j, ws in self.open.items() if ws}

    def all_intervals(self) -> dict[str, list[Interval]]:
        with self.lock:
            out = {j: list(v) for j, v in self.done.items()}
            for j, ws in self.open.items():
                out.setdefault(j, []).extend(ws.values())
            return out


def overlaps(tl: Timeline) -> int:
    """Jobs that ever had two runners at once (on two different workers)."""
    bad = 0
    now = time.time()
    for ivs in tl.all_intervals().values():
        spans = sorted((iv.start, iv.end if iv.end is not None else now, iv.worker) for iv in ivs)
        for (_s1, e1, w1), (s2, _e2, w2) in itertools.pairwise(spans):
            if w1 != w2 and s2 < e1 - 1e-6:
                bad += 1
                break
    return bad


def gaps(tl: Timeline, start: float, end: float) -> tuple[float, float]:
    """(longest time one job had no runner, total time some job had no runner) within
    [start, end]."""
    longest = 0.0
    holes: list[tuple[float, float]] = []
    for ivs in tl.all_intervals().values():
        spans = sorted(
            (max(iv.start, start), min(iv.end if iv.end is not None else end, end))
            for iv in ivs
            if (iv.end is None or iv.end > start) and iv.start < end
        )
        cur = start
        for s, e in spans:
            if s > cur:
                holes.append((cur, s))
                longest = max(longest, s - cur)
            cur = max(cur, e)
        if cur < end:
            holes.append((cur, end))
            longest = max(longest, end - cur)
    holes.sort()
    total, cur_s, cur_e = 0.0, None, None
    for s, e in holes:
        if cur_e is None or s > cur_e:
            if cur_e is not None and cur_s is not None:
                total += cur_e - cur_s
            cur_s, cur_e = s, e
        else:
            cur_e = max(cur_e, e)
    if cur_e is not None and cur_s is not None:
        total += cur_e - cur_s
    return longest, total


class System:
    name = ""

    def __init__(self, args: argparse.Namespace, tmp: Path) -> None:
        self.args = args
        self.tmp = tmp
        self.procs: dict[str, subprocess.Popen[str]] = {}
        self.readers: list[threading.Thread] = []
        self.tl = Timeline(args.jobs)

    def child_args(self) -> list[str]:
        raise NotImplementedError

    def setup(self) -> None:
        raise NotImplementedError

    def teardown(self) -> None:
        pass

    def spawn(self, wid: str) -> None:
        a = self.args
        cmd = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--child",
            self.kind,
            "--id",
            wid,
            "--jobs",
            str(a.jobs),
            "--seed",
            str(a.seed),
            "--timeout",
            str(a.timeout),
            "--settle",
            str(a.settle),
            "--partitions",
            str(a.partitions),
            "--max-seconds",
            str(a.max_seconds),
            *self.child_args(),
        ]
        p = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=open(self.tmp / f"{self.kind}-{wid}.log", "a"),  # noqa: SIM115
            text=True,
        )
        self.procs[wid] = p
        assert p.stdout is not None
        out = p.stdout

        def read() -> None:
            for line in out:
                self.tl.feed(wid, line)

        t = threading.Thread(target=read, daemon=True)
        t.start()
        self.readers.append(t)

    kind = ""

    def settled(self, n: int, quiet: float) -> bool:
        owners = self.tl.owners()
        if len(owners) != self.args.jobs or any(len(ws) != 1 for ws in owners.values()):
            return False
        with self.tl.lock:
            last = self.tl.last_change
            seen = {}
            for _t, w, ev, obj in self.tl.events:
                if ev == "members" and w in self.procs and self.procs[w].poll() is None:
                    seen[w] = obj["n"]
        live = [w for w, p in self.procs.items() if p.poll() is None]
        if len(live) != n or any(seen.get(w) != n for w in live):
            return False
        if self.kind == "fdbworkers":
            # Every runner has read its target and runs exactly it (a failed rebalance
            # read leaves a target short, and nothing moves: that is not settled).
            states: dict[str, tuple[int, int]] = {}
            with self.tl.lock:
                for _t, w, ev, obj in self.tl.events:
                    if ev == "state":
                        states[w] = (obj["running"], obj["target"])
            if any(states.get(w, (0, -1))[0] != states.get(w, (0, -1))[1] for w in live):
                return False
            if sum(states[w][1] for w in live) != self.args.jobs:
                return False
        return time.time() - last >= quiet

    def wait_settled(self, n: int, limit: float) -> None:
        """Until every job runs exactly once, every live worker saw n members, and no
        job started or stopped for settle + 1 s (the settled moment is the last change)."""
        t0 = time.time()
        quiet = self.args.settle + 1.0
        while not self.settled(n, quiet):
            if time.time() - t0 > limit:
                raise RuntimeError(f"{self.name}: not settled within {limit} s: {self.why(n)}")
            time.sleep(0.1)

    def why(self, n: int) -> str:
        """What keeps the system from being settled (for the error message)."""
        owners = self.tl.owners()
        double = sorted(j for j, ws in owners.items() if len(ws) > 1)
        seen: dict[str, Any] = {}
        with self.tl.lock:
            for _t, w, ev, obj in self.tl.events:
                if ev in ("members", "seen"):
                    seen[f"{w}.{ev}"] = obj["n"]
        live = sorted(w for w, p in self.procs.items() if p.poll() is None)
        return (
            f"{self.args.jobs - len(owners)} jobs without a runner, {len(double)} with two, "
            f"live workers {live}, last membership sizes {seen}, "
            f"last change {time.time() - self.tl.last_change:.1f} s ago; logs in {self.tmp}"
        )

    def stop(self, wid: str, sig: int = signal.SIGTERM) -> None:
        p = self.procs[wid]
        p.send_signal(sig)
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()

    def run(self) -> dict[str, Any]:
        a = self.args
        n = a.workers
        out: dict[str, Any] = {"system": self.name}
        self.setup()
        try:
            t0 = time.time()
            for i in range(n):
                self.spawn(f"w{i:02d}")
            self.wait_settled(n, 120 + 5 * n)
            out["start_to_settled_s"] = self.tl.last_change - t0
            # Kill one.
            owners = self.tl.owners()
            victim = f"w{n // 2:02d}"
            vjobs = {j for j, ws in owners.items() if victim in ws}
            tk = time.time()
            self.procs[victim].kill()
            self.procs[victim].wait()
            self.tl.killed(victim, tk)
            self.wait_settled(n - 1, 60 + 10 * a.timeout)
            detect = None
            reassigned = 0.0
            with self.tl.lock:
                for t, w, ev, obj in sorted(self.tl.events):
                    if t <= tk or w == victim:
                        continue
                    if detect is None and (
                        ev in ("release", "failed") or (ev == "seen" and obj["n"] == n - 1)
                    ):
                        detect = t - tk
            for j in vjobs:
                starts = [
                    iv.start
                    for iv in self.tl.all_intervals().get(j, [])
                    if iv.start > tk and iv.worker != victim
                ]
                if starts:
                    reassigned = max(reassigned, min(starts) - tk)
            out["kill_detect_s"] = detect
            out["kill_reassign_s"] = reassigned
            out["victim_jobs"] = len(vjobs)
            longest, _ = gaps(self.tl, tk, time.time())
            out["kill_longest_gap_s"] = longest
            # Add one.
            before = {j: ws[0] for j, ws in self.tl.owners().items()}
            stops_before = sum(len(v) for v in self.tl.all_intervals().values())
            tj = time.time()
            del self.procs[victim]
            self.spawn("w-new")
            self.wait_settled(n, 60 + 10 * a.timeout)
            out["join_settle_s"] = self.tl.last_change - tj
            after = {j: ws[0] for j, ws in self.tl.owners().items()}
            out["join_moved"] = sum(1 for j in after if before.get(j) != after[j])
            out["join_newcomer_jobs"] = sum(1 for w in after.values() if w == "w-new")
            runs_after = sum(len(v) for v in self.tl.all_intervals().values())
            out["join_interrupted"] = runs_after - stops_before
            # Rolling restart of all.
            tr = time.time()
            for wid in sorted(self.procs, key=lambda w: (w == "w-new", w)):
                if self.procs[wid].poll() is not None:
                    continue
                self.stop(wid)
                self.spawn(wid)
                self.wait_settled(n, 60 + 10 * a.timeout)
            te = time.time()
            longest, total = gaps(self.tl, tr, te)
            out["restart_s"] = te - tr
            out["restart_longest_gap_s"] = longest
            out["restart_any_gap_s"] = total
            out["two_runners"] = overlaps(self.tl)
        finally:
            for p in self.procs.values():
                if p.poll() is None:
                    p.send_signal(signal.SIGTERM)
            for p in self.procs.values():
                try:
                    p.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
            self.teardown()
        return out


class ZooKeeperSystem(System):
    name = "ZooKeeper + kazoo SetPartitioner"
    kind = "kazoo"

    def setup(self) -> None:
        port = free_port()
        data = self.tmp / "zk-data"
        data.mkdir()
        cfg = self.tmp / "zoo.cfg"
        # minSessionTimeout: ZooKeeper's default floor is 2 ticks; ticks of 250 ms allow
        # a session timeout down to 0.5 s, so the requested one is what is negotiated.
        cfg.write_text(
            f"tickTime=250\ndataDir={data}\nclientPort={port}\nclientPortAddress=127.0.0.1\n"
            "admin.enableServer=false\nmaxClientCnxns=0\nmaxSessionTimeout=600000\n"
        )
        self.server = subprocess.Popen(
            [
                "java",
                "-Xmx256m",
                f"-Dzookeeper.log.dir={self.tmp}",
                "-cp",
                ZK_CLASSPATH,
                ZK_MAIN,
                str(cfg),
            ],
            stdout=open(self.tmp / "zk.log", "w"),  # noqa: SIM115
            stderr=subprocess.STDOUT,
        )
        self.address = f"127.0.0.1:{port}"
        deadline = time.time() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                    s.sendall(b"ruok")
                    break
            except OSError:
                if time.time() > deadline or self.server.poll() is not None:
                    raise RuntimeError(f"ZooKeeper did not start; see {self.tmp}/zk.log") from None
                time.sleep(0.1)
        time.sleep(0.5)

    def teardown(self) -> None:
        self.server.terminate()
        try:
            self.server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.server.kill()
            self.server.wait()

    def child_args(self) -> list[str]:
        return ["--address", self.address]


class FdbworkersSystem(System):
    kind = "fdbworkers"

    def __init__(self, args: argparse.Namespace, tmp: Path, cluster_file: str | None) -> None:
        super().__init__(args, tmp)
        self.cluster_file = cluster_file
        self.name = "fdbworkers on " + ("FoundationDB" if cluster_file else "the dev server")
        self.root = f"{ROOT}-{os.getpid()}"

    def setup(self) -> None:
        if self.cluster_file:
            self.address = f"fdb:{self.cluster_file}"
            self.server = None
        else:
            self.server, self.address = start_devserver(self.tmp, self.tmp / "devserver.log")
        from fdbworkers import open_database

        async def load() -> None:
            db = open_database(self.address)
            await load_jobs(
                db, job_ids(self.args.jobs, self.args.seed), self.args.partitions, root=self.root
            )
            await db.aclose()

        trio.run(load)

    def teardown(self) -> None:
        from fdbworkers import open_database

        if self.cluster_file:

            async def clean() -> None:
                db = open_database(self.address)
                begin, end = Layout.for_root(self.root).range()

                async def clear(tr: Transaction) -> None:
                    tr.clear_range(begin, end)

                await db.transact(clear)
                await db.aclose()

            trio.run(clean)
        if self.server is not None:
            self.server.terminate()
            try:
                self.server.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.server.kill()
                self.server.wait()

    def child_args(self) -> list[str]:
        return ["--address", self.address, "--root", self.root]


# --------------------------------------------------------------------------------------
# The seed's design on the engine: N workers joining at once
# --------------------------------------------------------------------------------------


SEED_KEY = Layout.for_root(ROOT).key("r", ROLE, "members")


async def tx_seed_join(tr: Transaction, wid: str) -> None:
    """The seed: read the whole member list, add ourselves, write it back with a
    versionstamp (so readers see when it changed)."""
    raw = await tr.get(SEED_KEY)
    members: dict[str, Any] = {}
    if raw is not None:
        members = dict(decode(SEED_KEY, raw[10:]).get("members", {}))
    members[wid] = {"incarnation": "1", "timeout": 10.0}
    tr.set_versionstamped_value(SEED_KEY, stamped_value({"members": members}))


async def joins(n: int, design: str, seed: int) -> dict[str, Any]:
    engine = Engine(rng=random.Random(seed), faults=FaultPlan(latency=(0.0005, 0.002)))
    layout = Layout.for_root(ROOT)
    dbs = [engine.open_database(f"w{i}") for i in range(n)]
    lat: list[float] = []

    async def one(i: int) -> None:
        t = trio.current_time()
        if design == "seed":
            await dbs[i].transact(tx_seed_join, f"w{i:04d}")
        else:
            rec = MemberRecord(f"w{i:04d}", "1", 10.0, 1.0, "h", 1, 0.0, {})
            await dbs[i].transact(tx_register, layout, ROLE, rec, 3600.0)
        lat.append(trio.current_time() - t)

    t0 = trio.current_time()
    async with trio.open_nursery() as nursery:
        for i in range(n):
            nursery.start_soon(one, i)
    return {
        "n": n,
        "design": design,
        "conflicts": sum(db.stats.conflicts for db in dbs),
        "retries": sum(db.stats.retries for db in dbs),
        "median_ms": 1000 * median(lat),
        "p99_ms": 1000 * pct(lat, 0.99),
        "all_joined_ms": 1000 * (trio.current_time() - t0),
    }


def seed_part(ns: Sequence[int], seed: int) -> list[dict[str, Any]]:
    out = []
    for n in ns:
        for design in ("seed", "ours"):
            out.append(
                trio.run(joins, n, design, seed, clock=trio.testing.MockClock(autojump_threshold=0))
            )
    rows = []
    for n in ns:
        s = next(r for r in out if r["n"] == n and r["design"] == "seed")
        o = next(r for r in out if r["n"] == n and r["design"] == "ours")
        rows.append(
            (
                n,
                s["conflicts"],
                o["conflicts"],
                s["median_ms"],
                o["median_ms"],
                s["p99_ms"],
                o["p99_ms"],
                s["all_joined_ms"],
                o["all_joined_ms"],
                s["all_joined_ms"] / o["all_joined_ms"],
            )
        )
    table(
        "N workers joining at once on the engine (0.5-2 ms latency per operation, virtual "
        "clock): the seed's member-list value vs one key per member (tx_register)",
        [
            "N",
            "conflicts: seed",
            "conflicts: ours",
            "join median ms: seed",
            "ours",
            "join p99 ms: seed",
            "ours",
            "all joined ms: seed",
            "ours",
            "seed / ours",
        ],
        rows,
    )
    # The seed's value also caps membership: FDB values are at most 100 kB.
    one_member = len(encode({"w0000": {"incarnation": "1", "timeout": 10.0}}))
    note(f"seed: one member entry ~{one_member} bytes -> at most ~{100_000 // one_member} members")
    return out


# --------------------------------------------------------------------------------------


def side_by_side(results: list[dict[str, Any]], args: argparse.Namespace) -> None:
    rows_def: list[tuple[str, str, Callable[[Any], Any]]] = [
        ("start to settled (s)", "start_to_settled_s", float),
        ("kill: others notice (s)", "kill_detect_s", float),
        ("kill: all its jobs running elsewhere (s)", "kill_reassign_s", float),
        ("kill: the dead worker's jobs", "victim_jobs", int),
        ("join: jobs that changed runner", "join_moved", int),
        ("join: jobs stopped and restarted", "join_interrupted", int),
        ("join: the newcomer's jobs (optimum)", "join_newcomer_jobs", int),
        ("join: time to settled (s)", "join_settle_s", float),
        ("rolling restart: duration (s)", "restart_s", float),
        ("rolling restart: longest time one job had no runner (s)", "restart_longest_gap_s", float),
        ("rolling restart: total time some job had no runner (s)", "restart_any_gap_s", float),
        ("jobs that ever had two runners", "two_runners", int),
    ]
    base = results[0]
    headers = ["figure"] + [r["system"] for r in results]
    if len(results) > 1:
        headers += [f"{r['system']} / {base['system']}" for r in results[1:]]
    rows = []
    for label, key, conv in rows_def:
        vals = [r.get(key) for r in results]
        row: list[Any] = [label] + [conv(v) if v is not None else "-" for v in vals]
        for v in vals[1:]:
            b = base.get(key)
            row.append(float(v) / float(b) if v is not None and b not in (None, 0) else "-")
        rows.append(row)
    table(
        f"Side by side: N={args.workers} worker processes, J={args.jobs} jobs, session "
        f"timeout = worker timeout = {args.timeout:g} s, settle = time_boundary = "
        f"{args.settle:g} s",
        headers,
        rows,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--workers", type=int, default=10)
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--timeout", type=float, default=3.0)
    parser.add_argument("--settle", type=float, default=1.0)
    parser.add_argument("--partitions", type=int, default=4096)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--max-seconds", type=float, default=900.0, help="child lifetime cap")
    parser.add_argument(
        "--systems",
        default="zookeeper,devserver,fdb",
        help="comma list; fdb needs FDB_CLUSTER_FILE",
    )
    parser.add_argument("--skip-seed", action="store_true")
    parser.add_argument("--keep-logs", action="store_true", help="keep the workers' logs")
    parser.add_argument("--json", type=Path)
    # Child mode (internal).
    parser.add_argument("--child", choices=["kazoo", "fdbworkers"], help=argparse.SUPPRESS)
    parser.add_argument("--id", help=argparse.SUPPRESS)
    parser.add_argument("--address", help=argparse.SUPPRESS)
    parser.add_argument("--root", default=ROOT, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child == "kazoo":
        child_kazoo(args)
        return
    if args.child == "fdbworkers":
        child_fdbworkers(args)
        return
    quiet_logs()
    if args.quick:
        args.workers, args.jobs = min(args.workers, 3), min(args.jobs, 30)
        args.max_seconds = min(args.max_seconds, 300)
    out: dict[str, Any] = {}
    systems = set(args.systems.split(","))
    tmp = Path(tempfile.mkdtemp(prefix="fdbw-peer-"))
    results = []
    try:
        if "zookeeper" in systems:
            why = zookeeper_available()
            if why:
                note(f"skipping ZooKeeper: {why}")
                out["zookeeper_skipped"] = why
            else:
                note("running the scenario on ZooKeeper + kazoo ...")
                results.append(ZooKeeperSystem(args, tmp).run())
                note(json.dumps(results[-1]))
        if "devserver" in systems:
            note("running the scenario on fdbworkers + dev server ...")
            results.append(FdbworkersSystem(args, tmp, None).run())
            note(json.dumps(results[-1]))
        cf = os.environ.get("FDB_CLUSTER_FILE")
        if "fdb" in systems and cf:
            note(f"running the scenario on fdbworkers + FoundationDB ({cf}) ...")
            results.append(FdbworkersSystem(args, tmp, cf).run())
            note(json.dumps(results[-1]))
        elif "fdb" in systems:
            note("skipping the real cluster: FDB_CLUSTER_FILE is not set")
        if results:
            side_by_side(results, args)
        out["scenario"] = results
        if not args.skip_seed:
            out["seed"] = seed_part([10, 100] if args.quick else [10, 100, 1000], args.seed)
    except BaseException:
        note(f"failed: the logs are kept in {tmp}")
        raise
    if args.keep_logs:
        note(f"the logs are in {tmp}")
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(out, indent=1, default=str))


if __name__ == "__main__":
    main()
