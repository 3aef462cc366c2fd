"""The engine's pure core: atomic operations, versions, MVCC, conflicts, GC, watches."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fdbworkers._backends.engine import MVCC_WINDOW, VERSIONS_PER_SECOND, Store
from fdbworkers._backends.engine._mutations import (
    ADD,
    APPEND_IF_FITS,
    BIT_AND,
    BIT_OR,
    BIT_XOR,
    BYTE_MAX,
    BYTE_MIN,
    CLEAR,
    CLEAR_RANGE,
    COMPARE_AND_CLEAR,
    MAX,
    MIN,
    SET,
    SET_VERSIONSTAMPED_KEY,
    SET_VERSIONSTAMPED_VALUE,
    apply_atomic,
    place_versionstamp,
    versionstamp_key_range,
)
from fdbworkers._backends.engine._store import merge_ranges
from fdbworkers._db import MAX_VALUE_SIZE
from fdbworkers._errors import FDBError

# --------------------------------------------------------------------------------------
# Atomic operations against a transliteration of FDB's Atomic.h byte loops
# --------------------------------------------------------------------------------------


def ref_add(ex: bytes | None, op: bytes) -> bytes | None:
    e = ex or b""
    if not e or not op:
        return op
    out = bytearray()
    carry = 0
    for i in range(len(op)):
        s = (e[i] if i < len(e) else 0) + op[i] + carry
        out.append(s & 0xFF)
        carry = s >> 8
    return bytes(out)


def ref_and_v2(ex: bytes | None, op: bytes) -> bytes | None:
    if ex is None:
        return op
    if not op:
        return op
    return bytes((ex[i] & op[i]) if i < len(ex) else 0 for i in range(len(op)))


def ref_or(ex: bytes | None, op: bytes) -> bytes | None:
    e = ex or b""
    if not e or not op:
        return op
    return bytes((e[i] | op[i]) if i < len(e) else op[i] for i in range(len(op)))


def ref_xor(ex: bytes | None, op: bytes) -> bytes | None:
    e = ex or b""
    if not e or not op:
        return op
    return bytes((e[i] ^ op[i]) if i < len(e) else op[i] for i in range(len(op)))


def ref_append(ex: bytes | None, op: bytes) -> bytes | None:
    e = ex or b""
    if not e:
        return op
    if not op:
        return e
    if len(e) + len(op) > MAX_VALUE_SIZE:
        return e
    return e + op


def _ext(e: bytes, n: int) -> bytes:
    return bytes(e[j] if j < len(e) else 0 for j in range(n))


def ref_max(ex: bytes | None, op: bytes) -> bytes | None:
    e = ex or b""
    if not e or not op:
        return op
    i = len(op) - 1
    while i >= len(e):
        if op[i] != 0:
            return op
        i -= 1
    while i >= 0:
        if op[i] > e[i]:
            return op
        if op[i] < e[i]:
            return _ext(e, len(op))
        i -= 1
    return op


def ref_min_v2(ex: bytes | None, op: bytes) -> bytes | None:
    if ex is None:
        return op
    if not op:
        return op
    e = ex
    i = len(op) - 1
    while i >= len(e):
        if op[i] != 0:
            return _ext(e, len(op))
        i -= 1
    while i >= 0:
        if op[i] > e[i]:
            return _ext(e, len(op))
        if op[i] < e[i]:
            return op
        i -= 1
    return op


def ref_byte_max(ex: bytes | None, op: bytes) -> bytes | None:
    if ex is None:
        return op
    return ex if ex > op else op


def ref_byte_min(ex: bytes | None, op: bytes) -> bytes | None:
    if ex is None:
        return op
    return ex if ex < op else op


def ref_cas_clear(ex: bytes | None, op: bytes) -> bytes | None:
    if ex is None or ex == op:
        return None
    return ex


REFERENCE: dict[int, Callable[[bytes | None, bytes], bytes | None]] = {
    ADD: ref_add,
    BIT_AND: ref_and_v2,
    BIT_OR: ref_or,
    BIT_XOR: ref_xor,
    APPEND_IF_FITS: ref_append,
    MAX: ref_max,
    MIN: ref_min_v2,
    BYTE_MAX: ref_byte_max,
    BYTE_MIN: ref_byte_min,
    COMPARE_AND_CLEAR: ref_cas_clear,
}

small_bytes = st.binary(max_size=12)


@settings(max_examples=400)
@given(
    op=st.sampled_from(sorted(REFERENCE)),
    existing=st.none() | small_bytes,
    param=small_bytes,
)
def test_atomic_ops_match_fdb_byte_loops(op: int, existing: bytes | None, param: bytes) -> None:
    assert apply_atomic(op, existing, param) == REFERENCE[op](existing, param)


def test_atomic_examples() -> None:
    def le(n: int, w: int = 8) -> bytes:
        return n.to_bytes(w, "little")

    assert apply_atomic(ADD, le(255, 1), le(1, 1)) == le(0, 1)  # wraps at operand width
    assert apply_atomic(ADD, le(5, 8), le(1, 2)) == le(6, 2)  # existing truncated
    assert apply_atomic(ADD, le(5, 2), le(1, 8)) == le(6, 8)  # existing zero-extended
    assert apply_atomic(ADD, None, le(3)) == le(3)
    assert apply_atomic(MAX, b"", le(0)) == le(0)
    assert apply_atomic(MIN, None, le(9)) == le(9)  # MinV2: absent -> operand
    assert apply_atomic(MIN, b"", le(9)) == le(0)  # present but empty: zero
    assert apply_atomic(BIT_AND, None, b"\x0f") == b"\x0f"  # AndV2
    assert apply_atomic(BIT_AND, b"", b"\x0f") == b"\x00"
    assert apply_atomic(APPEND_IF_FITS, b"x" * MAX_VALUE_SIZE, b"y") == b"x" * MAX_VALUE_SIZE
    assert apply_atomic(COMPARE_AND_CLEAR, b"a", b"a") is None
    assert apply_atomic(COMPARE_AND_CLEAR, b"a", b"b") == b"a"
    with pytest.raises(FDBError) as e:
        apply_atomic(99, None, b"")
    assert e.value.code == 2018


def test_versionstamp_placement_and_ranges() -> None:
    key = b"p/" + b"\x00" * 10 + b"/s" + (2).to_bytes(4, "little")
    stamp = bytes(range(10))
    assert place_versionstamp(key, stamp) == b"p/" + stamp + b"/s"
    begin, end = versionstamp_key_range(key, 7)
    assert begin == b"p/" + (7).to_bytes(8, "big") + b"\x00\x00/s"
    assert end == b"p/" + b"\xff" * 10 + b"/s\x00"
    for bad in (
        b"abc",
        b"\x00" * 10 + (1).to_bytes(4, "little"),
        b"x" + (-1).to_bytes(4, "little", signed=True),
    ):
        with pytest.raises(FDBError) as info:
            place_versionstamp(bad, stamp)
        assert info.value.code == 2000


# --------------------------------------------------------------------------------------
# Versions and MVCC
# --------------------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_versions_follow_the_clock_and_strictly_increase() -> None:
    clock = FakeClock()
    s = Store(clock)
    v0 = s.read_version()
    clock.t += 1.0
    v1 = s.read_version()
    assert v1 - v0 == VERSIONS_PER_SECOND
    # Many commits at one instant: strictly increasing, each above every read version.
    versions = [
        s.commit(v1, [], [(b"k", b"k\x00")], [(SET, b"k", b"%d" % i)]).version for i in range(5)
    ]
    assert versions == sorted(set(versions)) and versions[0] > v1
    assert s.read_version() == versions[-1]


def test_mvcc_reads_see_their_snapshot_and_history_is_collected() -> None:
    clock = FakeClock()
    s = Store(clock)
    rv0 = s.read_version()
    s.commit(None, [], [], [(SET, b"a", b"1")])
    rv1 = s.read_version()
    s.commit(None, [], [], [(SET, b"a", b"2"), (SET, b"b", b"x")])
    assert s.get(b"a", rv0) is None
    assert s.get(b"a", rv1) == b"1"
    assert [kv.key for kv in s.get_range(b"", b"\xff", rv1)] == [b"a"]
    assert [tuple(kv) for kv in s.get_range(b"", b"\xff", s.read_version())] == [
        (b"a", b"2"),
        (b"b", b"x"),
    ]
    # Overwrite one key every 0.1 s for 100 s: history stays within the 5 s window.
    for _ in range(1000):
        clock.t += 0.1
        s.commit(None, [], [], [(SET, b"a", b"v")])
    assert len(s._hist[b"a"]) <= 52
    clock.t += 1
    with pytest.raises(FDBError) as info:
        s.check_read_version(rv1)
    assert info.value.code == 1007


def test_cleared_keys_leave_the_index_after_the_window() -> None:
    clock = FakeClock()
    s = Store(clock)
    s.commit(None, [], [], [(SET, b"k%d" % i, b"v") for i in range(10)])
    s.commit(None, [], [], [(CLEAR_RANGE, b"k", b"l")])
    assert len(s._keys) == 10
    clock.t += MVCC_WINDOW / VERSIONS_PER_SECOND + 1
    s.commit(None, [], [], [(SET, b"z", b"1")])
    assert list(s._keys) == [b"z"]
    assert s.key_count() == 1


def test_commit_too_old_only_with_reads() -> None:
    clock = FakeClock()
    s = Store(clock)
    rv = s.read_version()
    clock.t += 6
    s.commit(rv, [], [(b"a", b"a\x00")], [(SET, b"a", b"1")])  # blind: fine
    with pytest.raises(FDBError) as info:
        s.commit(rv, [(b"x", b"y")], [], [(SET, b"a", b"1")])
    assert info.value.code == 1007


def test_versionstamped_key_adds_a_write_conflict_on_the_transformed_key() -> None:
    s = Store(FakeClock())
    rv = s.read_version()
    key = b"q/" + b"\x00" * 10 + (2).to_bytes(4, "little")
    res = s.commit(None, [], [], [(SET_VERSIONSTAMPED_KEY, key, b"v")])
    assert s.get(b"q/" + res.versionstamp, res.version) == b"v"
    assert s.has_conflict(rv, [(b"q/", b"q0")])
    res2 = s.commit(
        None,
        [],
        [],
        [(SET_VERSIONSTAMPED_VALUE, b"w", b"a" + b"\0" * 10 + (1).to_bytes(4, "little"))],
    )
    assert s.get(b"w", res2.version) == b"a" + res2.versionstamp
    assert res2.versionstamp > res.versionstamp


# --------------------------------------------------------------------------------------
# Conflict detection against a brute-force model
# --------------------------------------------------------------------------------------

KEYS = [bytes([c]) for c in b"abcdefgh"]
key_ranges = st.tuples(st.sampled_from(KEYS), st.sampled_from([*KEYS, b"i"])).map(
    lambda r: (min(r), max(r))
)


@settings(max_examples=200, deadline=None)
@given(
    script=st.lists(
        st.tuples(
            st.integers(0, 5),  # how many commits back the read version is
            st.lists(key_ranges, max_size=3),  # reads
            st.lists(key_ranges, max_size=3),  # writes
        ),
        min_size=1,
        max_size=25,
    )
)
def test_conflicts_match_a_brute_force_resolver(
    script: list[tuple[int, list[tuple[bytes, bytes]], list[tuple[bytes, bytes]]]],
) -> None:
    clock = FakeClock()
    s = Store(clock)
    committed: list[tuple[int, list[tuple[bytes, bytes]]]] = []  # (version, writes)
    read_versions = [s.read_version()]
    for back, reads, writes in script:
        rv = read_versions[max(0, len(read_versions) - 1 - back)]
        reads = merge_ranges(reads)
        expected = any(
            v > rv and any(wb < re and rb < we for wb, we in ws for rb, re in reads)
            for v, ws in committed
        )
        writes = [w for w in writes if w[0] < w[1]]  # the store takes non-empty ranges
        try:
            res = s.commit(rv, reads, writes, [(SET, b, b"x") for b, e in writes])
        except FDBError as err:
            assert err.code == 1020 and expected
        else:
            assert not expected
            committed.append((res.version, writes))
        clock.t += 0.001
        read_versions.append(s.read_version())


@given(st.lists(key_ranges, max_size=8))
def test_merge_ranges_covers_the_same_keys(ranges: list[tuple[bytes, bytes]]) -> None:
    merged = merge_ranges(ranges)
    probe = [bytes([c]) + t for c in b"abcdefghi" for t in (b"", b"\x00")]
    for k in probe:
        assert any(b <= k < e for b, e in ranges) == any(b <= k < e for b, e in merged)
    assert all(merged[i][1] < merged[i + 1][0] for i in range(len(merged) - 1))


# --------------------------------------------------------------------------------------
# Watches and snapshots
# --------------------------------------------------------------------------------------


def test_store_watches_fire_on_a_different_value_only() -> None:
    s = Store(FakeClock())
    s.commit(None, [], [], [(SET, b"w", b"1")])
    fired: list[bytes] = []
    w = s.add_watch(b"w", b"1", lambda sw: fired.append(sw.key))
    assert w is not None and s.watch_count == 1
    s.commit(None, [], [], [(SET, b"w", b"1")])
    assert fired == []
    s.commit(None, [], [], [(CLEAR, b"other", None)])
    assert fired == []
    s.commit(None, [], [], [(CLEAR_RANGE, b"a", b"z")])
    assert fired == [b"w"] and s.watch_count == 0
    assert s.add_watch(b"w", b"1", lambda sw: None) is None  # already different
    w2 = s.add_watch(b"w", None, lambda sw: fired.append(b"2"))
    assert w2 is not None
    s.cancel_watch(w2)
    s.commit(None, [], [], [(SET, b"w", b"x")])
    assert fired == [b"w"]


def test_dump_and_load_continue_versions_above_the_snapshot() -> None:
    clock = FakeClock()
    s = Store(clock)
    s.commit(None, [], [], [(SET, b"a", b"1"), (SET, b"b", b"2"), (CLEAR, b"a", None)])
    clock.t += 100
    last = s.commit(None, [], [], [(SET, b"c", b"3")]).version
    version, items = s.dump()
    assert version == last and [tuple(kv) for kv in items] == [(b"b", b"2"), (b"c", b"3")]
    fresh = Store(FakeClock())
    fresh.load(version, items)
    assert fresh.get(b"c", fresh.read_version()) == b"3"
    assert fresh.commit(None, [], [], [(SET, b"d", b"4")]).version > version
