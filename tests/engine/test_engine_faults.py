"""Fault injection of the embedded engine, on trio's virtual clock: latency, spurious
conflicts, unknown results, watch delays and spurious fires, partitions; all of it
reproducible from the seed."""

from __future__ import annotations

import random

import pytest
import trio

from fdbworkers._backends.engine import Engine, FaultPlan
from fdbworkers._db import Database, Transaction
from fdbworkers._errors import ConfigError, FDBError

SEED = 20240611


def make(faults: FaultPlan | None = None, seed: int = SEED) -> tuple[Engine, Database]:
    engine = Engine(rng=random.Random(seed), faults=faults)
    return engine, engine.open_database()


async def put(db: Database, key: bytes, value: bytes) -> None:
    async def fn(tr: Transaction) -> None:
        tr.set(key, value)

    await db.transact(fn)


async def get(db: Database, key: bytes) -> bytes | None:
    async def fn(tr: Transaction) -> bytes | None:
        return await tr.get(key)

    return await db.transact(fn)


def test_fault_plan_validates_its_values() -> None:
    with pytest.raises(ConfigError):
        FaultPlan(conflict_probability=1.5)
    with pytest.raises(ConfigError):
        FaultPlan(latency=(0.2, 0.1))
    with pytest.raises(ConfigError):
        FaultPlan(watch_delay_max=-1)
    with pytest.raises(ConfigError):
        FaultPlan(latency="fast")  # type: ignore[arg-type]


async def test_latency_is_spent_on_the_engine_clock(autojump_clock: object) -> None:
    engine, db = make(FaultPlan(latency=(0.01, 0.01)))
    tr = db.create_transaction()
    t0 = trio.current_time()
    await tr.get(b"k")  # a read version (0.01) and the read (0.01)
    assert trio.current_time() - t0 == pytest.approx(0.02)
    tr.set(b"k", b"v")
    t1 = trio.current_time()
    await tr.commit()
    assert trio.current_time() - t1 == pytest.approx(0.01)
    seen: list[str] = []

    def per_op(rng: random.Random, op: str) -> float:
        seen.append(op)
        return 0.5 if op == "get_range" else 0.0

    engine.faults = FaultPlan(latency=per_op)
    tr = db.create_transaction()
    t2 = trio.current_time()
    await tr.get_range(b"a", b"z")
    assert trio.current_time() - t2 == pytest.approx(0.5)
    assert seen == ["get_read_version", "get_range"]


async def test_spurious_conflicts_spare_blind_writes(autojump_clock: object) -> None:
    engine, db = make(FaultPlan(conflict_probability=1.0))
    await put(db, b"blind", b"1")  # no read conflict ranges: commits
    tr = db.create_transaction()
    await tr.get(b"blind")
    tr.set(b"x", b"1")
    with pytest.raises(FDBError) as info:
        await tr.commit()
    assert info.value.code == 1020
    assert db.engine_stats.conflicts == 1  # type: ignore[attr-defined]
    engine.faults = FaultPlan()  # switched off at runtime
    await tr.on_error(info.value)
    await tr.get(b"blind")
    tr.set(b"x", b"1")
    await tr.commit()


@pytest.mark.parametrize("committed", [True, False])
async def test_unknown_results_may_or_may_not_have_committed(
    autojump_clock: object, committed: bool
) -> None:
    fraction = 1.0 if committed else 0.0
    engine, db = make(
        FaultPlan(unknown_result_probability=1.0, unknown_result_committed_fraction=fraction)
    )
    tr = db.create_transaction()
    tr.add(b"n", (1).to_bytes(8, "little"))
    with pytest.raises(FDBError) as info:
        await tr.commit()
    assert info.value.code == 1021 and info.value.maybe_committed
    engine.faults = FaultPlan()
    assert (await get(db, b"n")) == ((1).to_bytes(8, "little") if committed else None)

    # The retry loop marks the retry, and an idempotency guard makes it safe.
    engine.faults = FaultPlan(unknown_result_probability=0.5, unknown_result_committed_fraction=0.5)
    attempts: list[bool] = []

    async def once(tr: Transaction) -> None:
        attempts.append(tr.maybe_committed)
        if await tr.get(b"guard") is None:
            tr.set(b"guard", b"1")
            tr.add(b"counter", (1).to_bytes(8, "little"))

    for _ in range(20):
        await db.transact(once)
        engine.faults = FaultPlan()
        assert (await get(db, b"counter")) == (1).to_bytes(8, "little"), f"seed {SEED}"
        await put(db, b"guard", b"")
        await db.transact(lambda tr: _clear(tr, b"guard"))
        await db.transact(lambda tr: _clear(tr, b"counter"))
        engine.faults = FaultPlan(
            unknown_result_probability=0.5, unknown_result_committed_fraction=0.5
        )
    assert any(attempts), "the 1021 retries were marked maybe_committed"


async def _clear(tr: Transaction, key: bytes) -> None:
    tr.clear(key)


async def test_watch_fires_are_delayed_at_most_the_maximum(autojump_clock: object) -> None:
    engine, db = make(FaultPlan(watch_delay_max=2.0))
    delays = []
    for i in range(20):
        key = b"w%d" % i
        tr = db.create_transaction()
        w = tr.watch(key)
        await tr.commit()
        await put(db, key, b"changed")
        t0 = trio.current_time()
        assert not w.done or engine.faults.watch_delay_max == 0
        await w.wait()
        assert w.done
        delays.append(trio.current_time() - t0)
    assert all(0 <= d <= 2.0 for d in delays)
    assert max(delays) > 0.5, f"delays {delays} (seed {SEED})"


async def test_spurious_watch_fires(autojump_clock: object) -> None:
    engine, db = make(FaultPlan(spurious_watch_rate=1.0))  # about once a second
    tr = db.create_transaction()
    w = tr.watch(b"quiet")
    await tr.commit()
    t0 = trio.current_time()
    with trio.fail_after(60):
        await w.wait()  # fires although nothing changed
    assert trio.current_time() > t0
    assert db.engine_stats.watches_fired == 1  # type: ignore[attr-defined]

    engine.faults = FaultPlan(spurious_watch_probability=1.0)
    tr = db.create_transaction()
    w2 = tr.watch(b"quiet")
    assert not w2.done  # not before its transaction committed
    await tr.commit()
    assert w2.done


async def test_partitioned_operations_hang_until_their_timeout(autojump_clock: object) -> None:
    engine, db = make()
    other = engine.open_database("other")
    await put(db, b"k", b"1")
    db.partitioned = True  # type: ignore[attr-defined]
    tr = db.create_transaction()
    tr.set_timeout(3.0)
    t0 = trio.current_time()
    with pytest.raises(FDBError) as info:
        await tr.get(b"k")
    assert info.value.code == 1031
    assert trio.current_time() - t0 == pytest.approx(3.0)
    assert (await get(other, b"k")) == b"1"  # other clients are fine

    # Without a timeout an operation hangs until cancelled, or until healed.
    tr = db.create_transaction()
    with trio.move_on_after(100) as scope:
        await tr.get(b"k")
    assert scope.cancelled_caught

    tr = db.create_transaction()
    async with trio.open_nursery() as nursery:

        async def heal() -> None:
            await trio.sleep(7)
            db.partitioned = False  # type: ignore[attr-defined]

        nursery.start_soon(heal)
        t1 = trio.current_time()
        assert await tr.get(b"k") == b"1"
        assert trio.current_time() - t1 == pytest.approx(7)


async def test_a_commit_whose_reply_is_lost_reports_1021(autojump_clock: object) -> None:
    engine, db = make(FaultPlan(latency=(1.0, 1.0)))
    tr = db.create_transaction()
    tr.set(b"k", b"applied")
    async with trio.open_nursery() as nursery:

        async def partition_then_heal() -> None:
            await trio.sleep(0.75)  # the commit was applied at 0.5; its reply is on the way
            db.partitioned = True  # type: ignore[attr-defined]
            await trio.sleep(5)
            db.partitioned = False  # type: ignore[attr-defined]

        nursery.start_soon(partition_then_heal)
        with pytest.raises(FDBError) as info:
            await tr.commit()
    assert info.value.code == 1021
    engine.faults = FaultPlan()
    assert await get(db, b"k") == b"applied"


async def test_watches_are_not_delivered_to_a_partitioned_client(autojump_clock: object) -> None:
    engine, db = make()
    other = engine.open_database("other")
    tr = db.create_transaction()
    w = tr.watch(b"k")
    await tr.commit()
    db.partitioned = True  # type: ignore[attr-defined]
    await put(other, b"k", b"new")
    assert not w.done
    with trio.move_on_after(30):
        await w.wait()
        pytest.fail("a partitioned client saw a watch fire")
    db.partitioned = False  # type: ignore[attr-defined]
    assert w.done
    await w.wait()


async def workload(seed: int) -> list[object]:
    """A small concurrent workload under every fault; returns what happened, in order."""
    _, db = make(
        FaultPlan(
            latency=(0.001, 0.05),
            conflict_probability=0.2,
            unknown_result_probability=0.1,
            watch_delay_max=0.3,
            spurious_watch_rate=0.2,
        ),
        seed,
    )
    trace: list[object] = []
    t0 = trio.current_time()

    async def counter(tr: Transaction, i: int) -> None:
        v = await tr.get(b"c")
        n = int.from_bytes(v or b"\0", "big")
        tr.set(b"c", (n + 1).to_bytes(4, "big"))
        tr.set(b"log/%d" % i, b"%d" % n)

    async def client(i: int) -> None:
        for j in range(5):
            await db.transact(counter, i * 100 + j)
            trace.append(("commit", i, j, round(trio.current_time() - t0, 9)))

    async def watcher() -> None:
        for _ in range(5):
            tr = db.create_transaction()
            w = tr.watch(b"c")
            await tr.commit()
            await w.wait()
            trace.append(("fired", round(trio.current_time() - t0, 9)))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(watcher)
        for i in range(4):
            nursery.start_soon(client, i)
    stats = db.engine_stats  # type: ignore[attr-defined]
    trace.append(("stats", stats.conflicts, stats.unknown_results, stats.transactions_committed))
    return trace


def seed_trio_scheduler(seed: int) -> None:
    """trio shuffles each batch of runnable tasks with a module-level Random: seeding it
    makes the schedule of calls, and so the engine's faults, reproducible."""
    trio._core._run._r.seed(seed)


async def test_faults_are_reproducible_from_the_seed(autojump_clock: object) -> None:
    seed_trio_scheduler(SEED)
    first = await workload(SEED)
    seed_trio_scheduler(SEED)
    second = await workload(SEED)
    assert first == second, f"seed {SEED}"
    seed_trio_scheduler(SEED)
    assert first != await workload(SEED + 1)
    assert first[-1][1] > 0  # type: ignore[index]
