"""The fault simulation over 300 seeds (G1-G4 checked continuously; see
fdbworkers.testing.Simulation). A failing seed prints its timeline; reproduce it with
``./scripts/soak --seed N``."""

from __future__ import annotations

import logging

import structlog
from trio.testing import MockClock

from fdbworkers.cli._soak import main as soak_main
from fdbworkers.testing import SimConfig, Simulation


def test_three_hundred_seeds_of_mixed_faults() -> None:
    # Two processes: the machine has two cores.
    assert soak_main(["--seeds", "0:300", "--parallel", "2"]) == 0


async def test_one_seed_in_process_reports_and_is_clean(autojump_clock: MockClock) -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL))
    try:
        report = await Simulation(7, SimConfig(workers=4, jobs=20, duration=60.0)).run()
    finally:
        structlog.reset_defaults()
    report.raise_for_violations()
    assert report.stats["job_starts"] >= 20
    assert "start w0" in report.format()


def test_eviction_is_judged_by_the_dead_incarnations_own_timeout() -> None:
    # Seeds where a worker restarted with 3 x the base timeout, then crashed: its checker
    # rightly waited its 9 s, which the invariant judged against the base 3 s ("G1 late
    # eviction"; the soak of seeds 300-10,300 found these three).
    assert soak_main(["--seeds", "525", "--parallel", "1"]) == 0
    assert soak_main(["--seeds", "632", "--parallel", "1"]) == 0
    assert soak_main(["--seeds", "797", "--parallel", "1"]) == 0


def test_claims_that_commit_after_the_lease_ran_out_start_no_handler() -> None:
    # Seed 834: a suspend seen while a batch of claims was in flight aged the lease; the
    # handlers were started into the generation the hard end had just closed, the runner
    # died of "Nursery is closed to new arrivals", and its worker was evicted for the
    # silence that followed. The claims are now kept and settled by the next step.
    assert soak_main(["--seeds", "834", "--parallel", "1"]) == 0


def test_leaves_still_draining_do_not_count_toward_the_live_workers() -> None:
    # Seed 10117 (the soak of seeds 10,050-20,049): two workers left 40 ms apart and the
    # last one crashed 0.5 s later. The fault picker, which takes a worker away only when
    # three are live, counted the two still draining, so no worker was left to evict the
    # crashed one or run the jobs ("G4 no workers", "G1 not evicted", every job without
    # a runner). A harness fault, not the library's: the picker now counts only workers
    # that are staying.
    assert soak_main(["--seeds", "10117", "--parallel", "1"]) == 0


def test_a_claim_whose_job_moved_while_it_was_in_flight_is_released() -> None:
    # Seeds 13,869 and 11,834 of the second soak: a worker that had just rejoined
    # claimed a batch; while the claims were in flight a new plan gave one of the jobs
    # to a newcomer. The claim committed, the runner saw the job no longer in its
    # target and skipped it without releasing it: a live worker held a claim it did
    # not run, and the job's owner waited on it for the rest of the run.
    assert soak_main(["--seeds", "13869", "--parallel", "1"]) == 0
    assert soak_main(["--seeds", "11834", "--parallel", "1"]) == 0


def test_a_checker_crash_during_a_stalled_workers_countdown_overlaps() -> None:
    # Seed 14,964: w3's commits stalled at 20.2 s (last heartbeat 19.6 s), w2 crashed at
    # 21.0 s, w3 was evicted at 25.7 s, then crashed at 27.2 s. G1 looked for
    # overlapping faults only from the crash minus a timeout (24.2 s), missed w2's crash
    # and held the eviction to the lone-crash bound (24.3 s). The countdown starts at
    # the last heartbeat: overlapping faults are counted from there.
    assert soak_main(["--seeds", "14964", "--parallel", "1"]) == 0
