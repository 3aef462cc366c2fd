"""The stored plan and the per-partition job counts (transactions; rules in _core/plan.py).

A role's plan (``(root, "r", role, "plan")`` header + ``"planchunk"`` chunks) says which
member owns which partition, and ``"plandelta"`` keeps the last few plans as deltas of
the one before (a worker one plan behind reads a few hundred bytes, not the whole plan).
Every worker reads it; a new one is written when the
membership it was made for changed, or when the jobs drifted out of balance
(:func:`tx_replan`). The per-partition counts (``"pcount"``) are kept by every job add and
remove with atomic ADDs, so they never conflict; a role created before the counts existed
is recounted once, page by page (:func:`recount`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

from .._core.keys import RoleSpace
from .._core.plan import Plan, decode_plan, encode_plan, make_plan, plan_chunks
from .._core.plan_delta import (
    PLAN_DELTAS_KEPT,
    apply_plan_delta,
    encode_plan_delta,
    rebuilt_plan,
    share_plan,
)
from .._core.records import decode, encode
from .._db import Database, ReadTransaction, Transaction, run_transaction
from .._errors import CorruptDataError, LayoutError
from .._log import get_logger

__all__ = [
    "NotCounted",
    "PlanHeader",
    "PlanRead",
    "recount",
    "tx_count_job",
    "tx_read_counts",
    "tx_read_plan",
    "tx_read_plan_seq",
    "tx_read_plan_since",
    "tx_replan",
]

_log = get_logger()

PlanHeader = tuple[int, int, bytes | None]  # (seq, chunks, digest: None before deltas)

#: Partitions recounted per transaction (a role created before the counts existed).
RECOUNT_PAGE = 2048


def _int64(n: int) -> bytes:
    return n.to_bytes(8, "little", signed=True)


_ZERO = _int64(0)


def tx_count_job(tr: Transaction, space: RoleSpace, partition: int, delta: int) -> None:
    """Count a job added (+1) to or removed (-1) from ``partition``. Blind atomic ops:
    no conflict with concurrent adds; the count is cleared when it reaches zero."""
    key = space.part_count_key(partition)
    tr.add(key, _int64(delta))
    if delta < 0:
        tr.compare_and_clear(key, _ZERO)


async def tx_read_plan_seq(tr: Transaction, space: RoleSpace) -> int | None:
    """The stored plan's sequence number (None: no plan yet). One key."""
    raw = await tr.get(space.plan_key)
    if raw is None:
        return None
    try:
        return _header(space, raw)[0]
    except CorruptDataError:
        return -1  # matches no plan read: the next planner overwrites it


def _header(space: RoleSpace, raw: bytes) -> PlanHeader:
    obj = decode(space.plan_key, raw)
    try:
        digest = obj.get("digest")
        return int(obj["seq"]), int(obj["chunks"]), digest if isinstance(digest, bytes) else None
    except (KeyError, TypeError, ValueError) as e:
        raise CorruptDataError(f"the plan header of role {space.role!r} is malformed: {e}") from e


async def tx_read_plan(tr: Transaction, space: RoleSpace, known: Plan | None = None) -> Plan | None:
    """The stored plan, or None when there is none (or it is corrupt: logged, and the
    next plan written replaces it). A plan of a newer format raises LayoutError.
    ``known``: see :func:`tx_read_plan_since`."""
    return (await tx_read_plan_since(tr, space, known))[0]


#: How :func:`tx_read_plan_since` read the plan: "none" (no plan, or a corrupt one),
#: "same" (the header names ``known``), "delta" (the deltas since ``known``), "whole".
PlanRead = Literal["none", "same", "delta", "whole"]


async def tx_read_plan_since(
    tr: Transaction, space: RoleSpace, known: Plan | None
) -> tuple[Plan | None, PlanRead]:
    """The stored plan, and how it was read (:data:`PlanRead`).

    ``known``: the plan the caller holds. When the stored plan is the same it is
    returned as is (one key read); when it is at most PLAN_DELTAS_KEPT plans newer, the
    deltas since ``known`` are read and applied (one short range) instead of the whole
    plan, and the result is used only if its digest is the header's (_core/plan_delta.py);
    otherwise the whole plan is read."""
    raw = await tr.get(space.plan_key)
    if raw is None:
        return None, "none"
    try:
        seq, n, digest = _header(space, raw)
        if known is not None and digest is not None:
            if known.seq == seq and known.digest() == digest:
                return known, "same"
            if 0 < seq - known.seq <= PLAN_DELTAS_KEPT:
                got = await _read_by_deltas(tr, space, known, seq, digest)
                if got is not None:
                    return got, "delta"
        chunks = await tr.get_range(*space.plan_chunks_range())
        data = b"".join(kv.value for kv in chunks[:n])
        if len(chunks) < n:
            raise CorruptDataError(
                f"the plan of role {space.role!r} has {len(chunks)} of {n} chunks"
            )
        plan = decode_plan(data, f"the plan of role {space.role!r}")
        if plan.seq != seq:
            raise CorruptDataError(f"the plan of role {space.role!r} is torn: {plan.seq} != {seq}")
        return plan, "whole"
    except CorruptDataError as e:
        _log.error("plan_corrupt", role=space.role, error=str(e))
        return None, "none"


async def _read_by_deltas(
    tr: Transaction, space: RoleSpace, known: Plan, seq: int, digest: bytes
) -> Plan | None:
    """Plan ``seq`` from ``known`` and the deltas between them, or None (then the
    caller reads the whole plan): a delta missing, of a newer format, corrupt, or not
    made from the plan it would apply to, or a result whose digest is not ``digest``."""
    kvs = await tr.get_range(space.plan_delta_key(known.seq + 1), space.plan_delta_key(seq + 1))
    try:
        if [space.plan_delta_seq(kv.key) for kv in kvs] != list(range(known.seq + 1, seq + 1)):
            return None  # trimmed, or written by a version without deltas
        got = rebuilt_plan(digest)
        if got is not None and got.seq == seq:
            return got  # another worker of this process applied the same deltas
        plan = known
        for kv in kvs:
            plan = apply_plan_delta(plan, kv.value, f"delta {plan.seq + 1} of role {space.role!r}")
    except (CorruptDataError, LayoutError) as e:
        _log.warning("plan_delta_unusable", role=space.role, seq=seq, error=str(e))
        return None
    if plan.digest() != digest:
        _log.warning("plan_delta_unusable", role=space.role, seq=seq, error="digest differs")
        return None
    share_plan(plan)
    return plan


async def tx_read_counts(tr: ReadTransaction, space: RoleSpace) -> dict[int, int] | None:
    """Partition -> jobs (non-empty partitions only), or None if the role was created
    before the counts existed and has not been recounted yet (:func:`recount`)."""
    if await tr.get(space.counted_key) is None:
        return None
    out: dict[int, int] = {}
    for kv in await tr.get_range(*space.part_counts_range()):
        n = int.from_bytes(kv.value, "little", signed=True)
        if n > 0:
            out[space.part_counts_partition(kv.key)] = n
    return out


async def tx_replan(
    tr: Transaction,
    space: RoleSpace,
    seen_seq: int | None,
    members: Mapping[str, float],
    epoch: bytes,
    partitions: int,
    *,
    force: bool = False,
) -> tuple[Plan | None, bool]:
    """Write the next plan for ``members`` unless another one was written since we read
    ``seen_seq`` (then return that one, unwritten). Returns (plan, wrote).

    The header read is a conflict read: of two concurrent planners one commits, the
    other retries, sees the new sequence and adopts it. The counts are read at
    snapshot: a concurrent job add is counted by the next plan, never a conflict.
    A stored plan made for a newer view is kept (a worker whose view lags never undoes
    a newer plan), and so is one for the same members unless ``force`` (the job counts
    drifted, or a leaver plans without itself)."""
    current = await tx_read_plan(tr, space)
    cur_seq = await tx_read_plan_seq(tr, space)
    if cur_seq != seen_seq and current is not None:
        return current, False
    if current is not None and (
        current.epoch > epoch or (not force and current.same_members(members))
    ):
        return current, False
    counts = await tx_read_counts(tr.snapshot, space)
    if counts is None:
        raise NotCounted(space.role)
    prev = current
    if prev is not None and prev.partitions != partitions:
        prev = None
    plan = make_plan(prev, members, counts, partitions, max(epoch, prev.epoch if prev else b""))
    if cur_seq is not None and plan.seq <= cur_seq:
        plan = Plan(cur_seq + 1, plan.epoch, plan.members, partitions, plan.overrides, plan.jobs)
    full = encode_plan(plan)
    data = plan_chunks(full)
    tr.clear_range(*space.plan_chunks_range())
    for i, chunk in enumerate(data):
        tr.set(space.plan_chunk_key(i), chunk)
    # The delta from the plan read here, in the same transaction: a reader that holds
    # it reads this instead of the chunks. Deltas older than the last PLAN_DELTAS_KEPT
    # go; without a delta (no plan before, other partitions, or a delta as large as
    # the plan) all go, and readers read the whole plan.
    delta = encode_plan_delta(current, plan, len(full)) if current is not None else None
    begin, end = space.plan_deltas_range()
    if delta is None:
        tr.clear_range(begin, end)
    else:
        tr.clear_range(begin, space.plan_delta_key(max(1, plan.seq - PLAN_DELTAS_KEPT + 1)))
        tr.set(space.plan_delta_key(plan.seq), delta)
    header = {"seq": plan.seq, "chunks": len(data), "digest": plan.digest()}
    tr.set(space.plan_key, encode(header))
    return plan, True


class NotCounted(Exception):
    """The role's jobs are not counted yet: :func:`recount` first."""


async def recount(db: Database, space: RoleSpace, partitions: int) -> int:
    """Count the jobs of a role created before the per-partition counts, a page of
    partitions per transaction, then mark it counted. Safe with concurrent adds and
    removes: each page reads its partitions' job keys (a conflict read) and sets their
    counts, so an add that commits first is in the read, and one that commits after
    adds to the count set. Returns the jobs counted."""
    total = 0
    for start in range(0, partitions, RECOUNT_PAGE):
        end = min(partitions, start + RECOUNT_PAGE)

        async def page(tr: Transaction, start: int = start, end: int = end) -> int:
            counts: dict[int, int] = {}
            begin = space.partition_range(start)[0]
            stop = space.partition_range(end - 1)[1]
            for kv in await tr.get_range(begin, stop):
                p = space.unpack(kv.key)[-2]
                if isinstance(p, int):
                    counts[p] = counts.get(p, 0) + 1
            tr.clear_range(space.part_count_key(start), space.part_count_key(end))
            for p, n in counts.items():
                tr.set(space.part_count_key(p), _int64(n))
            return sum(counts.values())

        tr = db.create_transaction()
        tr.set_timeout(10.0)
        total += await run_transaction(db, tr, page)

    async def mark(tr: Transaction) -> None:
        tr.set(space.counted_key, b"")

    await run_transaction(db, db.create_transaction(), mark)
    _log.info("jobs_recounted", role=space.role, jobs=total)
    return total
