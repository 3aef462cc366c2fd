"""The stored plan (fdbworkers/_core/plan.py): per-job balance, only the necessary moves.

Properties over random memberships, weights and job counts (Hypothesis), and the
figures of issue 16 (60 jobs on 5 workers are 12 each, ...) at small and large J.
"""

from __future__ import annotations

import contextlib
import math
import random
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fdbworkers._core.assign import job_partition
from fdbworkers._core.plan import (
    Plan,
    _quota_list,
    decode_plan,
    encode_plan,
    make_plan,
    plan_chunks,
    quotas,
)
from fdbworkers._core.plan_delta import apply_plan_delta, encode_plan_delta
from fdbworkers._errors import CorruptDataError, LayoutError

P = 4096


def counts_of(jobs: list[str], partitions: int = P) -> dict[int, int]:
    out: dict[int, int] = {}
    for j in jobs:
        p = job_partition(j, partitions)
        out[p] = out.get(p, 0) + 1
    return out


def loads(plan: Plan, counts: dict[int, int]) -> dict[str, int]:
    return plan.map().loads(counts)


def moved_jobs(a: Plan, b: Plan, counts: dict[int, int]) -> int:
    ma, mb = a.map(), b.map()
    return sum(c for p, c in counts.items() if ma.owner(p) != mb.owner(p))


def fair(members: dict[str, float], total: int) -> dict[str, Fraction]:
    wsum = sum(Fraction(w) for w in members.values())
    return {w: total * Fraction(x) / wsum for w, x in members.items()}


def within_one(plan: Plan, counts: dict[int, int]) -> bool:
    f = fair(dict(plan.members), sum(counts.values()))
    return all(abs(n - f[w]) < 1 for w, n in loads(plan, counts).items())


members_st = st.dictionaries(
    st.text("abcdefgh", min_size=1, max_size=4),
    st.sampled_from([1.0, 1.0, 1.0, 2.0, 0.5, 3.0]),
    min_size=1,
    max_size=12,
)
# Distinct partitions with one job each: every member can end exactly at its quota.
single_st = st.sets(st.integers(0, P - 1), max_size=300).map(lambda s: dict.fromkeys(s, 1))


@settings(max_examples=150, deadline=None)
@given(members_st, single_st)
def test_every_member_ends_at_its_quota_within_one_of_its_fair_share(
    members: dict[str, float], counts: dict[int, int]
) -> None:
    plan = make_plan(None, members, counts, P, b"e")
    got = loads(plan, counts)
    assert got == quotas(members, sum(counts.values()), got)
    assert within_one(plan, counts)


uniform_st = st.sets(st.text("abcdefgh", min_size=1, max_size=4), min_size=1, max_size=12).map(
    lambda s: dict.fromkeys(s, 1.0)
)


def excess_over_quota(plan: Plan, members: dict[str, float], counts: dict[int, int]) -> int:
    """Jobs that must move for ``members``: those of departed members, plus each
    member's jobs above its quota (the least any plan with these quotas moves)."""
    held = dict.fromkeys(members, 0)
    gone = 0
    m = plan.map()
    for p, c in counts.items():
        o = m.owner(p)
        if o in held:
            held[o] += c
        else:
            gone += c
    q = quotas(members, sum(counts.values()), held)
    return gone + sum(max(0, held[w] - q[w]) for w in members)


@settings(max_examples=150, deadline=None)
@given(members_st, single_st, st.text("xyz", min_size=1, max_size=3), st.booleans())
def test_a_membership_change_moves_exactly_what_the_quotas_require(
    members: dict[str, float], counts: dict[int, int], other: str, join: bool
) -> None:
    before = make_plan(None, members, counts, P, b"e1")
    if join:
        new = {**members, other: 2.0}
    elif len(members) > 1:
        new = {w: x for w, x in members.items() if w != sorted(members)[0]}
    else:
        return
    after = make_plan(before, new, counts, P, b"e2")
    assert moved_jobs(before, after, counts) == excess_over_quota(before, new, counts)
    assert within_one(after, counts)


@settings(max_examples=150, deadline=None)
@given(uniform_st, single_st, st.text("xyz", min_size=1, max_size=3))
def test_a_join_moves_only_the_newcomers_quota_and_only_to_it(
    members: dict[str, float], counts: dict[int, int], newcomer: str
) -> None:
    before = make_plan(None, members, counts, P, b"e1")
    after = make_plan(before, {**members, newcomer: 1.0}, counts, P, b"e2")
    mb, ma = before.map(), after.map()
    for p in counts:
        if mb.owner(p) != ma.owner(p):
            assert ma.owner(p) == newcomer  # nothing moves between old members
    assert moved_jobs(before, after, counts) == loads(after, counts)[newcomer]
    assert within_one(after, counts)


@settings(max_examples=150, deadline=None)
@given(uniform_st, single_st)
def test_a_leave_moves_only_the_leavers_jobs(
    members: dict[str, float], counts: dict[int, int]
) -> None:
    if len(members) < 2:
        return
    before = make_plan(None, members, counts, P, b"e1")
    gone = sorted(members)[0]
    rest = {w: x for w, x in members.items() if w != gone}
    after = make_plan(before, rest, counts, P, b"e2")
    mb, ma = before.map(), after.map()
    for p in counts:
        if mb.owner(p) != ma.owner(p):
            assert mb.owner(p) == gone
    assert moved_jobs(before, after, counts) == loads(before, counts)[gone]
    assert within_one(after, counts)


@settings(max_examples=100, deadline=None)
@given(members_st, single_st, single_st)
def test_after_adds_and_removes_only_the_excess_moves(
    members: dict[str, float], old: dict[int, int], new: dict[int, int]
) -> None:
    before = make_plan(None, members, old, P, b"e1")
    after = make_plan(before, members, new, P, b"e1")
    held = loads(before, new)  # where the new jobs are before the replan
    q = quotas(members, sum(new.values()), held)
    excess = sum(max(0, held[w] - q[w]) for w in members)
    assert moved_jobs(before, after, new) == excess
    assert within_one(after, new)


@settings(max_examples=100, deadline=None)
@given(members_st, st.dictionaries(st.integers(0, P - 1), st.integers(1, 6), max_size=200))
def test_lumpy_partitions_end_within_one_partition_of_the_quota(
    members: dict[str, float], counts: dict[int, int]
) -> None:
    plan = make_plan(None, members, counts, P, b"e")
    f = fair(members, sum(counts.values()))
    biggest = max(counts.values(), default=0)
    for w, n in loads(plan, counts).items():
        assert abs(n - f[w]) < 1 + biggest


def test_a_member_a_partition_above_quota_frees_it_when_that_is_nearer() -> None:
    # Found by Hypothesis (the test above): three partitions of 5 jobs, members weighted
    # 1, 0.5 and 1 (quotas 6, 3, 6). The map gives "bg" two of them; freeing only
    # within its excess of 4 freed nothing, and the plan ended 0 / 5 / 10.
    counts = {0: 5, 1: 5, 94: 5}
    plan = make_plan(None, {"a": 1, "b": 0.5, "bg": 1}, counts, P, b"e")
    assert loads(plan, counts) == {"a": 5, "b": 5, "bg": 5}


@given(members_st, single_st)
@settings(max_examples=50, deadline=None)
def test_the_plan_is_deterministic_and_survives_its_codec(
    members: dict[str, float], counts: dict[int, int]
) -> None:
    a = make_plan(None, members, counts, P, b"\x00" * 10)
    b = make_plan(None, dict(reversed(list(members.items()))), counts, P, b"\x00" * 10)
    assert a == b
    data = encode_plan(a)
    assert decode_plan(b"".join(plan_chunks(data))) == a


@pytest.mark.parametrize(
    ("jobs", "workers", "expect"),
    [(60, 5, [12] * 5), (3, 2, [1, 2]), (40, 4, [10] * 4), (100, 50, [2] * 50)],
)
def test_the_figures_of_issue_16(jobs: int, workers: int, expect: list[int]) -> None:
    """60 jobs on 5 workers are 12 each (partition balance gave 10 10 11 12 17), 3 on 2
    are 2/1, the demo's 40 on 4 are 10 each, 100 on 50 leave nobody idle."""
    counts = counts_of([f"job-{i}" for i in range(jobs)], 65536)
    members = {f"w{i}": 1.0 for i in range(workers)}
    plan = make_plan(None, members, counts, 65536, b"e")
    assert sorted(loads(plan, counts).values()) == expect


def test_balance_at_a_hundred_thousand_jobs_and_a_hundred_workers() -> None:
    rng = random.Random(16)
    counts = counts_of([f"j{rng.getrandbits(64):x}" for _ in range(100_000)], 65536)
    members = {f"w{i:03}": 1.0 for i in range(100)}
    plan = make_plan(None, members, counts, 65536, b"e")
    got = loads(plan, counts)
    assert max(got.values()) / (100_000 / 100) <= 1.02
    joined = make_plan(plan, {**members, "w100": 1.0}, counts, 65536, b"f")
    optimum = loads(joined, counts)["w100"]
    assert moved_jobs(plan, joined, counts) <= math.ceil(1.1 * optimum)


def test_weights_are_respected() -> None:
    counts = counts_of([f"job-{i}" for i in range(600)], 65536)
    plan = make_plan(None, {"a": 1.0, "b": 2.0, "c": 3.0}, counts, 65536, b"e")
    assert loads(plan, counts) == {"a": 100, "b": 200, "c": 300}


def test_corrupt_or_newer_plans_are_refused_clearly() -> None:
    plan = make_plan(None, {"a": 1.0}, {1: 1}, P, b"e")
    with pytest.raises(CorruptDataError):
        decode_plan(b"not a plan")
    import zlib

    import msgpack

    body = msgpack.unpackb(zlib.decompress(encode_plan(plan)), raw=False)
    body["format"] = 99
    with pytest.raises(LayoutError, match="newer"):
        decode_plan(zlib.compress(msgpack.packb(body, use_bin_type=True)))
    body["format"] = 1
    body["members"] = "x"
    with pytest.raises(CorruptDataError):
        decode_plan(zlib.compress(msgpack.packb(body, use_bin_type=True)))


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(["p", "m"]),
    st.one_of(
        st.binary(max_size=13), st.text(max_size=3), st.integers(-(2**63), 2**63 - 1), st.none()
    ),
)
def test_malformed_override_arrays_are_refused_clearly(field: str, value: object) -> None:
    """The overrides are two arrays of little-endian uint32 (partition deltas, member
    indices): any other value there is a CorruptDataError, never another exception."""
    import zlib

    import msgpack

    plan = make_plan(None, {"a": 1.0, "b": 1.0}, {p: 1 for p in range(40)}, P, b"e")
    body = msgpack.unpackb(zlib.decompress(encode_plan(plan)), raw=False)
    body[field] = value
    try:
        got = decode_plan(zlib.compress(msgpack.packb(body, use_bin_type=True)))
    except CorruptDataError:
        return
    # Accepted only when it is a plan: partitions in range and members that exist.
    assert all(0 <= q < P and w in got.members for q, w in got.overrides.items())


# --- a stateful run: any sequence of joins, leaves, reweights, adds and removes ----------

from hypothesis.stateful import RuleBasedStateMachine, invariant, rule  # noqa: E402


class PlanSequence(RuleBasedStateMachine):
    """Plans chained as the workers chain them; after every step each member is at its
    quota (one job per partition) and the jobs that moved are exactly the ones the
    quotas required (those of departed members and the excess above quota)."""

    def __init__(self) -> None:
        super().__init__()
        self.members: dict[str, float] = {"w0": 1.0}
        self.counts: dict[int, int] = {}
        self.plan = make_plan(None, self.members, self.counts, P, b"\x00")
        self.step = 0
        self.moved = 0
        self.required = 0

    def _replan(self) -> None:
        self.step += 1
        required = excess_over_quota(self.plan, self.members, self.counts)
        new = make_plan(self.plan, self.members, self.counts, P, self.step.to_bytes(4, "big"))
        self.moved = moved_jobs(self.plan, new, self.counts)
        self.required = required
        self.plan = new

    @rule(name=st.text("abcdefghij", min_size=1, max_size=2), weight=st.sampled_from([1.0, 2.0]))
    def join(self, name: str, weight: float) -> None:
        if name not in self.members:
            self.members[name] = weight
            self._replan()

    @rule(data=st.data())
    def leave(self, data: st.DataObject) -> None:
        if len(self.members) > 1:
            gone = data.draw(st.sampled_from(sorted(self.members)))
            del self.members[gone]
            self._replan()

    @rule(parts=st.sets(st.integers(0, P - 1), max_size=40))
    def add_jobs(self, parts: set[int]) -> None:
        for p in parts:
            self.counts[p] = 1
        self._replan()

    @rule(data=st.data())
    def remove_jobs(self, data: st.DataObject) -> None:
        if self.counts:
            gone = data.draw(st.sets(st.sampled_from(sorted(self.counts)), max_size=20))
            for p in gone:
                del self.counts[p]
            self._replan()

    @invariant()
    def balanced_and_minimal(self) -> None:
        assert within_one(self.plan, self.counts)
        got = loads(self.plan, self.counts)
        assert got == quotas(self.members, sum(self.counts.values()), got)
        assert self.moved == self.required


TestPlanSequence = PlanSequence.TestCase
TestPlanSequence.settings = settings(max_examples=60, stateful_step_count=25, deadline=None)


@settings(max_examples=200, deadline=None)
@given(members_st, st.integers(0, 10_000), st.data())
def test_the_quota_list_is_the_quotas_of_exact_rationals(
    members: dict[str, float], total: int, data: st.DataObject
) -> None:
    """make_plan computes the quotas once per distinct weight, as a list: the same
    integers as :func:`quotas`, which does it member by member."""
    ids = tuple(sorted(members))
    held = {w: data.draw(st.integers(0, total)) for w in ids}
    got = _quota_list(ids, tuple(members[w] for w in ids), total, [held[w] for w in ids])
    assert dict(zip(ids, got, strict=True)) == quotas(members, total, held)


# ------------------------------------------------------------------------- deltas


def _repack(data: bytes, **changes: object) -> bytes:
    import zlib

    import msgpack

    body = msgpack.unpackb(zlib.decompress(data), raw=False)
    body.update(changes)
    return zlib.compress(msgpack.packb(body, use_bin_type=True))


@settings(max_examples=150, deadline=None)
@given(
    members_st,
    single_st,
    st.text("xyz", min_size=1, max_size=3),
    st.booleans(),
    st.floats(0.5, 4.0),
    single_st,
)
def test_a_delta_makes_the_next_plan_of_the_previous_one(
    members: dict[str, float],
    counts: dict[int, int],
    joiner: str,
    leave: bool,
    weight: float,
    more: dict[int, int],
) -> None:
    """Joins, leaves, reweights and job-count changes: the previous plan and the delta
    give the next plan exactly (same content, same digest), and a delta applies to
    nothing but the plan it was made from."""
    prev = make_plan(None, members, counts, P, b"\x01")
    after = dict(members)
    after[joiner] = weight
    if leave and len(after) > 1:
        del after[min(after)]
    nxt = make_plan(prev, after, {**counts, **more}, P, b"\x02")
    delta = encode_plan_delta(prev, nxt)
    assert delta is not None
    got = apply_plan_delta(prev, delta)
    assert got == nxt
    assert got.digest() == nxt.digest()
    assert decode_plan(encode_plan(nxt)).digest() == nxt.digest()
    # Applied to any other plan (here: the next one) it is refused.
    with pytest.raises(CorruptDataError, match="does not follow"):
        apply_plan_delta(nxt, delta)


def test_the_digest_names_the_content_and_nothing_else() -> None:
    a = make_plan(None, {"a": 1, "b": 2.0}, {1: 3, 9: 1}, P, b"e")
    same = Plan(a.seq, a.epoch, {"b": 2.0, "a": 1.0}, a.partitions, dict(a.overrides), a.jobs)
    assert same.digest() == a.digest() and len(a.digest()) == 16
    for other in (
        Plan(a.seq + 1, a.epoch, a.members, a.partitions, a.overrides, a.jobs),
        Plan(a.seq, b"f", a.members, a.partitions, a.overrides, a.jobs),
        Plan(a.seq, a.epoch, {"a": 1.0, "b": 2.5}, a.partitions, a.overrides, a.jobs),
        Plan(a.seq, a.epoch, a.members, a.partitions, {**a.overrides, 7: "a"}, a.jobs),
        Plan(a.seq, a.epoch, a.members, a.partitions, a.overrides, a.jobs + 1),
    ):
        assert other.digest() != a.digest()


def test_a_join_in_a_large_fleet_is_a_small_delta() -> None:
    """A thousand members, 100,000 jobs: the whole plan is tens of KB, the delta of
    one join a few hundred bytes (the newcomer and the overrides that changed)."""
    members = {f"w{i:05d}": 1.0 for i in range(1000)}
    counts = counts_of([f"job-{i}" for i in range(100_000)], 65536)
    prev = make_plan(None, members, counts, 65536, b"\x01")
    nxt = make_plan(prev, {**members, "w-new": 1.0}, counts, 65536, b"\x02")
    full = encode_plan(nxt)
    delta = encode_plan_delta(prev, nxt, len(full))
    assert delta is not None
    print(f"plan {len(full)} bytes, delta {len(delta)} bytes")
    assert len(delta) * 10 < len(full)
    assert apply_plan_delta(prev, delta) == nxt


def test_no_delta_where_the_whole_plan_is_as_small_or_none_applies() -> None:
    a = make_plan(None, {"a": 1.0}, {1: 1}, P, b"e")
    b = make_plan(a, {"a": 1.0, "b": 1.0}, {1: 1, 2: 1}, P, b"f")
    assert encode_plan_delta(a, b, limit=1) is None  # not smaller than the plan
    assert encode_plan_delta(b, a) is None  # not its successor
    other = make_plan(None, {"a": 1.0}, {1: 1}, P * 2, b"e")
    assert encode_plan_delta(other, b) is None  # other partitions


def test_corrupt_foreign_or_newer_deltas_are_refused_clearly() -> None:
    a = make_plan(None, {"a": 1.0, "b": 1.0}, {1: 1, 2: 5, 3: 1}, P, b"e")
    b = make_plan(a, {"a": 1.0, "b": 1.0, "c": 2.0}, {1: 1, 2: 5, 3: 1, 4: 2}, P, b"f")
    delta = encode_plan_delta(a, b)
    assert delta is not None
    with pytest.raises(CorruptDataError, match="cannot be decoded"):
        apply_plan_delta(a, b"not a delta")
    with pytest.raises(LayoutError, match="newer"):
        apply_plan_delta(a, _repack(delta, format=99))
    with pytest.raises(CorruptDataError, match="does not follow"):
        apply_plan_delta(a, _repack(delta, base=b"\0" * 16))
    with pytest.raises(CorruptDataError, match="malformed"):
        apply_plan_delta(a, _repack(delta, drop=["nobody"]))
    with pytest.raises(CorruptDataError, match="malformed"):
        apply_plan_delta(a, _repack(delta, names=["nobody"], to=b"\0\0\0\0", set=b"\1\0\0\0"))
    with pytest.raises(CorruptDataError, match="malformed"):
        apply_plan_delta(a, _repack(delta, set=(P + 1).to_bytes(4, "little"), to=b"\0\0\0\0"))
    with pytest.raises(CorruptDataError, match="malformed"):
        apply_plan_delta(a, _repack(delta, unset=(5).to_bytes(4, "little")))
    with pytest.raises(CorruptDataError, match="malformed"):
        apply_plan_delta(a, _repack(delta, epoch="text"))


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(["add", "drop", "set", "names", "to", "unset", "jobs", "seq"]),
    st.one_of(
        st.binary(max_size=13),
        st.text(max_size=3),
        st.integers(-(2**63), 2**63 - 1),
        st.none(),
        st.lists(
            st.one_of(
                st.text(max_size=2),
                st.integers(-(2**63), 2**63 - 1),
                st.lists(st.integers(-(2**63), 2**63 - 1)),
            )
        ),
    ),
)
def test_malformed_deltas_are_a_corrupt_data_error(field: str, value: object) -> None:
    """Any value in any field of a delta either applies or is a CorruptDataError (the
    reader then reads the whole plan), never another exception."""
    a = make_plan(None, {"a": 1.0, "b": 1.0}, {1: 1, 2: 5, 3: 1}, P, b"e")
    b = make_plan(a, {"a": 1.0, "c": 2.0}, {1: 1, 2: 5, 4: 2}, P, b"f")
    delta = encode_plan_delta(a, b)
    assert delta is not None
    with contextlib.suppress(CorruptDataError):
        apply_plan_delta(a, _repack(delta, **{field: value}))
