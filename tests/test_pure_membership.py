"""Property tests of the pure membership pieces: ring, settle window, liveness, codecs."""

from __future__ import annotations

import itertools
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fdbworkers._core.keys import Layout, parse_root, validate_name
from fdbworkers._core.liveness import Lease, NeighbourTracker
from fdbworkers._core.membership import Membership, apply_changes, diff, replaced_or_gone
from fdbworkers._core.records import (
    Claim,
    MemberRecord,
    RoleConfig,
    check_layout,
    decode,
    encode,
    layout_value,
    split_stamped,
    stamped_value,
)
from fdbworkers._core.ring import Ring, checker_of, ring_order, successors, watched_neighbours
from fdbworkers._core.settle import Settler
from fdbworkers._core.tuples import pack
from fdbworkers._errors import ConfigError, CorruptDataError, LayoutError

ids = st.lists(st.text(alphabet="abcdefghij0123456789-", min_size=1, max_size=8), unique=True)


@given(ids, st.randoms(use_true_random=False))
def test_ring_order_is_independent_of_input_order(members: list[str], rnd: random.Random) -> None:
    shuffled = list(members)
    rnd.shuffle(shuffled)
    assert ring_order(members) == ring_order(shuffled)


def test_ring_order_is_pinned() -> None:
    # A change of the hash would move every neighbour relation during an upgrade.
    assert ring_order(["a", "b", "c", "d"]) == ring_order(["d", "c", "b", "a"])
    assert ring_order(["w1", "w2", "w3"]) == sorted(
        ["w1", "w2", "w3"], key=lambda w: ring_order(["w1", "w2", "w3"]).index(w)
    )


@given(ids.filter(lambda m: len(m) >= 2))
def test_every_member_is_checked_by_exactly_one_primary_checker(members: list[str]) -> None:
    firsts = [successors(w, members)[0] for w in members]
    assert sorted(firsts) == sorted(members)
    for w in members:
        c = checker_of(w, members)
        assert c is not None and successors(c, members)[0] == w


@given(ids.filter(lambda m: len(m) >= 3), st.data())
def test_watched_neighbours_extend_past_suspects(members: list[str], data: st.DataObject) -> None:
    me = members[0]
    suspects = set(data.draw(st.sets(st.sampled_from(members[1:]))))
    watched = watched_neighbours(me, members[1:], lambda w: w in suspects, limit=100)
    succ = successors(me, members)
    assert watched == succ[: len(watched)]
    assert all(w in suspects for w in watched[:-1])
    assert len(watched) == len(succ) or watched[-1] not in suspects


@given(st.lists(ids, min_size=1, max_size=6), st.text("abc", min_size=1, max_size=3))
def test_a_ring_kept_up_to_date_is_the_ring_of_its_members(views: list[list[str]], me: str) -> None:
    """The worker keeps one Ring and updates it per membership change (joins and leaves
    inserted and removed, many at once re-sorted): always the same order and the same
    successors as a ring computed from scratch."""
    ring = Ring()
    for members in views:
        ring.update(members)
        assert ring.order() == ring_order(members)
        assert len(ring) == len(set(members))
        # From scratch: the ring with ``me`` in it, starting after ``me``.
        full = ring_order([*members, me])
        i = full.index(me)
        expect = [w for w in full[i + 1 :] + full[:i] if w != me]
        assert list(ring.successors(me)) == expect == successors(me, members)


def _rec(wid: str, inc: str = "1") -> MemberRecord:
    return MemberRecord(wid=wid, incarnation=f"{wid}-{inc}", timeout=3.0)


@given(ids, ids, ids, st.booleans())
def test_applying_changes_is_a_fresh_read_and_is_shared(
    members: list[str], joined: list[str], gone: list[str], restart: bool
) -> None:
    """apply_changes (the incremental membership read) gives exactly the view the
    changes describe, sorted by id; the same changes to the same view give the same
    object (workers of one process share it), and different records another view."""
    known = Membership("r", b"e1", {w: _rec(w) for w in sorted(members)})
    changes: dict[str, MemberRecord | None] = {w: None for w in gone}
    for w in joined:
        changes[w] = _rec(w, "2" if restart else "1")
    expect = dict(known.members)
    for w, r in changes.items():
        if r is None:
            expect.pop(w, None)
        else:
            expect[w] = r
    view = apply_changes(known, b"e2", changes)
    assert view.members == expect and list(view.members) == sorted(expect)
    assert view.epoch == b"e2" and not view.partial
    same = apply_changes(known, b"e2", dict(changes))
    assert same is view
    if joined:
        other = dict(changes)
        other[joined[0]] = _rec(joined[0], "3")
        again = apply_changes(known, b"e2", other)
        assert again is not view and again.members[joined[0]].incarnation.endswith("-3")


def test_settler_waits_for_quiet_but_caps_the_delay() -> None:
    s = Settler(window=2.0, max_delay=5.0)
    assert s.deadline() is None
    s.changed(0.0)
    assert s.deadline() == 2.0
    s.changed(1.5)
    assert s.deadline() == 3.5
    for t in (3.0, 4.0, 4.9):
        s.changed(t)
    assert s.deadline() == 5.0  # capped: a flapping cluster still converges
    assert s.due(5.0)
    s.reported()
    assert not s.pending


@given(st.lists(st.floats(min_value=0, max_value=100), min_size=1, max_size=30))
def test_settler_deadline_bounds(times: list[float]) -> None:
    times = sorted(times)
    s = Settler(window=2.0, max_delay=7.0)
    for t in times:
        s.changed(t)
    d = s.deadline()
    assert d is not None
    assert d <= times[0] + 7.0
    assert d <= times[-1] + 2.0


def test_leading_settler_reports_a_lone_change_at_once_and_coalesces_its_burst() -> None:
    s = Settler(window=2.0, max_delay=5.0, leading=True)
    s.changed(10.0)
    assert s.due(10.0)  # quiet before: at once
    s.reported()
    s.changed(10.5)  # the same burst: trailing edge
    assert s.deadline() == 12.5
    s.changed(11.0)
    assert s.deadline() == 13.0
    assert s.due(13.0)
    s.reported()
    s.changed(20.0)  # quiet again
    assert s.due(20.0)


@given(st.lists(st.floats(min_value=0, max_value=100), min_size=1, max_size=40))
def test_leading_settler_reports_at_most_twice_per_burst(times: list[float]) -> None:
    """Changes closer than the window form one burst; a burst is reported at most twice:
    at once on its first change, then once after it quietened (or max_delay)."""
    times = sorted(times)
    s = Settler(window=2.0, max_delay=1000.0, leading=True)
    reports: list[float] = []
    for t in times:
        if s.due(t):
            s.reported()
            reports.append(t)
        s.changed(t)
        if s.due(t):
            s.reported()
            reports.append(t)
    d = s.deadline()
    if d is not None:
        reports.append(d)
    bursts = 1 + sum(1 for a, b in itertools.pairwise(times) if b - a >= 2.0)
    assert len(reports) <= 2 * bursts
    assert reports and reports[0] == times[0]


def test_settler_rejects_bad_options() -> None:
    with pytest.raises(ConfigError):
        Settler(window=-1, max_delay=1)
    with pytest.raises(ConfigError):
        Settler(window=5, max_delay=1)


def test_tracker_measures_silence_from_first_sight() -> None:
    t = NeighbourTracker()
    assert t.silent_for("a", 10.0) == 0.0 and not t.stale("a", 1.0, 10.0)
    t.observe("a", "i1", b"s1", 10.0)
    t.observe("a", "i1", b"s1", 14.0)
    assert t.silent_for("a", 14.0) == 4.0
    assert t.stale("a", 4.0, 14.0) and not t.stale("a", 4.1, 14.0)
    t.observe("a", "i1", b"s2", 15.0)  # a heartbeat: silence restarts
    assert t.silent_for("a", 15.0) == 0.0
    t.observe("a", "i2", b"s2", 16.0)  # a new incarnation is watched afresh
    assert t.silent_for("a", 17.0) == 1.0
    t.retain(set())
    assert t.silent_for("a", 20.0) == 0.0


def test_a_neighbour_gone_from_the_membership_becomes_a_ghost_before_it_is_forgotten() -> None:
    """Issue 20, point 2a. An incarnation superseded by a successor that came and went
    between two membership reads (a restart, then a graceful leave) was never seen
    replaced: retain() forgot the id, the next incarnation was watched afresh, and the
    old one's claims waited on each claimant's clock, from zero for every new owner."""
    t = NeighbourTracker()
    t.observe("a", "i1", b"s1", 10.0, timeout=10.0)
    t.departed("a", 12.0)  # read gone at 12: no heartbeat of i1 commits after that
    t.retain(set())
    t.observe("a", "i3", b"s9", 13.0, timeout=3.0)  # back as a third incarnation
    assert t.ghosts_due(21.9) == []
    assert t.ghosts_due(22.0) == [("a", "i1")]
    t.departed("b", 12.0)  # never seen: nothing to attest
    assert t.next_ghost_due() == 22.0


def _members(**incs: tuple[str, float]) -> Membership:
    return Membership(
        "r",
        b"e",
        {w: MemberRecord(w, inc, timeout, 1.0, "h", 1, 0.0) for w, (inc, timeout) in incs.items()},
    )


def test_every_member_notes_the_incarnations_it_saw_replaced_or_gone() -> None:
    """Found by ./scripts/chaos --seed 13: only the id's ring checker counted the wait for
    a replaced incarnation's lease, and it restarted before the wait was over. Every
    member now notes, from each membership read, the incarnations that read shows
    replaced or gone (with their own timeout), except its own."""
    old = _members(a=("a1", 10.0), b=("b1", 3.0), c=("c1", 3.0), me=("m1", 3.0))
    new = _members(a=("a2", 3.0), c=("c1", 3.0), d=("d1", 3.0), me=("m2", 3.0))
    assert replaced_or_gone(old, new, "me") == [("a", "a1", 10.0), ("b", "b1", 3.0)]
    assert replaced_or_gone(None, new, "me") == []
    assert replaced_or_gone(new, new, "me") == []


@given(
    st.dictionaries(st.sampled_from("abcdef"), st.sampled_from(["1", "2", "3"])),
    st.dictionaries(st.sampled_from("abcdef"), st.sampled_from(["1", "2", "3"])),
)
def test_replaced_or_gone_is_what_the_diff_reports_removed_or_restarted(
    before: dict[str, str], after: dict[str, str]
) -> None:
    old = _members(**{w: (w + i, 5.0) for w, i in before.items()})
    new = _members(**{w: (w + i, 5.0) for w, i in after.items()})
    change = diff(old, new)
    noted = replaced_or_gone(old, new, "a")
    assert {w for w, _, _ in noted} == (change.removed | change.restarted) - {"a"}
    assert all(inc == old.members[w].incarnation for w, inc, _ in noted)


@given(
    st.floats(min_value=0.5, max_value=60),
    st.lists(st.floats(min_value=0, max_value=1000), min_size=1, max_size=20),
    st.floats(min_value=0, max_value=1),
)
def test_lease_expires_margin_before_any_eviction(
    timeout: float, heartbeat_starts: list[float], commit_delay_fraction: float
) -> None:
    """G3's timing argument: a checker sees a stamp only after it committed, i.e. after
    its transaction started, and evicts only ``timeout`` later on its clock; the lease
    of the worker expires ``margin`` before that."""
    lease = Lease(timeout, timeout / 4)
    for s in heartbeat_starts:
        lease.renewed(s)
    last = max(heartbeat_starts)
    first_seen = last + commit_delay_fraction * timeout
    t = NeighbourTracker()
    t.observe("w", "i", b"x", first_seen)
    earliest_eviction = t.evict_due("w", timeout)
    assert earliest_eviction is not None
    assert lease.expires_at + lease.margin <= earliest_eviction + 1e-9
    assert not lease.valid(lease.expires_at)


def test_lease_rejects_bad_margin() -> None:
    with pytest.raises(ConfigError):
        Lease(1.0, 1.0)


def test_membership_diff() -> None:
    def rec(w: str, inc: str) -> MemberRecord:
        return MemberRecord(wid=w, incarnation=inc, timeout=1.0)

    a = Membership("r", b"1", {"a": rec("a", "1"), "b": rec("b", "1")})
    b = Membership("r", b"2", {"b": rec("b", "2"), "c": rec("c", "1")})
    ch = diff(a, b)
    assert ch.added == {"c"} and ch.removed == {"a"} and ch.restarted == {"b"}
    assert not ch.empty and diff(b, b).empty
    assert diff(None, a).added == {"a", "b"}


@given(
    st.text(min_size=1, max_size=20).filter(str.isprintable),
    st.text(min_size=1, max_size=20).filter(str.isprintable),
    st.floats(min_value=0.3, max_value=1e4),
    st.floats(min_value=0.01, max_value=1e5),
    st.dictionaries(
        st.text(max_size=5), st.integers(-(2**63), 2**63 - 1) | st.text(max_size=5), max_size=3
    ),
)
def test_member_record_round_trip(
    wid: str, inc: str, timeout: float, weight: float, meta: dict[str, object]
) -> None:
    layout = Layout.for_root("t")
    r = MemberRecord(wid=wid, incarnation=inc, timeout=timeout, weight=weight, meta=meta)
    space = layout.role("role")
    key = space.member_key(wid)
    assert MemberRecord.decode(wid, key, r.encode()) == r
    assert layout.unpack(key)[-1] == wid
    begin, _ = space.members_range()
    assert layout.unpack_below(begin, key) == (wid,)
    with pytest.raises(CorruptDataError):
        layout.unpack_below(layout.role("other").members_range()[0], key)
    with pytest.raises(CorruptDataError):
        layout.unpack_below(begin, begin + b"\x99junk")


def test_codecs_reject_corrupt_and_newer_data() -> None:
    with pytest.raises(CorruptDataError, match="cannot decode"):
        decode(b"k", b"\xc1garbage")
    with pytest.raises(CorruptDataError, match="not an fdbworkers record"):
        decode(b"k", encode({})[:0] + b"\x90")
    import msgpack

    with pytest.raises(LayoutError, match="newer"):
        decode(b"k", msgpack.packb({"v": 99}))
    with pytest.raises(LayoutError, match="layout version 7"):
        check_layout(b"k", encode({"layout": 7}))
    assert check_layout(b"k", layout_value()) == 1
    assert check_layout(b"k", None) is None
    with pytest.raises(CorruptDataError):
        RoleConfig.decode(b"k", encode({"partitions": 0}))


def test_stamped_values_and_keys() -> None:
    v = stamped_value({"wid": "a", "incarnation": "i"})
    # The placeholder is at offset 0 and the 4-byte offset suffix says so.
    assert v[-4:] == b"\0\0\0\0" and v[:10] == b"\xff" * 10
    written = b"\x01" * 10 + v[10:-4]  # what the database stores after commit
    assert Claim.decode(b"k", written) == Claim(b"\x01" * 10, "a", "i")
    stamp, tail = split_stamped(b"k", written)
    assert stamp == b"\x01" * 10 and tail["wid"] == "a"
    with pytest.raises(CorruptDataError):
        split_stamped(b"k", b"short")
    layout = Layout.for_root(("app", "w"))
    tmpl = layout.event_key_template()
    offset = int.from_bytes(tmpl[-4:], "little")
    key = tmpl[:offset] + b"\x02" * 10 + tmpl[offset + 10 : -4]
    assert layout.stamp_of_key(key) == b"\x02" * 10
    assert key.startswith(layout.events_range()[0]) and key < layout.events_range()[1]
    assert layout.event_key_at(b"\x02" * 10) == key
    assert layout.events_before_version(int.from_bytes(b"\x02" * 8, "big") + 1) > key


def test_roots_and_names() -> None:
    assert parse_root(None) == parse_root("fdbworkers") == parse_root(("fdbworkers",))
    assert parse_root("a/b") == parse_root(("a", "b"))
    for bad in ("", "/", b"", b"\xffsys", ("",), 3):
        with pytest.raises(ConfigError):
            parse_root(bad)  # type: ignore[arg-type]
    for bad_name in ("", "x" * 201, "a\nb"):
        with pytest.raises(ConfigError):
            validate_name("role", bad_name)
    a, b = Layout.for_root("a"), Layout.for_root("b")
    assert not a.role("r").member_key("w").startswith(b.prefix)
    space = Layout.for_root("t").role("r")
    assert space.member_key("w") > space.members_range()[0]


@settings(max_examples=50)
@given(st.integers(min_value=0, max_value=2**31), st.text(min_size=1, max_size=30))
def test_job_keys_sort_by_partition(p: int, job: str) -> None:
    space = Layout.for_root("t").role("r")
    k = space.job_key(p, job)
    lo, hi = space.partition_range(p)
    assert lo <= k < hi
    jlo, jhi = space.jobs_range()
    assert jlo <= lo and hi <= jhi


@given(
    st.sets(st.sampled_from([f"w{i}" for i in range(8)]), min_size=1),
    st.sets(st.sampled_from([f"w{i}" for i in range(8)])),
)
def test_without_departed_drops_only_the_departed(before: set[str], after: set[str]) -> None:
    from fdbworkers._core.membership import Membership, without_departed
    from fdbworkers._core.records import MemberRecord

    def view(ids: set[str], epoch: bytes, inc: str) -> Membership:
        return Membership("r", epoch, {w: MemberRecord(w, inc, 5.0) for w in ids})

    reported = view(before, b"\x01" * 10, "old")
    latest = view(after, b"\x02" * 10, "new")
    interim = without_departed(reported, latest)
    if not before - after:
        assert interim is None
        return
    assert interim is not None
    assert set(interim.members) == before & after
    assert all(r.incarnation == "old" for r in interim.members.values())  # joins still wait
    assert interim.epoch == latest.epoch
    assert without_departed(None, latest) is None


@given(
    st.text(min_size=1, max_size=12).filter(str.isprintable),
    st.text(min_size=1, max_size=12).filter(str.isprintable),
    st.integers(0, 65535),
    st.integers(-(2**70), 2**70),
)
def test_role_space_keys_are_the_documented_layout(
    role: str, wid: str, partition: int, wide: int
) -> None:
    """RoleSpace holds every per-role key: ``(root, "r", role, ...)`` as _core/keys.py
    documents it (the bytes Layout's per-role methods wrote before they moved here)."""
    from fdbworkers._core.keys import Layout

    layout = Layout.for_root(("t",))
    space = layout.role(role)
    r = ("r", role)
    assert space.epoch_key == layout.key(*r, "epoch")
    assert space.member_key(wid) == layout.key(*r, "member", wid)
    assert space.member_keys([wid, "z"]) == [space.member_key(wid), space.member_key("z")]
    assert space.members_range() == layout.range(*r, "member")
    assert space.health_key(wid) == layout.key(*r, "health", wid)
    assert space.health_range() == layout.range(*r, "health")
    assert space.job_count_key == layout.key(*r, "job_count")
    assert space.jobs_epoch_key == layout.key(*r, "jobs_epoch")
    assert space.job_key(partition, wid) == layout.key(*r, "job", partition, wid)
    assert space.partition_range(partition) == layout.range(*r, "job", partition)
    assert space.jobs_range() == layout.range(*r, "job")
    assert space.claim_key(partition, wid) == layout.key(*r, "claim", partition, wid)
    assert space.claims_range() == layout.range(*r, "claim")
    assert space.claims_range(partition) == layout.range(*r, "claim", partition)
    # The heads that the claim and add paths build keys from (any int, any text).
    assert space.job_head == space.jobs_range()[0]
    assert space.claim_head == space.claims_range()[0]
    assert space.job_key(wide, wid) == layout.key(*r, "job", wide, wid)
    assert space.claim_key(wide, wid) == layout.key(*r, "claim", wide, wid)
    assert space.inbox_key(wid) == layout.key(*r, "inbox", wid)
    assert space.retired_key(wid) == layout.key(*r, "retired", wid)
    assert space.handoff_key(wid, partition) == layout.key(*r, "handoff", wid, partition)
    assert space.handoffs_range(wid) == layout.range(*r, "handoff", wid)
    assert space.jobhealth_key(wid) == layout.key(*r, "jobhealth", wid)
    assert space.jobhealth_range() == layout.range(*r, "jobhealth")
    assert space.jobchange_range() == layout.range(*r, "jobchange")
    assert space.memberchange_range() == layout.range(*r, "mchange")
    assert space.part_count_key(partition) == layout.key(*r, "pcount", partition)
    assert space.part_counts_range() == layout.range(*r, "pcount")
    assert space.part_counts_partition(space.part_count_key(partition)) == partition
    assert space.counted_key == layout.key(*r, "pcounted")
    assert space.plan_key == layout.key(*r, "plan")
    assert space.plan_chunk_key(partition) == layout.key(*r, "planchunk", partition)
    assert space.plan_chunks_range() == layout.range(*r, "planchunk")
    assert space.plan_delta_key(partition) == layout.key(*r, "plandelta", partition)
    assert space.plan_deltas_range() == layout.range(*r, "plandelta")
    assert space.plan_delta_seq(space.plan_delta_key(partition)) == partition
    assert space.config_key == layout.role_key(role) == layout.key("role", role)
    begin, end = space.range()
    assert begin < space.member_key(wid) < end
    assert not begin <= layout.role_key(role) < end
    # Change-log keys: the stamp sits after the range's prefix, the id after the stamp.
    stamp = bytes([partition % 256]) * 10
    mkey = space.memberchange_after(stamp)[:-1] + b"\x00" + pack((wid,))
    assert space.memberchange_entry(mkey) == (stamp, wid)
    assert space.memberchange_entries([mkey]) == [(stamp, wid)]
    assert space.memberchange_range()[0] < mkey < space.memberchange_range()[1]
    jkey = space.jobchange_after(stamp)[:-1] + b"\x00" + pack((wid,))
    assert space.jobchange_stamp(jkey) == stamp
    assert space.jobchange_range()[0] < jkey < space.jobchange_range()[1]


def test_role_space_key_bytes_are_pinned() -> None:
    """A change of these bytes would make a new version misread an old cluster."""
    from fdbworkers._core.keys import Layout

    space = Layout.for_root(("t",)).role("r")
    assert space.member_key("w") == b"\x02t\x00\x02r\x00\x02r\x00\x02member\x00\x02w\x00"
    assert space.claim_key(7, "j") == b"\x02t\x00\x02r\x00\x02r\x00\x02claim\x00\x15\x07\x02j\x00"
    assert space.config_key == b"\x02t\x00\x02role\x00\x02r\x00"
    assert space.memberchange_key_template("w") == (
        b"\x02t\x00\x02r\x00\x02r\x00\x02mchange\x00\x33" + b"\xff" * 10 + b"\x00\x00\x02w\x00"
        b"\x13\x00\x00\x00"
    )


@given(st.lists(st.tuples(st.floats(0, 100), st.floats(0, 100)), max_size=30))
def test_suspend_meter_counts_only_the_time_the_monotonic_clock_missed(
    steps: list[tuple[float, float]],
) -> None:
    """Each step: the loop clock advances by `awake`, the boot clock by awake + asleep."""
    from fdbworkers._core.liveness import SUSPEND_JITTER, SuspendMeter

    meter = SuspendMeter(boot=1000.0, mono=5.0)
    boot, mono, total, slept = 1000.0, 5.0, 0.0, 0.0
    for awake, asleep in steps:
        mono += awake
        boot += awake + asleep
        got = meter.observe(boot, mono)
        assert got >= 0.0
        if asleep >= SUSPEND_JITTER + 1e-6:
            assert abs(got - asleep) < 1e-6
            slept += asleep
        elif asleep < SUSPEND_JITTER - 1e-6:
            assert got == 0.0
        else:
            slept += got
        total += got
    assert abs(total - slept) < 1e-6 * (len(steps) + 1)


@given(st.lists(st.floats(-1e-4, 1e-4), min_size=1, max_size=200))
def test_suspend_meter_ignores_the_jitter_of_reading_two_clocks(jitter: list[float]) -> None:
    """Reading CLOCK_BOOTTIME and then CLOCK_MONOTONIC differs by tens of microseconds
    from one reading to the next (positive in about 40 % of readings on Linux). That is
    no suspend: the meter used to count it, and the worker logged a 'suspended' warning
    and moved every handler's deadline on nearly every job.check()."""
    from fdbworkers._core.liveness import SuspendMeter

    meter = SuspendMeter(boot=1000.0, mono=5.0)
    for i, j in enumerate(jitter, 1):
        assert meter.observe(1000.0 + i * 0.25 + j, 5.0 + i * 0.25) == 0.0


def test_a_restarted_settler_reports_the_next_change_at_once() -> None:
    """restart() forgets the burst: a worker's new incarnation settles like a first start."""
    s = Settler(window=2.0, max_delay=10.0, leading=True)
    s.changed(0.0)
    s.reported()
    s.changed(1.0)  # within the window: trailing
    assert s.deadline() == 3.0
    s.restart()
    assert not s.pending
    s.changed(1.1)
    assert s.deadline() == 1.1 and s.due(1.1)
