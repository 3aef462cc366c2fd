"""Contract: many concurrent transactions, and the event loop never blocks on the backend.

On the real cluster every FDB future is bridged into the loop through ``on_ready``; a
ticker task measures the largest gap between its wake-ups while hundreds of
transactions run, which stays small only if nothing blocks the loop.
"""

from __future__ import annotations

import anyio
import pytest
from contract_util import le64, read, read_prefix

from fdbworkers._db import Database, Transaction

#: Every test here runs under trio and under asyncio (tests/conftest.py).
pytestmark = pytest.mark.anyio

TRANSACTIONS = 300
TICK = 0.005
#: Largest gap between the ticker's wake-ups that still means "never blocked".
MAX_GAP = 0.25


async def test_hundreds_of_concurrent_transactions_do_not_block_the_loop(
    db: Database, prefix: bytes
) -> None:
    counter = prefix + b"counter"
    max_gap = 0.0
    done = anyio.Event()

    async def ticker() -> None:
        nonlocal max_gap
        last = anyio.current_time()
        while not done.is_set():
            await anyio.sleep(TICK)
            now = anyio.current_time()
            max_gap = max(max_gap, now - last - TICK)
            last = now

    async def work(tr: Transaction, i: int) -> None:
        # a read, a conflicting read-modify-write on one of 10 hot keys, a blind write
        # and an atomic op: conflicts and retries happen, and all must resolve.
        hot = prefix + b"hot/%d" % (i % 10)
        n = int(await tr.get(hot) or b"0")
        await tr.get_range(prefix + b"item/", prefix + b"item0", limit=5)
        tr.set(hot, b"%d" % (n + 1))
        tr.set(prefix + b"item/%04d" % i, b"x" * 100)
        tr.add(counter, le64(1))

    start = anyio.current_time()
    async with anyio.create_task_group() as nursery:
        nursery.start_soon(ticker)
        async with anyio.create_task_group() as workers:
            for i in range(TRANSACTIONS):
                workers.start_soon(db.transact, work, i)
        done.set()
    elapsed = anyio.current_time() - start
    commits = db.stats.commits

    assert await read(db, counter) == le64(TRANSACTIONS)
    assert len(await read_prefix(db, prefix + b"item/")) == TRANSACTIONS
    hot_total = 0
    for kv in await read_prefix(db, prefix + b"hot/"):
        hot_total += int(kv.value)
    assert hot_total == TRANSACTIONS  # every read-modify-write applied exactly once
    assert commits == TRANSACTIONS
    assert max_gap < MAX_GAP, f"the event loop was blocked for {max_gap:.3f} s ({elapsed:.1f} s)"
