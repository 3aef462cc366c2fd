"""The scale, peer-comparison and real-cluster benchmarks, run with tiny sizes so that
they do not rot (each as a subprocess, exactly as a user runs it). The figures are not
checked here, only that each script finishes on its own and prints its tables; the
ZooKeeper and Redis halves skip with the reason when the server (or kazoo, tooz) is not
installed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCH))

from peer_compare import redis_available, zookeeper_available  # noqa: E402


def run(script: str, *args: str, timeout: float = 120, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(
        [sys.executable, str(BENCH / script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
    assert proc.returncode == 0, f"{script} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def test_scale_bench_fleet_and_reads_quick() -> None:
    out = run("scale_bench.py", "--quick", "--part", "fleet")
    assert "At rest" in out and "Crash and join" in out and "Rebalance reads" in out
    out = run("scale_bench.py", "--quick", "--part", "reads")
    assert "One worker's full rebalance read" in out


def test_scale_bench_big_and_plan_quick() -> None:
    # The 10,000-worker run (rest, a storm of joins, one join) and the map computation,
    # at CI size.
    out = run("scale_bench.py", "--quick", "--part", "big")
    assert "A storm of 10 simultaneous joins into 40" in out and "| 50 |" in out
    out = run("scale_bench.py", "--quick", "--part", "plan")
    assert "a worker's own share" in out


def test_scale_bench_wallclock_quick() -> None:
    out = run(
        "scale_bench.py",
        "--part",
        "wallclock",
        "--procs",
        "2",
        "--wall-jobs",
        "10",
        "--wall-timeout",
        "1",
        "--wall-rest",
        "1",
        "--wall-partitions",
        "64",
    )
    assert "kill_to_reassigned_s" in out


def test_real_cluster_bench_quick() -> None:
    # Engine and dev server only: the real cluster is measured when FDB_CLUSTER_FILE is
    # set by whoever runs the benchmark, not in this smoke test.
    env = {k: v for k, v in os.environ.items() if k != "FDB_CLUSTER_FILE"}
    out = run("real_cluster_bench.py", "--quick", "--samples", "20", env=env)
    assert "heartbeat median" in out


def test_share_bench_quick() -> None:
    # The engine part (exact keys per read); the real-cluster parts are run by whoever
    # measures (docs/benchmarks.md), and by tests/test_share_real.py.
    env = {k: v for k, v in os.environ.items() if k != "FDB_CLUSTER_FILE"}
    out = run("share_bench.py", "--quick", env=env)
    assert "Keys and range requests of one worker's reads" in out


@pytest.mark.real_fdb
@pytest.mark.parametrize("loop", ["trio", "asyncio"])
def test_throughput_bench_quick(loop: str) -> None:
    out = run("throughput_bench.py", "--quick", "--loop", loop)
    assert f"| raw binding, {loop} |" in out
    assert "| seam db.transact |" in out and "| tx_claim |" in out and "get median" in out


@pytest.mark.real_fdb
def test_memory_bench_quick() -> None:
    out = run("memory_bench.py", "--quick")
    assert "| CLI worker |" in out and "| import fdbworkers |" in out
    assert "| library worker, asyncio |" in out


TINY = [
    *("--workers", "2", "--jobs", "6", "--runs", "1", "--starts", "1", "--timeout", "2"),
    *("--crash-timeouts", "2", "--quiet", "1", "--skip-seed", "--rows", "start,crash"),
]


def test_peer_compare_on_the_dev_server_and_seed_baseline() -> None:
    env = {k: v for k, v in os.environ.items() if k != "FDB_CLUSTER_FILE"}
    out = run("peer_compare.py", *TINY, "--systems", "devserver,fdbworkers", env=env)
    assert "fdbworkers (dev server)" in out
    assert "| concurrent start of 2: jobs ever held twice | 0 |" in out
    # A system that cannot run is skipped with the reason, not a traceback.
    assert "fdbworkers skipped: FDB_CLUSTER_FILE is not set" in out
    out = run("peer_compare.py", "--quick", "--systems", "none", env=env)
    assert "seed's member-list value" in out


@pytest.mark.skipif(zookeeper_available() is not None, reason=str(zookeeper_available()))
def test_peer_compare_on_zookeeper() -> None:
    out = run("peer_compare.py", *TINY, "--systems", "kazoo")
    assert "kazoo SetPartitioner (ZooKeeper)" in out


@pytest.mark.skipif(redis_available() is not None, reason=str(redis_available()))
def test_peer_compare_on_redis() -> None:
    out = run("peer_compare.py", *TINY, "--systems", "tooz")
    assert "tooz partitioned group (Redis)" in out
