"""fdbworkers beside kazoo's ``SetPartitioner`` (ZooKeeper) and tooz's partitioned groups
(Redis): the same scenarios, side by side, each worker its own OS process, the figures
computed by one ownership replay; plus the seed's design (one versionstamped member-list
value, read-modify-write) against ours on the engine.

    python benchmarks/peer_compare.py                      # all rows, 3 runs (~40 min)
    python benchmarks/peer_compare.py --quick              # 1 run of each row (~8 min)
    python benchmarks/peer_compare.py --systems fdbworkers,kazoo,tooz --rows crash,join

Systems (``--systems``, comma list; a system whose server or package is missing is
skipped with the reason):

* ``fdbworkers``: the library (``open_worker`` + ``run_jobs``, default options but the
  timeout) on the FoundationDB cluster of ``FDB_CLUSTER_FILE``;
* ``kazoo``: kazoo ``SetPartitioner`` (``time_boundary`` 1 s) on a standalone ZooKeeper
  that the script starts (``apt-get install zookeeper``; ``pip install kazoo``);
* ``tooz``: tooz ``join_partitioned_group`` on a Redis server that the script starts
  (``apt-get install redis-server``; ``pip install tooz redis``); each worker runs
  ``run_watchers()`` every 0.5 s (``--tooz-poll``) and joins again when it finds itself
  removed (tooz does not);
* ``devserver``: fdbworkers on the dev server that the script starts (no FoundationDB
  needed; not in the default list).

``pip install -e '.[bench]'`` installs kazoo, tooz and redis.

Scenarios (``--rows``), N = 5 worker processes and J = 60 jobs by default; T is the
timeout (ZooKeeper session timeout, tooz ``membership_timeout``, fdbworkers ``timeout``):

* ``crash``: start N, kill -9 one worker (chosen by the seed, at a seeded moment): kill
  -> every job held again (s), unowned job-seconds; at T = 4 and T = 10;
* ``start``: N started at once, 10 times: time to stable (s), jobs held twice, and the
  jobs per worker (the balance row);
* ``join``: one more worker: spawn -> stable (s), jobs started, jobs held twice;
* ``restart``: rolling restart of N with the same ids (SIGTERM, the process exits, a new
  one with the same id starts, the next once all is stable): handler starts, moves,
  rebalances, unowned job-seconds; fdbworkers also restarted in place (SIGHUP:
  ``Worker.leave_for_restart``);
* ``pause``: SIGSTOP one worker for 2 T, then SIGCONT: SIGSTOP -> the others hold every
  job (s), jobs held twice, SIGCONT -> stable (s).

Each worker process writes a line when its handler starts holding a job and when it stops
(``time.monotonic()``, one clock for every process of this host); the harness writes
when it killed, paused or resumed one. ``_replay.py`` computes every figure from these
lines after the run. "Stable" = every job held by exactly one live process, every live
process reports N members, and no job started or stopped for ``--quiet`` seconds; the
stable moment is the last start or stop before that quiet time.

Everything is bounded: every wait has a deadline, each worker process ends itself after
``--max-seconds`` and dies with this script (``setpriv --pdeathsig``), and the servers
and processes that the script started are stopped at the end, also on an error or
Ctrl-C.

The seed baseline runs on the embedded engine with 0.5-2 ms of simulated network latency
per operation (virtual clock): N workers join at the same moment, with the seed's
read-modify-write of one member-list value and with ``tx_register``.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import trio
import trio.testing

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import ROLE, ROOT, job_ids, median, note, pct, quiet_logs, start_devserver, table
from _replay import (
    Hold,
    Record,
    counts_at,
    first_all_held,
    held_twice,
    holds,
    moves,
    unowned_seconds,
)

from fdbworkers._backends.engine import Engine, FaultPlan
from fdbworkers._core.keys import Layout
from fdbworkers._core.records import MemberRecord, decode, encode, stamped_value
from fdbworkers._db import Transaction
from fdbworkers._store.members import tx_register

ZK_JAR = "/usr/share/java/zookeeper.jar"
ZK_CLASSPATH = f"/etc/zookeeper/conf:{ZK_JAR}"
ZK_MAIN = "org.apache.zookeeper.server.quorum.QuorumPeerMain"
SYSTEMS = ("fdbworkers", "kazoo", "tooz", "devserver")
ROWS = ("crash", "start", "join", "restart", "pause")
ALIASES = {"zookeeper": "kazoo", "fdb": "fdbworkers"}


# --------------------------------------------------------------------------------------
# Which systems can run here
# --------------------------------------------------------------------------------------


def zookeeper_available() -> str | None:
    """None when ZooKeeper and kazoo can be used, else the reason why not."""
    if not Path(ZK_JAR).exists():
        return "ZooKeeper is not installed (apt-get install zookeeper)"
    if shutil.which("java") is None:
        return "java is not installed (ZooKeeper needs it)"
    try:
        import kazoo  # noqa: F401
    except ImportError:
        return "kazoo is not installed (pip install kazoo, or the bench extra)"
    return None


def redis_available() -> str | None:
    """None when a Redis server and tooz (with redis-py) can be used, else why not."""
    if shutil.which("redis-server") is None:
        return "redis-server is not installed (apt-get install redis-server)"
    try:
        import redis  # noqa: F401
        import tooz  # noqa: F401
    except ImportError:
        return "tooz or redis is not installed (pip install tooz redis, or the bench extra)"
    return None


def fdb_available(cluster_file: str | None) -> str | None:
    """None when the FoundationDB cluster of ``cluster_file`` answers, else why not."""
    if not cluster_file:
        return "FDB_CLUSTER_FILE is not set (point it at a running FoundationDB cluster)"
    if not Path(cluster_file).exists():
        return f"FDB_CLUSTER_FILE={cluster_file} does not exist"
    from fdbworkers import open_database

    async def probe() -> None:
        db = open_database(f"fdb:{cluster_file}")
        try:
            with trio.fail_after(10):

                async def read(tr: Transaction) -> None:
                    await tr.get(b"\xff\xff/status/json")

                await db.transact(read)
        finally:
            await db.aclose()

    try:
        trio.run(probe)
    except trio.TooSlowError:
        return f"the cluster of {cluster_file} did not answer within 10 s"
    except Exception as e:
        return f"the cluster of {cluster_file} cannot be used: {type(e).__name__}: {e}"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def guarded(cmd: list[str]) -> list[str]:
    """``cmd`` killed when this script dies (Linux ``setpriv --pdeathsig``, if present)."""
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "KILL", "--", *cmd] if setpriv else cmd


# --------------------------------------------------------------------------------------
# Worker processes: one each, printing JSON lines {t, ev, job | n | until}
# --------------------------------------------------------------------------------------


def _emit(ev: str, **data: Any) -> None:
    sys.stdout.write(json.dumps({"t": time.monotonic(), "ev": ev, **data}) + "\n")
    sys.stdout.flush()


def child_fdbworkers(args: argparse.Namespace) -> None:
    from fdbworkers import open_database, open_worker

    _emit("boot")
    # FDBW_BENCH_LOG=20 (info) shows the workers' logs in the kept log folder.
    quiet_logs(int(os.environ.get("FDBW_BENCH_LOG", "40")))
    options: dict[str, Any] = {"timeout": args.timeout}
    if args.settle is not None:
        options["settle"] = args.settle

    async def main() -> None:
        db = open_database(args.address)
        with trio.move_on_after(args.max_seconds):
            async with open_worker(
                db,
                ROLE,
                worker_id=args.id,
                root=args.ns,
                rng=random.Random(f"{args.seed}:{args.proc}"),
                **options,
            ) as worker:

                def lease() -> None:
                    # The wall moment (this host's monotonic clock) past which this
                    # worker's handlers may no longer act: the lease's hard end.
                    left = worker.lease.hard_end - trio.current_time()
                    if left > -1e9:
                        _emit("lease", until=time.monotonic() + left)

                worker.on_lease_renewed(lease)
                lease()

                async def handler(job: Any) -> None:
                    _emit("start", job=job.id)
                    try:
                        await job.stopping.wait()
                    finally:
                        _emit("stop", job=job.id)

                with trio.CancelScope() as body:
                    async with trio.open_nursery() as nursery:

                        async def on_signals() -> None:
                            with trio.open_signal_receiver(
                                signal.SIGTERM, signal.SIGHUP
                            ) as received:
                                async for signum in received:
                                    if signum == signal.SIGHUP:
                                        # Restart in place: the next process with
                                        # this id takes the jobs back.
                                        await worker.leave_for_restart()
                                    else:
                                        # Leave: hand the jobs to their next owners.
                                        await worker.drain()
                                    body.cancel()
                                    return

                        async def members() -> None:
                            seen = -1
                            while True:
                                m = worker.membership
                                if m is not None and len(m.members) != seen:
                                    seen = len(m.members)
                                    _emit("members", n=seen)
                                await trio.sleep(0.05)

                        nursery.start_soon(on_signals)
                        nursery.start_soon(members)
                        _emit("ready")
                        await worker.run_jobs(handler)
        await db.aclose()
        _emit("left")

    trio.run(main)


def child_kazoo(args: argparse.Namespace) -> None:
    from kazoo.client import KazooClient

    _emit("boot")
    jobs = job_ids(args.jobs, args.seed)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGHUP, lambda *_: stop.set())
    zk = KazooClient(hosts=args.address, timeout=args.timeout)
    zk.start(timeout=30)
    path = f"/fdbworkers-bench/{args.ns}"

    def partitioner() -> Any:
        return zk.SetPartitioner(
            path=path, set=jobs, identifier=args.id, time_boundary=args.time_boundary
        )

    qp = partitioner()
    running: set[str] = set()
    seen = -1

    def stop_all() -> None:
        for j in sorted(running):
            _emit("stop", job=j)
        running.clear()

    _emit("ready")
    deadline = time.monotonic() + args.max_seconds
    while not stop.is_set() and time.monotonic() < deadline:
        if qp.failed:
            # The session expired (or the partitioner broke): start over.
            stop_all()
            _emit("failed")
            qp = partitioner()
        elif qp.release:
            stop_all()
            qp.release_set()
        elif qp.acquired:
            mine = set(qp)
            if mine != running:
                for j in sorted(running - mine):
                    _emit("stop", job=j)
                for j in sorted(mine - running):
                    _emit("start", job=j)
                running = mine
            if len(qp._party) != seen:
                seen = len(qp._party)
                _emit("members", n=seen)
            stop.wait(0.02)
        elif qp.allocating:
            qp.wait_for_acquire(timeout=0.2)
        else:
            stop.wait(0.02)
    stop_all()
    qp.finish()
    zk.stop()
    zk.close()
    _emit("left")


def child_tooz(args: argparse.Namespace) -> None:
    import tooz
    from tooz import coordination

    _emit("boot")
    jobs = job_ids(args.jobs, args.seed)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGHUP, lambda *_: stop.set())
    url = (
        f"redis://{args.address}?membership_timeout={args.timeout:g}&namespace=fdbwbench-{args.ns}"
    )
    me = args.id.encode()
    group = b"bench"
    coord = coordination.get_coordinator(url, me)
    coord.start(start_heart=True)
    part = coord.join_partitioned_group(group)
    running: set[str] = set()
    seen = -1

    def stop_all() -> None:
        for j in sorted(running):
            _emit("stop", job=j)
        running.clear()

    _emit("ready")
    deadline = time.monotonic() + args.max_seconds
    while not stop.is_set() and time.monotonic() < deadline:
        try:
            coord.run_watchers()
            known = set(cast(Any, coord)._group_members.get(group, set()))
            if me not in known:
                # Removed from the group while away (our heartbeat key expired and a
                # peer's get_members dropped us): tooz does not join again, we do.
                stop_all()
                _emit("failed")
                part.stop()
                part = coord.join_partitioned_group(group)
                continue
            nodes = set(part.ring.nodes)
            if nodes != known:
                # tooz's Partitioner reads the members for its ring, then again for the
                # watchers' cache: a member that joined in between is never added to
                # the ring (this worker would hold its jobs for ever). Repair the ring
                # from the watchers' view.
                for m in known - nodes:
                    part.ring.add_node(m)
                for m in nodes - known:
                    part.ring.remove_node(m)
                _emit("repaired", n=len(known ^ nodes))
            mine = {j for j in jobs if part.belongs_to_self(j)}
        except tooz.ToozError as e:
            _emit("error", error=str(e))
            stop.wait(args.tooz_poll)
            continue
        for j in sorted(running - mine):
            _emit("stop", job=j)
        for j in sorted(mine - running):
            _emit("start", job=j)
        running = mine
        if len(part.ring.nodes) != seen:
            seen = len(part.ring.nodes)
            _emit("members", n=seen)
        stop.wait(args.tooz_poll)
    stop_all()
    with suppress(tooz.ToozError):
        coord.leave_partitioned_group(part)
    coord.stop()
    _emit("left")


# --------------------------------------------------------------------------------------
# Systems: the servers this script starts, and what a worker process needs to know
# --------------------------------------------------------------------------------------


class System:
    key = ""
    label = ""
    #: Has a restart in place (a leave that keeps the member) beside the ordinary one.
    in_place = False

    def __init__(self, args: argparse.Namespace, tmp: Path) -> None:
        self.args = args
        self.tmp = tmp
        self.address = ""

    def unavailable(self) -> str | None:
        return None

    def setup(self) -> None:
        pass

    def teardown(self) -> None:
        pass

    def prepare(self, ns: str, jobs: Sequence[str]) -> None:
        """Before a trial: the jobs, for systems that store them."""

    def cleanup(self, ns: str) -> None:
        """After a trial: remove what it left in the server."""

    def child_args(self, ns: str) -> list[str]:
        return ["--address", self.address, "--ns", ns]


def stop_server(p: subprocess.Popen[bytes] | None) -> None:
    if p is None or p.poll() is not None:
        return
    p.terminate()
    try:
        p.wait(timeout=15)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()


def wait_port(port: int, proc: subprocess.Popen[bytes], what: str, log: Path) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"{what} did not start; see {log}") from None
            time.sleep(0.1)


class KazooSystem(System):
    key = "kazoo"
    label = "kazoo SetPartitioner (ZooKeeper)"

    def unavailable(self) -> str | None:
        return zookeeper_available()

    def setup(self) -> None:
        port = free_port()
        data = self.tmp / "zk-data"
        data.mkdir()
        cfg = self.tmp / "zoo.cfg"
        # Ticks of 250 ms: ZooKeeper's floor for a session timeout is 2 ticks, so the
        # requested one (down to 0.5 s) is the one negotiated.
        cfg.write_text(
            f"tickTime=250\ndataDir={data}\nclientPort={port}\nclientPortAddress=127.0.0.1\n"
            "admin.enableServer=false\nmaxClientCnxns=0\nmaxSessionTimeout=600000\n"
        )
        log = self.tmp / "zk.log"
        self.server: subprocess.Popen[bytes] | None = subprocess.Popen(
            guarded(
                [
                    "java",
                    "-Xmx256m",
                    f"-Dzookeeper.log.dir={self.tmp}",
                    "-cp",
                    ZK_CLASSPATH,
                    ZK_MAIN,
                    str(cfg),
                ]
            ),
            stdout=open(log, "w"),  # noqa: SIM115
            stderr=subprocess.STDOUT,
        )
        wait_port(port, self.server, "ZooKeeper", log)
        time.sleep(0.5)
        self.address = f"127.0.0.1:{port}"

    def teardown(self) -> None:
        stop_server(getattr(self, "server", None))


class ToozSystem(System):
    key = "tooz"
    label = "tooz partitioned group (Redis)"

    def unavailable(self) -> str | None:
        return redis_available()

    def setup(self) -> None:
        port = free_port()
        data = self.tmp / "redis-data"
        data.mkdir()
        log = self.tmp / "redis.log"
        redis_server = shutil.which("redis-server") or "redis-server"
        self.server: subprocess.Popen[bytes] | None = subprocess.Popen(
            guarded(
                [
                    redis_server,
                    "--port",
                    str(port),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    str(data),
                    "--daemonize",
                    "no",
                ]
            ),
            stdout=open(log, "w"),  # noqa: SIM115
            stderr=subprocess.STDOUT,
        )
        wait_port(port, self.server, "redis-server", log)
        self.address = f"127.0.0.1:{port}"

    def teardown(self) -> None:
        stop_server(getattr(self, "server", None))


class FdbworkersSystem(System):
    key = "fdbworkers"
    label = "fdbworkers (FoundationDB)"
    in_place = True

    def __init__(self, args: argparse.Namespace, tmp: Path) -> None:
        super().__init__(args, tmp)
        self.cluster_file = os.environ.get("FDB_CLUSTER_FILE")
        self.server: subprocess.Popen[bytes] | None = None

    def unavailable(self) -> str | None:
        return fdb_available(self.cluster_file)

    def setup(self) -> None:
        self.address = f"fdb:{self.cluster_file}"

    def root(self, ns: str) -> str:
        return f"{ROOT}-{ns}"

    def prepare(self, ns: str, jobs: Sequence[str]) -> None:
        from fdbworkers import add_job, open_database

        async def load() -> None:
            db = open_database(self.address)
            try:
                with trio.fail_after(60):
                    for j in jobs:
                        await add_job(db, ROLE, j, root=self.root(ns))
            finally:
                await db.aclose()

        trio.run(load)

    def cleanup(self, ns: str) -> None:
        from fdbworkers import open_database

        async def clean() -> None:
            db = open_database(self.address)
            begin, end = Layout.for_root(self.root(ns)).range()

            async def clear(tr: Transaction) -> None:
                tr.clear_range(begin, end)

            try:
                with trio.fail_after(30):
                    await db.transact(clear)
            finally:
                await db.aclose()

        trio.run(clean)

    def child_args(self, ns: str) -> list[str]:
        return ["--address", self.address, "--ns", self.root(ns)]

    def teardown(self) -> None:
        stop_server(self.server)


class DevserverSystem(FdbworkersSystem):
    key = "devserver"
    label = "fdbworkers (dev server)"

    def unavailable(self) -> str | None:
        return None

    def setup(self) -> None:
        self.server, self.address = start_devserver(self.tmp, self.tmp / "devserver.log")

    def cleanup(self, ns: str) -> None:
        pass  # the dev server is stopped at the end; each trial has its own root


def make_system(key: str, args: argparse.Namespace, tmp: Path) -> System:
    kinds: dict[str, type[System]] = {
        "fdbworkers": FdbworkersSystem,
        "kazoo": KazooSystem,
        "tooz": ToozSystem,
        "devserver": DevserverSystem,
    }
    return kinds[key](args, tmp)


# --------------------------------------------------------------------------------------
# One trial: a fleet of worker processes of one system, and their records
# --------------------------------------------------------------------------------------


class TrialTimeout(Exception):
    pass


@dataclass
class Trial:
    system: System
    ns: str
    timeout: float
    args: argparse.Namespace
    records: list[Record] = field(default_factory=list)
    procs: dict[str, subprocess.Popen[str]] = field(default_factory=dict)
    current: dict[str, str] = field(default_factory=dict)  # worker id -> its process
    paused: set[str] = field(default_factory=set)
    ended: set[str] = field(default_factory=set)
    readers: list[threading.Thread] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    # Live state (for the waits; the figures come from the replay of ``records``).
    holders: dict[str, set[str]] = field(default_factory=dict)  # job -> processes
    members: dict[str, int] = field(default_factory=dict)  # process -> members it saw
    last_change: float = 0.0

    @property
    def jobs(self) -> list[str]:
        return job_ids(self.args.jobs, self.args.seed)

    def wid_of(self, proc: str) -> str:
        return proc.split("#", 1)[0]

    def add(self, rec: Record) -> None:
        with self.lock:
            self.records.append(rec)
            if rec.proc in self.ended and rec.ev not in ("kill", "exit"):
                # A line written before a kill and read after it: in the replay, not
                # in the live state (the process holds nothing any more).
                return
            if rec.ev == "start" and rec.job is not None:
                self.holders.setdefault(rec.job, set()).add(rec.proc)
                self.last_change = max(self.last_change, rec.t)
            elif rec.ev == "stop" and rec.job is not None:
                self.holders.get(rec.job, set()).discard(rec.proc)
                self.last_change = max(self.last_change, rec.t)
            elif rec.ev in ("kill", "exit"):
                for hs in self.holders.values():
                    hs.discard(rec.proc)
                self.members.pop(rec.proc, None)
                self.last_change = max(self.last_change, rec.t)
            elif rec.ev == "members" and rec.n is not None:
                self.members[rec.proc] = rec.n
                self.last_change = max(self.last_change, rec.t)

    def harness(self, proc: str, ev: str) -> float:
        t = time.monotonic()
        self.add(Record(t, proc, self.wid_of(proc), ev))
        return t

    def spawn(self, wid: str) -> str:
        a = self.args
        k = sum(1 for p in self.procs if self.wid_of(p) == wid)
        proc = f"{wid}#{k}"
        cmd = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--child",
            self.system.key if self.system.key != "devserver" else "fdbworkers",
            "--id",
            wid,
            "--proc",
            proc,
            "--jobs",
            str(a.jobs),
            "--seed",
            str(a.seed),
            "--timeout",
            str(self.timeout),
            "--time-boundary",
            str(a.time_boundary),
            "--tooz-poll",
            str(a.tooz_poll),
            "--max-seconds",
            str(a.max_seconds),
            *(["--settle", str(a.settle)] if a.settle is not None else []),
            *self.system.child_args(self.ns),
        ]
        log = self.system.tmp / f"{self.system.key}-{self.ns}-{proc}.log"
        p = subprocess.Popen(
            guarded(cmd),
            stdout=subprocess.PIPE,
            stderr=open(log, "a"),  # noqa: SIM115
            text=True,
        )
        self.harness(proc, "spawn")
        self.procs[proc] = p
        self.current[wid] = proc
        assert p.stdout is not None
        out = p.stdout

        def read() -> None:
            for line in out:
                try:
                    obj = json.loads(line)
                except ValueError:
                    continue
                self.add(
                    Record(
                        float(obj["t"]),
                        proc,
                        wid,
                        str(obj["ev"]),
                        obj.get("job"),
                        obj.get("until"),
                        obj.get("n"),
                    )
                )

        t = threading.Thread(target=read, daemon=True)
        t.start()
        self.readers.append(t)
        return proc

    def live(self) -> list[str]:
        """Processes that run (not ended, not paused)."""
        return [
            proc
            for proc in self.current.values()
            if proc not in self.ended
            and proc not in self.paused
            and self.procs[proc].poll() is None
        ]

    def kill(self, wid: str) -> float:
        proc = self.current[wid]
        p = self.procs[proc]
        t = time.monotonic()
        p.kill()
        with self.lock:
            self.ended.add(proc)
        self.add(Record(t, proc, wid, "kill"))
        p.wait()
        self.join_reader(proc)
        return t

    def stop(self, wid: str, sig: int, limit: float) -> float:
        """Send ``sig`` and wait (at most ``limit`` s, then SIGKILL) until the process
        ended; returns when it was seen to end."""
        proc = self.current[wid]
        p = self.procs[proc]
        p.send_signal(sig)
        try:
            p.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            note(f"  {proc} did not end within {limit:g} s of {signal.Signals(sig).name}: killed")
            p.kill()
            p.wait()
        self.join_reader(proc)
        with self.lock:
            self.ended.add(proc)
        return self.harness(proc, "exit")

    def join_reader(self, proc: str) -> None:
        """Wait until the reader of ``proc`` saw its last line (it ended)."""
        i = list(self.procs).index(proc)
        self.readers[i].join(timeout=5)

    def pause(self, wid: str) -> float:
        proc = self.current[wid]
        t = time.monotonic()
        self.procs[proc].send_signal(signal.SIGSTOP)
        self.paused.add(proc)
        self.add(Record(t, proc, wid, "pause"))
        return t

    def resume(self, wid: str) -> float:
        proc = self.current[wid]
        t = time.monotonic()
        self.procs[proc].send_signal(signal.SIGCONT)
        self.paused.discard(proc)
        self.add(Record(t, proc, wid, "resume"))
        return t

    def why(self, n: int) -> str:
        with self.lock:
            none = sum(1 for j in self.jobs if not self.holders.get(j))
            two = sum(1 for j in self.jobs if len(self.holders.get(j, ())) > 1)
            members = dict(self.members)
            ago = time.monotonic() - self.last_change
        return (
            f"{none} jobs without a holder, {two} with two or more; live {self.live()}; "
            f"members seen {members} (want {n}); last change {ago:.1f} s ago; "
            f"logs in {self.system.tmp}"
        )

    def stable_since(self, n: int, quiet: float) -> float | None:
        """The last change, when the fleet is stable with ``n`` members (every job
        held by exactly one live process, every live process saw ``n`` members and,
        with enough jobs, holds one; nothing changed for ``quiet`` s)."""
        live = set(self.live())
        if len(live) != n:
            return None
        with self.lock:
            for j in self.jobs:
                hs = self.holders.get(j, set())
                if len(hs) != 1 or not hs <= live:
                    return None
            if any(self.members.get(proc) != n for proc in live):
                return None
            if len(self.jobs) >= 2 * n:
                holding = set().union(*(self.holders[j] for j in self.jobs))
                if holding != live:
                    return None
            last = self.last_change
        return last if time.monotonic() - last >= quiet else None

    def wait_stable(self, n: int, limit: float) -> float:
        deadline = time.monotonic() + limit
        while True:
            t = self.stable_since(n, self.args.quiet)
            if t is not None:
                return t
            if time.monotonic() > deadline:
                raise TrialTimeout(f"not stable with {n} members within {limit:g} s: {self.why(n)}")
            time.sleep(0.05)

    def booted(self, procs: Sequence[str] | None = None) -> float:
        """When the last of ``procs`` (default: all) had imported its libraries and
        began to connect (its ``boot`` record): the start without the interpreter's."""
        with self.lock:
            return max(
                (
                    r.t
                    for r in self.records
                    if r.ev == "boot" and (procs is None or r.proc in procs)
                ),
                default=math.nan,
            )

    def others_hold_all(self, excluded: str) -> bool:
        with self.lock:
            return all(self.holders.get(j, set()) - {excluded} for j in self.jobs)

    def close(self) -> None:
        """End every process of the trial (SIGKILL: each trial has its own namespace)."""
        for proc, p in self.procs.items():
            if p.poll() is None:
                if proc in self.paused:
                    p.send_signal(signal.SIGCONT)
                p.kill()
        for p in self.procs.values():
            p.wait()
            if p.stdout is not None:
                p.stdout.close()

    def replay(self, t_end: float, *, lease_bounded: bool = True) -> list[Hold]:
        with self.lock:
            recs = list(self.records)
        return holds(recs, t_end, lease_bounded=lease_bounded)


@contextmanager
def trial(system: System, args: argparse.Namespace, timeout: float, tag: str) -> Iterator[Trial]:
    ns = f"{os.getpid()}-{tag}"
    system.prepare(ns, job_ids(args.jobs, args.seed))
    tr = Trial(system, ns, timeout, args)
    try:
        yield tr
    finally:
        tr.close()
        if args.keep_logs:
            with (system.tmp / f"records-{system.key}-{ns}.jsonl").open("w") as f:
                for r in tr.records:
                    f.write(json.dumps(r.__dict__) + "\n")
        system.cleanup(ns)


# --------------------------------------------------------------------------------------
# The scenarios (each returns its figures; the replay computes them)
# --------------------------------------------------------------------------------------


def wids(n: int) -> list[str]:
    return [f"w{i}" for i in range(n)]


def start_all(tr: Trial, n: int) -> float:
    t0 = time.monotonic()
    for wid in wids(n):
        tr.spawn(wid)
    return t0


def bound(args: argparse.Namespace, timeout: float) -> float:
    """How long any one wait may take before the trial is given up."""
    return 60.0 + 6 * timeout + 2.0 * float(args.workers)


def scenario_start(system: System, args: argparse.Namespace, run: int) -> dict[str, Any]:
    n = args.workers
    with trial(system, args, args.timeout, f"start{run}") as tr:
        t0 = start_all(tr, n)
        ts = tr.wait_stable(n, bound(args, args.timeout))
        hs = tr.replay(time.monotonic())
        return {
            "start_to_stable_s": ts - t0,
            "boot_to_stable_s": ts - tr.booted(),
            "held_twice": len(held_twice(hs)),
            "counts": counts_at(hs, ts + 1e-3),
        }


def scenario_crash(
    system: System, args: argparse.Namespace, run: int, timeout: float
) -> dict[str, Any]:
    n = args.workers
    rng = random.Random(f"{args.seed}:crash:{timeout}:{run}")
    with trial(system, args, timeout, f"crash{timeout:g}-{run}") as tr:
        start_all(tr, n)
        tr.wait_stable(n, bound(args, timeout))
        time.sleep(rng.uniform(0.0, timeout / 3))  # where the kill falls between beats
        victim = rng.choice(wids(n))
        with tr.lock:
            vproc = tr.current[victim]
            victim_jobs = sum(1 for j in tr.jobs if vproc in tr.holders.get(j, set()))
        tk = tr.kill(victim)
        tr.wait_stable(n - 1, bound(args, timeout))
        t1 = time.monotonic()
        hs = tr.replay(t1)
        held = first_all_held(hs, tr.jobs, tk)
        return {
            "kill_to_held_s": (held - tk) if held is not None else None,
            "unowned_job_s": unowned_seconds(hs, tr.jobs, tk, t1),
            "victim_jobs": victim_jobs,
            "starts": moves(hs, tk, t1).starts,
            "held_twice": len(held_twice(hs, tk)),
        }


def scenario_join(system: System, args: argparse.Namespace, run: int) -> dict[str, Any]:
    n = args.workers
    with trial(system, args, args.timeout, f"join{run}") as tr:
        start_all(tr, n)
        tr.wait_stable(n, bound(args, args.timeout))
        tj = time.monotonic()
        proc = tr.spawn(f"w{n}")
        ts = tr.wait_stable(n + 1, bound(args, args.timeout))
        hs = tr.replay(time.monotonic())
        mv = moves(hs, tj, ts + 1e-3)
        return {
            "join_to_stable_s": ts - tj,
            "boot_to_stable_s": ts - tr.booted([proc]),
            "starts": mv.starts,
            "moves": mv.moves,
            "newcomer_jobs": counts_of(hs, ts + 1e-3).get(f"w{n}", 0),
            "held_twice": len(held_twice(hs, tj)),
        }


def counts_of(hs: Sequence[Hold], t: float) -> dict[str, int]:
    out: dict[str, int] = {}
    for h in hs:
        if h.start <= t < h.end:
            out[h.wid] = out.get(h.wid, 0) + 1
    return out


def scenario_restart(
    system: System, args: argparse.Namespace, run: int, in_place: bool
) -> dict[str, Any]:
    n = args.workers
    sig = signal.SIGHUP if in_place else signal.SIGTERM
    with trial(system, args, args.timeout, f"restart{'ip' if in_place else ''}{run}") as tr:
        start_all(tr, n)
        tr.wait_stable(n, bound(args, args.timeout))
        t0 = time.monotonic()
        gaps: list[tuple[float, float]] = []  # no process of the restarting id
        for wid in wids(n):
            t_exit = tr.stop(wid, sig, 30 + 2 * args.timeout)
            proc = tr.spawn(wid)
            tr.wait_stable(n, bound(args, args.timeout))
            gaps.append((t_exit, tr.booted([proc])))
        t1 = time.monotonic()
        hs = tr.replay(t1)
        mv = moves(hs, t0, t1)
        unowned = unowned_seconds(hs, tr.jobs, t0, t1)
        in_gaps = sum(unowned_seconds(hs, tr.jobs, a, b) for a, b in gaps if b > a)
        return {
            "starts": mv.starts,
            "moves": mv.moves,
            "rebalances": mv.rebalances,
            "unowned_job_s": unowned,
            # Less the job-seconds while the restarting id had no process that had
            # started (its exit to the next one's boot: the interpreter and imports).
            "unowned_running_job_s": unowned - in_gaps,
            "restart_gap_s": statistics.median([b - a for a, b in gaps]),
            "held_twice": len(held_twice(hs, t0)),
            "duration_s": t1 - t0,
        }


def scenario_pause(system: System, args: argparse.Namespace, run: int) -> dict[str, Any]:
    n = args.workers
    rng = random.Random(f"{args.seed}:pause:{run}")
    timeout = args.timeout
    with trial(system, args, timeout, f"pause{run}") as tr:
        start_all(tr, n)
        tr.wait_stable(n, bound(args, timeout))
        time.sleep(rng.uniform(0.0, timeout / 3))
        victim = rng.choice(wids(n))
        vproc = tr.current[victim]
        tp = tr.pause(victim)
        length = args.pause_factor * timeout
        while time.monotonic() < tp + length:
            time.sleep(0.05)
        tc = tr.resume(victim)
        ts = tr.wait_stable(n, bound(args, timeout))
        t1 = time.monotonic()
        hs = tr.replay(t1)
        raw = tr.replay(t1, lease_bounded=False)
        others = first_all_held(hs, tr.jobs, tp, exclude_procs=[vproc])
        return {
            "pause_to_others_hold_s": (others - tp) if others is not None else None,
            "pause_s": tc - tp,
            "held_twice": len(held_twice(hs, tp)),
            "held_twice_raw": len(held_twice(raw, tp)),
            "resume_to_stable_s": ts - tc,
        }


# --------------------------------------------------------------------------------------
# Running the rows, and the table
# --------------------------------------------------------------------------------------


Runs = list[dict[str, Any]]


def crash_run(system: System, args: argparse.Namespace, timeout: float, i: int) -> dict[str, Any]:
    return scenario_crash(system, args, i, timeout)


def run_rows(system: System, args: argparse.Namespace) -> dict[str, Runs]:
    """Every selected row, ``args.runs`` times (``args.starts`` for ``start``)."""
    out: dict[str, Runs] = {}

    def repeat(key: str, times: int, fn: Callable[[int], dict[str, Any]]) -> None:
        runs: Runs = []
        for i in range(times):
            t = time.monotonic()
            try:
                res = fn(i)
            except TrialTimeout as e:
                res = {"error": str(e)}
            res["wall_s"] = round(time.monotonic() - t, 1)
            note(f"  {system.key} {key} run {i + 1}/{times}: {json.dumps(res, default=str)}")
            runs.append(res)
        out[key] = runs

    if "start" in args.rows:
        repeat("start", args.starts, lambda i: scenario_start(system, args, i))
    if "crash" in args.rows:
        for t in args.crash_timeouts:
            repeat(f"crash{t:g}", args.runs, functools.partial(crash_run, system, args, t))
    if "join" in args.rows:
        repeat("join", args.runs, lambda i: scenario_join(system, args, i))
    if "restart" in args.rows:
        repeat("restart", args.runs, lambda i: scenario_restart(system, args, i, False))
        if system.in_place:
            repeat("restart_in_place", args.runs, lambda i: scenario_restart(system, args, i, True))
    if "pause" in args.rows:
        repeat("pause", args.runs, lambda i: scenario_pause(system, args, i))
    return out


def values(runs: Runs | None, key: str) -> tuple[list[float], int]:
    """The figure ``key`` of every run that has it, and how many runs failed."""
    if runs is None:
        return [], 0
    vals = [float(r[key]) for r in runs if r.get(key) is not None]
    vals = [v for v in vals if not math.isnan(v)]
    failed = sum(1 for r in runs if "error" in r or r.get(key, 0) is None)
    return vals, failed


def cell(runs: Runs | None, key: str, digits: int) -> str:
    if runs is None:
        return "n/a"
    vals, failed = values(runs, key)
    if not vals:
        return f"failed ({failed})" if failed else "-"
    lo, mid, hi = min(vals), statistics.median(vals), max(vals)
    f = f"{{:.{digits}f}}"
    text = f.format(mid) if lo == hi else " / ".join(f.format(v) for v in (lo, mid, hi))
    if failed:
        text += f" ({failed} of {len(runs)} failed)"
    return text


def balance_cell(runs: Runs | None) -> str:
    if runs is None:
        return "n/a"
    seen: dict[tuple[int, ...], int] = {}
    for r in runs:
        if "counts" in r:
            c = tuple(r["counts"])
            seen[c] = seen.get(c, 0) + 1
    if not seen:
        return "-"
    parts = [
        " ".join(map(str, c)) + (f" (×{k})" if len(seen) > 1 or k > 1 else "")
        for c, k in sorted(seen.items(), key=lambda kv: -kv[1])
    ]
    return "; ".join(parts)


def ratio(a: Runs | None, b: Runs | None, key: str) -> str:
    va, _ = values(a, key)
    vb, _ = values(b, key)
    if not va or not vb or statistics.median(vb) == 0:
        return ""
    return f"{statistics.median(va) / statistics.median(vb):.2f}"


def side_by_side(results: dict[str, dict[str, Runs]], args: argparse.Namespace) -> str:
    n, j = args.workers, args.jobs
    rows: list[tuple[str, str, str, int]] = []  # label, row, figure, digits
    for t in args.crash_timeouts:
        rows += [
            (
                f"crash, T={t:g}: kill → every job held again (s)",
                f"crash{t:g}",
                "kill_to_held_s",
                2,
            ),
            (f"crash, T={t:g}: unowned job-seconds", f"crash{t:g}", "unowned_job_s", 1),
            (f"crash, T={t:g}: the killed worker's jobs", f"crash{t:g}", "victim_jobs", 0),
        ]
    rows += [
        ("BALANCE", "start", "counts", 0),
        (f"concurrent start of {n}: spawn → stable (s)", "start", "start_to_stable_s", 2),
        (f"concurrent start of {n}: last booted → stable (s)", "start", "boot_to_stable_s", 2),
        (f"concurrent start of {n}: jobs ever held twice", "start", "held_twice", 0),
        (f"join {n}→{n + 1}: spawn → stable (s)", "join", "join_to_stable_s", 2),
        (f"join {n}→{n + 1}: newcomer booted → stable (s)", "join", "boot_to_stable_s", 2),
        (f"join {n}→{n + 1}: jobs moved", "join", "moves", 0),
        (f"join {n}→{n + 1}: the newcomer's jobs (the fewest moves)", "join", "newcomer_jobs", 0),
        (f"join {n}→{n + 1}: jobs held twice", "join", "held_twice", 0),
    ]
    for key, name in (("restart", "rolling restart"), ("restart_in_place", "restart in place")):
        rows += [
            (f"{name} of {n}: handler starts", key, "starts", 0),
            (f"{name} of {n}: jobs moved", key, "moves", 0),
            (f"{name} of {n}: rebalances", key, "rebalances", 0),
            (f"{name} of {n}: unowned job-seconds", key, "unowned_job_s", 1),
            (
                f"{name} of {n}: unowned job-seconds, less exit → next boot",
                key,
                "unowned_running_job_s",
                1,
            ),
            (f"{name} of {n}: exit → next boot, median (s)", key, "restart_gap_s", 2),
            (f"{name} of {n}: jobs held twice", key, "held_twice", 0),
        ]
    p = f"pause {args.pause_factor:g}×T, T={args.timeout:g}"
    rows += [
        (f"{p}: SIGSTOP → others hold every job (s)", "pause", "pause_to_others_hold_s", 2),
        (f"{p}: jobs held twice", "pause", "held_twice", 0),
        (f"{p}: jobs held twice, start/stop records alone", "pause", "held_twice_raw", 0),
        (f"{p}: SIGCONT → stable (s)", "pause", "resume_to_stable_s", 2),
    ]
    keys = [k for k in ("kazoo", "tooz", "fdbworkers", "devserver") if k in results]
    labels = {k: make_system(k, args, Path()).label for k in keys}
    base = next((k for k in ("fdbworkers", "devserver") if k in results), "")
    peers = [k for k in ("kazoo", "tooz") if k in results and base]
    headers = ["figure"] + [labels[k] for k in keys] + [f"{base} ÷ {k}" for k in peers]
    out_rows: list[list[str]] = []
    for label, row, fig, digits in rows:
        if not any(row in results[k] for k in keys):
            continue
        if label == "BALANCE":
            label = f"jobs per worker at N={n} (J/N = {j / n:g})"
            cells = [balance_cell(results[k].get(row)) for k in keys]
            out_rows.append([label, *cells, *["" for _ in peers]])
            continue
        cells = [cell(results[k].get(row), fig, digits) for k in keys]
        ratios = [ratio(results[base].get(row), results[k].get(row), fig) for k in peers]
        out_rows.append([label, *cells, *ratios])
    return table(
        f"Side by side: N={n} worker processes, J={j} jobs, min / median / max of "
        f"{args.runs} runs ({args.starts} for the concurrent start)",
        headers,
        out_rows,
    )


def versions(keys: Sequence[str]) -> str:
    from importlib.metadata import PackageNotFoundError, version

    parts = [f"Python {sys.version.split()[0]}"]
    for pkg in ("foundationdb", "kazoo", "tooz", "redis"):
        with suppress(PackageNotFoundError):
            parts.append(f"{pkg} {version(pkg)}")
    if "tooz" in keys and shutil.which("redis-server"):
        out = subprocess.run(
            ["redis-server", "--version"], capture_output=True, text=True, timeout=10
        ).stdout
        if " v=" in out:
            parts.append("Redis " + out.split(" v=")[1].split()[0])
    return ", ".join(p for p in parts if p)


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
    space = Layout.for_root(ROOT).role(ROLE)
    dbs = [engine.open_database(f"w{i}") for i in range(n)]
    lat: list[float] = []

    async def one(i: int) -> None:
        t = trio.current_time()
        if design == "seed":
            await dbs[i].transact(tx_seed_join, f"w{i:04d}")
        else:
            rec = MemberRecord(f"w{i:04d}", "1", 10.0, 1.0, "h", 1, 0.0, {})
            await dbs[i].transact(tx_register, space, rec, 3600.0)
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


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="1 run of each row, T=4 only (a few minutes)"
    )
    parser.add_argument(
        "--systems",
        default="fdbworkers,kazoo,tooz",
        help="comma list of fdbworkers, kazoo, tooz, devserver (or none)",
    )
    parser.add_argument("--rows", default=",".join(ROWS), help="comma list of " + ",".join(ROWS))
    parser.add_argument("--workers", type=int, default=5)
    parser.add_argument("--jobs", type=int, default=60)
    parser.add_argument("--runs", type=int, default=3, help="runs of each row")
    parser.add_argument("--starts", type=int, default=10, help="runs of the concurrent start")
    parser.add_argument(
        "--timeout", type=float, default=10.0, help="T of every row but the crashes"
    )
    parser.add_argument("--crash-timeouts", default="4,10", help="T of the crash rows")
    parser.add_argument("--pause-factor", type=float, default=2.0, help="pause = factor × T")
    parser.add_argument(
        "--settle", type=float, default=None, help="fdbworkers settle (default: the library's)"
    )
    parser.add_argument("--time-boundary", type=float, default=1.0, help="kazoo time_boundary")
    parser.add_argument("--tooz-poll", type=float, default=0.5, help="tooz run_watchers period")
    parser.add_argument("--quiet", type=float, default=4.0, help="stable = no change for this")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--max-seconds", type=float, default=900.0, help="worker lifetime cap")
    parser.add_argument("--skip-seed", action="store_true", help="skip the seed baseline")
    parser.add_argument("--keep-logs", action="store_true", help="keep logs and records")
    parser.add_argument("--json", type=Path, help="write every run's figures here")
    # Worker process mode (internal).
    parser.add_argument("--child", choices=["kazoo", "fdbworkers", "tooz"], help=argparse.SUPPRESS)
    parser.add_argument("--id", help=argparse.SUPPRESS)
    parser.add_argument("--proc", help=argparse.SUPPRESS)
    parser.add_argument("--address", help=argparse.SUPPRESS)
    parser.add_argument("--ns", default=ROOT, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return args
    if args.quick:
        args.runs = min(args.runs, 1)
        args.starts = min(args.starts, 2)
        args.timeout = min(args.timeout, 4.0)
        args.crash_timeouts = "4"
        args.quiet = min(args.quiet, 3.0)
        args.max_seconds = min(args.max_seconds, 300)
    names = [ALIASES.get(s, s) for s in args.systems.split(",") if s and s != "none"]
    bad = [s for s in names if s not in SYSTEMS]
    if bad:
        parser.error(f"unknown systems {bad}; choose from {', '.join(SYSTEMS)}")
    args.systems = list(dict.fromkeys(names))
    args.rows = [r for r in args.rows.split(",") if r]
    if any(r not in ROWS for r in args.rows):
        parser.error(f"unknown rows in {args.rows}; choose from {', '.join(ROWS)}")
    args.crash_timeouts = [float(t) for t in str(args.crash_timeouts).split(",") if t]
    return args


def main() -> None:
    args = parse_args()
    if args.child == "kazoo":
        child_kazoo(args)
        return
    if args.child == "fdbworkers":
        child_fdbworkers(args)
        return
    if args.child == "tooz":
        child_tooz(args)
        return

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    quiet_logs()
    out: dict[str, Any] = {"skipped": {}, "results": {}}
    tmp = Path(tempfile.mkdtemp(prefix="fdbw-peer-"))
    results: dict[str, dict[str, Runs]] = {}
    t_all = time.monotonic()
    try:
        for key in args.systems:
            system = make_system(key, args, tmp)
            why = system.unavailable()
            if why:
                note(f"skipping {key}: {why}")
                out["skipped"][key] = why
                continue
            note(f"{key}: {system.label} ...")
            try:
                system.setup()
                results[key] = run_rows(system, args)
            finally:
                system.teardown()
        if results:
            print(f"\n{versions(list(results))}; rows {', '.join(args.rows)}; seed {args.seed}")
            side_by_side(results, args)
            for key, why in out["skipped"].items():
                print(f"\n{key} skipped: {why}")
        out["results"] = results
        if not args.skip_seed:
            out["seed"] = seed_part([10, 100] if args.quick else [10, 100, 1000], args.seed)
    except KeyboardInterrupt:
        note(f"interrupted: every process and server it started is stopped; logs in {tmp}")
        sys.exit(130)
    except BaseException:
        note(f"stopped: the logs are kept in {tmp}")
        raise
    note(f"done in {time.monotonic() - t_all:.0f} s")
    if args.keep_logs:
        note(f"the logs are in {tmp}")
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(out, indent=1, default=str))


if __name__ == "__main__":
    main()
