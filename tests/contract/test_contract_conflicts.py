"""Contract: strict serializability by read and write conflict ranges (error 1020)."""

from __future__ import annotations

import pytest
from contract_util import le64, put, raises_code, read

from fdbworkers._db import Database, KeySelector, Transaction, strinc
from fdbworkers._errors import FDBError

#: Every test here runs under trio and under asyncio (tests/conftest.py).
pytestmark = pytest.mark.anyio


async def _racing_pair(db: Database) -> tuple[Transaction, Transaction]:
    """Two transactions with read versions fixed before either commits."""
    t1, t2 = db.create_transaction(), db.create_transaction()
    await t1.get_read_version()
    await t2.get_read_version()
    return t1, t2


async def test_two_transactions_racing_on_one_key(db: Database, prefix: bytes) -> None:
    k = prefix + b"counter"
    await put(db, {k: b"0"})
    t1, t2 = await _racing_pair(db)
    v1, v2 = await t1.get(k), await t2.get(k)
    assert v1 == v2 == b"0"
    t1.set(k, b"1")
    t2.set(k, b"2")
    await t1.commit()
    await raises_code(t2.commit(), 1020)
    assert await read(db, k) == b"1"


async def test_first_committer_wins_regardless_of_start_order(db: Database, prefix: bytes) -> None:
    k = prefix + b"k"
    t1, t2 = await _racing_pair(db)
    await t1.get(k)
    await t2.get(k)
    t1.set(k, b"1")
    t2.set(k, b"2")
    await t2.commit()
    await raises_code(t1.commit(), 1020)


async def test_snapshot_read_does_not_conflict(db: Database, prefix: bytes) -> None:
    k = prefix + b"k"
    await put(db, {k: b"0"})
    t1, t2 = await _racing_pair(db)
    assert await t1.snapshot.get(k) == b"0"
    assert await t1.snapshot.get_range(prefix, strinc(prefix)) != []
    t1.set(prefix + b"other", b"x")
    t2.set(k, b"changed")
    await t2.commit()
    await t1.commit()  # no read conflict was recorded


async def test_get_many_conflicts_on_every_key_read(db: Database, prefix: bytes) -> None:
    a, b = prefix + b"a", prefix + b"b"
    for changed, snapshot in ((a, False), (b, False), (b, True)):
        t1, t2 = await _racing_pair(db)
        reader = t1.snapshot if snapshot else t1
        assert await reader.get_many([a, b]) == [None, None]
        t1.set(prefix + b"other", b"x")
        t2.set(changed, b"changed")
        await t2.commit()
        if snapshot:
            await t1.commit()
        else:
            await raises_code(t1.commit(), 1020)
        await put(db, {changed: None})


async def test_blind_writes_never_conflict(db: Database, prefix: bytes) -> None:
    k = prefix + b"k"
    t1, t2 = await _racing_pair(db)
    t1.set(k, b"1")
    t2.set(k, b"2")
    t2.clear_range(prefix, strinc(prefix))
    await t1.commit()
    await t2.commit()
    assert await read(db, k) is None  # the later commit wins


async def test_read_only_commits_never_conflict(db: Database, prefix: bytes) -> None:
    k = prefix + b"k"
    t1, t2 = await _racing_pair(db)
    assert await t1.get(k) is None
    t2.set(k, b"changed")
    await t2.commit()
    await t1.commit()  # read-only: commits trivially even though its read is stale


async def test_write_to_a_key_not_read_does_not_conflict(db: Database, prefix: bytes) -> None:
    t1, t2 = await _racing_pair(db)
    await t1.get(prefix + b"a")
    t1.set(prefix + b"out", b"1")
    t2.set(prefix + b"b", b"2")
    await t2.commit()
    await t1.commit()


async def test_range_read_conflicts_with_insert_inside(db: Database, prefix: bytes) -> None:
    """Phantoms: a range read conflicts with a key inserted anywhere inside it."""
    await put(db, {prefix + b"a": b"", prefix + b"d": b""})
    t1, t2 = await _racing_pair(db)
    await t1.get_range(prefix + b"a", prefix + b"z")
    t1.set(prefix + b"out", b"1")
    t2.set(prefix + b"m", b"new")
    await t2.commit()
    await raises_code(t1.commit(), 1020)


async def test_limited_range_read_conflict_covers_only_what_was_read(
    db: Database, prefix: bytes
) -> None:
    """With a limit, the read conflict range ends just after the last key returned
    (reverse: starts at it). Checked on a real 7.3 cluster: writing ``b`` (read)
    conflicts; ``b\\x00``, ``bb``, ``c`` and ``d`` (beyond the last key read) do not."""
    p = prefix
    await put(db, {p + b"a": b"", p + b"b": b"", p + b"c": b"", p + b"d": b""})
    for target, conflicts in [
        (b"b", True),
        (b"a", True),
        (b"b\x00", False),
        (b"bb", False),
        (b"c", False),
        (b"d", False),
    ]:
        t1, t2 = await _racing_pair(db)
        got = await t1.get_range(p + b"a", p + b"z", limit=2)
        assert [kv.key for kv in got] == [p + b"a", p + b"b"]
        t1.set(p + b"out", b"1")
        t2.set(p + target, b"w")
        await t2.commit()
        if conflicts:
            await raises_code(t1.commit(), 1020)
        else:
            await t1.commit()
        await put(db, {p + target: b""} if target in (b"a", b"b") else {p + target: None})


async def test_limited_reverse_range_read_conflict(db: Database, prefix: bytes) -> None:
    p = prefix
    await put(db, {p + b"a": b"", p + b"b": b"", p + b"c": b"", p + b"d": b""})
    for target, conflicts in [(b"c", True), (b"c\x00", True), (b"bb", False), (b"a", False)]:
        t1, t2 = await _racing_pair(db)
        got = await t1.get_range(p + b"a", p + b"d\x00", limit=2, reverse=True)
        assert [kv.key for kv in got] == [p + b"d", p + b"c"]
        t1.set(p + b"out", b"1")
        t2.set(p + target, b"w")
        await t2.commit()
        if conflicts:
            await raises_code(t1.commit(), 1020)
        else:
            await t1.commit()
        await put(db, {p + target: b""} if target in (b"c", b"a") else {p + target: None})


async def test_get_key_adds_a_read_conflict(db: Database, prefix: bytes) -> None:
    await put(db, {prefix + b"a": b"", prefix + b"c": b""})
    t1, t2 = await _racing_pair(db)
    assert await t1.get_key(KeySelector.first_greater_than(prefix + b"a")) == prefix + b"c"
    t1.set(prefix + b"out", b"1")
    t2.set(prefix + b"b", b"")  # would change what the selector resolves to
    await t2.commit()
    await raises_code(t1.commit(), 1020)


async def test_explicit_read_conflict_range(db: Database, prefix: bytes) -> None:
    t1, t2 = await _racing_pair(db)
    t1.add_read_conflict_range(prefix + b"a", prefix + b"c")
    t1.set(prefix + b"out", b"1")
    t2.set(prefix + b"b", b"x")
    await t2.commit()
    await raises_code(t1.commit(), 1020)

    t1, t2 = await _racing_pair(db)
    t1.add_read_conflict_key(prefix + b"k")
    t1.set(prefix + b"out", b"1")
    t2.set(prefix + b"k\x00", b"x")  # just outside the key's range
    await t2.commit()
    await t1.commit()


async def test_explicit_write_conflict_range_alone_commits_and_conflicts(
    db: Database, prefix: bytes
) -> None:
    """A transaction with only a write conflict range is not read-only: it commits with
    a version and makes a concurrent reader of that range fail."""
    t1, t2 = await _racing_pair(db)
    await t1.get(prefix + b"k")
    t1.set(prefix + b"out", b"1")
    t2.add_write_conflict_key(prefix + b"k")
    await t2.commit()
    assert t2.get_committed_version() > 0
    await raises_code(t1.commit(), 1020)
    assert await read(db, prefix + b"k") is None  # nothing was written

    t1, t2 = await _racing_pair(db)
    await t1.get_range(prefix + b"m", prefix + b"p")
    t1.set(prefix + b"out", b"1")
    t2.add_write_conflict_range(prefix + b"a", prefix + b"n")
    await t2.commit()
    await raises_code(t1.commit(), 1020)


async def test_atomic_ops_add_no_read_conflict(db: Database, prefix: bytes) -> None:
    k = prefix + b"n"
    t1, t2 = await _racing_pair(db)
    await t1.get(prefix + b"unrelated1")
    await t2.get(prefix + b"unrelated2")
    t1.add(k, le64(1))
    t2.add(k, le64(2))
    await t1.commit()
    await t2.commit()  # two ADDs on one key never conflict
    assert await read(db, k) == le64(3)


async def test_atomic_op_conflicts_with_a_reader(db: Database, prefix: bytes) -> None:
    """Atomic ops add write conflict ranges: a concurrent reader of the key conflicts."""
    k = prefix + b"n"
    t1, t2 = await _racing_pair(db)
    await t1.get(k)
    t1.set(prefix + b"out", b"1")
    t2.add(k, le64(1))
    await t2.commit()
    await raises_code(t1.commit(), 1020)


async def test_clear_range_conflicts_with_reader(db: Database, prefix: bytes) -> None:
    await put(db, {prefix + b"k": b"v"})
    t1, t2 = await _racing_pair(db)
    await t1.get(prefix + b"k")
    t1.set(prefix + b"out", b"1")
    t2.clear_range(prefix + b"a", prefix + b"z")
    await t2.commit()
    await raises_code(t1.commit(), 1020)


async def test_conflict_with_transaction_committed_before_first_read(
    db: Database, prefix: bytes
) -> None:
    """Only writes committed after the read version count."""
    k = prefix + b"k"
    await put(db, {k: b"old"})
    t1 = db.create_transaction()
    assert await t1.get(k) == b"old"  # read version taken now, after the write
    t1.set(k, b"new")
    await t1.commit()


async def test_reading_own_writes_adds_no_read_conflict(db: Database, prefix: bytes) -> None:
    """Real 7.3: a read answered entirely by the transaction's own set/clear/clear_range
    records no read conflict; a range read records conflicts only for the keys that its
    own writes do not cover."""
    k, m = prefix + b"k", prefix + b"m"

    async def own_set(tr: Transaction) -> None:
        tr.set(k, b"mine")
        assert await tr.get(k) == b"mine"

    async def own_clear(tr: Transaction) -> None:
        tr.clear(k)
        assert await tr.get(k) is None

    async def own_clear_range(tr: Transaction) -> None:
        tr.clear_range(prefix + b"a", prefix + b"z")
        assert await tr.get_range(prefix + b"a", prefix + b"z") == []

    async def own_set_then_range(tr: Transaction) -> None:
        tr.set(k, b"mine")
        await tr.get_range(prefix + b"a", prefix + b"z")

    for reads in (own_set, own_clear, own_clear_range, own_set_then_range):
        await put(db, {k: b"old", m: b"old"})
        t1, t2 = await _racing_pair(db)
        await reads(t1)
        t1.set(prefix + b"out", b"1")
        t2.set(k, b"theirs")
        await t2.commit()
        await t1.commit()

    # ... but the part of a range read not covered by its own writes does conflict
    await put(db, {k: b"old", m: b"old"})
    t1, t2 = await _racing_pair(db)
    await own_set_then_range(t1)
    t2.set(m, b"theirs")
    await t2.commit()
    await raises_code(t1.commit(), 1020)


async def test_reading_own_atomic_op_adds_a_read_conflict(db: Database, prefix: bytes) -> None:
    """The result of an atomic op depends on the stored value: reading it conflicts."""
    k = prefix + b"k"
    await put(db, {k: b"\x01"})
    t1, t2 = await _racing_pair(db)
    t1.add(k, b"\x01")
    assert await t1.get(k) == b"\x02"
    t2.set(k, b"\x09")
    await t2.commit()
    await raises_code(t1.commit(), 1020)


async def test_snapshot_then_plain_read_conflicts(db: Database, prefix: bytes) -> None:
    k = prefix + b"k"
    await put(db, {k: b"v"})
    t1, t2 = await _racing_pair(db)
    await t1.snapshot.get(k)
    await t1.get(k)  # the plain read records the conflict, cached value or not
    t1.set(prefix + b"out", b"1")
    t2.set(k, b"w")
    await t2.commit()
    await raises_code(t1.commit(), 1020)


async def test_inverted_conflict_range_raises_2005_at_once(db: Database, prefix: bytes) -> None:
    tr = db.create_transaction()
    for add in (tr.add_read_conflict_range, tr.add_write_conflict_range):
        with pytest.raises(FDBError) as info:
            add(prefix + b"z", prefix + b"a")
        assert info.value.code == 2005
    tr.set(prefix + b"k", b"v")
    await tr.commit()  # the refused range left the transaction usable
