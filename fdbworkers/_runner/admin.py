"""Adding and removing jobs from outside a worker: :func:`add_job`, :func:`add_jobs` (many
per transaction, checked before anything is written) and :func:`remove_job`."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any

from .._core.keys import Layout, RoleSpace, validate_name
from .._db import Database, Transaction
from .._errors import ConfigError
from .._loop import checkpoint
from .._store.bulk import ADD_BATCH_BYTES, AddJobsResult, NewJob, add_jobs_in_batches, prepare_job
from .._store.jobs import check_job, tx_add_job, tx_remove_job
from .._store.members import tx_ensure_role
from .._worker import check_database
from .._worker_options import DEFAULT_PARTITIONS


async def add_job(
    db: Database,
    role: str,
    job_id: str,
    spec: Any = None,
    *,
    weight: float = 1.0,
    root: str | bytes | tuple[str, ...] | None = None,
    partitions: int = DEFAULT_PARTITIONS,
) -> bool:
    """Add or update a job; True if anything changed. ``partitions`` applies only when
    this call creates the role."""
    check_database(db)
    validate_name("role", role)
    space = Layout.for_root(root).role(role)
    _, changed = await db.transact(tx_add_job, space, job_id, spec, weight, partitions)
    return bool(changed)


async def add_jobs(
    db: Database,
    role: str,
    jobs: Mapping[str, Any] | Iterable[tuple[str, Any] | tuple[str, Any, float]],
    *,
    weight: float = 1.0,
    root: str | bytes | tuple[str, ...] | None = None,
    partitions: int = DEFAULT_PARTITIONS,
    concurrency: int = 4,
    batch_bytes: int = ADD_BATCH_BYTES,
    result: AddJobsResult | None = None,
) -> AddJobsResult:
    """Add or update many jobs at once: ``jobs`` maps job ids to specs, or is an iterable
    of ``(id, spec)`` or ``(id, spec, weight)``. Each job ends up as :func:`add_job`
    would leave it (the same spec and weight again: unchanged), but many jobs share a
    transaction (about ``batch_bytes`` of keys and values each) and ``concurrency``
    transactions are in flight.

    Every job is checked before anything is written: a bad id, spec or weight, or an
    id given twice, raises ConfigError naming its position, and nothing is written.
    A database error after some transactions committed is raised with a note saying
    how many jobs were written; ``result`` (if given) holds the counts too. Adding the
    same jobs again is safe. ``partitions`` applies only when this call creates the
    role."""
    check_database(db)
    validate_name("role", role)
    if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
        raise ConfigError(f"concurrency must be an integer >= 1, got {concurrency!r}")
    if isinstance(batch_bytes, bool) or not isinstance(batch_bytes, int) or batch_bytes < 1:
        raise ConfigError(f"batch_bytes must be an integer >= 1, got {batch_bytes!r}")
    space = Layout.for_root(root).role(role)
    items: Iterable[Any] = jobs.items() if isinstance(jobs, Mapping) else jobs
    checked = await _check_jobs(items, weight)
    out = result if result is not None else AddJobsResult()
    if not checked:
        return out
    cfg = await db.transact(tx_ensure_role, space, partitions)
    prepared = await _in_key_order(space.job_head, cfg.partitions, checked)
    del checked
    count = await db.transact(_tx_job_count, space)
    await add_jobs_in_batches(
        db.transact,
        space,
        prepared,
        out,
        keys_per_partition=count / cfg.partitions,
        max_bytes=batch_bytes,
        concurrency=concurrency,
    )
    return out


async def _check_jobs(items: Iterable[Any], weight: float) -> list[tuple[str, Any, float, bytes]]:
    """Every job of ``items`` checked (``check_job``) before anything is written: a bad
    item, or an id given twice, raises ConfigError naming its position. Returns
    ``(id, spec, weight, value)`` per job."""
    checked: list[tuple[str, Any, float, bytes]] = []
    seen: dict[str, int] = {}
    now = time.time()
    for i, item in enumerate(items):
        if i % 2000 == 1999:
            await checkpoint()  # a long input must not stall the loop
        if not isinstance(item, tuple) or len(item) not in (2, 3):
            raise ConfigError(
                f"job {i}: expected (id, spec) or (id, spec, weight), got {item!r:.100}"
            )
        jid, spec = item[0], item[1]
        w = item[2] if len(item) == 3 else weight
        try:
            value = check_job(jid, spec, w, now)
        except ConfigError as e:
            raise ConfigError(f"job {i} ({jid!r:.100}): {e}") from None
        if jid in seen:
            raise ConfigError(f"job {jid!r} is given twice (jobs {seen[jid]} and {i})")
        seen[jid] = i
        checked.append((jid, spec, float(w), value))
    return checked


async def _in_key_order(
    head: bytes, partitions: int, checked: list[tuple[str, Any, float, bytes]]
) -> list[NewJob]:
    """The checked jobs placed (``prepare_job``) in key order (partition, then id), by
    buckets: no long sort stalls the loop."""
    buckets: dict[int, list[NewJob]] = {}
    for i, (jid, spec, w, value) in enumerate(checked):
        if i % 2000 == 1999:
            await checkpoint()
        job = prepare_job(head, partitions, jid, value, spec, w)
        bucket = buckets.get(job.partition)
        if bucket is None:
            buckets[job.partition] = [job]
        else:
            bucket.append(job)
    prepared: list[NewJob] = []
    for i, p in enumerate(sorted(buckets)):
        if i % 2000 == 1999:
            await checkpoint()
        bucket = buckets[p]
        bucket.sort(key=lambda j: j.id)
        prepared.extend(bucket)
    return prepared


async def _tx_job_count(tr: Transaction, space: RoleSpace) -> int:
    raw = await tr.snapshot.get(space.job_count_key)
    return max(0, int.from_bytes(raw, "little", signed=True)) if raw else 0


async def remove_job(
    db: Database, role: str, job_id: str, *, root: str | bytes | tuple[str, ...] | None = None
) -> bool:
    check_database(db)
    validate_name("role", role)
    return bool(await db.transact(tx_remove_job, Layout.for_root(root).role(role), job_id))
