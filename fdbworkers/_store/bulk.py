"""Bulk adds: jobs checked and placed before any transaction (``jobs.check_job``,
``prepare_job``), written many per transaction (``tx_add_jobs``: one counter add, one
change-log entry), in batches by size with a few transactions in flight
(``add_jobs_in_batches``)."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import anyio

from .._core.assign import stable_hash64
from .._core.keys import RoleSpace
from .._core.records import encode, epoch_value
from .._core.tuples import pack_int_str
from .._db import Transaction
from .._errors import CorruptDataError, FDBError
from .batch import read_keys
from .jobs import JobRecord, trim_job_changes
from .plan import tx_count_job


@dataclass(frozen=True, slots=True)
class NewJob:
    """A job of a bulk add, checked and encoded before any transaction."""

    id: str
    partition: int
    spec: Any
    weight: float
    key: bytes
    value: bytes


def prepare_job(
    head: bytes,
    partitions: int,
    job_id: str,
    value: bytes,
    spec: Any = None,
    weight: float = 1.0,
) -> NewJob:
    """A checked job (``value`` from :func:`check_job`) placed in its partition; ``head``
    is the begin of the role's ``Layout.jobs_range``. The partition is
    :func:`job_partition`'s, without re-checking the partition count for every job."""
    p = (stable_hash64(job_id.encode("utf-8")) * partitions) >> 64
    return NewJob(job_id, p, spec, float(weight), head + pack_int_str(p, job_id), value)


async def tx_add_jobs(
    tr: Transaction,
    space: RoleSpace,
    jobs: Sequence[NewJob],
    keys_per_partition: float = 0.0,
) -> list[str]:
    """Add (or update) many jobs in one transaction, each as :func:`tx_add_job` would:
    "added", "updated" or "unchanged" per job, in order. ``jobs`` must be sorted by key
    with distinct ids (their role exists). The existing records are read by range where
    jobs are neighbours (``read_keys``); the job counter is added to once (and each
    partition's counter once), and the change log gets one entry for the whole
    transaction, listing the partitions that changed (readers re-read those)."""
    keys = [j.key for j in jobs]
    # One read conflict per range read: a concurrent write to a job in between (an
    # add, an update, a remove) makes this transaction retry, which is all it needs.
    olds = await read_keys(
        tr, keys, [j.partition for j in jobs], keys_per_partition, conflicts="range"
    )
    out: list[str] = []
    added = 0
    added_to: dict[int, int] = {}
    changed: set[int] = set()
    first: str | None = None
    for job, old in zip(jobs, olds, strict=True):
        if old is not None:
            try:
                prev: JobRecord | None = JobRecord.decode(job.id, job.partition, job.key, old)
            except CorruptDataError:
                prev = None  # overwritten with the record asked for
            if prev is not None and prev.spec == job.spec and prev.weight == job.weight:
                out.append("unchanged")
                continue
            out.append("updated")
        else:
            out.append("added")
            added += 1
            added_to[job.partition] = added_to.get(job.partition, 0) + 1
        tr.set(job.key, job.value)
        changed.add(job.partition)
        first = first or job.id
    if added:
        tr.add(space.job_count_key, added.to_bytes(8, "little", signed=True))
        for p, n in added_to.items():  # what the stored plan balances
            tx_count_job(tr, space, p, n)
    if first is not None:
        tr.set_versionstamped_key(
            space.jobchange_key_template(first),
            encode({"partitions": sorted(changed), "op": "add", "jobs": len(jobs) - added}),
        )
        tr.set_versionstamped_value(space.jobs_epoch_key, epoch_value())
        await trim_job_changes(tr, space)
    return out


@dataclass
class AddJobsResult:
    """What a bulk add did: jobs added, updated (another spec or weight) and unchanged,
    in the transactions that committed."""

    added: int = 0
    updated: int = 0
    unchanged: int = 0
    transactions: int = 0
    seconds: float = 0.0

    @property
    def jobs(self) -> int:
        return self.added + self.updated + self.unchanged


#: A bulk add's transactions: about this many bytes of keys and values each ...
ADD_BATCH_BYTES = 400_000
#: ... and at most this many jobs.
ADD_BATCH_JOBS = 5000


def batches_by_size(
    jobs: Sequence[NewJob], max_bytes: int = ADD_BATCH_BYTES, max_jobs: int = ADD_BATCH_JOBS
) -> Iterator[tuple[int, int]]:
    """Cut ``jobs`` into consecutive ``[lo, hi)`` of at most ``max_bytes`` (at least one
    job each) and ``max_jobs`` (lazily: each batch when it is asked for)."""
    lo, size = 0, 0
    for i in range(len(jobs)):
        job = jobs[i]
        if i > lo and (size + len(job.key) + len(job.value) > max_bytes or i - lo >= max_jobs):
            yield lo, i
            lo, size = i, 0
        size += len(job.key) + len(job.value)
    if lo < len(jobs):
        yield lo, len(jobs)


async def add_jobs_in_batches(
    transact: Callable[..., Awaitable[Any]],
    space: RoleSpace,
    jobs: Sequence[NewJob],
    result: AddJobsResult,
    *,
    keys_per_partition: float = 0.0,
    max_bytes: int = ADD_BATCH_BYTES,
    concurrency: int = 4,
) -> None:
    """Write ``jobs`` (sorted by key, distinct) with :func:`tx_add_jobs`, one batch per
    transaction, ``concurrency`` transactions in flight. ``result`` counts what the
    committed transactions did, also when this raises: after the first failure no new
    batch starts, the ones in flight finish, and the first error is raised (with a note
    saying how much was written)."""
    it = batches_by_size(jobs, max_bytes)
    errors: list[BaseException] = []
    inflight: dict[int, int] = {}
    t0 = time.perf_counter()

    async def worker(slot: int) -> None:
        for lo, hi in it:
            if errors:
                return
            inflight[slot] = hi - lo
            try:
                statuses = await transact(tx_add_jobs, space, jobs[lo:hi], keys_per_partition)
            except FDBError as e:
                errors.append(e)
                return
            finally:
                inflight.pop(slot, None)
            result.transactions += 1
            for s in statuses:
                if s == "added":
                    result.added += 1
                elif s == "updated":
                    result.updated += 1
                else:
                    result.unchanged += 1

    try:
        async with anyio.create_task_group() as nursery:
            for slot in range(max(1, concurrency)):
                nursery.start_soon(worker, slot)
    finally:
        result.seconds = time.perf_counter() - t0
    if errors:
        e = errors[0]
        e.add_note(
            f"{result.jobs:,} of {len(jobs):,} jobs were written before this error "
            f"({result.added:,} added, {result.updated:,} updated, {result.unchanged:,} "
            "unchanged); the failed batch may or may not have been written. Adding the "
            "same jobs again is safe: a job already there with the same spec is left as is."
        )
        raise e
