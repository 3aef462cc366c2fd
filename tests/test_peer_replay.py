"""The ownership replay of benchmarks/peer_compare.py: the figures of hand-written
records (pure functions; no process, no clock)."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

from _replay import (
    Record,
    counts_at,
    first_all_held,
    held_twice,
    holds,
    moves,
    unowned_seconds,
)


def r(t: float, proc: str, ev: str, job: str | None = None, until: float | None = None) -> Record:
    return Record(t, proc, proc.split("#")[0], ev, job, until)


def test_a_kill_ends_the_holds_and_the_survivor_fills_the_gap() -> None:
    recs = [
        r(0, "a#0", "start", "j1"),
        r(0, "b#0", "start", "j2"),
        r(5, "a#0", "kill"),
        r(8, "b#0", "start", "j1"),
    ]
    hs = holds(recs, 10)
    assert [(h.job, h.proc, h.start, h.end) for h in hs] == [
        ("j1", "a#0", 0, 5),
        ("j2", "b#0", 0, 10),
        ("j1", "b#0", 8, 10),
    ]
    assert first_all_held(hs, ["j1", "j2"], 5) == 8
    assert unowned_seconds(hs, ["j1", "j2"], 5, 10) == pytest.approx(3.0)
    assert held_twice(hs) == set()
    assert counts_at(hs, 9) == [2]


def test_a_frozen_process_holds_until_its_lease_lapses_only_when_it_has_one() -> None:
    # a#0 is frozen at 4 (its last lease record says it may act until 6), b#0 takes j1
    # at 7, a#0 resumes at 12 and writes its stop.
    recs = [
        r(0, "a#0", "lease", until=3),
        r(0, "a#0", "start", "j1"),
        r(2, "a#0", "lease", until=6),
        r(7, "b#0", "start", "j1"),
        r(12, "a#0", "stop", "j1"),
    ]
    bounded = holds(recs, 20)
    assert held_twice(bounded) == set()
    assert [(h.proc, h.end) for h in bounded if h.proc == "a#0"] == [("a#0", 6)]
    raw = holds(recs, 20, lease_bounded=False)
    assert held_twice(raw) == {"j1"}
    # Without lease records (kazoo, tooz) the hold lasts until the stop record.
    no_lease = [x for x in recs if x.ev != "lease"]
    assert held_twice(holds(no_lease, 20)) == {"j1"}


def test_a_lease_renewed_in_time_does_not_end_the_hold() -> None:
    recs = [r(3 * i, "a#0", "lease", until=3 * i + 4) for i in range(5)]
    recs.append(r(0.5, "a#0", "start", "j1"))
    (h,) = holds(recs, 13)
    assert (h.start, h.end) == (0.5, 13)


def test_held_twice_only_counts_overlaps_after_t0_and_between_processes() -> None:
    recs = [
        r(0, "a#0", "start", "j1"),
        r(1, "b#0", "start", "j1"),
        r(2, "a#0", "stop", "j1"),
        r(3, "a#0", "start", "j2"),
        r(4, "a#0", "stop", "j2"),
        r(4, "a#1", "start", "j2"),  # same id, new process, no overlap
    ]
    hs = holds(recs, 10)
    assert held_twice(hs) == {"j1"}
    assert held_twice(hs, t0=2) == set()


def test_moves_tell_a_move_from_a_restart_with_the_same_id() -> None:
    recs = [
        r(0, "a#0", "start", "j1"),
        r(0, "b#0", "start", "j2"),
        # a#0 leaves: j1 goes to b; a#1 takes it back 5 s later (handoff mode).
        r(10, "a#0", "stop", "j1"),
        r(10.2, "b#0", "start", "j1"),
        r(15, "b#0", "stop", "j1"),
        r(15.1, "a#1", "start", "j1"),
        # b restarts in place: j2 unowned for a moment, same id.
        r(20, "b#0", "stop", "j2"),
        r(22, "b#1", "start", "j2"),
    ]
    hs = holds(recs, 30)
    m = moves(hs, 5, 30)
    assert (m.starts, m.moves, m.rebalances) == (3, 2, 2)
    assert unowned_seconds(hs, ["j1", "j2"], 5, 30) == pytest.approx(0.2 + 0.1 + 2.0)


def test_first_all_held_ignores_excluded_processes() -> None:
    recs = [
        r(0, "a#0", "start", "j1"),
        r(0, "b#0", "start", "j2"),
        r(4, "b#0", "start", "j1"),
    ]
    hs = holds(recs, 10)
    assert first_all_held(hs, ["j1", "j2"], 1) == 1
    assert first_all_held(hs, ["j1", "j2"], 1, exclude_procs=["a#0"]) == 4
    assert first_all_held(hs, ["j1", "j2", "j3"], 1) is None


def test_unowned_seconds_matches_a_fine_sampling() -> None:
    rng = random.Random(7)
    jobs = [f"j{i}" for i in range(4)]
    recs: list[Record] = []
    for job in jobs:
        t = 0.0
        while t < 20:
            proc = rng.choice(["a#0", "b#0", "c#0"])
            start = t + rng.uniform(0, 2)
            end = start + rng.uniform(0, 4)
            recs += [r(start, proc, "start", job), r(end, proc, "stop", job)]
            t = end + rng.uniform(-1, 1)
    hs = holds(recs, 30)
    step = 0.001
    sampled = 0.0
    for i in range(int(20 / step)):
        t = 2 + (i + 0.5) * step
        held = {h.job for h in hs if h.start <= t < h.end}
        sampled += step * (len(jobs) - len(held))
    assert unowned_seconds(hs, jobs, 2, 22) == pytest.approx(sampled, abs=0.05)
