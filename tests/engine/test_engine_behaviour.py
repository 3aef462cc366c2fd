"""Engine behaviours on trio's virtual clock that the contract suite cannot pin exactly
on a real cluster: version arithmetic, the 5 s window, retry backoff, checkpoints and
cancellation, misuse during commit, statistics, handles, snapshots."""

from __future__ import annotations

import math
import random

import pytest
import trio
import trio.testing

from fdbworkers._backends.engine import Engine, EngineDatabase, FaultPlan
from fdbworkers._db import Database, KeySelector, Transaction
from fdbworkers._errors import ConfigError, FDBError

SEED = 7


def make(faults: FaultPlan | None = None) -> tuple[Engine, EngineDatabase]:
    engine = Engine(rng=random.Random(SEED), faults=faults)
    return engine, engine.open_database()


async def put(db: Database, key: bytes, value: bytes) -> None:
    async def fn(tr: Transaction) -> None:
        tr.set(key, value)

    await db.transact(fn)


async def raises(code: int, awaitable: object) -> None:
    with pytest.raises(FDBError) as info:
        await awaitable  # type: ignore[misc]
    assert info.value.code == code


async def test_versions_advance_a_million_per_second(autojump_clock: object) -> None:
    _, db = make()
    v0 = await db.create_transaction().get_read_version()
    await trio.sleep(2.5)
    v1 = await db.create_transaction().get_read_version()
    assert v1 - v0 == 2_500_000
    tr = db.create_transaction()
    tr.set(b"k", b"v")
    await tr.commit()
    assert tr.get_committed_version() > v1


async def test_the_five_second_window_is_exact(autojump_clock: object) -> None:
    _, db = make()
    tr = db.create_transaction()
    await tr.get(b"a")
    await trio.sleep(4.999)
    await tr.get(b"b")
    await trio.sleep(0.002)
    await raises(1007, tr.get(b"c"))
    tr.set(b"own", b"1")
    assert await tr.get(b"own") == b"1"  # served by its own writes: no storage read
    await raises(1007, tr.commit())
    assert db.engine_stats.too_old == 2


async def test_backoff_doubles_with_jitter_up_to_one_second(autojump_clock: object) -> None:
    _, db = make()
    tr = db.create_transaction()
    delays = []
    for _ in range(12):
        t0 = trio.current_time()
        await tr.on_error(FDBError(1020))
        delays.append(trio.current_time() - t0)
    for i, d in enumerate(delays):
        assert 0 <= d <= min(1.0, 0.01 * 2**i), (i, d)
    assert max(delays[7:]) > 0.5, delays  # grew towards the 1 s cap
    tr = db.create_transaction()
    t0 = trio.current_time()
    await tr.on_error(FDBError(1007))
    assert trio.current_time() - t0 == pytest.approx(0.01)


async def test_every_operation_is_a_checkpoint(autojump_clock: object) -> None:
    _, db = make()
    tr = db.create_transaction()
    with trio.CancelScope() as scope:
        scope.cancel()
        with pytest.raises(trio.Cancelled):
            await tr.get(b"k")
    tr = db.create_transaction()
    tr.set(b"k", b"v")
    with trio.testing.assert_checkpoints():
        await tr.commit()
    tr = db.create_transaction()
    for op in (
        lambda: tr.get_read_version(),
        lambda: tr.get(b"k"),
        lambda: tr.get_range(b"", b"z"),
        lambda: tr.get_key(KeySelector.first_greater_or_equal(b"")),
        lambda: tr.snapshot.get(b"k"),
        lambda: tr.commit(),
    ):
        with trio.testing.assert_checkpoints():
            await op()


async def test_cancelled_commit_before_it_reached_the_cluster_is_not_applied(
    autojump_clock: object,
) -> None:
    engine, db = make(FaultPlan(latency=(1.0, 1.0)))
    tr = db.create_transaction()
    tr.set(b"k", b"v")
    with trio.move_on_after(0.2):
        await tr.commit()
    engine.faults = FaultPlan()
    assert await db.create_transaction().get(b"k") is None


async def test_use_during_commit_fails_the_commit(autojump_clock: object) -> None:
    _, db = make(FaultPlan(latency=(1.0, 1.0)))
    tr = db.create_transaction()
    tr.set(b"k", b"v")
    vs = tr.get_versionstamp()
    async with trio.open_nursery() as nursery:

        async def meddle() -> None:
            await trio.sleep(0.1)
            tr.set(b"other", b"x")

        nursery.start_soon(meddle)
        await raises(2017, tr.commit())
    await raises(2017, vs.get())
    await raises(2017, tr.get(b"k"))
    tr.reset()
    assert await tr.get(b"k") is None


async def test_after_commit_the_transaction_is_used_up(autojump_clock: object) -> None:
    _, db = make()
    tr = db.create_transaction()
    tr.set(b"k", b"v")
    await tr.commit()
    await raises(2017, tr.get(b"k"))
    await raises(2017, tr.get_versionstamp().get())
    await raises(2017, tr.commit())


async def test_commit_waits_for_reads_in_flight(autojump_clock: object) -> None:
    _, db = make(FaultPlan(latency=(0.5, 0.5)))
    await put(db, b"r", b"1")
    tr = db.create_transaction()
    await tr.get_read_version()
    results = []
    async with trio.open_nursery() as nursery:

        async def read() -> None:
            results.append(await tr.get(b"r"))

        nursery.start_soon(read)
        await trio.sleep(0.1)
        tr.set(b"w", b"1")
        await tr.commit()
        assert results == [b"1"]


async def test_deferred_errors_first_one_wins(autojump_clock: object) -> None:
    _, db = make()
    tr = db.create_transaction()
    tr.set(b"k" * 10_001, b"v")  # 2102, deferred
    tr.set(b"k", b"v" * 100_001)  # skipped
    tr.clear_range(b"b", b"a")  # skipped
    await raises(2102, tr.get(b"x"))
    await raises(2102, tr.commit())
    w = tr.watch(b"k")
    await raises(2102, w.wait())
    tr.reset()
    tr.set(b"k", b"v")
    await tr.commit()


async def test_statistics_count_reads_writes_and_watches(autojump_clock: object) -> None:
    engine, db = make()
    other = engine.open_database("other")
    await put(db, b"a", b"12")
    await put(other, b"b", b"345")
    tr = db.create_transaction()
    assert await tr.get(b"a") == b"12"
    assert len(await tr.get_range(b"", b"z")) == 2
    assert await tr.get_key(KeySelector.first_greater_than(b"a")) == b"b"
    w = tr.watch(b"a")
    await tr.commit()
    await put(other, b"a", b"new")
    await w.wait()
    s = db.engine_stats
    assert s.transactions_committed == 1 and s.read_only_commits == 1
    assert s.reads_by_op == {"get": 1, "get_range": 1, "get_key": 1}
    assert s.keys_read == 1 + 2 + 1
    assert s.bytes_read == 2 + (3 + 4) + 1  # values of gets, keys and values of ranges
    assert s.keys_written == 1 and s.bytes_written == 3
    assert s.watches_set == 1 and s.watches_fired == 1
    total = engine.stats
    assert total.transactions_committed == 3 and total.keys_written == 3
    assert total.snapshot() == total


async def test_watch_limits_are_per_handle_and_close_fails_watches(
    autojump_clock: object,
) -> None:
    engine, db = make()
    other = engine.open_database("other")
    db.set_max_watches(2)
    with pytest.raises(ConfigError):
        db.set_max_watches(-1)
    watches = []
    for i in range(3):
        tr = db.create_transaction()
        watches.append(tr.watch(b"w%d" % i))
        await tr.commit()
    await raises(1032, watches[2].wait())
    assert db.unfired_watches == 2
    tr = other.create_transaction()
    w_other = tr.watch(b"w0")
    await tr.commit()
    watches[0].cancel()
    assert db.unfired_watches == 1
    await db.aclose()
    await raises(1101, watches[1].wait())
    assert not w_other.done
    with pytest.raises(FDBError):
        db.create_transaction()


async def test_watch_fires_at_once_on_its_own_transactions_write(
    autojump_clock: object,
) -> None:
    _, db = make()
    await put(db, b"k", b"1")
    tr = db.create_transaction()
    w = tr.watch(b"k")
    tr.set(b"k", b"1")
    assert not w.done
    tr.add(b"k", b"\x01")  # an atomic op: the value is unknown, it fires
    assert w.done
    tr.reset()
    await w.wait()


async def test_timeout_with_latency_and_a_custom_clock(autojump_clock: object) -> None:
    engine = Engine(clock=lambda: trio.current_time() + 1000.0, faults=FaultPlan(latency=(2, 2)))
    db = engine.open_database()
    tr = db.create_transaction()
    tr.set_timeout(3.0)
    t0 = trio.current_time()
    await raises(1031, tr.get(b"k"))  # 2 s read version + 2 s read: past the timeout
    assert trio.current_time() - t0 == pytest.approx(3.0)
    await raises(1031, tr.on_error(FDBError(1020)))


async def test_snapshots_for_the_dev_server(autojump_clock: object) -> None:
    engine, db = make()
    await put(db, b"a", b"1")
    tr = db.create_transaction()
    tr.set_versionstamped_value(b"vs", b"\0" * 10 + (0).to_bytes(4, "little"))
    stamp = tr.get_versionstamp()
    await tr.commit()
    version, items = engine.dump_snapshot()
    assert [k for k, _ in items] == [b"a", b"vs"]
    fresh = Engine()
    fresh.load_snapshot(version, items)
    db2 = fresh.open_database()
    tr2 = db2.create_transaction()
    assert await tr2.get(b"a") == b"1"
    tr2.set_versionstamped_value(b"vs2", b"\0" * 10 + (0).to_bytes(4, "little"))
    stamp2 = tr2.get_versionstamp()
    await tr2.commit()
    assert await stamp2.get() > await stamp.get()


async def test_handles_share_one_cluster_and_describe_themselves(autojump_clock: object) -> None:
    engine, db = make()
    other = engine.open_database("other")
    await put(db, b"shared", b"yes")
    tr = other.create_transaction()
    assert await tr.get(b"shared") == b"yes"
    assert "other" in repr(other) and "EngineTransaction" in repr(tr)
    assert "Engine" in repr(engine)
    db.partitioned = True
    assert "partitioned" in repr(db)
    db.partitioned = False
    assert not math.isnan(engine.now())
