"""Contract: watches."""

from __future__ import annotations

import anyio
import pytest
from contract_util import (
    MUST_HAPPEN_WITHIN,
    MUST_NOT_HAPPEN_WITHIN,
    fires_within,
    put,
    raises_code,
)

from fdbworkers._db import Database, Transaction, Watch
from fdbworkers._errors import FDBError

#: Every test here runs under trio and under asyncio (tests/conftest.py).
pytestmark = pytest.mark.anyio


async def _watch(db: Database, key: bytes) -> Watch:
    tr = db.create_transaction()
    w = tr.watch(key)
    await tr.commit()
    return w


async def test_watch_fires_after_another_transactions_change(db: Database, prefix: bytes) -> None:
    k = prefix + b"k"
    await put(db, {k: b"old"})
    w = await _watch(db, k)
    assert not w.done
    assert not await fires_within(w, 0.2)
    await put(db, {k: b"new"})
    assert await fires_within(w, MUST_HAPPEN_WITHIN)
    assert w.done
    await w.wait()  # waiting again on a fired watch returns at once


async def test_watch_on_missing_key_fires_when_created(db: Database, prefix: bytes) -> None:
    k = prefix + b"k"
    w = await _watch(db, k)
    await put(db, {k: b"now"})
    assert await fires_within(w, MUST_HAPPEN_WITHIN)


async def test_watch_fires_on_clear(db: Database, prefix: bytes) -> None:
    k = prefix + b"k"
    await put(db, {k: b"v"})
    w = await _watch(db, k)
    await put(db, {k: None})
    assert await fires_within(w, MUST_HAPPEN_WITHIN)


async def test_watch_set_before_a_write_in_another_transaction(db: Database, prefix: bytes) -> None:
    """The watch compares with the value its transaction could read: a change committed
    by another transaction before the watching (read-only) transaction commits fires it."""
    k = prefix + b"k"
    await put(db, {k: b"old"})
    tr = db.create_transaction()
    w = tr.watch(k)
    await put(db, {k: b"new"})
    assert not w.done  # until its transaction commits, a watch ignores other changes
    await tr.commit()  # read-only: commits although the watched key changed
    assert await fires_within(w, MUST_HAPPEN_WITHIN)


async def test_watch_does_not_fire_on_a_write_of_the_same_value(
    db: Database, prefix: bytes
) -> None:
    k = prefix + b"k"
    await put(db, {k: b"same"})
    w = await _watch(db, k)
    await put(db, {k: b"same"})
    assert not await fires_within(w, MUST_NOT_HAPPEN_WITHIN)
    await put(db, {k: b"different"})
    assert await fires_within(w, MUST_HAPPEN_WITHIN)


async def test_watch_fires_on_own_later_write_in_same_transaction(
    db: Database, prefix: bytes
) -> None:
    """Real 7.3: the watch is ready at once, before the transaction commits."""
    k = prefix + b"k"
    await put(db, {k: b"old"})
    tr = db.create_transaction()
    w = tr.watch(k)
    tr.set(k, b"mine")
    assert await fires_within(w, MUST_HAPPEN_WITHIN)
    await tr.commit()
    await w.wait()


async def test_watch_adds_a_read_conflict(db: Database, prefix: bytes) -> None:
    k = prefix + b"k"
    await put(db, {k: b"old"})
    tr = db.create_transaction()
    await tr.get_read_version()
    w = tr.watch(k)
    tr.set(prefix + b"other", b"x")  # a read-write transaction
    await put(db, {k: b"changed"})
    await raises_code(tr.commit(), 1020)
    # the watch fails with its transaction's error
    await raises_code(w.wait(), 1020)


async def test_watch_of_reset_or_cancelled_transaction_fails_1025(
    db: Database, prefix: bytes
) -> None:
    tr = db.create_transaction()
    w = tr.watch(prefix + b"k")
    tr.reset()
    await raises_code(w.wait(), 1025)

    tr = db.create_transaction()
    w = tr.watch(prefix + b"k")
    tr.cancel()
    await raises_code(w.wait(), 1025)


async def test_watch_cancel(db: Database, prefix: bytes) -> None:
    k = prefix + b"k"
    w = await _watch(db, k)
    w.cancel()
    w.cancel()  # idempotent
    assert w.done
    await raises_code(w.wait(), 1101)
    await put(db, {k: b"x"})
    await raises_code(w.wait(), 1101)


async def test_cancelling_a_waiter_keeps_the_watch(db: Database, prefix: bytes) -> None:
    k = prefix + b"k"
    w = await _watch(db, k)
    with anyio.move_on_after(0.1):
        await w.wait()
    assert not w.done
    await put(db, {k: b"x"})
    assert await fires_within(w, MUST_HAPPEN_WITHIN)


async def test_several_tasks_wait_on_one_watch(db: Database, prefix: bytes) -> None:
    k = prefix + b"k"
    w = await _watch(db, k)
    woken: list[int] = []

    async def waiter(i: int) -> None:
        await w.wait()
        woken.append(i)

    with anyio.fail_after(MUST_HAPPEN_WITHIN):
        async with anyio.create_task_group() as nursery:
            for i in range(3):
                nursery.start_soon(waiter, i)
            await anyio.sleep(0.05)
            await put(db, {k: b"x"})
    assert sorted(woken) == [0, 1, 2]


async def test_watch_outlives_its_transaction(db: Database, prefix: bytes) -> None:
    import gc

    k = prefix + b"k"
    w = await _watch(db, k)
    gc.collect()
    await put(db, {k: b"x"})
    assert await fires_within(w, MUST_HAPPEN_WITHIN)


async def test_watches_beyond_the_limit_fail_with_1032(db: Database, prefix: bytes) -> None:
    """Real 7.3: creating the watch over ``max_watches`` does not raise, its transaction
    commits, and the watch then fails with 1032 too_many_watches."""
    db.set_max_watches(2)
    held = [await _watch(db, prefix + b"w%d" % i) for i in range(2)]
    tr = db.create_transaction()
    extra = tr.watch(prefix + b"extra")
    await tr.commit()
    with anyio.fail_after(MUST_HAPPEN_WITHIN):
        await raises_code(extra.wait(), 1032)
    for w in held:
        assert not w.done
    # a fired (or cancelled) watch frees its place
    held[0].cancel()
    with pytest.raises(FDBError):
        await held[0].wait()
    again = await _watch(db, prefix + b"again")
    await put(db, {prefix + b"again": b"x"})
    assert await fires_within(again, MUST_HAPPEN_WITHIN)
    held[1].cancel()


async def test_closing_the_database_fails_its_watches(db: Database, prefix: bytes) -> None:
    w = await _watch(db, prefix + b"k")
    await db.aclose()
    with anyio.fail_after(MUST_HAPPEN_WITHIN), pytest.raises(FDBError):
        await w.wait()


async def test_watch_after_own_write_compares_with_the_written_value(
    db: Database, prefix: bytes
) -> None:
    k = prefix + b"k"
    await put(db, {k: b"orig"})
    tr = db.create_transaction()
    tr.set(k, b"mine")
    w = tr.watch(k)
    await tr.commit()
    assert not await fires_within(w, MUST_NOT_HAPPEN_WITHIN)  # the value is still "mine"
    await put(db, {k: b"other"})
    assert await fires_within(w, MUST_HAPPEN_WITHIN)


async def test_watch_fires_on_own_later_clear(db: Database, prefix: bytes) -> None:
    k = prefix + b"k"
    await put(db, {k: b"v"})
    tr = db.create_transaction()
    w = tr.watch(k)
    tr.clear(k)
    assert await fires_within(w, MUST_HAPPEN_WITHIN)
    tr.cancel()


async def test_committed_watch_outlives_the_transaction_timeout(
    db: Database, prefix: bytes
) -> None:
    """The timeout option ends the transaction, not the watches it committed (real 7.3:
    still pending 2 s after a 0.5 s timeout)."""
    k = prefix + b"k"
    db.default_timeout = 0.5

    async def make(tr: Transaction) -> Watch:
        return tr.watch(k)

    w = await db.transact(make)
    assert not await fires_within(w, 1.0)
    await put(db, {k: b"x"})
    assert await fires_within(w, MUST_HAPPEN_WITHIN)
