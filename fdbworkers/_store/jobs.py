"""The job store: job records and the job change log, claims (whose commit versionstamp is
the fencing token), releases and handoffs. Transaction functions only: the runner
(fdbworkers._runner) decides when to call them."""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import trio

from .._core.assign import DEFAULT_PARTITIONS, job_partition
from .._core.keys import (
    VERSIONS_PER_SECOND,
    Claim,
    JobHealth,
    Layout,
    MemberRecord,
    RoleConfig,
    check_record_size,
    check_spec,
    decode,
    decode_retired,
    encode,
    epoch_value,
    split_stamped,
    stamped_value,
    validate_name,
)
from .._db import Transaction
from .._errors import ConfigError, CorruptDataError, FDBError
from .._log import get_logger
from .events import DEFAULT_EVENT_RETENTION, tx_event
from .members import tx_ensure_role
from .plan import tx_count_job

#: Change-log entries older than this (in cluster versions) are trimmed.
JOBCHANGE_RETENTION = 600.0


#: Handoffs read per inbox wake-up (a leaver hands over at most its own partitions; any
#: left over are dropped: those jobs take the normal path, after the settle window).
MAX_HANDOFFS = 100_000


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
    tr: Transaction, layout: Layout, role: str, partition: int, job_id: str, op: str
) -> None:
    tr.set_versionstamped_key(
        layout.jobchange_key_template(role, job_id),
        encode({"partition": partition, "job": job_id, "op": op}),
    )
    tr.set_versionstamped_value(layout.jobs_epoch_key(role), epoch_value())


async def _trim_job_changes(tr: Transaction, layout: Layout, role: str) -> None:
    rv = await tr.get_read_version()
    cut = rv - int(JOBCHANGE_RETENTION * VERSIONS_PER_SECOND)
    if cut > 0:
        begin, _ = layout.jobchange_range(role)
        tr.clear_range(begin, layout.jobchange_before_version(role, cut))


async def tx_add_job(
    tr: Transaction,
    layout: Layout,
    role: str,
    job_id: str,
    spec: Any = None,
    weight: float = 1.0,
    partitions: int = DEFAULT_PARTITIONS,
) -> tuple[JobRecord, bool]:
    """Add (or update) a job. Returns (record, changed). Idempotent: adding the same job
    with the same spec again changes nothing and wakes nobody."""
    validate_name("job id", job_id)
    if not isinstance(weight, int | float) or not 0 < weight < 1e9 or math.isnan(weight):
        raise ConfigError(f"job weight must be a positive number, got {weight!r}")
    check_spec(spec)
    try:
        encoded = JobRecord(job_id, 0, spec, float(weight), time.time()).encode()
    except Exception as e:
        raise ConfigError(f"job spec must be msgpack-serialisable: {e}") from e
    check_record_size("the job spec", encoded)
    cfg = await tx_ensure_role(tr, layout, role, partitions)
    p = job_partition(job_id, cfg.partitions)
    key = layout.job_key(role, p, job_id)
    old = await tr.get(key)
    if old is not None:
        prev = JobRecord.decode(job_id, p, key, old)
        if prev.spec == spec and prev.weight == weight:
            return prev, False
    rec = JobRecord(job_id, p, spec, float(weight), time.time())
    tr.set(key, rec.encode())
    if old is None:
        tr.add(layout.job_count_key(role), _ONE)
        tx_count_job(tr, layout, role, p, 1)
    _log_job_change(tr, layout, role, p, job_id, "add" if old is None else "update")
    await _trim_job_changes(tr, layout, role)
    return rec, True


async def tx_remove_job(tr: Transaction, layout: Layout, role: str, job_id: str) -> bool:
    """Remove a job; its owner stops it. False if there was no such job."""
    validate_name("job id", job_id)
    cfg = await tx_role_config(tr, layout, role)
    if cfg is None:
        return False
    p = job_partition(job_id, cfg.partitions)
    key = layout.job_key(role, p, job_id)
    if await tr.get(key) is None:
        return False
    tr.clear(key)
    tr.clear(layout.jobhealth_key(role, job_id))
    tr.add(layout.job_count_key(role), _MINUS_ONE)
    tx_count_job(tr, layout, role, p, -1)
    _log_job_change(tr, layout, role, p, job_id, "remove")
    await _trim_job_changes(tr, layout, role)
    return True


# --- job health (written by the owner while a job fails; keys.py: "jobhealth") --------


async def tx_write_job_health(
    tr: Transaction,
    layout: Layout,
    role: str,
    job_id: str,
    health: JobHealth,
    event: str | None = None,
    event_retention: float = DEFAULT_EVENT_RETENTION,
) -> None:
    """Record that ``job_id`` fails on its owner (a blind write: idempotent), with an
    audit event (``job_failing``, ``job_parked``) when ``event`` is given."""
    tr.set(layout.jobhealth_key(role, job_id), health.encode())
    if event is not None:
        await tx_event(
            tr,
            layout,
            event,
            role,
            event_retention,
            worker=health.wid,
            incarnation=health.incarnation,
            job=job_id,
            failures=health.failures,
            error=health.last_error[:200],
        )


async def tx_clear_job_health(
    tr: Transaction,
    layout: Layout,
    role: str,
    job_id: str,
    wid: str,
    incarnation: str,
    token: bytes,
    event: str | None = None,
    event_retention: float = DEFAULT_EVENT_RETENTION,
) -> bool:
    """Clear the job's health record if it is still the one this owner wrote (the job
    may have another owner by now, with a record of its own). True if cleared."""
    key = layout.jobhealth_key(role, job_id)
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
            layout,
            event,
            role,
            event_retention,
            worker=wid,
            incarnation=incarnation,
            job=job_id,
        )
    return True


async def tx_role_config(tr: Transaction, layout: Layout, role: str) -> RoleConfig | None:
    raw = await tr.get(layout.role_key(role))
    return None if raw is None else RoleConfig.decode(layout.role_key(role), raw)


async def tx_get_job(tr: Transaction, layout: Layout, role: str, job_id: str) -> JobRecord | None:
    cfg = await tx_role_config(tr, layout, role)
    if cfg is None:
        return None
    p = job_partition(job_id, cfg.partitions)
    key = layout.job_key(role, p, job_id)
    raw = await tr.get(key)
    return None if raw is None else JobRecord.decode(job_id, p, key, raw)


async def tx_read_partitions(
    tr: Transaction,
    layout: Layout,
    role: str,
    partitions: Iterable[int],
    *,
    snapshot: bool = False,
) -> tuple[dict[str, JobRecord], dict[str, Claim]]:
    """Jobs and claims of the given partitions.

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
    jobs_begin, claims_begin = layout.jobs_range(role)[0], layout.claims_range(role)[0]

    def take_job(key: bytes, value: bytes, wanted: set[int] | None) -> None:
        try:
            t = layout.unpack_below(jobs_begin, key)
            p, jid = int(t[-2]), str(t[-1])
            if wanted is None or p in wanted:
                jobs[jid] = JobRecord.decode(jid, p, key, value)
        except (CorruptDataError, ValueError, IndexError) as e:
            log.error("corrupt_job_record", key=key.hex(), error=str(e))

    def take_claim(key: bytes, value: bytes, wanted: set[int] | None) -> None:
        try:
            t = layout.unpack_below(claims_begin, key)
            if wanted is None or int(t[-2]) in wanted:
                claims[str(t[-1])] = Claim.decode(key, value)
        except (CorruptDataError, ValueError, IndexError) as e:
            log.error("corrupt_claim", key=key.hex(), error=str(e))

    raw_count = await reader.get(layout.job_count_key(role))
    count = int.from_bytes(raw_count, "little", signed=True) if raw_count else None
    if count is not None and count <= 2 * len(parts):
        wanted = set(parts)
        for kv in await reader.get_range(*layout.jobs_range(role)):
            take_job(kv.key, kv.value, wanted)
        for kv in await reader.get_range(*layout.claims_range(role)):
            take_claim(kv.key, kv.value, wanted)
        return jobs, claims

    async def one(p: int) -> None:
        for kv in await reader.get_range(*layout.partition_range(role, p)):
            take_job(kv.key, kv.value, None)
        for kv in await reader.get_range(*layout.claims_range(role, p)):
            take_claim(kv.key, kv.value, None)

    try:
        for i in range(0, len(parts), 64):
            async with trio.open_nursery() as nursery:
                for p in parts[i : i + 64]:
                    nursery.start_soon(one, p)
    except BaseExceptionGroup as group:
        # The retry loop (and the callers' ``except FDBError``) do not look into
        # exception groups: raise one of the FDB errors when nothing else failed.
        fdb_errors, rest = group.split(FDBError)
        if rest is not None or fdb_errors is None:
            raise
        first: BaseException = fdb_errors
        while isinstance(first, BaseExceptionGroup):
            first = first.exceptions[0]
        raise first from None
    return jobs, claims


async def tx_list_jobs(
    tr: Transaction, layout: Layout, role: str, *, limit: int = 0
) -> tuple[list[JobRecord], dict[str, Claim]]:
    """Every job of the role with its claim (for operators: reads the whole table)."""
    out: list[JobRecord] = []
    jb, je = layout.jobs_range(role)
    for kv in await tr.snapshot.get_range(jb, je, limit=limit):
        t = layout.unpack(kv.key)
        out.append(JobRecord.decode(str(t[-1]), int(t[-2]), kv.key, kv.value))
    claims: dict[str, Claim] = {}
    cb, ce = layout.claims_range(role)
    for kv in await tr.snapshot.get_range(cb, ce):
        claims[str(layout.unpack(kv.key)[-1])] = Claim.decode(kv.key, kv.value)
    return out, claims


@dataclass(frozen=True)
class ClaimOutcome:
    """``kind``: "claimed" (token set), "held" (a live holder), "superseded" (the holder
    was replaced by a newer incarnation of its id: wait its timeout), "gone" (no job),
    "not_member" (we are not a member any more)."""

    kind: str
    token: bytes | None = None
    holder: Claim | None = None
    holder_timeout: float = 0.0


async def tx_claim(
    tr: Transaction,
    layout: Layout,
    role: str,
    partition: int,
    job_id: str,
    wid: str,
    incarnation: str,
    nonce: str,
    take_superseded: frozenset[str],
    lease_timeout: float | None = None,
) -> ClaimOutcome:
    """Claim a job for ``wid``/``incarnation`` if nobody else may still run it: the
    claim is absent, or held by us, or its holder is no longer a member, or its holder
    incarnation is retired (see ``_core.keys.retire``), or it was superseded by a newer
    incarnation of its id and the claimant already waited out the longest lease that
    holder may believe it holds (``take_superseded``: the claimant's own clock)."""
    me_key = layout.member_key(role, wid)
    me_raw = await tr.get(me_key)  # conflicts with our own eviction
    if me_raw is None or MemberRecord.decode(wid, me_key, me_raw).incarnation != incarnation:
        return ClaimOutcome("not_member")
    ckey = layout.claim_key(role, partition, job_id)
    raw = await tr.get(ckey)
    if raw is not None:
        stamp, obj = split_stamped(ckey, raw)
        holder = Claim(stamp, str(obj.get("wid")), str(obj.get("incarnation")))
        if holder.wid == wid and holder.incarnation == incarnation and obj.get("nonce") == nonce:
            return ClaimOutcome("claimed", stamp)  # an earlier attempt committed (1021)
        if not (holder.wid == wid and holder.incarnation == incarnation):
            holder = Claim(stamp, holder.wid, holder.incarnation, _claim_timeout(obj))
            hkey = layout.member_key(role, holder.wid)
            hraw = await tr.get(hkey)
            if hraw is None:
                # Its id is no longer a member. If that incarnation was itself evicted or
                # left, it is retired: take the claim. Otherwise a newer incarnation
                # superseded it and was removed since (a restart with a shorter timeout,
                # then a leave or an eviction of the newcomer): the holder may still
                # believe in a lease as long as its own timeout, recorded in the claim.
                if (
                    holder.timeout is not None
                    and holder.incarnation not in take_superseded
                    and not await _retired(tr, layout, role, holder)
                ):
                    return ClaimOutcome("superseded", holder=holder, holder_timeout=holder.timeout)
            else:
                try:
                    hrec = MemberRecord.decode(holder.wid, hkey, hraw)
                except CorruptDataError:
                    return ClaimOutcome("held", holder=holder)
                if hrec.incarnation == holder.incarnation:
                    return ClaimOutcome("held", holder=holder)
                if holder.incarnation not in take_superseded and not await _retired(
                    tr, layout, role, holder
                ):
                    # The superseded holder may still believe it holds a lease as long as
                    # its own timeout (in the claim), which a restart may have lowered.
                    waits = [hrec.timeout, holder.timeout or 0.0]
                    if hrec.replaced == holder.incarnation and hrec.replaced_timeout:
                        waits.append(hrec.replaced_timeout)
                    return ClaimOutcome("superseded", holder=holder, holder_timeout=max(waits))
    if await tr.get(layout.job_key(role, partition, job_id)) is None:
        return ClaimOutcome("gone")
    value: dict[str, Any] = {"wid": wid, "incarnation": incarnation, "nonce": nonce}
    if lease_timeout is not None:
        value["timeout"] = lease_timeout
    tr.set_versionstamped_value(ckey, stamped_value(value))
    return ClaimOutcome("claimed")


def _claim_timeout(obj: dict[str, Any]) -> float | None:
    t = obj.get("timeout")
    if isinstance(t, int | float) and not isinstance(t, bool) and math.isfinite(t) and t > 0:
        return float(t)
    return None


async def _retired(tr: Transaction, layout: Layout, role: str, holder: Claim) -> bool:
    """True if the holder's incarnation is attested to run nothing any more."""
    key = layout.retired_key(role, holder.wid)
    try:
        return holder.incarnation in decode_retired(key, await tr.get(key))
    except CorruptDataError:
        return False  # a corrupt marker only loses the shortcut: the ordinary wait applies


async def tx_release(
    tr: Transaction,
    layout: Layout,
    role: str,
    partition: int,
    job_id: str,
    wid: str,
    incarnation: str,
    token: bytes | None,
    notify: str | None,
    handoff: bool = False,
) -> bool:
    """Clear our claim of a stopped job and wake ``notify`` (its next owner). With
    ``handoff`` (a worker leaving for good) also hand the job's partition to ``notify``:
    it may claim the partition's jobs before its settled view shows us gone (see
    ``JobRunner._adopt``). Idempotent: a retry after 1021 writes the same keys."""
    ckey = layout.claim_key(role, partition, job_id)
    raw = await tr.get(ckey)
    released = False
    if raw is not None:
        c = Claim.decode(ckey, raw)
        if c.wid == wid and c.incarnation == incarnation and (token is None or c.token == token):
            tr.clear(ckey)
            released = True
    if notify is not None:
        if handoff:
            tr.set(
                layout.handoff_key(role, notify, partition),
                encode({"from": wid, "incarnation": incarnation}),
            )
        tr.set_versionstamped_value(layout.inbox_key(role, notify), epoch_value())
    return released


async def tx_take_handoffs(
    tr: Transaction, layout: Layout, role: str, wid: str
) -> dict[int, tuple[str, str]]:
    """Read and clear the partitions handed to ``wid``: partition -> (from, incarnation)."""
    begin, end = layout.handoffs_range(role, wid)
    out: dict[int, tuple[str, str]] = {}
    for kv in await tr.get_range(begin, end, limit=MAX_HANDOFFS):
        try:
            obj = decode(kv.key, kv.value)
            partition = int(layout.unpack_below(begin, kv.key)[0])
            out[partition] = (str(obj["from"]), str(obj["incarnation"]))
        except (CorruptDataError, KeyError, ValueError, IndexError):
            get_logger("fdbworkers").error("corrupt_handoff", key=kv.key.hex())
    tr.clear_range(begin, end)
    return out
