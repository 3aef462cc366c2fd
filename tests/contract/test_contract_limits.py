"""Contract: size limits and illegal keys/ranges, as a real 7.3 cluster reports them.

Pinned on the real cluster: the write calls themselves never raise; the error is
deferred to the transaction's next read and to its commit. None of these is retried.
"""

from __future__ import annotations

import pytest
from contract_util import raises_code, read

from fdbworkers._db import MAX_KEY_SIZE, MAX_VALUE_SIZE, Database, Transaction

#: Every test here runs under trio and under asyncio (tests/conftest.py).
pytestmark = pytest.mark.anyio


async def test_limits_are_inclusive(db: Database, prefix: bytes) -> None:
    key = prefix + b"k" * (MAX_KEY_SIZE - len(prefix))
    assert len(key) == MAX_KEY_SIZE
    tr = db.create_transaction()
    tr.set(key, b"v" * MAX_VALUE_SIZE)
    await tr.commit()
    assert await read(db, key) == b"v" * MAX_VALUE_SIZE


async def test_key_too_large_fails_at_commit(db: Database, prefix: bytes) -> None:
    tr = db.create_transaction()
    tr.set(prefix + b"k" * MAX_KEY_SIZE, b"v")  # does not raise here
    await raises_code(tr.commit(), 2102)


async def test_key_too_large_fails_the_next_read(db: Database, prefix: bytes) -> None:
    tr = db.create_transaction()
    tr.set(prefix + b"k" * MAX_KEY_SIZE, b"v")
    await raises_code(tr.get(prefix + b"other"), 2102)
    await raises_code(tr.commit(), 2102)


async def test_value_too_large_fails_at_commit(db: Database, prefix: bytes) -> None:
    tr = db.create_transaction()
    tr.set(prefix + b"k", b"v" * (MAX_VALUE_SIZE + 1))
    await raises_code(tr.commit(), 2103)
    assert await read(db, prefix + b"k") is None


async def test_transaction_too_large_fails_at_commit(db: Database, prefix: bytes) -> None:
    tr = db.create_transaction()
    value = b"v" * 99_000
    for i in range(102):  # a little over 10,000,000 bytes
        tr.set(prefix + b"%03d" % i, value)
    await raises_code(tr.commit(), 2101)
    assert await read(db, prefix + b"000") is None


async def test_size_errors_are_not_retried(db: Database, prefix: bytes) -> None:
    attempts = 0

    async def fn(tr: Transaction) -> None:
        nonlocal attempts
        attempts += 1
        tr.set(prefix + b"k", b"v" * (MAX_VALUE_SIZE + 1))

    await raises_code(db.transact(fn), 2103)
    assert attempts == 1


async def test_system_keys_are_outside_the_legal_range(db: Database, prefix: bytes) -> None:
    """Keys from ``\\xff`` on are the system keyspace: reads fail at once with 2004,
    writes at commit."""
    tr = db.create_transaction()
    await raises_code(tr.get(b"\xff/anything"), 2004)
    await raises_code(tr.get_range(b"\xff", b"\xff\xff"), 2004)
    tr = db.create_transaction()
    tr.set(b"\xff/x", b"v")
    await raises_code(tr.commit(), 2004)


async def test_inverted_clear_range_fails_at_commit(db: Database, prefix: bytes) -> None:
    """A clear_range with begin > end: the call returns, commit fails with 2005. (An
    inverted get_range reads nothing, see the reads contract.)"""
    tr = db.create_transaction()
    tr.clear_range(prefix + b"b", prefix + b"a")
    await raises_code(tr.commit(), 2005)
