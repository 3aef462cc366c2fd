"""Contract: the retry loop (``Database.transact``), timeouts, retry limits, 1007."""

from __future__ import annotations

import anyio
import pytest
from contract_util import put, raises_code, read

from fdbworkers._db import Database, Transaction
from fdbworkers._errors import FDBError

#: Every test here runs under trio and under asyncio (tests/conftest.py).
pytestmark = pytest.mark.anyio

RETRIED = [1020, 1021, 1007, 1009, 1037, 1038]
NOT_RETRIED = [1025, 1031, 1036, 2017, 2101]


@pytest.mark.parametrize("code", RETRIED)
async def test_retry_loop_retries(db: Database, prefix: bytes, code: int) -> None:
    attempts = 0

    async def fn(tr: Transaction) -> str:
        nonlocal attempts
        attempts += 1
        tr.set(prefix + b"k", b"%d" % attempts)
        if attempts == 1:
            raise FDBError(code)
        return "done"

    assert await db.transact(fn) == "done"
    assert attempts == 2
    assert await read(db, prefix + b"k") == b"2"  # the failed attempt's writes were reset
    assert db.stats.retries == 1
    assert db.stats.errors_by_code == {code: 1}


@pytest.mark.parametrize("code", NOT_RETRIED)
async def test_retry_loop_does_not_retry(db: Database, prefix: bytes, code: int) -> None:
    attempts = 0

    async def fn(tr: Transaction) -> None:
        nonlocal attempts
        attempts += 1
        tr.set(prefix + b"k", b"x")
        raise FDBError(code)

    await raises_code(db.transact(fn), code)
    assert attempts == 1
    assert await read(db, prefix + b"k") is None


async def test_other_exceptions_pass_through(db: Database, prefix: bytes) -> None:
    attempts = 0

    async def fn(tr: Transaction) -> None:
        nonlocal attempts
        attempts += 1
        tr.set(prefix + b"k", b"x")
        raise KeyError("mine")

    with pytest.raises(KeyError):
        await db.transact(fn)
    assert attempts == 1
    assert await read(db, prefix + b"k") is None


async def test_retry_after_a_real_conflict(db: Database, prefix: bytes) -> None:
    k = prefix + b"n"
    await put(db, {k: b"0"})
    attempts = 0

    async def increment(tr: Transaction) -> int:
        nonlocal attempts
        attempts += 1
        n = int(await tr.get(k) or b"0")
        if attempts == 1:
            await put(db, {k: b"10"})  # a concurrent writer commits in between
        tr.set(k, b"%d" % (n + 1))
        return n + 1

    assert await db.transact(increment) == 11
    assert attempts == 2
    assert db.stats.conflicts == 1
    assert await read(db, k) == b"11"


async def test_maybe_committed_after_1021(db: Database, prefix: bytes) -> None:
    seen: list[bool] = []

    async def fn(tr: Transaction) -> None:
        seen.append(tr.maybe_committed)
        if len(seen) < 3:
            raise FDBError(1021 if len(seen) == 1 else 1020)

    await db.transact(fn)
    # after 1021 an earlier attempt may have committed; it stays so for later attempts
    assert seen == [False, True, True]
    assert db.stats.unknown_results == 1


async def test_maybe_committed_stays_false_after_other_errors(db: Database) -> None:
    seen: list[bool] = []

    async def fn(tr: Transaction) -> None:
        seen.append(tr.maybe_committed)
        if len(seen) == 1:
            raise FDBError(1020)

    await db.transact(fn)
    assert seen == [False, False]


async def test_retry_limit(db: Database) -> None:
    db.default_retry_limit = 2
    attempts = 0

    async def fn(tr: Transaction) -> None:
        nonlocal attempts
        attempts += 1
        raise FDBError(1020)

    await raises_code(db.transact(fn), 1020)
    assert attempts == 3  # the first try and two retries
    tr = db.create_transaction()
    tr.set_retry_limit(0)
    await raises_code(tr.on_error(FDBError(1020)), 1020)


async def test_on_error_raises_non_retryable(db: Database) -> None:
    tr = db.create_transaction()
    await raises_code(tr.on_error(FDBError(2101)), 2101)
    tr = db.create_transaction()
    await tr.on_error(FDBError(1020))  # retryable: returns after a backoff


async def test_on_error_resets_the_transaction(db: Database, prefix: bytes) -> None:
    tr = db.create_transaction()
    tr.set(prefix + b"k", b"x")
    await tr.on_error(FDBError(1020))
    assert await tr.get(prefix + b"k") is None
    await tr.commit()
    assert await read(db, prefix + b"k") is None


async def test_transaction_timeout_surfaces_1031(db: Database, prefix: bytes) -> None:
    db.default_timeout = 0.2
    attempts = 0

    async def slow(tr: Transaction) -> None:
        nonlocal attempts
        attempts += 1
        await anyio.sleep(0.5)
        await tr.get(prefix + b"k")

    await raises_code(db.transact(slow), 1031)
    assert attempts == 1


async def test_timeout_spans_retries(db: Database) -> None:
    """Since API 610 the timeout is not reset by on_error: retries share one budget."""
    db.default_timeout = 0.5
    attempts = 0

    async def fn(tr: Transaction) -> None:
        nonlocal attempts
        attempts += 1
        await anyio.sleep(0.2)
        raise FDBError(1020)

    await raises_code(db.transact(fn), 1031)
    assert 2 <= attempts <= 3


async def test_timeout_fails_pending_reads_and_commit(db: Database, prefix: bytes) -> None:
    tr = db.create_transaction()
    tr.set_timeout(0.1)
    tr.set(prefix + b"k", b"v")
    await anyio.sleep(0.3)
    await raises_code(tr.get(prefix + b"k"), 1031)
    await raises_code(tr.commit(), 1031)
    assert await read(db, prefix + b"k") is None


async def test_reset_clears_the_timeout(db: Database, prefix: bytes) -> None:
    """Real 7.3: ``reset`` returns the transaction to its initial state, timeout included."""
    tr = db.create_transaction()
    tr.set_timeout(0.1)
    tr.reset()
    await anyio.sleep(0.3)
    assert await tr.get(prefix + b"k") is None


async def test_zero_timeout_disables(db: Database, prefix: bytes) -> None:
    tr = db.create_transaction()
    tr.set_timeout(0.1)
    tr.set_timeout(0)
    await anyio.sleep(0.3)
    assert await tr.get(prefix + b"k") is None


async def test_transaction_too_old_after_five_seconds(db: Database, prefix: bytes) -> None:
    """Reads at a read version older than ~5 s fail with 1007 (a real wait on a real
    cluster, virtual time on the engine); the retry loop retries it.

    Real 7.3: the storage server drops old versions only as its durable version moves
    on, so right after a burst of writes an older read may still be served for a while;
    we read fresh keys until 1007 comes (the engine answers 1007 at the first read)."""
    await put(db, {prefix + b"a": b"1", prefix + b"b": b"2"})
    tr = db.create_transaction()
    assert await tr.get(prefix + b"a") == b"1"
    await anyio.sleep(5.5)
    with anyio.fail_after(15):
        attempt = 0
        while True:
            attempt += 1
            try:
                await tr.get(prefix + b"fresh/%d" % attempt)
            except FDBError as e:
                assert e.code == 1007
                break
            await anyio.sleep(0.25)
    await tr.on_error(FDBError(1007))
    assert await tr.get(prefix + b"b") == b"2"  # a fresh read version


async def test_commit_too_old_after_five_seconds(db: Database, prefix: bytes) -> None:
    tr = db.create_transaction()
    await tr.get(prefix + b"a")
    tr.set(prefix + b"b", b"x")
    await anyio.sleep(5.5)
    await raises_code(tr.commit(), 1007)
    assert await read(db, prefix + b"b") is None


async def test_cancelled_transaction_fails_1025(db: Database, prefix: bytes) -> None:
    tr = db.create_transaction()
    tr.set(prefix + b"k", b"v")
    tr.cancel()
    await raises_code(tr.get(prefix + b"k"), 1025)
    await raises_code(tr.commit(), 1025)
    tr.reset()  # a reset transaction is usable again
    assert await tr.get(prefix + b"k") is None


async def test_trio_cancellation_of_a_transact(db: Database, prefix: bytes) -> None:
    """Cancelling the task running ``transact`` cancels the transaction cleanly."""

    async def slow(tr: Transaction) -> None:
        tr.set(prefix + b"k", b"v")
        await anyio.sleep(10)

    with anyio.move_on_after(0.1) as scope:
        await db.transact(slow)
    assert scope.cancelled_caught
    assert await read(db, prefix + b"k") is None
