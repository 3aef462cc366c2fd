"""The demo, headless and short, as CI runs it: on a dev server, and on the real cluster.
Its exit code and summary are the verdict (crash detection within the bound, no needless
move, never two runners of a job, agreement at rest after each step)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from cli_util import clean_env

ARGS = ["demo", "--duration", "10", "--workers", "3", "--jobs", "20"]


def check_summary(r: subprocess.CompletedProcess[str]) -> None:
    out = r.stdout
    assert r.returncode == 0, out[-4000:] + r.stderr[-4000:]
    assert "result: all checks passed" in out
    for check in (
        "[ok] crash detection",
        "[ok] jobs moved only as required",
        "[ok] no job ran on two workers",
        "[ok] agreement at rest after each step",
        "[ok] drained worker exits",
        "[ok] workers leave on SIGTERM",
    ):
        assert check in out, out
    assert "killed w" in out and "with SIGKILL" in out
    assert "event: evicted w" in out
    assert "\x1b[" not in out  # plain output when stdout is not a terminal


def test_demo_on_a_dev_server() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "fdbworkers", *ARGS],
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=180,
        stdin=subprocess.DEVNULL,
    )
    check_summary(r)
    assert "dev server listening on sim://" in r.stdout


@pytest.mark.real_fdb
def test_demo_on_the_real_cluster() -> None:
    cluster_file = os.environ.get("FDB_CLUSTER_FILE", "")
    r = subprocess.run(
        # The form ./scripts/demo --cluster-file PATH runs: the option after the command.
        [sys.executable, "-m", "fdbworkers", *ARGS, "--cluster-file", cluster_file],
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=180,
        stdin=subprocess.DEVNULL,
    )
    check_summary(r)
    assert f"using the cluster fdb:{cluster_file}" in r.stdout
