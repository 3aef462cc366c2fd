"""Resident memory (RSS) of worker processes at rest, beside the floor measured in the
same run: Python with the FoundationDB binding and its network thread.

    eval "$(../shared/fdb/start-local-cluster)"      # or any FDB_CLUSTER_FILE
    .venv/bin/python benchmarks/memory_bench.py             # 3 runs, ~2 min
    .venv/bin/python benchmarks/memory_bench.py --quick     # one run, short rests
    ../shared/fdb/stop-local-cluster "$FDB_LOCAL_CLUSTER_DIR"

Every process is fresh; its RSS is read from /proc/PID/status once it rested ``--rest``
seconds (Linux only). Processes:

* ``python + binding``: the binding opened, one read, its network thread running;
* ``import fdbworkers``: the library imported, nothing opened;
* ``library worker``: ``open_worker`` on the cluster (registered, heartbeating,
  watching the membership), no job runner: it never computes a map;
* ``library worker, asyncio``: the same under asyncio (no trio in the process);
* ``library worker + jobs``: the trio worker running a job handler over ``--jobs`` jobs (the
  map is computed: numpy is loaded);
* ``CLI worker``: ``python -m fdbworkers worker --exec 'sleep 3600'`` over the same
  jobs, at rest owning them (its children are other processes and not counted), with a
  timer thread that reports its RSS and modules.

The last column tells which of numpy, rich, click, structlog and trio each process
loaded.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import median, note, quiet_logs, table

from fdbworkers import add_job, open_database, remove_job
from fdbworkers._core.keys import Layout
from fdbworkers._db import Transaction

ROLE = "membench"
HEAVY = ("numpy", "rich", "click", "structlog", "trio")

_REPORT = """
import json, sys
rss = int(open("/proc/self/status").read().split("VmRSS:")[1].split()[0]) / 1024
print(json.dumps({"rss": rss, "heavy": [m for m in HEAVY if m in sys.modules]}))
"""

PROBES = {
    "python + binding": """
        import os, time
        import fdb
        fdb.api_version(730)
        db = fdb.open(os.environ["FDB_CLUSTER_FILE"])
        db[b"\\xff\\xff/status/json"]  # one read: connected
        time.sleep(REST)
    """,
    "import fdbworkers": """
        import time
        import fdbworkers
        time.sleep(REST)
    """,
    "library worker": """
        import os, trio, fdbworkers
        async def main():
            db = fdbworkers.open_database("fdb:" + os.environ["FDB_CLUSTER_FILE"])
            db.default_timeout = 10
            async with fdbworkers.open_worker(db, ROLE_NAME, root=ROOT, timeout=3, settle=1):
                await trio.sleep(REST)
        trio.run(main)
    """,
    "library worker, asyncio": """
        import asyncio, os, fdbworkers
        async def main():
            db = fdbworkers.open_database("fdb:" + os.environ["FDB_CLUSTER_FILE"])
            db.default_timeout = 10
            async with fdbworkers.open_worker(db, ROLE_NAME, root=ROOT, timeout=3, settle=1):
                await asyncio.sleep(REST)
        asyncio.run(main())
    """,
    "library worker + jobs": """
        import os, trio, fdbworkers
        async def handler(job):
            await job.stopping.wait()
        async def main():
            db = fdbworkers.open_database("fdb:" + os.environ["FDB_CLUSTER_FILE"])
            db.default_timeout = 10
            async with fdbworkers.open_worker(db, ROLE_NAME, root=ROOT, timeout=3, settle=1) as w:
                async with trio.open_nursery() as n:
                    n.start_soon(w.run_jobs, handler)
                    await trio.sleep(REST)
                    n.cancel_scope.cancel()
        trio.run(main)
    """,
}


def probe(name: str, rest: float, root: str) -> dict[str, object]:
    code = (
        f"HEAVY = {HEAVY!r}\nREST = {rest!r}\nROOT = {root!r}\nROLE_NAME = {ROLE!r}\n"
        + textwrap.dedent(PROBES[name])
        + _REPORT
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=rest + 120
    )
    if out.returncode != 0:
        raise RuntimeError(f"{name} failed:\n{out.stderr}")
    result: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


#: ``python -m fdbworkers ...`` with a timer thread that writes the report (RSS and the
#: heavy modules loaded) to REPORT_TO after REST seconds.
_CLI = """
import json, os, runpy, sys, threading
def report():
    rss = int(open("/proc/self/status").read().split("VmRSS:")[1].split()[0]) / 1024
    with open(os.environ["REPORT_TO"], "w") as f:
        json.dump({"rss": rss, "heavy": [m for m in HEAVY if m in sys.modules]}, f)
threading.Timer(float(os.environ["REST"]), report).start()
sys.argv = ["fdbworkers", *sys.argv[1:]]
runpy.run_module("fdbworkers", run_name="__main__")
"""


def cli_worker(rest: float, root: str) -> dict[str, object]:
    report = Path(tempfile.mkdtemp(prefix="fdbw-mem-")) / "report.json"
    worker = ["--role", ROLE, "--timeout", "3", "--settle", "1", "--exec", "sleep 3600"]
    p = subprocess.Popen(
        [sys.executable, "-c", f"HEAVY = {HEAVY!r}\n" + _CLI, "--root", root, "worker", *worker],
        env={**os.environ, "REPORT_TO": str(report), "REST": str(rest)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + rest + 60
        while not report.exists() or not report.read_text():
            if p.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the CLI worker did not report (exit code {p.poll()})")
            time.sleep(0.2)
        time.sleep(0.2)  # the file is written in one go; let it be closed
        result: dict[str, object] = json.loads(report.read_text())
        return result
    finally:
        p.send_signal(signal.SIGTERM)  # leaves gracefully: stops the sleeps
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        shutil.rmtree(report.parent, ignore_errors=True)


async def with_jobs(root: str, jobs: int, add: bool) -> None:
    db = open_database("fdb:" + os.environ["FDB_CLUSTER_FILE"])
    db.default_timeout = 30
    try:
        if add:
            for i in range(jobs):
                await add_job(db, ROLE, f"job-{i:05d}", {"n": i}, root=root)
        else:
            for i in range(jobs):
                await remove_job(db, ROLE, f"job-{i:05d}", root=root)
            begin, end = Layout.for_root(root).range()

            async def clear(tr: Transaction) -> None:
                tr.clear_range(begin, end)

            await db.transact(clear)
    finally:
        await db.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one run, short rests")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--rest", type=float, default=12.0, help="seconds before reading RSS")
    parser.add_argument("--jobs", type=int, default=200)
    args = parser.parse_args()
    if not os.environ.get("FDB_CLUSTER_FILE"):
        print("FDB_CLUSTER_FILE is not set: this benchmark needs a real cluster", file=sys.stderr)
        sys.exit(2)
    if args.quick:
        args.runs, args.rest, args.jobs = 1, 6.0, 20
    quiet_logs()
    root = f"fdbworkers-bench-mem-{os.getpid()}"
    names = [*PROBES, "CLI worker"]
    rss: dict[str, list[float]] = {n: [] for n in names}
    heavy: dict[str, set[str]] = {n: set() for n in names}
    trio.run(with_jobs, root, args.jobs, True)
    try:
        for r in range(args.runs):
            for name in names:
                note(f"run {r + 1}/{args.runs}: {name} ...")
                res = (
                    cli_worker(args.rest, root)
                    if name == "CLI worker"
                    else probe(name, args.rest, root)
                )
                rss[name].append(float(res["rss"]))  # type: ignore[arg-type]
                heavy[name].update(res["heavy"])  # type: ignore[arg-type]
    finally:
        trio.run(with_jobs, root, args.jobs, False)

    def spread(vs: list[float]) -> str:
        vs = sorted(vs)
        return f"{vs[0]:.1f}" if len(vs) == 1 else f"{vs[0]:.1f} / {median(vs):.1f} / {vs[-1]:.1f}"

    base = rss["python + binding"]
    rows = [
        [
            name,
            spread(rss[name]),
            spread([a / b for a, b in zip(rss[name], base, strict=True)]),
            ", ".join(sorted(heavy[name], key=HEAVY.index)) or "none",
        ]
        for name in names
    ]
    table(
        f"Resident memory at rest (MB), {args.jobs} jobs, min / median / max of {args.runs} "
        "runs, each process fresh",
        ["process", "RSS (MB)", "vs python + binding", "loaded of " + ", ".join(HEAVY)],
        rows,
    )


if __name__ == "__main__":
    main()
