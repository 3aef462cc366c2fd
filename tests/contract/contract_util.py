"""Small helpers of the contract suite (both backends)."""

from __future__ import annotations

import struct

import anyio
import pytest

from fdbworkers._db import Database, KeyValue, Transaction, Watch, strinc
from fdbworkers._errors import FDBError

#: How long a contract test waits for something that must happen (a watch firing...).
MUST_HAPPEN_WITHIN = 10.0
#: How long it waits to conclude that something does not happen.
MUST_NOT_HAPPEN_WITHIN = 1.0


def le64(n: int) -> bytes:
    """An 8-byte little-endian integer, the operand format of ADD/MIN/MAX."""
    return struct.pack("<q", n)


def le32(n: int) -> bytes:
    return struct.pack("<I", n)


async def put(db: Database, items: dict[bytes, bytes | None]) -> None:
    """Write (or clear, for None) keys in one transaction."""

    async def fn(tr: Transaction) -> None:
        for k, v in items.items():
            if v is None:
                tr.clear(k)
            else:
                tr.set(k, v)

    await db.transact(fn)


async def read(db: Database, key: bytes) -> bytes | None:
    async def fn(tr: Transaction) -> bytes | None:
        return await tr.get(key)

    return await db.transact(fn)


async def read_prefix(db: Database, prefix: bytes) -> list[KeyValue]:
    async def fn(tr: Transaction) -> list[KeyValue]:
        return await tr.get_range(prefix, strinc(prefix))

    return await db.transact(fn)


async def fires_within(w: Watch, seconds: float) -> bool:
    """True if the watch fires within ``seconds`` (errors propagate)."""
    with anyio.move_on_after(seconds):
        await w.wait()
        return True
    return False


async def raises_code(awaitable: object, code: int) -> None:
    """Await and expect FDBError ``code``."""
    with pytest.raises(FDBError) as info:
        await awaitable  # type: ignore[misc]
    assert info.value.code == code, f"expected FDB error {code}, got {info.value.code}"
