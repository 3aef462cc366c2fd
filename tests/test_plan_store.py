"""The stored plan and its deltas (fdbworkers/_store/plan.py), on every backend.

A worker that holds plan ``s`` and finds plan ``t`` stored reads the deltas since ``s``
instead of the whole plan when it is at most PLAN_DELTAS_KEPT plans behind; any gap,
corruption or older header falls back to the whole plan. To tell the two reads apart,
some tests overwrite the chunks of the whole plan with garbage: a read that still
returns the plan took the deltas.
"""

from __future__ import annotations

import pytest

from fdbworkers._core.keys import Layout, RoleSpace
from fdbworkers._core.plan import Plan
from fdbworkers._core.plan_delta import PLAN_DELTAS_KEPT
from fdbworkers._core.records import encode
from fdbworkers._db import Database, Transaction
from fdbworkers._store.plan import tx_count_job, tx_read_plan, tx_replan

#: Every test here runs under trio and under asyncio (tests/conftest.py).
pytestmark = pytest.mark.anyio

P = 1024


async def _role(db: Database, prefix: bytes) -> RoleSpace:
    space = Layout(prefix).role("r")

    async def setup(tr: Transaction) -> None:
        tr.set(space.counted_key, b"")
        for p in range(0, P, 3):
            tx_count_job(tr, space, p, 1 + p % 3)

    await db.transact(setup)
    return space


async def _replan(db: Database, space: RoleSpace, seen: Plan | None, n: int) -> Plan:
    # A hundred members and more: a plan large enough that its deltas are smaller.
    members = {f"w{i:03d}": 1.0 + (i % 2) for i in range(100 + n)}
    epoch = ((seen.seq if seen else 0) + 1).to_bytes(4, "big")  # a newer view each time

    async def go(tr: Transaction) -> Plan:
        plan, wrote = await tx_replan(tr, space, seen.seq if seen else None, members, epoch, P)
        assert wrote and plan is not None
        return plan

    return await db.transact(go)


async def _spoil_chunks(db: Database, space: RoleSpace) -> None:
    async def go(tr: Transaction) -> None:
        for kv in await tr.get_range(*space.plan_chunks_range()):
            tr.set(kv.key, b"garbage")

    await db.transact(go)


async def _delta_seqs(db: Database, space: RoleSpace) -> list[int]:
    async def go(tr: Transaction) -> list[int]:
        return [
            space.plan_delta_seq(kv.key) for kv in await tr.get_range(*space.plan_deltas_range())
        ]

    return await db.transact(go)


async def test_a_reader_a_few_plans_behind_reads_only_the_deltas(
    db: Database, prefix: bytes
) -> None:
    space = await _role(db, prefix)
    plans = [await _replan(db, space, None, 3)]
    for n in (4, 5, 4):
        plans.append(await _replan(db, space, plans[-1], n))
    whole = await db.transact(tx_read_plan, space)
    assert whole == plans[-1] and whole is not None
    assert whole.digest() == plans[-1].digest()
    await _spoil_chunks(db, space)
    assert await db.transact(tx_read_plan, space) is None  # the whole plan: corrupt now
    for held in plans[:-1]:
        got = await db.transact(tx_read_plan, space, held)
        assert got == plans[-1], held.seq
    # Holding the stored plan itself: returned as is, nothing else read.
    assert await db.transact(tx_read_plan, space, whole) is whole
    assert await _delta_seqs(db, space) == [2, 3, 4]


async def test_only_the_last_deltas_are_kept_and_a_reader_further_behind_reads_the_plan(
    db: Database, prefix: bytes
) -> None:
    space = await _role(db, prefix)
    plans = [await _replan(db, space, None, 2)]
    for i in range(PLAN_DELTAS_KEPT + 2):
        plans.append(await _replan(db, space, plans[-1], 3 + i % 3))
    last = plans[-1].seq
    assert await _delta_seqs(db, space) == list(range(last - PLAN_DELTAS_KEPT + 1, last + 1))
    assert await db.transact(tx_read_plan, space, plans[0]) == plans[-1]  # the whole plan
    await _spoil_chunks(db, space)
    assert await db.transact(tx_read_plan, space, plans[0]) is None  # ... so: none
    assert await db.transact(tx_read_plan, space, plans[-PLAN_DELTAS_KEPT - 1]) == plans[-1]


async def test_a_gap_a_bad_delta_or_an_older_header_reads_the_whole_plan(
    db: Database, prefix: bytes
) -> None:
    space = await _role(db, prefix)
    a = await _replan(db, space, None, 3)
    b = await _replan(db, space, a, 4)
    c = await _replan(db, space, b, 5)

    async def clear_delta(tr: Transaction) -> None:
        tr.clear(space.plan_delta_key(b.seq))

    await db.transact(clear_delta)
    assert await db.transact(tx_read_plan, space, a) == c  # a gap: the whole plan
    assert await db.transact(tx_read_plan, space, b) == c  # no gap from b

    async def foreign_delta(tr: Transaction) -> None:
        # A delta that decodes and applies, but makes another plan than the header's.
        raw = await tr.get(space.plan_delta_key(c.seq))
        assert raw is not None
        tr.set(space.plan_delta_key(b.seq), raw)
        tr.set(space.plan_delta_key(c.seq), b"not a delta")

    await db.transact(foreign_delta)
    assert await db.transact(tx_read_plan, space, a) == c
    assert await db.transact(tx_read_plan, space, b) == c

    async def old_header(tr: Transaction) -> None:
        # A plan written by a version without deltas: its header has no digest.
        tr.set(space.plan_key, encode({"seq": c.seq, "chunks": 1}))

    await db.transact(old_header)
    got = await db.transact(tx_read_plan, space, c)
    assert got == c and got is not c  # read again, whole: no digest to trust it by


async def test_a_plan_written_without_a_predecessor_clears_the_deltas(
    db: Database, prefix: bytes
) -> None:
    space = await _role(db, prefix)
    a = await _replan(db, space, None, 3)
    b = await _replan(db, space, a, 4)
    assert await _delta_seqs(db, space) == [b.seq]

    async def spoil_plan(tr: Transaction) -> None:
        tr.set(space.plan_key, b"garbage")  # corrupt: the next planner overwrites it

    await db.transact(spoil_plan)
    c = await _replan(db, space, None, 5)  # made from no plan (its sequence starts again)
    assert await _delta_seqs(db, space) == []
    assert await db.transact(tx_read_plan, space, b) == c
