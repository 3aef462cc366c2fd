"""Paged scans: a large range read in pages, each page its own transaction, so that no scan
runs into FoundationDB's 5 s transaction limit."""

from __future__ import annotations

from typing import Final

from .._db import Database, Transaction

#: Keys read per transaction when scanning a large range (each page is its own
#: transaction, so no scan runs into FoundationDB's 5 s transaction limit).
PAGE: Final = 5000


async def scan(
    db: Database, begin: bytes, end: bytes, *, page: int = PAGE
) -> list[tuple[bytes, bytes]]:
    """Every key-value in [begin, end), read with snapshot reads in pages of ``page``
    keys, one transaction per page."""
    out: list[tuple[bytes, bytes]] = []
    start = begin
    while True:

        async def one(tr: Transaction, start: bytes = start) -> list[tuple[bytes, bytes]]:
            return [
                (kv.key, kv.value) for kv in await tr.snapshot.get_range(start, end, limit=page)
            ]

        kvs = await db.transact(one)
        out.extend(kvs)
        if len(kvs) < page:
            return out
        start = kvs[-1][0] + b"\x00"
