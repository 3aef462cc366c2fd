"""The job store: job records and the job change log, adds and removes, job health, and
the reads of jobs with their claims. Transaction functions only: the runner
(fdbworkers._runner) decides when to call them. Claims, releases and handoffs are in
``claims.py``, bulk adds in ``bulk.py``."""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from .._core.assign import DEFAULT_PARTITIONS, job_partition
from .._core.keys import RoleSpace, validate_name
from .._core.records import (
    VERSIONS_PER_SECOND,
    Claim,
    JobHealth,
    RoleConfig,
    check_record_size,
    check_spec,
    decode,
    encode,
    epoch_value,
)
from .._db import ReadTransaction, Transaction
from .._errors import ConfigError, CorruptDataError
from .._log import get_logger
from .batch import gather
from .events import DEFAULT_EVENT_RETENTION, tx_event
from .members import tx_ensure_role
from .plan import tx_count_job

#: Change-log entries older than this (in cluster versions) are trimmed.
JOBCHANGE_RETENTION = 600.0


_ONE = (1).to_bytes(8, "little", signed=True)


_MINUS_ONE = (-1).to_bytes(8, "little", signed=True)


@dataclass(frozen=True)
class JobRecord:
    """A job as stored: id, partition, the application's spec (any msgpack value)."""

    id: str
    partition: int
    spec: Any = None
    weight: float = 1.0
    added_at: float = 0.0

    def encode(self) -> bytes:
        return encode({"spec": self.spec, "weight": self.weight, "added_at": self.added_at})

    @classmethod
    def decode(cls, job_id: str, partition: int, key: bytes, value: bytes) -> JobRecord:
        obj = decode(key, value)
        return cls(
            job_id,
            partition,
            obj.get("spec"),
            float(obj.get("weight", 1.0)),
            float(obj.get("added_at", 0.0)),
        )


def _log_job_change(
    tr: Transaction, space: RoleSpace, partition: int, job_id: str, op: str
) -> None:
    tr.set_versionstamped_key(
        space.jobchange_key_template(job_id),
        encode({"partition": partition, "job": job_id, "op": op}),
    )
    tr.set_versionstamped_value(space.jobs_epoch_key, epoch_value())


async def trim_job_changes(tr: Transaction, space: RoleSpace) -> None:
    rv = await tr.get_read_version()
    cut = rv - int(JOBCHANGE_RETENTION * VERSIONS_PER_SECOND)
    if cut > 0:
        begin, _ = space.jobchange_range()
        tr.clear_range(begin, space.jobchange_before_version(cut))


def check_job(
    job_id: Any, spec: Any = None, weight: Any = 1.0, added_at: float | None = None
) -> bytes:
    """The encoded record of a job to add, or ConfigError saying what is wrong: the
    checks of :func:`tx_add_job` and of the bulk add, one for both. ``added_at``: the
    wall time to record (now)."""
    validate_name("job id", job_id)
    if (
        isinstance(weight, bool)
        or not isinstance(weight, int | float)
        or not 0 < weight < 1e9
        or math.isnan(weight)
    ):
        raise ConfigError(f"job weight must be a positive number, got {weight!r}")
    check_spec(spec)
    try:
        at = time.time() if added_at is None else added_at
        encoded = JobRecord(job_id, 0, spec, float(weight), at).encode()
    except Exception as e:
        raise ConfigError(f"job spec must be msgpack-serialisable: {e}") from e
    check_record_size("the job spec", encoded)
    return encoded


async def tx_add_job(
    tr: Transaction,
    space: RoleSpace,
    job_id: str,
    spec: Any = None,
    weight: float = 1.0,
    partitions: int = DEFAULT_PARTITIONS,
) -> tuple[JobRecord, bool]:
    """Add (or update) a job. Returns (record, changed). Idempotent: adding the same job
    with the same spec again changes nothing and wakes nobody."""
    check_job(job_id, spec, weight)
    cfg = await tx_ensure_role(tr, space, partitions)
    p = job_partition(job_id, cfg.partitions)
    key = space.job_key(p, job_id)
    old = await tr.get(key)
    if old is not None:
        prev = JobRecord.decode(job_id, p, key, old)
        if prev.spec == spec and prev.weight == weight:
            return prev, False
    rec = JobRecord(job_id, p, spec, float(weight), time.time())
    tr.set(key, rec.encode())
    if old is None:
        tr.add(space.job_count_key, _ONE)
        tx_count_job(tr, space, p, 1)
    _log_job_change(tr, space, p, job_id, "add" if old is None else "update")
    await trim_job_changes(tr, space)
    return rec, True


async def tx_remove_job(tr: Transaction, space: RoleSpace, job_id: str) -> bool:
    """Remove a job; its owner stops it. False if there was no such job."""
    validate_name("job id", job_id)
    cfg = await tx_role_config(tr, space)
    if cfg is None:
        return False
    p = job_partition(job_id, cfg.partitions)
    key = space.job_key(p, job_id)
    if await tr.get(key) is None:
        return False
    tr.clear(key)
    tr.clear(space.jobhealth_key(job_id))
    tr.add(space.job_count_key, _MINUS_ONE)
    tx_count_job(tr, space, p, -1)
    _log_job_change(tr, space, p, job_id, "remove")
    await trim_job_changes(tr, space)
    return True


# --- job health (written by the owner while a job fails; keys.py: "jobhealth") --------


async def tx_write_job_health(
    tr: Transaction,
    space: RoleSpace,
    job_id: str,
    health: JobHealth,
    event: str | None = None,
    event_retention: float = DEFAULT_EVENT_RETENTION,
) -> None:
    """Record that ``job_id`` fails on its owner (a blind write: idempotent), with an
    audit event (``job_failing``, ``job_parked``) when ``event`` is given."""
    tr.set(space.jobhealth_key(job_id), health.encode())
    if event is not None:
        await tx_event(
            tr,
            space,
            event,
            event_retention,
            worker=health.wid,
            incarnation=health.incarnation,
            job=job_id,
            failures=health.failures,
            error=health.last_error[:200],
        )


async def tx_clear_job_health(
    tr: Transaction,
    space: RoleSpace,
    job_id: str,
    wid: str,
    incarnation: str,
    token: bytes,
    event: str | None = None,
    event_retention: float = DEFAULT_EVENT_RETENTION,
) -> bool:
    """Clear the job's health record if it is still the one this owner wrote (the job
    may have another owner by now, with a record of its own). True if cleared."""
    key = space.jobhealth_key(job_id)
    raw = await tr.get(key)
    if raw is None:
        return False
    try:
        rec = JobHealth.decode(key, raw)
    except CorruptDataError:
        tr.clear(key)
        return True
    if (rec.wid, rec.incarnation, rec.token) != (wid, incarnation, token):
        return False
    tr.clear(key)
    if event is not None:
        await tx_event(
            tr,
            space,
            event,
            event_retention,
            worker=wid,
            incarnation=incarnation,
            job=job_id,
        )
    return True


async def tx_role_config(tr: Transaction, space: RoleSpace) -> RoleConfig | None:
    raw = await tr.get(space.config_key)
    return None if raw is None else RoleConfig.decode(space.config_key, raw)


async def tx_get_job(tr: Transaction, space: RoleSpace, job_id: str) -> JobRecord | None:
    cfg = await tx_role_config(tr, space)
    if cfg is None:
        return None
    p = job_partition(job_id, cfg.partitions)
    key = space.job_key(p, job_id)
    raw = await tr.get(key)
    return None if raw is None else JobRecord.decode(job_id, p, key, raw)


async def tx_read_partitions(
    tr: Transaction,
    space: RoleSpace,
    partitions: Iterable[int],
    *,
    snapshot: bool = False,
) -> tuple[dict[str, JobRecord], dict[str, Claim]]:
    """Jobs and claims of the given partitions, in one transaction (for tools and the
    latency benchmark; the runner reads its share in pages: ``_store/share.py``).

    Reads O(J/N) keys either way, choosing the cheaper number of requests: when the
    role has few jobs (its atomic job counter says at most two per wanted partition),
    one scan of the role's jobs and claims, filtered; otherwise two range reads per
    partition, issued concurrently."""
    jobs: dict[str, JobRecord] = {}
    claims: dict[str, Claim] = {}
    reader = tr.snapshot if snapshot else tr
    parts = sorted(set(partitions))
    if not parts:
        return jobs, claims
    log = get_logger("fdbworkers")
    # Keys are decoded below these (the root and role are the same for every key).
    jobs_begin, claims_begin = space.job_head, space.claim_head

    def take_job(key: bytes, value: bytes, wanted: set[int] | None) -> None:
        try:
            t = space.unpack_below(jobs_begin, key)
            p, jid = int(t[-2]), str(t[-1])
            if wanted is None or p in wanted:
                jobs[jid] = JobRecord.decode(jid, p, key, value)
        except (CorruptDataError, ValueError, IndexError) as e:
            log.error("corrupt_job_record", key=key.hex(), error=str(e))

    def take_claim(key: bytes, value: bytes, wanted: set[int] | None) -> None:
        try:
            t = space.unpack_below(claims_begin, key)
            if wanted is None or int(t[-2]) in wanted:
                claims[str(t[-1])] = Claim.decode(key, value)
        except (CorruptDataError, ValueError, IndexError) as e:
            log.error("corrupt_claim", key=key.hex(), error=str(e))

    if await _few_jobs(reader, space, len(parts)):
        wanted = set(parts)
        for kv in await reader.get_range(*space.jobs_range()):
            take_job(kv.key, kv.value, wanted)
        for kv in await reader.get_range(*space.claims_range()):
            take_claim(kv.key, kv.value, wanted)
        return jobs, claims

    async def one(lo: int, hi: int) -> None:
        p = parts[lo]
        for kv in await reader.get_range(*space.partition_range(p)):
            take_job(kv.key, kv.value, None)
        for kv in await reader.get_range(*space.claims_range(p)):
            take_claim(kv.key, kv.value, None)

    await gather(one, [(i, i + 1) for i in range(len(parts))])
    return jobs, claims


async def _few_jobs(reader: ReadTransaction, space: RoleSpace, parts: int) -> bool:
    """True if the role's atomic job counter says at most two jobs per wanted partition
    (of ``parts``): then one scan of the role costs fewer requests than two per partition."""
    raw_count = await reader.get(space.job_count_key)
    count = int.from_bytes(raw_count, "little", signed=True) if raw_count else None
    return count is not None and count <= 2 * parts


async def tx_list_jobs(
    tr: Transaction, space: RoleSpace, *, limit: int = 0
) -> tuple[list[JobRecord], dict[str, Claim]]:
    """Every job of the role with its claim (for operators: reads the whole table)."""
    out: list[JobRecord] = []
    jb, je = space.jobs_range()
    for kv in await tr.snapshot.get_range(jb, je, limit=limit):
        t = space.unpack(kv.key)
        out.append(JobRecord.decode(str(t[-1]), int(t[-2]), kv.key, kv.value))
    claims: dict[str, Claim] = {}
    cb, ce = space.claims_range()
    for kv in await tr.snapshot.get_range(cb, ce):
        claims[str(space.unpack(kv.key)[-1])] = Claim.decode(kv.key, kv.value)
    return out, claims
