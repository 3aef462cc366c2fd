"""Contract: atomic operations, byte for byte as a real 7.3 cluster computes them.

Rules pinned here (``atomic.h`` in FoundationDB, checked on the real cluster): ADD, MIN,
MAX, BIT_AND/OR/XOR treat the existing value as little-endian and cut or zero-extend it
to the operand's length; a missing key counts as absent (MIN/MAX/AND store the operand).
"""

from __future__ import annotations

import pytest
from contract_util import le64, put, raises_code, read

from fdbworkers._db import Database, MutationType, Transaction

#: Every test here runs under trio and under asyncio (tests/conftest.py).
pytestmark = pytest.mark.anyio

M = MutationType

#: (op, existing value or None for a missing key, operand, expected value or None)
CASES: list[tuple[MutationType, bytes | None, bytes, bytes | None]] = [
    (M.ADD, None, b"\x01\x00", b"\x01\x00"),
    (M.ADD, b"\xff", b"\x01\x00", b"\x00\x01"),
    (M.ADD, b"\xff\xff\x01", b"\x01", b"\x00"),  # existing value cut to the operand's length
    (M.ADD, b"\x01", b"\x01\x00\x00", b"\x02\x00\x00"),
    (M.ADD, le64(-5), le64(3), le64(-2)),  # two's complement
    (M.ADD, b"\x05", b"", b""),
    (M.MAX, None, b"\x02", b"\x02"),
    (M.MAX, b"\x05\x00", b"\x03", b"\x05"),
    (M.MAX, b"\x01", b"\x00\x01", b"\x00\x01"),
    (M.MAX, b"\x05", b"\x03\x00\x00", b"\x05\x00\x00"),
    (M.MAX, le64(-1), le64(1), le64(-1)),  # unsigned comparison
    (M.MIN, None, b"\x02\x01", b"\x02\x01"),
    (M.MIN, b"\x05\x00", b"\x03", b"\x03"),
    (M.MIN, b"\x01\x00\x00", b"\x00\x01", b"\x01\x00"),
    (M.MIN, b"\x05", b"\x03\x00", b"\x03\x00"),
    (M.BYTE_MAX, None, b"ab", b"ab"),
    (M.BYTE_MAX, b"b", b"abc", b"b"),
    (M.BYTE_MAX, b"ab", b"abc", b"abc"),
    (M.BYTE_MIN, None, b"ab", b"ab"),
    (M.BYTE_MIN, b"b", b"abc", b"abc"),
    (M.BYTE_MIN, b"ab", b"abc", b"ab"),
    (M.BIT_AND, None, b"\x0f", b"\x0f"),
    (M.BIT_AND, b"\xff\xff", b"\x0f", b"\x0f"),
    (M.BIT_AND, b"\xff", b"\x0f\x0f", b"\x0f\x00"),
    (M.BIT_OR, None, b"\x0f", b"\x0f"),
    (M.BIT_OR, b"\xf0\xf0", b"\x0f", b"\xff"),
    (M.BIT_OR, b"\xf0", b"\x0f\x0f", b"\xff\x0f"),
    (M.BIT_XOR, None, b"\x0f", b"\x0f"),
    (M.BIT_XOR, b"\xff\xff", b"\x0f", b"\xf0"),
    (M.BIT_XOR, b"\xff", b"\x0f\x0f", b"\xf0\x0f"),
    (M.APPEND_IF_FITS, None, b"ab", b"ab"),
    (M.APPEND_IF_FITS, b"xy", b"ab", b"xyab"),
    (M.APPEND_IF_FITS, b"x" * 99_998, b"ab", b"x" * 99_998 + b"ab"),  # exactly 100,000
    (M.APPEND_IF_FITS, b"x" * 99_999, b"ab", b"x" * 99_999),  # would not fit: unchanged
    (M.COMPARE_AND_CLEAR, None, b"ab", None),
    (M.COMPARE_AND_CLEAR, b"ab", b"ab", None),
    (M.COMPARE_AND_CLEAR, b"ab", b"abc", b"ab"),
    (M.COMPARE_AND_CLEAR, b"", b"", None),
]


def _short(b: bytes | None) -> str:
    if b is None:
        return "missing"
    return b.hex() if len(b) <= 8 else f"{len(b)}B"


@pytest.mark.parametrize(
    ("op", "existing", "operand", "expected"),
    CASES,
    ids=[f"{c[0].name}-{_short(c[1])}-{_short(c[2])}" for c in CASES],
)
async def test_atomic_op(
    db: Database,
    prefix: bytes,
    op: MutationType,
    existing: bytes | None,
    operand: bytes,
    expected: bytes | None,
) -> None:
    k = prefix + b"k"
    await put(db, {k: existing})

    async def apply(tr: Transaction) -> None:
        tr.atomic_op(op, k, operand)

    await db.transact(apply)
    assert await read(db, k) == expected


async def test_atomic_ops_compose_with_own_writes(db: Database, prefix: bytes) -> None:
    """Read-your-writes applies atomic ops to the transaction's view."""
    k = prefix + b"k"
    tr = db.create_transaction()
    tr.set(k, b"\x01")
    tr.add(k, b"\x02")
    assert await tr.get(k) == b"\x03"
    tr.max(k, b"\x07")
    assert await tr.get(k) == b"\x07"
    tr.atomic_op(MutationType.BIT_XOR, k, b"\x05")
    assert await tr.get(k) == b"\x02"
    tr.compare_and_clear(k, b"\x02")
    assert await tr.get(k) is None
    tr.byte_min(k, b"zz")
    assert await tr.get(k) == b"zz"
    await tr.commit()
    assert await read(db, k) == b"zz"


async def test_atomic_op_on_committed_value(db: Database, prefix: bytes) -> None:
    k = prefix + b"k"
    await put(db, {k: le64(40)})
    tr = db.create_transaction()
    tr.add(k, le64(2))
    assert await tr.get(k) == le64(42)
    await tr.commit()
    assert await read(db, k) == le64(42)


async def test_many_concurrent_adds_sum_exactly(db: Database, prefix: bytes) -> None:
    import anyio

    k = prefix + b"sum"

    async def add_one(tr: Transaction, n: int) -> None:
        tr.add(k, le64(n))

    async with anyio.create_task_group() as nursery:
        for n in range(1, 51):
            nursery.start_soon(db.transact, add_one, n)
    assert await read(db, k) == le64(sum(range(1, 51)))
    assert db.stats.conflicts == 0


async def test_atomic_operand_over_value_limit(db: Database, prefix: bytes) -> None:
    """An operand over 100,000 bytes fails (deferred to commit on real 7.3) with 2103."""
    tr = db.create_transaction()
    tr.add(prefix + b"k", b"\x00" * 100_001)
    await raises_code(tr.commit(), 2103)
