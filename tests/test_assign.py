"""Property tests of the job-to-worker assignment (fdbworkers._core.assign).

The lazy solver (listed bands, prefixes completed on demand, deferred acceptance) is
checked against a brute-force reference that scores the full P x N table and runs the
global greedy, on random memberships. The statistical claims (balance, 1.1x movement)
are checked on fixed seeds at the sizes of the issue's targets; ``benchmarks/
assign_bench.py`` measures them at full size against the baselines.
"""

from __future__ import annotations

import hashlib
import math
import os
import random
import subprocess
import sys
from collections.abc import Mapping

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from fdbworkers._core import assign as assign_module
from fdbworkers._core import direct
from fdbworkers._core.assign import (
    DEFAULT_PARTITIONS,
    MAX_PARTITIONS,
    MAX_WEIGHT,
    Assignment,
    assign,
    job_partition,
    moved,
    next_step,
    stable_hash64,
)
from fdbworkers._core.matching import _capacities, _Solver, direct_pays, direct_primaries
from fdbworkers._core.rendezvous import (
    _GOLDEN,
    _Domain,
    _exp_score,
    _ln,
    _member_keys,
    _mix64,
    _pair_ties,
)
from fdbworkers._errors import ConfigError

# ----------------------------------------------------------------------- helpers

ids_st = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-é", min_size=1, max_size=6)
weight_st = st.sampled_from([1.0, 1.0, 1.0, 2.0, 0.5, 3.7, 1e-3])
members_st = st.dictionaries(ids_st, weight_st, max_size=9)
equal_members_st = st.dictionaries(ids_st, st.just(1.0), max_size=9)
balance_st = st.sampled_from([None, "auto", 1.0, 1.05, 1.3, 2.0])
partitions_st = st.integers(min_value=1, max_value=300)


def reference(
    members: Mapping[str, float], partitions: int, replicas: int, balance: float | str | None
) -> tuple[list[str | None], list[tuple[str, ...]]]:
    """The definition, computed the slow way: score every (member, partition) pair,
    take them by ascending (score, tie-break, member) and keep a pair while its
    partition is free and its member below capacity."""
    ids = sorted(members)
    if not ids:
        return [None] * partitions, [()] * partitions
    weights = tuple(float(members[i]) for i in ids)
    keys = _member_keys(ids)
    domain = _Domain.of(partitions)
    uniform = len(set(weights)) == 1
    parts = np.arange(partitions, dtype=np.uint64)
    rows = []
    for m in range(len(ids)):
        rank = domain.unpermute(parts.copy(), np.repeat(keys[m : m + 1, :4], partitions, 0)).astype(
            np.int64
        )
        score = rank.astype(np.float64) if uniform else _exp_score(rank, partitions) / weights[m]
        tie = _mix64(np.full(partitions, keys[m, 4], dtype=np.uint64) ^ (parts * _GOLDEN))
        rows += [(float(score[p]), int(tie[p]), m, p) for p in range(partitions)]
    rows.sort()
    caps = (
        [partitions] * len(ids)
        if balance is None
        else _capacities(weights, keys, partitions, balance).tolist()
    )
    owner: list[int | None] = [None] * partitions
    load = [0] * len(ids)
    prefs: list[list[int]] = [[] for _ in range(partitions)]
    for _, _, m, p in rows:
        prefs[p].append(m)
        if owner[p] is None and load[m] < caps[m]:
            owner[p] = m
            load[m] += 1
    primaries: list[str | None] = [ids[m] if m is not None else None for m in owner]
    owners = []
    for p in range(partitions):
        first = owner[p]
        assert first is not None
        rest = [ids[m] for m in prefs[p] if m != first][: replicas - 1]
        owners.append((ids[first], *rest))
    return primaries, owners


def names(a: Assignment) -> np.ndarray:
    return np.array(a.primaries(), dtype=object)


def jobs_per_partition(count: int, partitions: int, seed: int) -> np.ndarray:
    """Partitions of ``count`` job ids, counted (real ids through job_partition)."""
    parts = [job_partition(f"job-{seed}-{i}", partitions) for i in range(count)]
    return np.bincount(np.asarray(parts), minlength=partitions)


# -------------------------------------------------------------- golden vectors


def test_golden_hashes() -> None:
    # A change here changes every deployment's job placement: bump ALGORITHM_VERSION.
    assert stable_hash64(b"") == 13020603013274838756
    assert stable_hash64(b"fdbworkers") == 15163935544713207441
    assert [job_partition(f"job-{i}", 65536) for i in range(5)] == [
        201,
        27573,
        54824,
        22783,
        21305,
    ]
    assert job_partition("", 7) == 4
    assert job_partition("réplication/é", 1000) == 301


def test_golden_assignments() -> None:
    # Pins the permutations, scores, tie-breaks, capacities and the matching.
    pure = assign({"a": 1, "b": 1, "c": 1}, 32, balance=None)
    assert "".join(pure.primaries()) == "acbbcabaccacaccbcbabccabcabaacab"  # type: ignore[arg-type]
    weighted = assign({"a": 1.0, "b": 2.0, "c": 4.0}, 24)
    assert "".join(weighted.primaries()) == "acbbccbcbcbcbccccbabcccb"  # type: ignore[arg-type]
    four = assign({"a": 1.0, "b": 2.0, "c": 4.0, "d": 0.5}, 16, replicas=3, balance=1.2)
    assert four.owners(5) == ("c", "a", "b")
    big = assign({f"w{i}": 1.0 for i in range(100)})
    digest = hashlib.blake2b("\n".join(big.primaries()).encode(), digest_size=16)  # type: ignore[arg-type]
    assert digest.hexdigest() == "02dd79e615de874065f02711ce24c322"
    # Maps without capacities of few members (the direct path; pinned by the solver).
    for members, p, want in [
        ({f"w{i}": 1.0 for i in range(5)}, 65536, "2d5eb9fb485543cf93f153ee697654c1"),
        (
            {f"w{i}": (1.0, 2.0, 0.5)[i % 3] for i in range(12)},
            65536,
            "1c47b2790a611902caaa665fa9e7ae16",
        ),
        ({f"w{i}": 1.0 for i in range(4)}, 4097, "a62a3162614fd9e168ec0ad630af6e3b"),
    ]:
        got = assign(members, p, balance=None).primaries()
        assert hashlib.blake2b("\n".join(got).encode(), digest_size=16).hexdigest() == want  # type: ignore[arg-type]


def test_same_map_in_another_process() -> None:
    code = (
        "import hashlib; from fdbworkers._core.assign import assign; "
        "a = assign({f'w{i}': 1.0 + i % 3 for i in range(40)}, 4096); "
        "print(hashlib.blake2b('|'.join(a.primaries()).encode()).hexdigest())"
    )
    env = dict(os.environ, PYTHONHASHSEED="12345")
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    here = assign({f"w{i}": 1.0 + i % 3 for i in range(40)}, 4096)
    expect = hashlib.blake2b("|".join(here.primaries()).encode()).hexdigest()  # type: ignore[arg-type]
    assert out.stdout.strip() == expect


# ------------------------------------------------------------- the definition


@settings(max_examples=60, deadline=None)
@given(
    members_st,
    partitions_st,
    st.integers(min_value=1, max_value=4),
    balance_st,
)
def test_solver_matches_brute_force(
    members: dict[str, float], partitions: int, replicas: int, balance: float | str | None
) -> None:
    a = assign(members, partitions, replicas=replicas, balance=balance)
    primaries, owners = reference(members, partitions, replicas, balance)
    assert list(a.primaries()) == primaries
    assert [a.owners(p) for p in range(partitions)] == owners


def _ids(n: int) -> list[str]:
    return [f"x{i}" for i in range(n)]


@settings(max_examples=40, deadline=None)
@given(
    st.one_of(
        st.integers(min_value=1, max_value=300),
        st.sampled_from([1023, 1025, 4095, 4097, 65536]),
    ),
    st.lists(ids_st, min_size=1, max_size=70, unique=True),
    st.lists(weight_st, min_size=70, max_size=70),
    st.booleans(),
)
# The default P on both sides of the threshold (60 members there), and cycle walking.
@example(65536, _ids(60), [1.0, 2.0] * 35, False)
@example(65536, _ids(61), [1.0] * 70, True)
@example(65536, _ids(3), [1.0] * 70, True)
@example(4097, _ids(12), [0.5, 3.7] * 35, False)
@example(4097, _ids(13), [1.0] * 70, True)
def test_direct_path_is_the_solver_bit_for_bit(
    partitions: int, ids: list[str], drawn: list[float], uniform: bool
) -> None:
    """The map without capacities is computed directly for few members: the same owner
    for every partition as the solver's (forced here), uniform and weighted, with cycle
    walking (P not a power of 4), for N on both sides of the threshold."""
    ids.sort()
    weights = tuple(1.0 if uniform else drawn[i] for i in range(len(ids)))
    keys = _member_keys(ids)
    solver = _Solver(weights, keys, partitions, None).solve(1)[0]
    assert np.array_equal(direct_primaries(weights, keys, partitions), solver)
    got = assign(dict(zip(ids, weights, strict=True)), partitions, balance=None)
    assert got.primaries() == tuple(ids[m] for m in solver.tolist())


@settings(max_examples=80, deadline=None)
@given(
    st.sampled_from([1, 2, 3, 7, 16, 17, 255, 256, 257, 1000, 4096, 4097, 16384]),
    st.lists(ids_st, min_size=1, max_size=14, unique=True),
)
@example(65536, [f"w{i}" for i in range(60)])
@example(65536, ["solo"])
def test_the_map_without_numpy_is_numpys_bit_for_bit(partitions: int, ids: list[str]) -> None:
    """fdbworkers._core.direct (the standard library: bytes.translate rounds and 32-bit
    lanes of one int) gives numpy's ranks and direct owners, cycle walking included."""
    ids.sort()
    keys = _member_keys(ids)
    pure_keys = direct.member_keys(ids)
    assert pure_keys == [tuple(int(v) for v in row) for row in keys]
    want = direct_primaries((1.0,) * len(ids), keys, partitions)
    assert direct.primaries(len(ids), pure_keys, partitions).tolist() == want.tolist()
    lanes = direct.ranks(pure_keys[-1], partitions)
    got = [(lanes >> (32 * p)) & 0xFFFFFFFF for p in range(partitions)]
    assert got == _Domain.of(partitions).ranks(keys[-1]).tolist()
    assert direct.pair_tie(pure_keys[0][4], partitions - 1) == int(
        _pair_ties(keys[:1, 4], np.asarray([partitions - 1], dtype=np.int64))[0]
    )


def test_direct_path_breaks_equal_ranks_like_the_solver() -> None:
    # Equal ranks of one partition for two members (uniform weights): frequent at small
    # P. Pick a case that has them, so the tie-break branch is exercised for sure.
    for n in range(2, 9):
        ids = tuple(f"m{i}" for i in range(n))
        keys = _member_keys(ids)
        domain = _Domain.of(7)
        parts = np.arange(7, dtype=np.uint64)
        ranks = [
            domain.unpermute(parts, np.broadcast_to(keys[i, :4], (7, 4))).tolist() for i in range(n)
        ]
        if any(len({r[p] for r in ranks}) < n for p in range(7)):
            break
    weights = (1.0,) * n
    solver = _Solver(weights, keys, 7, None).solve(1)[0]
    assert np.array_equal(direct_primaries(weights, keys, 7), solver)
    assert list(assign(dict.fromkeys(ids, 1.0), 7, balance=None).primaries()) == [
        ids[m] for m in solver
    ]


@pytest.mark.parametrize("weights", [(1.0, 1.0), (2.0, 2.0, 0.5)])
def test_direct_path_breaks_equal_scores_either_way(weights: tuple[float, ...]) -> None:
    # Two members may rank a partition alike (their permutations are independent):
    # find such partitions, won by the tie-break either way, and check their owners.
    p = 4096
    assert direct_pays(len(weights), p)
    domain = _Domain.of(p)
    found = {0: 0, 1: 0}
    for i in range(40):
        ids = tuple(f"tie{i}-{j}" for j in range(len(weights)))
        keys = _member_keys(ids)
        r0, r1 = (domain.ranks(keys[m]).astype(np.int64) for m in (0, 1))
        tied = np.flatnonzero(r0 == r1)
        if not tied.size:
            continue
        later = _pair_ties(keys[[1], 4], tied) < _pair_ties(keys[[0], 4], tied)
        solver = _Solver(weights, keys, p, None).solve(1)[0]
        a = assign(dict(zip(ids, weights, strict=True)), p, balance=None)
        assert a.primaries() == tuple(ids[m] for m in solver.tolist())
        if len(weights) == 3:  # (first two weigh alike) no tie when the third is preferred
            r2 = domain.ranks(keys[2]).astype(np.int64)
            first = _exp_score(r0, p) / weights[0] < _exp_score(r2, p) / weights[2]
            tied, later = tied[first[tied]], later[first[tied]]
        for q, m1_wins in zip(tied.tolist(), later.tolist(), strict=True):
            assert a.owner(q) == ids[1 if m1_wins else 0]
            found[int(m1_wins)] += 1
    assert found[0] and found[1]


def test_small_pure_maps_take_the_direct_path(monkeypatch: pytest.MonkeyPatch) -> None:
    # The stored plan's map (balance=None, one owner) of a few members at the default P
    # is computed without the solver; with capacities or standbys it is the solver's.
    class NoSolver:
        def __init__(self, *args: object) -> None:
            raise AssertionError("the solver was used")

    monkeypatch.setattr(assign_module, "_Solver", NoSolver)
    assign_module._MAPS.clear()
    members = {f"d{i}": 1.0 + i % 2 for i in range(32)}
    assert len(assign(members, balance=None).load()) == 32
    with pytest.raises(AssertionError, match="the solver was used"):
        assign(members, balance="auto")
    with pytest.raises(AssertionError, match="the solver was used"):
        assign(members, replicas=2, balance=None)
    assign_module._MAPS.clear()
    # The rule's bounds (docs/assignment.md): lower where cycle walking makes the
    # Feistel domain larger than P, or where the fixed cost per member weighs more.
    sizes = (1024, 4097, 65536, 100_000)
    bounds = {p: max(n for n in range(1, 200) if direct_pays(n, p)) for p in sizes}
    assert bounds == {1024: 12, 4097: 12, 65536: 60, 100_000: 24}


@settings(max_examples=60, deadline=None)
@given(members_st, partitions_st, balance_st, st.randoms(use_true_random=False))
def test_same_map_whatever_the_member_order(
    members: dict[str, float],
    partitions: int,
    balance: float | str | None,
    rnd: random.Random,
) -> None:
    items = list(members.items())
    rnd.shuffle(items)
    assert assign(dict(items), partitions, balance=balance) == assign(
        members, partitions, balance=balance
    )


@settings(max_examples=60, deadline=None)
@given(members_st, partitions_st, st.integers(min_value=1, max_value=5), balance_st)
def test_one_primary_per_partition_and_distinct_replicas(
    members: dict[str, float], partitions: int, replicas: int, balance: float | str | None
) -> None:
    a = assign(members, partitions, replicas=replicas, balance=balance)
    seen: set[int] = set()
    for m in members:
        mine = a.partitions_of(m)
        assert not (mine & seen)
        seen |= mine
        assert a.share(m) == len(mine) / partitions
    for p in range(partitions):
        owners = a.owners(p)
        if not members:
            assert a.owner(p) is None and owners == ()
            continue
        assert a.owner(p) in members
        assert owners[0] == a.owner(p)
        assert len(set(owners)) == len(owners) == min(replicas, len(members))
        assert set(owners) <= set(members)
    assert seen == (set(range(partitions)) if members else set())
    assert sum(a.load().values()) == (partitions if members else 0)


@settings(max_examples=60, deadline=None)
@given(members_st, partitions_st, st.sampled_from(["auto", 1.0, 1.05, 1.3]))
def test_capacities_are_respected(
    members: dict[str, float], partitions: int, balance: float | str
) -> None:
    a = assign(members, partitions, balance=balance)
    if not members:
        return
    ids = sorted(members)
    weights = tuple(members[i] for i in ids)
    caps = _capacities(weights, _member_keys(ids), partitions, balance)
    assert int(caps.sum()) >= partitions
    load = a.load()
    total = math.fsum(weights)
    for i, wid in enumerate(ids):
        assert load[wid] <= caps[i]
        if balance != "auto" and float(balance) * partitions >= partitions + len(ids):
            # The documented bound: at most balance * fair share, plus the dither.
            assert load[wid] < float(balance) * partitions * weights[i] / total + 1


# ------------------------------------------------------------------ movement


@settings(max_examples=60, deadline=None)
@given(members_st, ids_st, weight_st, partitions_st)
def test_pure_join_moves_only_to_the_newcomer(
    members: dict[str, float], newcomer: str, weight: float, partitions: int
) -> None:
    if newcomer in members:
        return
    old = assign(members, partitions, balance=None)
    new = assign({**members, newcomer: weight}, partitions, balance=None)
    changed = moved(old, new)
    assert changed == new.partitions_of(newcomer)


@settings(max_examples=60, deadline=None)
@given(members_st.filter(bool), partitions_st, st.data())
def test_pure_leave_moves_only_the_leavers_partitions(
    members: dict[str, float], partitions: int, data: st.DataObject
) -> None:
    leaver = data.draw(st.sampled_from(sorted(members)))
    old = assign(members, partitions, balance=None)
    rest = {k: v for k, v in members.items() if k != leaver}
    new = assign(rest, partitions, balance=None)
    assert moved(old, new) == old.partitions_of(leaver)


@pytest.mark.parametrize(("workers", "jobs"), [(100, 100_000), (1000, 1_000_000)])
def test_default_join_and_leave_move_at_most_1_1x(workers: int, jobs: int) -> None:
    """Capacities displace a few partitions beyond those that must move; the bound of
    the issue (1.1x the jobs that must move) holds on every event of fixed seeds."""
    seed = 7
    rng = np.random.default_rng(seed)
    per_part = rng.multinomial(jobs, np.full(DEFAULT_PARTITIONS, 1.0 / DEFAULT_PARTITIONS))
    members = {f"w{seed}-{i}": 1.0 for i in range(workers)}
    base = names(assign(members))
    ratios = []
    for k in range(2):
        newcomer = f"new-{seed}-{k}"
        after = names(assign({**members, newcomer: 1.0}))
        necessary = per_part[after == newcomer].sum()
        ratios.append(per_part[base != after].sum() / necessary)
        leaver = f"w{seed}-{int(rng.integers(workers))}"
        after = names(assign({m: 1.0 for m in members if m != leaver}))
        necessary = per_part[base == leaver].sum()
        ratios.append(per_part[base != after].sum() / necessary)
    assert max(ratios) <= 1.1, f"seed={seed} ratios={ratios}"
    assert sum(ratios) / len(ratios) <= 1.06, f"seed={seed} ratios={ratios}"


# ------------------------------------------------------------------- balance


def test_jobs_balance_for_100k_jobs_over_100_workers() -> None:
    """max/mean jobs per worker for 100,000 jobs over 100 equal workers, on 8 job sets,
    against ideal hashing of every job on its own (per-job rendezvous) on the same
    jobs: Poisson noise alone gives the ideal about 1.08 on average and more than 1.10
    on about 10% of job sets, so the target (1.10) is a mean; the partitions may cost
    little more than that noise."""
    workers, jobs, p = 100, 100_000, DEFAULT_PARTITIONS
    ours, ideal = [], []
    for seed in range(1, 9):
        names = [f"job-{seed}-{i}" for i in range(jobs)]
        parts = np.array([job_partition(j, p) for j in names])
        ids = [f"s{seed}-w{i}" for i in range(workers)]
        a = assign(dict.fromkeys(ids, 1.0), p)
        per_worker = np.bincount(np.asarray(a._primary)[parts], minlength=workers)
        ours.append(per_worker.max() / (jobs / workers))
        h = np.array([stable_hash64(j.encode()) for j in names], dtype=np.uint64)
        keys = np.array([stable_hash64(i.encode()) for i in ids], dtype=np.uint64)
        best = np.concatenate([_mix64(c[:, None] ^ keys).argmax(1) for c in np.split(h, 10)])
        ideal.append(np.bincount(best, minlength=workers).max() / (jobs / workers))
    report = f"ours={np.round(ours, 3).tolist()} ideal={np.round(ideal, 3).tolist()}"
    print(report)
    assert float(np.mean(ours)) <= 1.10, report
    assert float(np.mean(ours)) - float(np.mean(ideal)) <= 0.03, report
    assert max(ours) <= 1.15, report


def test_weighted_workers_get_proportional_shares() -> None:
    seed = 5
    weights = {f"w{seed}-{i}": float(w) for i, w in enumerate([1, 2, 4] * 10)}
    per_part = jobs_per_partition(100_000, DEFAULT_PARTITIONS, seed)
    a = assign(weights)
    per_worker = np.bincount(np.asarray(a._primary), weights=per_part, minlength=len(weights))
    total_w = sum(weights.values())
    for i, wid in enumerate(sorted(weights)):
        expect = 100_000 * weights[wid] / total_w
        assert abs(per_worker[i] / expect - 1.0) <= 0.10, (seed, wid, per_worker[i], expect)
        fair = DEFAULT_PARTITIONS * weights[wid] / total_w
        assert abs(len(a.partitions_of(wid)) / fair - 1.0) <= 0.10


def test_pure_rank_rendezvous_spread_matches_theory() -> None:
    """Rank rendezvous: partitions per member have variance about q/2 (q = P/N), half
    of independent rendezvous hashing's q. Guards the permutation quality."""
    n, p = 64, 65536
    loads = np.array(
        list(assign({f"m{i}": 1.0 for i in range(n)}, p, balance=None).load().values())
    )
    q = p / n
    assert 0.3 * q < loads.var() < 0.75 * q


# -------------------------------------------------------------------- pieces


@settings(max_examples=40, deadline=None)
@given(st.integers(min_value=1, max_value=5000), st.text(max_size=5))
def test_member_permutations_are_bijections(partitions: int, wid: str) -> None:
    d = _Domain.of(partitions)
    keys = np.repeat(_member_keys([wid])[:, :4], partitions, 0)
    ranks = np.arange(partitions, dtype=np.uint64)
    parts = d.permute(ranks.copy(), keys)
    assert sorted(parts.tolist()) == list(range(partitions))
    assert np.array_equal(d.unpermute(parts.copy(), keys), ranks)
    # All ranks at once (the direct path): a table of the domain, walked by lookups.
    assert np.array_equal(d.ranks(keys[0]), d.unpermute(ranks.copy(), keys))


@settings(max_examples=100, deadline=None)
@given(st.floats(min_value=1e-300, max_value=1e300, allow_nan=False))
def test_deterministic_log_is_accurate(x: float) -> None:
    got = float(_ln(np.array([x]))[0])
    assert math.isclose(got, math.log(x), rel_tol=4e-16, abs_tol=4e-16)


def test_exponential_score_is_increasing() -> None:
    ranks = np.arange(1000, dtype=np.int64)
    e = _exp_score(ranks, 1000)
    assert bool(np.all(np.diff(e) > 0)) and e[0] > 0


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=20), st.integers(min_value=1, max_value=MAX_PARTITIONS))
def test_job_partition_is_multiply_shift_of_the_stable_hash(job: str, partitions: int) -> None:
    p = job_partition(job, partitions)
    assert 0 <= p < partitions
    assert p == (stable_hash64(job.encode()) * partitions) >> 64


# ------------------------------------------------------------------ API edges


def test_empty_membership() -> None:
    a = assign({}, 8)
    assert a.owner(3) is None and a.owners(3) == ()
    assert a.partitions_of("x") == frozenset() and a.load() == {}
    assert a.primaries() == (None,) * 8
    assert moved(a, assign({"x": 1.0}, 8)) == frozenset(range(8))


def test_repeated_calls_share_one_result() -> None:
    members = {"a": 1.0, "b": 2.0}
    assert assign(members, 64) is assign({"b": 2, "a": 1}, 64)
    assert assign(members, 64) is not assign(members, 64, balance=None)


def test_single_member_owns_everything() -> None:
    a = assign({"solo": 3.0}, 100, replicas=3)
    assert a.partitions_of("solo") == frozenset(range(100))
    assert a.owners(0) == ("solo",)


@pytest.mark.parametrize(
    "members",
    [
        {"a": 0},
        {"a": -1.0},
        {"a": float("nan")},
        {"a": float("inf")},
        {"a": True},
        {"a": "1"},
        {"a": 10**400},
        {"a": MAX_WEIGHT * 2},
        {"": 1.0},
        {3: 1.0},
        [("a", 1.0)],
    ],
)
def test_bad_members_are_config_errors(members: object) -> None:
    with pytest.raises(ConfigError):
        assign(members, 16)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"partitions": 0}, "partitions"),
        ({"partitions": True}, "partitions"),
        ({"partitions": 2.0}, "partitions"),
        ({"partitions": MAX_PARTITIONS + 1}, "partitions"),
        ({"replicas": 0}, "replicas"),
        ({"replicas": 1.5}, "replicas"),
        ({"balance": 0.99}, "balance"),
        ({"balance": float("nan")}, "balance"),
        ({"balance": "tight"}, "balance"),
        ({"balance": True}, "balance"),
    ],
)
def test_bad_options_are_config_errors(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        assign({"a": 1.0}, **kwargs)  # type: ignore[arg-type]


def test_bad_queries_are_config_errors() -> None:
    a = assign({"a": 1.0}, 4)
    for bad in (-1, 4, True, 1.0):
        with pytest.raises(ConfigError):
            a.owner(bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        moved(a, assign({"a": 1.0}, 5))
    with pytest.raises(ConfigError):
        job_partition(b"bytes", 4)  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        job_partition("x", 0)


def test_assignment_is_immutable() -> None:
    a = assign({"a": 1.0, "b": 1.0}, 16)
    with pytest.raises(AttributeError):
        a._partitions = 3
    with pytest.raises(TypeError):
        a._primary[0] = 1
    with pytest.raises(TypeError):
        a.members["c"] = 1.0  # type: ignore[index]
    assert "2 members, 16 partitions" in repr(a)
    assert list(a) == list(enumerate(a.primaries()))


# ----------------------------------------------------------- velocity limit


@settings(max_examples=60, deadline=None)
@given(
    equal_members_st.filter(bool),
    st.integers(min_value=1, max_value=64),
    st.integers(min_value=0, max_value=7),
    st.data(),
)
def test_next_step_moves_at_most_max_moves_and_converges(
    members: dict[str, float], partitions: int, limit: int, data: st.DataObject
) -> None:
    target = assign(members, partitions)
    owners = [*sorted(members), "gone", None]
    current: dict[int, str | None] = {
        p: data.draw(st.sampled_from(owners)) for p in range(partitions)
    }
    live_moves = sum(
        1
        for p, want in enumerate(target.primaries())
        if current[p] in members and current[p] != want
    )
    step = next_step(current, target, limit)
    assert len(step.moved) == min(limit, live_moves)
    assert step.remaining == live_moves - len(step.moved)
    assert step.adopted == {p for p in range(partitions) if current[p] not in members}
    for p in range(partitions):
        assert step.ownership[p] in members
        if p in step.moved or p in step.adopted:
            assert step.ownership[p] == target.owner(p)
        else:
            assert step.ownership[p] == current[p]
    if limit == 0:
        return
    state: Mapping[int, str | None] = step.ownership
    steps = 1
    while step.remaining:
        step = next_step(state, target, limit)
        assert not step.adopted
        state = step.ownership
        steps += 1
    assert dict(state) == dict(enumerate(target.primaries()))
    assert steps == max(1, math.ceil(live_moves / limit))


def test_next_step_serves_receivers_round_robin() -> None:
    old = assign({"a": 1.0, "b": 1.0}, 256, balance=None)
    target = assign({"a": 1.0, "b": 1.0, "c": 1.0, "d": 1.0}, 256, balance=None)
    step = next_step(dict(enumerate(old.primaries())), target, 10)
    receivers = [str(target.owner(p)) for p in step.moved]
    assert sorted(receivers) == ["c"] * 5 + ["d"] * 5


def test_next_step_rejects_bad_limits() -> None:
    a = assign({"a": 1.0}, 4)
    for bad in (-1, 1.5, True):
        with pytest.raises(ConfigError):
            next_step({}, a, bad)  # type: ignore[arg-type]
