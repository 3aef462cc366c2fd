"""The chaos soak (fdbworkers/cli/_chaos.py, ./scripts/chaos) on the real cluster: one
seed, about two minutes, in every ./scripts/test. Real worker processes under kill -9,
SIGSTOP, SIGTERM, restarts with another timeout, job churn and (when the cluster is the
one ./scripts/test started) fdbserver freezes; it fails on any live double run, any
resumed holder overlapping a newer one by more than 50 ms, any token regression, any
job without a runner past the documented bound, or an end state the CLI disagrees with.
The seed is printed to rerun it: ./scripts/chaos --seed N."""

from __future__ import annotations

import os

import pytest
from chaos_util import run_chaos

pytestmark = pytest.mark.real_fdb

SEED = int(os.environ.get("FDBWORKERS_CHAOS_SEED", "1"))


def test_one_chaos_seed_on_the_real_cluster() -> None:
    run_chaos(["--seed", str(SEED), "--duration", "60", "--workers", "6", "--jobs", "60"], 600)
