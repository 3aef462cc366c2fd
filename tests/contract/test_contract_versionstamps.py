"""Contract: versionstamps and the versionstamped key/value operations."""

from __future__ import annotations

import pytest
from contract_util import le32, raises_code, read, read_prefix

from fdbworkers._core.tuples import Versionstamp, pack, pack_with_versionstamp, unpack
from fdbworkers._db import VERSIONSTAMP_SIZE, Database, Transaction, strinc

#: Every test here runs under trio and under asyncio (tests/conftest.py).
pytestmark = pytest.mark.anyio

PLACEHOLDER = b"\xff" * VERSIONSTAMP_SIZE


async def _stamp_of_a_write(db: Database, key: bytes) -> tuple[bytes, int]:
    tr = db.create_transaction()
    tr.set(key, b"x")
    vs = tr.get_versionstamp()
    await tr.commit()
    return await vs, tr.get_committed_version()


async def test_versionstamp_is_10_bytes_commit_version_first(db: Database, prefix: bytes) -> None:
    stamp, version = await _stamp_of_a_write(db, prefix + b"k")
    assert len(stamp) == VERSIONSTAMP_SIZE
    assert int.from_bytes(stamp[:8], "big") == version


async def test_versionstamps_increase_across_transactions(db: Database, prefix: bytes) -> None:
    stamps = [(await _stamp_of_a_write(db, prefix + b"%d" % i))[0] for i in range(5)]
    assert stamps == sorted(stamps)
    assert len(set(stamps)) == len(stamps)


async def test_concurrent_transactions_get_distinct_stamps(db: Database, prefix: bytes) -> None:
    import anyio

    stamps: list[bytes] = []

    async def one(i: int) -> None:
        stamps.append((await _stamp_of_a_write(db, prefix + b"c%d" % i))[0])

    async with anyio.create_task_group() as nursery:
        for i in range(20):
            nursery.start_soon(one, i)
    assert len(set(stamps)) == 20


async def test_set_versionstamped_key_and_value(db: Database, prefix: bytes) -> None:
    key_template = prefix + b"vk/" + PLACEHOLDER + b"/end"
    offset = len(prefix) + 3
    value_template = b"pre" + PLACEHOLDER + b"post"
    tr = db.create_transaction()
    tr.set_versionstamped_key(key_template + le32(offset), b"val")
    tr.set_versionstamped_value(prefix + b"vv", value_template + le32(3))
    vs = tr.get_versionstamp()
    await tr.commit()
    stamp = await vs
    assert await read_prefix(db, prefix + b"vk/") == [(prefix + b"vk/" + stamp + b"/end", b"val")]
    assert await read(db, prefix + b"vv") == b"pre" + stamp + b"post"


async def test_versionstamped_keys_sort_by_commit_order(db: Database, prefix: bytes) -> None:
    template = prefix + b"log/" + PLACEHOLDER
    offset = le32(len(prefix) + 4)
    for i in range(3):

        async def write(tr: Transaction, i: int = i) -> None:
            tr.set_versionstamped_key(template + offset, b"%d" % i)

        await db.transact(write)
    assert [kv.value for kv in await read_prefix(db, prefix + b"log/")] == [b"0", b"1", b"2"]


async def test_tuple_layer_versionstamp_key(db: Database, prefix: bytes) -> None:
    """The tuple layer's 12-byte Versionstamp (10 + 2 user bytes) in a versionstamped key,
    without libfdb_c (``fdbworkers._core.tuples.pack_with_versionstamp``)."""
    key = pack_with_versionstamp(("events", Versionstamp.incomplete(7)), prefix=prefix)
    tr = db.create_transaction()
    tr.set_versionstamped_key(key, b"e")
    vs = tr.get_versionstamp()
    await tr.commit()
    stamp = await vs
    (written,) = await read_prefix(db, prefix)
    decoded = unpack(written.key, len(prefix))
    assert decoded == ("events", Versionstamp(stamp, 7))
    assert pack(decoded, prefix=prefix) == written.key


async def test_get_versionstamp_equals_stamp_written(db: Database, prefix: bytes) -> None:
    tr = db.create_transaction()
    vs = tr.get_versionstamp()  # asked before the commit, resolved after it
    tr.set_versionstamped_value(prefix + b"v", PLACEHOLDER + le32(0))
    await tr.commit()
    assert await read(db, prefix + b"v") == await vs


async def test_reading_a_versionstamped_key_or_value_in_its_transaction_fails(
    db: Database, prefix: bytes
) -> None:
    tr = db.create_transaction()
    tr.set_versionstamped_value(prefix + b"vv", PLACEHOLDER + le32(0))
    tr.set_versionstamped_key(prefix + b"vk/" + PLACEHOLDER + le32(len(prefix) + 3), b"v")
    await raises_code(tr.get(prefix + b"vv"), 1036)
    await raises_code(tr.get_range(prefix + b"vk/", prefix + b"vk0"), 1036)
    await raises_code(tr.snapshot.get_range(prefix, strinc(prefix)), 1036)
    tr.cancel()


async def test_get_versionstamp_of_read_only_transaction(db: Database, prefix: bytes) -> None:
    tr = db.create_transaction()
    vs = tr.get_versionstamp()
    await tr.get(prefix + b"k")
    await tr.commit()
    await raises_code(vs.get(), 2021)


async def test_get_versionstamp_of_failed_commit(db: Database, prefix: bytes) -> None:
    """Real 7.3: the stamp of a commit that failed with 1020 fails with 2020
    (transaction_invalid_version), not with the commit's error."""
    k = prefix + b"k"
    t1, t2 = db.create_transaction(), db.create_transaction()
    await t1.get(k)
    t1.set(k, b"1")
    vs = t1.get_versionstamp()
    t2.set(k, b"2")
    await t2.commit()
    await raises_code(t1.commit(), 1020)
    await raises_code(vs.get(), 2020)


async def test_versionstamped_key_conflicts_with_range_read_covering_it(
    db: Database, prefix: bytes
) -> None:
    """The commit proxy adds a write conflict on the key where the stamp lands."""
    t1, t2 = db.create_transaction(), db.create_transaction()
    await t1.get_read_version()
    assert await t1.get_range(prefix + b"log/", prefix + b"log0") == []
    t1.set(prefix + b"out", b"1")
    t2.set_versionstamped_key(prefix + b"log/" + PLACEHOLDER + le32(len(prefix) + 4), b"e")
    await t2.commit()
    await raises_code(t1.commit(), 1020)


async def test_versionstamped_key_does_not_conflict_elsewhere(db: Database, prefix: bytes) -> None:
    t1, t2 = db.create_transaction(), db.create_transaction()
    await t1.get_range(prefix + b"other/", prefix + b"other0")
    t1.set(prefix + b"out", b"1")
    t2.set_versionstamped_key(prefix + b"log/" + PLACEHOLDER + le32(len(prefix) + 4), b"e")
    await t2.commit()
    await t1.commit()


async def test_bad_versionstamp_offset_fails_at_commit(db: Database, prefix: bytes) -> None:
    """Real 7.3: an offset past the end is accepted by the call, and commit fails with
    2000 (client_invalid_operation)."""
    tr = db.create_transaction()
    tr.set_versionstamped_key(prefix + b"x" + le32(100), b"v")
    await raises_code(tr.commit(), 2000)
    tr = db.create_transaction()
    tr.set_versionstamped_value(prefix + b"x", b"short" + le32(3))
    await raises_code(tr.commit(), 2000)
