"""Contract: reads and writes, read-your-writes, ranges and key selectors.

Every test runs on the embedded engine and on a real FoundationDB cluster (the
reference); see tests/conftest.py.
"""

from __future__ import annotations

import pytest
from contract_util import put, read, read_prefix

from fdbworkers._db import Database, KeySelector, KeyValue, Transaction, strinc

#: Every test here runs under trio and under asyncio (tests/conftest.py).
pytestmark = pytest.mark.anyio


async def test_get_set_clear(db: Database, prefix: bytes) -> None:
    a, b = prefix + b"a", prefix + b"b"
    assert await read(db, a) is None
    await put(db, {a: b"1", b: b""})
    assert await read(db, a) == b"1"
    assert await read(db, b) == b""  # an empty value is a value, not a missing key
    await put(db, {a: None})
    assert await read(db, a) is None
    assert await read(db, b) == b""


async def test_set_overwrites(db: Database, prefix: bytes) -> None:
    k = prefix + b"k"
    await put(db, {k: b"old"})
    await put(db, {k: b"new"})
    assert await read(db, k) == b"new"


async def test_clear_range_is_half_open(db: Database, prefix: bytes) -> None:
    keys = [prefix + bytes([c]) for c in b"abcde"]
    await put(db, {k: b"v" for k in keys})

    async def clear(tr: Transaction) -> None:
        tr.clear_range(prefix + b"b", prefix + b"d")

    await db.transact(clear)
    assert [kv.key for kv in await read_prefix(db, prefix)] == [
        prefix + b"a",
        prefix + b"d",
        prefix + b"e",
    ]


async def test_clear_range_startswith(db: Database, prefix: bytes) -> None:
    await put(db, {prefix + b"x/1": b"1", prefix + b"x/2": b"2", prefix + b"y": b"3"})

    async def clear(tr: Transaction) -> None:
        tr.clear_range_startswith(prefix + b"x/")

    await db.transact(clear)
    assert await read_prefix(db, prefix) == [KeyValue(prefix + b"y", b"3")]


async def test_read_your_writes(db: Database, prefix: bytes) -> None:
    await put(db, {prefix + b"a": b"1", prefix + b"c": b"3", prefix + b"d": b"4"})
    tr = db.create_transaction()
    tr.set(prefix + b"b", b"2")
    tr.clear(prefix + b"c")
    tr.set(prefix + b"a", b"one")
    assert await tr.get(prefix + b"b") == b"2"
    assert await tr.get(prefix + b"c") is None
    assert await tr.get(prefix + b"a") == b"one"
    assert await tr.get_range(prefix, strinc(prefix)) == [
        KeyValue(prefix + b"a", b"one"),
        KeyValue(prefix + b"b", b"2"),
        KeyValue(prefix + b"d", b"4"),
    ]
    tr.clear_range(prefix + b"a", prefix + b"c")
    assert await tr.get_range(prefix, strinc(prefix)) == [KeyValue(prefix + b"d", b"4")]
    # the snapshot view reads the transaction's own writes too
    assert await tr.snapshot.get(prefix + b"d") == b"4"
    assert await tr.snapshot.get(prefix + b"a") is None
    tr.cancel()
    # nothing was committed
    assert await read(db, prefix + b"b") is None
    assert await read(db, prefix + b"a") == b"1"


async def test_uncommitted_writes_are_invisible_to_others(db: Database, prefix: bytes) -> None:
    tr = db.create_transaction()
    tr.set(prefix + b"k", b"v")
    assert await read(db, prefix + b"k") is None
    await tr.commit()
    assert await read(db, prefix + b"k") == b"v"


async def _seed(db: Database, prefix: bytes) -> list[bytes]:
    keys = [prefix + bytes([c]) for c in b"abcdefgh"]
    await put(db, {k: k[-1:] * 2 for k in keys})
    return keys


async def test_get_range_limit_and_reverse(db: Database, prefix: bytes) -> None:
    keys = await _seed(db, prefix)
    tr = db.create_transaction()
    end = strinc(prefix)
    assert [kv.key for kv in await tr.get_range(prefix, end)] == keys
    assert [kv.key for kv in await tr.get_range(prefix, end, limit=3)] == keys[:3]
    assert [kv.key for kv in await tr.get_range(prefix, end, reverse=True)] == keys[::-1]
    assert [kv.key for kv in await tr.get_range(prefix, end, limit=2, reverse=True)] == [
        keys[-1],
        keys[-2],
    ]
    assert [kv.key for kv in await tr.get_range(prefix, end, limit=100)] == keys
    assert await tr.get_range(prefix + b"c", prefix + b"c") == []
    # an inverted range reads nothing (no error)
    assert await tr.get_range(prefix + b"d", prefix + b"b") == []
    first = (await tr.get_range(prefix, end, limit=1))[0]
    assert first == KeyValue(prefix + b"a", b"aa")
    assert [kv.key for kv in await tr.get_range_startswith(prefix, limit=2, reverse=True)] == [
        keys[-1],
        keys[-2],
    ]


async def test_get_range_many_keys_returns_all(db: Database, prefix: bytes) -> None:
    """More than one batch of the real client (its byte limits): continuation works."""
    value = b"v" * 1000
    for start in range(0, 600, 200):
        await put(db, {prefix + b"%05d" % i: value for i in range(start, start + 200)})
    tr = db.create_transaction()
    everything = await tr.get_range(prefix, strinc(prefix))
    assert [kv.key for kv in everything] == [prefix + b"%05d" % i for i in range(600)]
    limited = await tr.get_range(prefix, strinc(prefix), limit=450)
    assert len(limited) == 450
    assert limited[-1].key == prefix + b"%05d" % 449
    backwards = await tr.get_range(prefix, strinc(prefix), limit=450, reverse=True)
    assert len(backwards) == 450
    assert backwards[0].key == prefix + b"%05d" % 599
    assert backwards[-1].key == prefix + b"%05d" % 150


async def test_get_range_with_selectors(db: Database, prefix: bytes) -> None:
    keys = await _seed(db, prefix)  # a..h
    tr = db.create_transaction()

    async def keys_of(begin: KeySelector | bytes, end: KeySelector | bytes) -> list[bytes]:
        return [kv.key for kv in await tr.get_range(begin, end)]

    p = prefix
    # first_greater_than excludes the key itself
    assert await keys_of(KeySelector.first_greater_than(p + b"b"), p + b"e") == keys[2:4]
    # an end selector resolves to a key that the range excludes
    assert await keys_of(p + b"b", KeySelector.last_less_or_equal(p + b"e")) == keys[1:4]
    # first_greater_than as the end includes the key
    assert await keys_of(p + b"b", KeySelector.first_greater_than(p + b"e")) == keys[1:5]
    # offsets move by keys that exist
    assert await keys_of(KeySelector.first_greater_or_equal(p + b"b") + 2, p + b"g") == keys[3:6]
    # selectors between keys
    assert await keys_of(p + b"bb", p + b"dd") == keys[2:4]
    assert await keys_of(KeySelector.last_less_than(p + b"c") + 1, p + b"d") == keys[2:3]


async def test_get_key_selectors(db: Database, prefix: bytes) -> None:
    await _seed(db, prefix)  # a..h
    tr = db.create_transaction()
    p = prefix
    assert await tr.get_key(KeySelector.first_greater_or_equal(p + b"c")) == p + b"c"
    assert await tr.get_key(KeySelector.first_greater_or_equal(p + b"cc")) == p + b"d"
    assert await tr.get_key(KeySelector.first_greater_than(p + b"c")) == p + b"d"
    assert await tr.get_key(KeySelector.last_less_than(p + b"c")) == p + b"b"
    assert await tr.get_key(KeySelector.last_less_or_equal(p + b"c")) == p + b"c"
    assert await tr.get_key(KeySelector.last_less_or_equal(p + b"cc")) == p + b"c"
    assert await tr.get_key(KeySelector.first_greater_or_equal(p + b"c") + 2) == p + b"e"
    assert await tr.get_key(KeySelector.first_greater_than(p + b"e") - 2) == p + b"d"
    assert await tr.get_key(KeySelector.last_less_than(p + b"e") - 1) == p + b"c"
    # read-your-writes applies to selectors
    tr.set(p + b"cc", b"new")
    tr.clear(p + b"d")
    assert await tr.get_key(KeySelector.first_greater_than(p + b"c")) == p + b"cc"
    assert await tr.get_key(KeySelector.first_greater_than(p + b"cc")) == p + b"e"
    assert await tr.snapshot.get_key(KeySelector.last_less_than(p + b"e")) == p + b"cc"
    tr.cancel()


async def test_read_version_and_committed_version(db: Database, prefix: bytes) -> None:
    tr = db.create_transaction()
    rv = await tr.get_read_version()
    assert rv > 0
    assert await tr.get_read_version() == rv  # fixed for the transaction
    tr.set(prefix + b"k", b"v")
    await tr.commit()
    cv = tr.get_committed_version()
    assert cv > rv
    later = db.create_transaction()
    assert await later.get_read_version() >= cv


async def test_committed_version_of_read_only_and_uncommitted(db: Database, prefix: bytes) -> None:
    tr = db.create_transaction()
    assert tr.get_committed_version() == -1  # not committed yet: -1, not an error
    await tr.get(prefix + b"k")
    await tr.commit()
    assert tr.get_committed_version() == -1  # read-only: no commit version


async def test_snapshot_reads(db: Database, prefix: bytes) -> None:
    await _seed(db, prefix)
    tr = db.create_transaction()
    snap = tr.snapshot
    assert await snap.get(prefix + b"a") == b"aa"
    assert [kv.key for kv in await snap.get_range(prefix, strinc(prefix), limit=2)] == [
        prefix + b"a",
        prefix + b"b",
    ]
    assert await snap.get_read_version() == await tr.get_read_version()


async def test_reads_of_oversized_keys_find_nothing(db: Database, prefix: bytes) -> None:
    """Real 7.3: a get of a key over 10,000 bytes is not an error; no such key exists."""
    tr = db.create_transaction()
    assert await tr.get(prefix + b"k" * 10_001) is None


async def test_read_your_writes_merges_with_limits_and_reverse(db: Database, prefix: bytes) -> None:
    p = prefix
    await put(db, {p + b"a": b"1", p + b"c": b"3", p + b"e": b"5", p + b"g": b"7"})
    tr = db.create_transaction()
    tr.set(p + b"b", b"2")
    tr.clear(p + b"c")
    tr.clear_range(p + b"f", p + b"h")
    tr.set(p + b"ff", b"6")
    tr.add(p + b"e", b"\x01")
    end = strinc(p)

    async def keys(limit: int = 0, reverse: bool = False) -> list[tuple[bytes, bytes]]:
        got = await tr.get_range(p, end, limit=limit, reverse=reverse)
        return [(kv.key[len(p) :], kv.value) for kv in got]

    everything = [(b"a", b"1"), (b"b", b"2"), (b"e", b"6"), (b"ff", b"6")]
    assert await keys() == everything
    assert await keys(limit=2) == everything[:2]
    assert await keys(limit=3) == everything[:3]
    assert await keys(reverse=True) == everything[::-1]
    assert await keys(limit=2, reverse=True) == everything[::-1][:2]
    assert await tr.get_key(KeySelector.first_greater_than(p + b"a")) == p + b"b"
    assert await tr.get_key(KeySelector.first_greater_or_equal(p + b"a") + 2) == p + b"e"
    assert await tr.get_key(KeySelector.last_less_than(p + b"g")) == p + b"ff"
    tr.cancel()


async def test_selectors_resolving_past_each_other_read_nothing(
    db: Database, prefix: bytes
) -> None:
    await _seed(db, prefix)  # a..h
    tr = db.create_transaction()
    p = prefix
    assert await tr.get_range(KeySelector.first_greater_or_equal(p + b"c") + 3, p + b"e") == []
    assert await tr.get_range(p + b"c", KeySelector.last_less_than(p + b"c")) == []


async def test_get_many(db: Database, prefix: bytes) -> None:
    a, b, c = prefix + b"a", prefix + b"b", prefix + b"c"
    await put(db, {a: b"1", c: b"3"})
    tr = db.create_transaction()
    assert await tr.get_many([]) == []
    assert await tr.get_many([c, b, a, c]) == [b"3", None, b"1", b"3"]
    tr.set(b, b"2")
    tr.clear(c)
    assert await tr.get_many([a, b, c]) == [b"1", b"2", None]  # read-your-writes
    assert await tr.snapshot.get_many([b, c]) == [b"2", None]
    tr.cancel()
