"""Runs the chaos harness (fdbworkers/cli/_chaos.py) as ./scripts/chaos does, for the
real-cluster tests: a subprocess, bounded in time, failing with its report."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


def run_chaos(argv: list[str], limit: float) -> None:
    if not os.environ.get("FDB_CLUSTER_FILE"):
        pytest.skip(
            "no real FoundationDB cluster: set FDB_CLUSTER_FILE (./scripts/test starts one)"
        )
    out = subprocess.run(
        [sys.executable, "-m", "fdbworkers.cli._chaos", *argv],
        capture_output=True,
        text=True,
        timeout=limit,
        check=False,
    )
    report = out.stdout[-6000:] + out.stderr[-3000:]
    print(report)
    assert out.returncode == 0, f"./scripts/chaos {' '.join(argv)}:\n{report}"
    assert "0 violations" in out.stdout
