"""Issue 15's faults on the real cluster, with 3 worker processes on the local
FoundationDB (fdbworkers/cli/_chaos.py --scenario, checked from the handlers' own
record like the chaos soak): each ends with no job run twice and none stranded.

* server-freeze: the fdbserver frozen (SIGSTOP) past the workers' timeout, then resumed;
* kill-while-claiming: kill -9 of a worker 0-100 ms after new jobs made it claim, 5 times;
* restart-shorter-timeout: a worker with timeout 30 frozen, its id started again with
  timeout 3, the old process resumed 40 s later;
* and the same with the old process resumed 12 s later, its lease still valid (below):
  no run of the new incarnation may start before every run of the old process stopped,
  counting the time it was frozen, and the new one takes the jobs over as soon as the
  old one wakes and finds itself superseded."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from chaos_util import run_chaos

from fdbworkers.cli._chaos import Chaos, _parse, _server_pid
from fdbworkers.cli._chaos_check import Report, Run

pytestmark = pytest.mark.real_fdb


@pytest.mark.parametrize(
    "scenario", ["server-freeze", "kill-while-claiming", "restart-shorter-timeout"]
)
def test_scenario_on_the_real_cluster(scenario: str) -> None:
    if scenario == "server-freeze" and not os.environ.get("FDB_LOCAL_CLUSTER_DIR"):
        pytest.skip("freezing the server needs the cluster ./scripts/test started (its pid)")
    run_chaos(["--scenario", scenario, "--workers", "3", "--jobs", "30", "--quiet", "12"], 400)


WORKERS = 3
JOBS = 30


@contextmanager
def fleet(seed: int, timeouts: tuple[float, ...] = (3.0,) * WORKERS) -> Iterator[Chaos]:
    """Jobs and worker processes w0.. on a fresh root, settled; everything is killed and
    the root cleared on the way out."""
    args = _parse(
        ["--seed", str(seed), "--workers", str(WORKERS), "--jobs", str(JOBS), "--duration", "1"]
    )
    cf = os.environ.get("FDB_CLUSTER_FILE")
    if not cf:
        pytest.skip("no real FoundationDB cluster: set FDB_CLUSTER_FILE (./scripts/test starts it)")
    chaos = Chaos(args, cf, _server_pid(cf))
    try:
        chaos.add_jobs([f"job-{i:04d}" for i in range(JOBS)])
        for i, t in enumerate(timeouts):
            chaos.spawn(f"w{i}", t)
        time.sleep(8.0)  # start and settle (settle 2 s)
        chaos.chaos_start = time.monotonic()
        yield chaos
    finally:
        for proc in chaos.procs.values():
            if proc.popen.poll() is None:
                proc.popen.send_signal(signal.SIGCONT)
                proc.popen.kill()
                proc.popen.wait()
        if chaos.server_pid is not None:
            os.kill(chaos.server_pid, signal.SIGCONT)
        chaos.clean()


def finish(chaos: Chaos, quiet: float) -> tuple[Report, list[Run]]:
    """Quiet for ``quiet`` seconds, then the chaos soak's checks (asserted)."""
    chaos.chaos_end = time.monotonic()
    time.sleep(quiet)
    chaos.quiet_end = time.monotonic()
    report = chaos.check(chaos.cli_owners())
    runs, _ = chaos.runs()
    print("\n".join(report.lines))
    assert not report.violations, "\n".join(report.violations)
    return report, runs


def test_a_restart_with_a_shorter_timeout_while_the_old_process_holds_its_lease() -> None:
    """Issue 15, hole 1 on the real cluster. w0 runs with timeout 30 and is frozen
    (SIGSTOP); w0 starts again with timeout 3; the old process is resumed 12 s later,
    its lease still valid. Before the fix, the new incarnation ran w0's jobs 3.5 s after
    it started, while the frozen process still held them."""
    with fleet(seed=153, timeouts=(30.0, 3.0, 3.0)) as chaos:
        old = chaos.procs["w0"]
        old_pid = old.popen.pid
        chaos.freeze("w0")
        frozen = time.monotonic()
        time.sleep(1.0)
        chaos.spawn("w0", 3.0)  # replaces procs["w0"]: the old one is resumed by hand
        time.sleep(11.0)
        old.popen.send_signal(signal.SIGCONT)
        resumed = time.monotonic()
        chaos.frozen[old_pid].append((frozen, resumed))
        chaos.procs["w0-old"] = old
        chaos.procs["w0-old"].frozen_at = None
        _, runs = finish(chaos, quiet=20.0)
        old_runs = [r for r in runs if r.pid == old_pid]
        assert old_runs
        for r in old_runs:
            later = [
                o
                for o in runs
                if o.job == r.job
                and o.pid != old_pid
                and o.start < chaos.end_of(r)
                and o.start > r.start
            ]
            assert not later, (
                f"{r.job}: run of pid {later[0].pid} started at {later[0].start:.3f} while "
                f"the old process (frozen, lease valid) held it until {chaos.end_of(r):.3f}"
            )
        # Not stranded until the old lease runs out either: the old process, woken,
        # finds itself superseded at its next heartbeat (every 10 s), stops its handlers
        # and clears its claims, and the new incarnation takes them at once.
        taken = [
            o.start
            for o in runs
            if o.pid != old_pid and o.start > resumed and o.job in {r.job for r in old_runs}
        ]
        assert taken
        print(f"old jobs taken over {max(taken) - resumed:.1f} s after the old process woke")
        assert max(taken) - resumed < 10.0 + 5.0
