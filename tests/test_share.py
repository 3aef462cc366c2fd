"""A share of any size (issue 18, goal 3), on the embedded engine and the virtual clock.

* the pure range planner (``_core/share.py``): ranges cover exactly the partitions asked
  for, merge a gap exactly when reading it is cheaper than another request;
* the paged share read (``_store/share.py``) returns what one transaction would, in
  bounded pages;
* claims in batches (``tx_claim_many``) decide every job as the single-job claim of
  before did (a reference copy of that function is the oracle), and releases too;
* the runner: a share that no single 5 s transaction can read runs, with few claim
  transactions; jobs added and removed while the pages are read are neither lost nor
  resurrected; the releases of a leave share transactions;
* ``add_jobs``: many jobs per transaction, idempotent, checked before anything is
  written, and a failure says how much was written.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Sequence
from typing import Any

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st
from trio.testing import MockClock

import fdbworkers._core.share as share_module
import fdbworkers._runner.handlers as handlers_module
import fdbworkers._runner.runner as runner_module
from fdbworkers import (
    AddJobsResult,
    ConfigError,
    FDBError,
    WorkerOptions,
    add_job,
    add_jobs,
    remove_job,
)
from fdbworkers._backends.engine import Engine, FaultPlan
from fdbworkers._core.assign import job_partition
from fdbworkers._core.keys import Layout, RoleSpace
from fdbworkers._core.records import (
    Claim,
    MemberRecord,
    decode,
    decode_retired,
    encode,
    encode_retired,
    epoch_value,
    split_stamped,
    stamped_value,
)
from fdbworkers._core.share import (
    MIN_REQUEST_KEYS,
    max_gap,
    plan_cost,
    plan_ranges,
    request_limit,
    runs,
)
from fdbworkers._core.share import group_sorted as group_sorted_
from fdbworkers._db import Database, Transaction
from fdbworkers._errors import CorruptDataError
from fdbworkers._store.bulk import prepare_job
from fdbworkers._store.claims import (
    ClaimOutcome,
    ClaimRequest,
    ReleaseRequest,
    tx_claim,
    tx_claim_many,
    tx_release_many,
)
from fdbworkers._store.jobs import JobRecord
from fdbworkers._store.members import tx_ensure_role
from fdbworkers._store.share import read_share
from fdbworkers.testing import Fleet, wait_until

ROOT = "fdbworkers-test"
ROLE = "big"
LAYOUT = Layout.for_root(ROOT)
SPACE = LAYOUT.role(ROLE)


# --- the planner (pure) --------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.sets(st.integers(0, 400), max_size=120), st.floats(0, 40, allow_nan=False))
def test_plan_ranges_cover_the_partitions_and_merge_only_cheap_gaps(
    parts: set[int], density: float
) -> None:
    ranges = plan_ranges(parts, density)
    limit = max_gap(density)
    covered: set[int] = set()
    for i, (first, last) in enumerate(ranges):
        assert first in parts and last in parts and first <= last
        if i:
            gap = first - ranges[i - 1][1] - 1
            assert gap > limit  # not merged: reading the gap costs more than a request
        inside = sorted(p for p in parts if first <= p <= last)
        assert all(b - a - 1 <= limit for a, b in itertools.pairwise(inside))
        covered |= set(range(first, last + 1))
    assert parts <= covered
    # Never dearer than either end of the scale: one range per run, one range for all.
    cost = plan_cost(ranges, density)
    assert cost <= plan_cost(runs(parts), density) + 1e-9
    if parts:
        assert cost <= plan_cost([(min(parts), max(parts))], density) + 1e-9


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 300), max_size=80), st.floats(0, 20, allow_nan=False))
def test_group_sorted_cuts_only_at_expensive_gaps(items: list[int], density: float) -> None:
    items.sort()
    groups = group_sorted_(items, density)
    if not items:
        assert groups == []
        return
    assert [lo for lo, _ in groups] == [0] + [hi for _, hi in groups[:-1]]
    assert groups[-1][1] == len(items)
    limit = max_gap(density)
    for lo, hi in groups:
        assert all(items[i] - items[i - 1] - 1 <= limit for i in range(lo + 1, hi))
        if lo:
            assert items[lo] - items[lo - 1] - 1 > limit


def test_runs_and_request_limits() -> None:
    assert runs([5, 1, 2, 3, 9, 8]) == [(1, 3), (5, 5), (8, 9)]
    assert runs([]) == []
    assert plan_ranges([1, 2, 3, 9, 8], 0.0) == [(1, 9)]  # no jobs: one scan
    assert plan_ranges([1, 3, 100], 16.0) == [(1, 3), (100, 100)]  # 2 partitions: merged
    assert max_gap(0.0) == math.inf
    assert request_limit(1, 5000) == 5000
    assert request_limit(1000, 5000) == MIN_REQUEST_KEYS


# --- the paged read ------------------------------------------------------------------


async def _load(db: Database, ids: Sequence[str], partitions: int) -> None:
    await add_jobs(
        db, ROLE, [(j, {"n": i}) for i, j in enumerate(ids)], root=ROOT, partitions=partitions
    )


async def test_the_paged_read_returns_what_one_transaction_would(engine: Engine) -> None:
    rng = random.Random(3)
    db = engine.open_database("reader")
    partitions = 256
    ids = [f"job-{i:05d}" for i in range(3000)]
    await _load(db, ids, partitions)
    for trial in range(20):
        wanted = {p for p in range(partitions) if rng.random() < rng.choice([0.02, 0.3, 0.9])}
        page_keys = rng.choice([17, 64, 500, 5000])
        share = await read_share(
            db.transact, SPACE, wanted, partitions, page_keys=page_keys, page_requests=3
        )
        truth = {j for j in ids if job_partition(j, partitions) in wanted}
        assert set(share.jobs) == truth, (trial, page_keys)
        assert all(v == sorted(v) for v in share.by_part.values())  # key order in each
        assert {p: sorted(v) for p, v in share.by_part.items()} == {
            p: sorted(j for j in truth if share.jobs[j].partition == p)
            for p in {share.jobs[j].partition for j in truth}
        }
        assert share.job_count == len(ids) and share.keys >= len(truth)
        # Each page is bounded: about page_keys keys in at most 3 requests.
        if share.keys > 0:
            assert share.transactions - 1 >= share.keys / max(page_keys, MIN_REQUEST_KEYS * 3)


# --- claims in batches: the rules of the single claim, unchanged ---------------------


async def _reference_claim(
    tr: Transaction,
    space: RoleSpace,
    partition: int,
    job_id: str,
    wid: str,
    incarnation: str,
    nonce: str,
    take_superseded: frozenset[str],
) -> ClaimOutcome:
    """The single-job claim as it was before claims were batched (a verbatim copy of
    its decisions, without the write): the oracle of the batch."""
    me_key = space.member_key(wid)
    me_raw = await tr.get(me_key)
    if me_raw is None or MemberRecord.decode(wid, me_key, me_raw).incarnation != incarnation:
        return ClaimOutcome("not_member")
    ckey = space.claim_key(partition, job_id)
    raw = await tr.get(ckey)
    if raw is not None:
        stamp, obj = split_stamped(ckey, raw)
        holder = Claim(stamp, str(obj.get("wid")), str(obj.get("incarnation")))
        if holder.wid == wid and holder.incarnation == incarnation and obj.get("nonce") == nonce:
            return ClaimOutcome("claimed", stamp)
        if not (holder.wid == wid and holder.incarnation == incarnation):
            t = obj.get("timeout")
            timeout = (
                float(t)
                if isinstance(t, int | float) and not isinstance(t, bool) and t > 0
                else None
            )
            holder = Claim(stamp, holder.wid, holder.incarnation, timeout)
            hkey = space.member_key(holder.wid)
            hraw = await tr.get(hkey)

            async def retired() -> bool:
                key = space.retired_key(holder.wid)
                try:
                    return holder.incarnation in decode_retired(key, await tr.get(key))
                except CorruptDataError:
                    return False

            if hraw is None:
                if (
                    holder.timeout is not None
                    and holder.incarnation not in take_superseded
                    and not await retired()
                ):
                    return ClaimOutcome("superseded", holder=holder, holder_timeout=holder.timeout)
            else:
                try:
                    hrec = MemberRecord.decode(holder.wid, hkey, hraw)
                except CorruptDataError:
                    return ClaimOutcome("held", holder=holder)
                if hrec.incarnation == holder.incarnation:
                    return ClaimOutcome("held", holder=holder)
                if holder.incarnation not in take_superseded and not await retired():
                    waits = [hrec.timeout, holder.timeout or 0.0]
                    if hrec.replaced == holder.incarnation and hrec.replaced_timeout:
                        waits.append(hrec.replaced_timeout)
                    return ClaimOutcome("superseded", holder=holder, holder_timeout=max(waits))
    if await tr.get(space.job_key(partition, job_id)) is None:
        return ClaimOutcome("gone")
    return ClaimOutcome("claimed")


async def _random_claim_world(
    db: Database, rng: random.Random, partitions: int, layout: Layout
) -> tuple[list[ClaimRequest], str, str, str]:
    """Jobs, claims, member and retired records drawn at random; the requests of a batch."""
    me, my_inc, nonce = "me", "inc-me", "nonce-1"
    holders = [f"h{i}" for i in range(4)]

    space = layout.role(ROLE)

    async def build(tr: Transaction) -> list[ClaimRequest]:
        await tx_ensure_role(tr, space, partitions)
        if rng.random() < 0.9:
            inc = my_inc if rng.random() < 0.95 else "inc-old"
            tr.set(space.member_key(me), MemberRecord(me, inc, 3.0).encode())
        for h in holders:
            kind = rng.random()
            if kind < 0.3:
                continue  # gone
            if kind < 0.35:
                tr.set(space.member_key(h), b"\xc1garbage")
                continue
            inc = rng.choice([f"{h}-a", f"{h}-b"])
            replaced = rng.choice([None, f"{h}-a", f"{h}-b"])
            rec = MemberRecord(
                h,
                inc,
                rng.choice([2.0, 3.0, 10.0]),
                replaced=replaced,
                replaced_timeout=rng.choice([None, 5.0, 20.0]) if replaced else None,
            )
            tr.set(space.member_key(h), rec.encode())
            r = rng.random()
            if r < 0.3:
                tr.set(space.retired_key(h), encode_retired({f"{h}-a": 1}))
            elif r < 0.35:
                tr.set(space.retired_key(h), b"\xc1")
        requests = []
        for i in range(rng.randint(1, 60)):
            jid = f"j{i:03d}"
            p = rng.randrange(partitions) if rng.random() < 0.5 else i % 3
            if rng.random() < 0.9:
                tr.set(space.job_key(p, jid), JobRecord(jid, p).encode())
            c = rng.random()
            value: dict[str, Any] | None = None
            if c < 0.15:
                value = {"wid": me, "incarnation": my_inc, "nonce": nonce}
            elif c < 0.25:
                value = {"wid": me, "incarnation": my_inc, "nonce": "other"}
            elif c < 0.8:
                h = rng.choice(holders)
                value = {"wid": h, "incarnation": rng.choice([f"{h}-a", f"{h}-b"])}
                if rng.random() < 0.7:
                    value["timeout"] = rng.choice([1.0, 4.0, 30.0])
            if value is not None:
                stamp = rng.getrandbits(80).to_bytes(10, "big")
                tr.set(space.claim_key(p, jid), stamp + encode(value))
            take = frozenset(f"{h}-{x}" for h in holders for x in "ab" if rng.random() < 0.15)
            requests.append(ClaimRequest(p, jid, take))
        return requests

    return await db.transact(build), me, my_inc, nonce


async def test_claim_batches_decide_each_job_as_the_single_claim_did(engine: Engine) -> None:
    seen_kinds: set[str] = set()
    for seed in range(60):
        rng = random.Random(seed)
        db = engine.open_database(f"claims-{seed}")
        root = Layout.for_root(f"claims-{seed}")
        requests, me, inc, nonce = await _random_claim_world(db, rng, 16, root)
        tr = db.create_transaction()
        expected = [
            await _reference_claim(
                tr, root.role(ROLE), r.partition, r.job_id, me, inc, nonce, r.take_superseded
            )
            for r in requests
        ]
        tr.cancel()
        tr = db.create_transaction()
        got = await tx_claim_many(
            tr, root.role(ROLE), requests, me, inc, nonce, 3.0, rng.choice([0.0, 1.0, 9.0])
        )
        tr.cancel()
        assert got == expected, f"seed {seed}"
        # The single-job claim (its own path: one round trip, absent claims decided at
        # once) decides each job the same way, and so does a batch of one.
        for r, want in zip(requests, expected, strict=True):
            args = (r.partition, r.job_id, me, inc, nonce, r.take_superseded, 3.0)
            tr = db.create_transaction()
            assert await tx_claim(tr, root.role(ROLE), *args) == want, f"seed {seed} {r}"
            tr.cancel()
            tr = db.create_transaction()
            assert await tx_claim_many(tr, root.role(ROLE), [r], me, inc, nonce, 3.0) == [want]
            tr.cancel()
        kinds = {o.kind for o in got}
        seen_kinds.update(kinds)
    # The scenarios reach every outcome.
    assert seen_kinds == {"claimed", "held", "superseded", "gone", "not_member"}, seen_kinds


async def test_a_corrupt_claim_is_held_not_taken_and_does_not_fail_the_batch(
    engine: Engine,
) -> None:
    db = engine.open_database("c")

    async def world(tr: Transaction) -> None:
        await tx_ensure_role(tr, SPACE, 8)
        tr.set(SPACE.member_key("me"), MemberRecord("me", "i", 3.0).encode())
        for j in ("a", "b"):
            tr.set(SPACE.job_key(1, j), JobRecord(j, 1).encode())
        tr.set(SPACE.claim_key(1, "a"), b"\x01\x02")

    await db.transact(world)
    reqs = [ClaimRequest(1, "a"), ClaimRequest(1, "b")]
    out = await db.transact(tx_claim_many, SPACE, reqs, "me", "i", "n", 3.0)
    assert [o.kind for o in out] == ["held", "claimed"]


async def test_release_batches_clear_only_our_claims_and_wake_each_owner_once(
    engine: Engine,
) -> None:
    db = engine.open_database("r")

    async def world(tr: Transaction) -> None:
        for i, (wid, inc) in enumerate([("me", "i"), ("me", "old"), ("other", "x"), ("me", "i")]):
            tr.set_versionstamped_value(
                SPACE.claim_key(i, f"j{i}"),
                stamped_value({"wid": wid, "incarnation": inc, "nonce": "n"}),
            )

    await db.transact(world)

    async def token(tr: Transaction) -> bytes:
        raw = await tr.get(SPACE.claim_key(3, "j3"))
        assert raw is not None
        return raw[:10]

    t3 = await db.transact(token)
    reqs = [
        ReleaseRequest(0, "j0", None, "w1", True),
        ReleaseRequest(1, "j1", None, "w1"),
        ReleaseRequest(2, "j2", None, "w2"),
        ReleaseRequest(3, "j3", b"\x00" * 10, "w2"),  # another token: kept
        ReleaseRequest(4, "j4", None, None),  # no claim at all
    ]
    out = await db.transact(tx_release_many, SPACE, reqs, "me", "i")
    assert out == [True, False, False, False, False]
    out = await db.transact(tx_release_many, SPACE, [ReleaseRequest(3, "j3", t3)], "me", "i")
    assert out == [True]

    async def left(tr: Transaction) -> tuple[list[bytes], list[bytes], bytes | None]:
        claims = [kv.key for kv in await tr.get_range(*SPACE.claims_range())]
        inboxes = [kv.key for kv in await tr.get_range(*LAYOUT.range("r", ROLE, "inbox"))]
        return claims, inboxes, await tr.get(SPACE.handoff_key("w1", 0))

    claims, inboxes, handoff = await db.transact(left)
    assert claims == [SPACE.claim_key(i, f"j{i}") for i in (1, 2)]
    assert inboxes == [SPACE.inbox_key("w1"), SPACE.inbox_key("w2")]
    assert handoff is not None and decode(b"", handoff)["from"] == "me"
    assert epoch_value()  # (the inbox bump is a versionstamped value)


# --- the runner ----------------------------------------------------------------------


OPTS = WorkerOptions(timeout=3.0, settle=0.5, partitions=1024)


async def test_a_share_no_single_transaction_can_read_runs_with_few_claim_transactions(
    autojump_clock: MockClock,
) -> None:
    """Issue 18: one worker with 140,000 jobs ran none of them, because it read its
    whole share in one transaction, two range requests per partition (131,072 requests
    for 65,536 partitions), and timed out for ever. Here the same shape, smaller: 3,000
    jobs in 1,024 partitions with 0.2 s per range request. The share is now read in
    pages, and claimed 1,000 jobs per transaction."""
    engine = Engine(rng=random.Random(18))
    admin = engine.open_database("admin")
    ids = [f"job-{i:05d}" for i in range(3000)]
    await add_jobs(admin, ROLE, [(j, None) for j in ids], root=ROOT, partitions=1024)
    engine.faults = FaultPlan(latency=lambda rng, op: 0.2 if op == "get_range" else 0.0)
    db = engine.open_database("w0")
    async with trio.open_nursery() as nursery:
        fleet = Fleet(nursery, lambda wid: db, role=ROLE, root=ROOT, options=OPTS)
        fw = await fleet.start("w0")
        waited = await wait_until(lambda: len(fleet.owners()) == len(ids), 120)
        assert fw.runner is not None
        stats = fw.runner.statistics()
        assert stats.claims_committed == len(ids)
        # Each claim batch is one transaction: a few, not one per job.
        assert db.stats.commits < 200, db.stats.commits
        assert stats.share_keys_read == len(ids)  # the role holds only our jobs
        assert waited < 30, waited
        assert not fleet.ledger.violations
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("seed", range(4))
async def test_jobs_added_and_removed_during_a_paged_read_are_neither_lost_nor_resurrected(
    seed: int, autojump_clock: MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pages read at different versions: a change between two pages may be in the
    read or not. The cursor taken before the first page makes the change log bring
    every such change back (its partition is read again), so after the changes stop,
    exactly the jobs that exist run, each once."""
    rng = random.Random(seed)
    monkeypatch.setattr(runner_module, "PAGE_KEYS", 16)
    monkeypatch.setattr(runner_module, "PAGE_REQUESTS", 2)
    monkeypatch.setattr(share_module, "MIN_REQUEST_KEYS", 4)
    engine = Engine(rng=random.Random(seed))
    admin = engine.open_database("admin")
    existing = {f"job-{i:04d}" for i in range(400)}
    await add_jobs(admin, ROLE, [(j, None) for j in existing], root=ROOT, partitions=64)
    engine.faults = FaultPlan(latency=lambda r, op: 0.05 if op == "get_range" else 0.001)
    opts = WorkerOptions(timeout=3.0, settle=0.5, partitions=64)
    async with trio.open_nursery() as nursery:
        fleet = Fleet(nursery, engine.open_database, role=ROLE, root=ROOT, options=opts)
        await fleet.start("w0")
        if seed % 2:
            await fleet.start("w1")
        n = 400
        for _ in range(150):  # changes while the first pages are read, and after
            await trio.sleep(rng.uniform(0.0, 0.04))
            if rng.random() < 0.5 and existing:
                jid = rng.choice(sorted(existing))
                existing.discard(jid)
                await remove_job(admin, ROLE, jid, root=ROOT)
            else:
                jid = f"new-{n}"
                n += 1
                existing.add(jid)
                await add_job(admin, ROLE, jid, root=ROOT)

        def exactly_the_existing_jobs_run_once() -> bool:
            owners = fleet.owners()
            return set(owners) == existing and all(len(v) == 1 for v in owners.values())

        await wait_until(exactly_the_existing_jobs_run_once, 120)
        await trio.sleep(10)  # and it stays so
        assert exactly_the_existing_jobs_run_once(), f"seed {seed}"
        assert not fleet.ledger.violations, fleet.ledger.violations
        pages = sum(fw.runner.statistics().share_transactions for fw in fleet.live() if fw.runner)
        assert pages > 20  # the read really was paged
        nursery.cancel_scope.cancel()


async def test_the_releases_of_a_leave_share_transactions(
    autojump_clock: MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker leaving with 2,000 jobs released them one transaction per job; the
    releases of jobs stopping together now share transactions."""
    engine = Engine(rng=random.Random(5))
    admin = engine.open_database("admin")
    ids = [f"job-{i:05d}" for i in range(2000)]
    await add_jobs(admin, ROLE, [(j, None) for j in ids], root=ROOT, partitions=1024)
    batches: list[int] = []
    real = tx_release_many

    async def counted(tr: Transaction, *args: Any, **kwargs: Any) -> list[bool]:
        out = await real(tr, *args, **kwargs)
        batches.append(len(args[1]))
        return out

    monkeypatch.setattr(handlers_module, "tx_release_many", counted)

    async def quick(job: Any) -> None:
        await job.stopping.wait()

    async with trio.open_nursery() as nursery:
        fleet = Fleet(
            nursery, engine.open_database, role=ROLE, root=ROOT, options=OPTS, handler=quick
        )
        fw = await fleet.start("w0")
        await wait_until(lambda: len(fleet.owners()) == len(ids), 120)
        await fleet.start("w1")
        await wait_until(
            lambda: (
                len(fleet.owners()) == len(ids)
                and len(set(o[0] for o in fleet.owners().values())) == 2
            ),
            120,
        )
        batches.clear()
        await fw.stop()
        await wait_until(
            lambda: (
                len(fleet.owners()) == len(ids)
                and all(o == ["w1"] for o in fleet.owners().values())
            ),
            60,
        )
        released = sum(batches)
        assert released >= 900, released  # w0's half
        assert len(batches) <= 20, batches
        assert not fleet.ledger.violations
        nursery.cancel_scope.cancel()


# --- add_jobs ------------------------------------------------------------------------


async def test_add_jobs_adds_updates_and_leaves_alone_like_add_job(engine: Engine) -> None:
    db = engine.open_database("admin")
    jobs = {f"job-{i:04d}": {"n": i} for i in range(3000)}
    r = await add_jobs(db, ROLE, jobs, root=ROOT, partitions=256, batch_bytes=20_000)
    assert (r.added, r.updated, r.unchanged) == (3000, 0, 0)
    assert r.transactions > 10  # many per transaction, but not all in one here
    r = await add_jobs(db, ROLE, jobs, root=ROOT)
    assert (r.added, r.updated, r.unchanged) == (0, 0, 3000)
    changed = [(f"job-{i:04d}", {"n": -i}, 2.0) for i in range(10)]
    r = await add_jobs(db, ROLE, [*changed, ("extra", None)], root=ROOT)
    assert (r.added, r.updated, r.unchanged) == (1, 10, 0)

    async def check(tr: Transaction) -> tuple[int, list[dict[str, Any]]]:
        raw = await tr.get(SPACE.job_count_key)
        assert raw is not None
        log = [decode(kv.key, kv.value) for kv in await tr.get_range(*SPACE.jobchange_range())]
        return int.from_bytes(raw, "little", signed=True), log

    count, log = await db.transact(check)
    assert count == 3001
    # One change-log entry per transaction that changed something, listing partitions.
    assert all("partitions" in e for e in log) and len(log) == r.transactions + 14
    share = await read_share(db.transact, SPACE, range(256), 256)
    assert share.jobs["job-0003"].spec == {"n": -3} and share.jobs["job-0003"].weight == 2.0
    assert share.jobs["job-0020"].spec == {"n": 20} and len(share.jobs) == 3001


async def test_add_jobs_checks_everything_before_writing(engine: Engine) -> None:
    db = engine.open_database("admin")
    bad: list[list[Any]] = [
        [("ok", None), ("", None)],
        [("ok", None), ("ok", 1)],
        [("ok", None), ("x", float("nan"))],
        [("ok", None), ("x", None, 0.0)],
        [("ok", None), ("x",)],
        [("ok", None), ("x", {"o": object()})],
    ]
    for jobs in bad:
        with pytest.raises(ConfigError) as e:
            await add_jobs(db, ROLE, jobs, root=ROOT)
        assert "job 1" in str(e.value) or "twice" in str(e.value), e.value

    async def nothing(tr: Transaction) -> list[Any]:
        return await tr.get_range(LAYOUT.prefix, LAYOUT.prefix + b"\xff")

    assert await db.transact(nothing) == []  # not even the role


async def test_one_job_and_many_refuse_the_same_weights(engine: Engine) -> None:
    """add_job took weight=True as 1.0 while add_jobs refused it (found when the store
    was split): both refuse a bool, zero, NaN and inf alike, and write nothing."""
    db = engine.open_database("admin")
    for weight in (True, False, 0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ConfigError, match="job weight"):
            await add_job(db, ROLE, "x", weight=weight, root=ROOT)
        with pytest.raises(ConfigError, match="job weight"):
            await add_jobs(db, ROLE, [("x", None, weight)], root=ROOT)

    async def nothing(tr: Transaction) -> list[Any]:
        return await tr.get_range(LAYOUT.prefix, LAYOUT.prefix + b"\xff")

    assert await db.transact(nothing) == []  # not even the role


async def test_add_jobs_says_how_much_was_written_when_it_fails(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = engine.open_database("admin")
    from fdbworkers._store import bulk as jobs_module

    real = jobs_module.tx_add_jobs
    calls = 0

    async def failing(tr: Transaction, *args: Any, **kwargs: Any) -> list[str]:
        nonlocal calls
        calls += 1
        if calls == 4:
            raise FDBError(2000)  # client_invalid_operation: not retried
        return await real(tr, *args, **kwargs)

    monkeypatch.setattr(jobs_module, "tx_add_jobs", failing)
    result = AddJobsResult()
    with pytest.raises(FDBError) as e:
        await add_jobs(
            db,
            ROLE,
            [(f"j{i:04d}", None) for i in range(2000)],
            root=ROOT,
            batch_bytes=5_000,
            concurrency=1,
            result=result,
        )
    assert result.added == 3 * result.added // 3 > 0 and result.transactions == 3
    note = "\n".join(getattr(e.value, "__notes__", []))
    assert f"{result.jobs:,} of 2,000 jobs were written" in note
    monkeypatch.setattr(jobs_module, "tx_add_jobs", real)
    again = await add_jobs(db, ROLE, [(f"j{i:04d}", None) for i in range(2000)], root=ROOT)
    assert again.unchanged == result.added and again.added == 2000 - result.added


async def test_a_running_worker_picks_up_a_bulk_add(autojump_clock: MockClock) -> None:
    engine = Engine(rng=random.Random(9))
    admin = engine.open_database("admin")
    await add_job(admin, ROLE, "first", root=ROOT, partitions=1024)
    async with trio.open_nursery() as nursery:
        fleet = Fleet(nursery, engine.open_database, role=ROLE, root=ROOT, options=OPTS)
        await fleet.start("w0")
        await fleet.start("w1")
        await wait_until(lambda: len(fleet.owners()) == 1, 60)
        more = [(f"bulk-{i:04d}", None) for i in range(1500)]
        await add_jobs(admin, ROLE, more, root=ROOT, batch_bytes=10_000)
        waited = await wait_until(lambda: len(fleet.owners()) == 1501, 60)
        assert waited < 5, waited  # by the change log, not by a periodic resync
        assert not fleet.ledger.violations
        nursery.cancel_scope.cancel()


async def test_group_commit_batches_and_survives_a_cancelled_leader(
    autojump_clock: MockClock,
) -> None:
    batches: list[list[str]] = []

    async def commit(items: list[str]) -> bool:
        batches.append(list(items))
        await trio.sleep(1.0)
        return True

    group = handlers_module._GroupCommit(commit, 10)
    results: dict[str, bool] = {}

    async def submit(item: str) -> None:
        results[item] = await group.submit(item)

    async with trio.open_nursery() as nursery:
        leader = trio.CancelScope()

        async def lead() -> None:
            with leader:
                await submit("first")

        nursery.start_soon(lead)
        await trio.sleep(0.1)
        for i in range(25):
            nursery.start_soon(submit, f"j{i:02d}")
        await trio.sleep(0.5)
        leader.cancel()  # in the middle of its commit: the others must carry on
    assert results == {f"j{i:02d}": True for i in range(25)}
    assert all(len(b) <= 10 for b in batches)
    assert len(batches) <= 5, batches
    assert {i for b in batches for i in b} >= set(results)


@settings(max_examples=200, deadline=None)
@given(st.text(min_size=1, max_size=40), st.sampled_from([1, 7, 64, 1024, 65536, 10**6]))
def test_a_prepared_job_is_in_job_partitions_partition(job_id: str, partitions: int) -> None:
    job = prepare_job(SPACE.jobs_range()[0], partitions, job_id, b"")
    assert job.partition == job_partition(job_id, partitions)
    assert job.key == SPACE.job_key(job.partition, job_id)
