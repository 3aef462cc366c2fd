"""Issue 15's faults on the real cluster, with 3 worker processes on the local
FoundationDB (fdbworkers/cli/_chaos.py --scenario, checked from the handlers' own
record like the chaos soak): each ends with no job run twice and none stranded.

* server-freeze: the fdbserver frozen (SIGSTOP) past the workers' timeout, then resumed;
* kill-while-claiming: kill -9 of a worker 0-100 ms after new jobs made it claim, 5 times;
* restart-shorter-timeout: a worker with timeout 30 frozen, its id started again with
  timeout 3, the old process resumed 40 s later."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.real_fdb


@pytest.mark.parametrize(
    "scenario", ["server-freeze", "kill-while-claiming", "restart-shorter-timeout"]
)
def test_scenario_on_the_real_cluster(scenario: str) -> None:
    if not os.environ.get("FDB_CLUSTER_FILE"):
        pytest.skip(
            "no real FoundationDB cluster: set FDB_CLUSTER_FILE (./scripts/test starts one)"
        )
    if scenario == "server-freeze" and not os.environ.get("FDB_LOCAL_CLUSTER_DIR"):
        pytest.skip("freezing the server needs the cluster ./scripts/test started (its pid)")
    argv = ["--scenario", scenario, "--workers", "3", "--jobs", "30", "--quiet", "12"]
    out = subprocess.run(
        [sys.executable, "-m", "fdbworkers.cli._chaos", *argv],
        capture_output=True,
        text=True,
        timeout=400,
        check=False,
    )
    report = out.stdout[-6000:] + out.stderr[-3000:]
    print(report)
    assert out.returncode == 0, f"./scripts/chaos {' '.join(argv)}:\n{report}"
    assert "0 violations" in out.stdout
