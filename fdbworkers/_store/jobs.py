"""The job store: job records and the job change log, claims (whose commit versionstamp is
the fencing token), releases and handoffs. Transaction functions only: the runner
(fdbworkers._runner) decides when to call them."""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import anyio

from .._core.assign import DEFAULT_PARTITIONS, job_partition, stable_hash64
from .._core.claims import CORRUPT, ClaimDecision, HolderRecord, StoredClaim, decide_claim
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
from .._core.share import group_sorted
from .._core.tuples import pack_int_str
from .._db import Transaction
from .._errors import ConfigError, CorruptDataError, FDBError
from .._log import get_logger
from .._loop import open_task_group
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

    async def one(lo: int, hi: int) -> None:
        p = parts[lo]
        for kv in await reader.get_range(*layout.partition_range(role, p)):
            take_job(kv.key, kv.value, None)
        for kv in await reader.get_range(*layout.claims_range(role, p)):
            take_claim(kv.key, kv.value, None)

    await gather(one, [(i, i + 1) for i in range(len(parts))])
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


async def gather(
    fn: Callable[[int, int], Coroutine[Any, Any, None]],
    spans: Sequence[tuple[int, int]],
    width: int = 64,
) -> None:
    """``fn(lo, hi)`` for every span, at most ``width`` at a time (reads of one
    transaction, issued together). An FDB error is raised as itself, not as an exception
    group: the retry loop (and the callers' ``except FDBError``) do not look into groups.
    A single span (a claim of one job) runs in the calling task; the others in the
    loop's own task group (``_loop.open_task_group``: a task per read, on the claim
    path)."""
    if len(spans) == 1:
        await fn(*spans[0])
        return
    try:
        for i in range(0, len(spans), width):
            async with open_task_group() as nursery:
                for lo, hi in spans[i : i + width]:
                    nursery.start_soon(fn, lo, hi)
    except BaseExceptionGroup as group:
        cancelled, _ = group.split(anyio.get_cancelled_exc_class())
        if cancelled is not None:
            # Being cancelled (a deadline, a stop): that is what must reach the cancel
            # scope; FDB errors of the reads it interrupted are moot.
            raise cancelled from None
        fdb_errors, rest = group.split(FDBError)
        if rest is not None or fdb_errors is None:
            raise
        first: BaseException = fdb_errors
        while isinstance(first, BaseExceptionGroup):
            first = first.exceptions[0]
        raise first from None


async def read_keys(
    tr: Transaction,
    keys: Sequence[bytes],
    partitions: Sequence[int],
    keys_per_partition: float = 0.0,
    *,
    conflicts: str = "keys",
) -> list[bytes | None]:
    """The values of ``keys`` (sorted, of one subspace keyed by partition first, with the
    partition of each), in few requests: neighbouring keys (see
    ``_core.share.group_sorted``) by one range read, a lone key by a ``get``.

    The read conflicts, from the tightest to the cheapest to add:

    * ``"keys"``: one per key, what a non-snapshot ``get`` of each key adds (the range
      is read as a snapshot: the keys in between add no conflict);
    * ``"runs"``: one range per run of keys whose partitions follow each other (equal
      or adjacent): a write between two keys of a run conflicts too, one in a gap
      between runs (another partition, read only because it was cheaper) does not;
    * ``"range"``: the whole range read (a non-snapshot read).

    Wider conflicts only add retries, never remove a conflict the per-key reads have."""
    out: list[bytes | None] = [None] * len(keys)

    async def one(lo: int, hi: int) -> None:
        if hi - lo == 1:
            out[lo] = await tr.get(keys[lo])
            return
        reader = tr if conflicts == "range" else tr.snapshot
        kvs = await reader.get_range(keys[lo], keys[hi - 1] + b"\x00")
        found = {kv.key: kv.value for kv in kvs}
        for i in range(lo, hi):
            out[i] = found.get(keys[i])
        if conflicts == "keys":
            for i in range(lo, hi):
                tr.add_read_conflict_key(keys[i])
        elif conflicts == "runs":
            start = lo
            for i in range(lo + 1, hi + 1):
                if i == hi or partitions[i] - partitions[i - 1] > 1:
                    tr.add_read_conflict_range(keys[start], keys[i - 1] + b"\x00")
                    start = i

    await gather(one, group_sorted(partitions, keys_per_partition))
    return out


def keys_below(head: bytes, partitions: Sequence[int], job_ids: Sequence[str]) -> list[bytes]:
    """``head + pack((partition, job_id))`` for each pair: the job or claim keys of
    jobs, with ``head`` the begin of ``Layout.jobs_range`` or ``Layout.claims_range``
    (the same bytes as ``Layout.job_key``, without packing the root and role again)."""
    return [head + pack_int_str(p, j) for p, j in zip(partitions, job_ids, strict=True)]


@dataclass(frozen=True)
class ClaimOutcome:
    """``kind``: "claimed" (token set), "held" (a live holder), "superseded" (the holder
    was replaced by a newer incarnation of its id: wait its timeout), "gone" (no job),
    "not_member" (we are not a member any more)."""

    kind: str
    token: bytes | None = None
    holder: Claim | None = None
    holder_timeout: float = 0.0


@dataclass(frozen=True)
class ClaimRequest:
    """One job of a claim batch, with the superseded holder incarnations the claimant
    already waited out (its own clock) for it."""

    partition: int
    job_id: str
    take_superseded: frozenset[str] = frozenset()


#: Claims (or releases) per transaction: about 150 bytes written and two keys read each.
CLAIM_BATCH = 1000


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
    """Claim one job (see :func:`tx_claim_many`, which applies the same rules to many)."""
    req = ClaimRequest(partition, job_id, take_superseded)
    out = await tx_claim_many(tr, layout, role, [req], wid, incarnation, nonce, lease_timeout)
    return out[0]


async def tx_claim_many(
    tr: Transaction,
    layout: Layout,
    role: str,
    requests: Sequence[ClaimRequest],
    wid: str,
    incarnation: str,
    nonce: str,
    lease_timeout: float | None = None,
    keys_per_partition: float = 0.0,
) -> list[ClaimOutcome]:
    """Claim jobs for ``wid``/``incarnation`` in one transaction, each by the same rule,
    if nobody else may still run it: the claim is absent, or held by us, or its holder
    is no longer a member, or its holder incarnation is retired (see
    ``_core.keys.retire``), or it was superseded by a newer incarnation of its id and
    the claimant already waited out the longest lease that holder may believe it holds
    (``take_superseded``: the claimant's own clock). One outcome per request, in order.

    Reads: our own member record (it conflicts with our eviction), each job's claim and
    job key (with read conflicts, by range where they are neighbours: see
    :func:`read_keys`), and, once per holder id, the records that decide about a
    holder. ``keys_per_partition`` (the role's J/P) sizes the range reads."""
    n = len(requests)
    if n == 0:
        return []
    me_key = layout.member_key(role, wid)
    me_raw = await tr.get(me_key)  # conflicts with our own eviction
    if me_raw is None or MemberRecord.decode(wid, me_key, me_raw).incarnation != incarnation:
        return [ClaimOutcome("not_member")] * n
    order = sorted(range(n), key=lambda i: (requests[i].partition, requests[i].job_id))
    parts = [requests[i].partition for i in order]
    ids = [requests[i].job_id for i in order]
    ckeys = keys_below(layout.claims_range(role)[0], parts, ids)
    jkeys = keys_below(layout.jobs_range(role)[0], parts, ids)
    # Claims are written by claimers and releasers only: a conflict range over each run
    # of our own partitions costs far fewer calls than one per key. Jobs are written by
    # every add: one conflict per job key, so that adds next to it do not conflict.
    raws = await read_keys(tr, ckeys, parts, keys_per_partition, conflicts="runs")
    jobs = await read_keys(tr, jkeys, parts, keys_per_partition)

    # The claims, and the ids of the other holders whose records decide.
    claims: list[tuple[Claim, StoredClaim] | None] = [None] * n
    outcomes: list[ClaimOutcome | None] = [None] * n
    for k, raw in enumerate(raws):
        if raw is None:
            continue
        try:
            stamp, obj = split_stamped(ckeys[k], raw)
        except CorruptDataError as e:
            # Nobody can prove it runs nothing: never taken (an operator clears it).
            get_logger("fdbworkers").error("corrupt_claim", key=ckeys[k].hex(), error=str(e))
            outcomes[k] = ClaimOutcome("held")
            continue
        timeout = _claim_timeout(obj)
        sc = StoredClaim(
            str(obj.get("wid")), str(obj.get("incarnation")), timeout, obj.get("nonce")
        )
        claims[k] = (Claim(stamp, sc.wid, sc.incarnation, timeout), sc)
    hwids = sorted(
        {
            c[1].wid
            for c in claims
            if c is not None and (c[1].wid, c[1].incarnation) != (wid, incarnation)
        }
    )
    hraws = await _get_all(tr, [layout.member_key(role, h) for h in hwids])
    members: dict[str, HolderRecord] = {}
    for h, hraw in zip(hwids, hraws, strict=True):
        try:
            members[h] = (
                None if hraw is None else MemberRecord.decode(h, layout.member_key(role, h), hraw)
            )
        except CorruptDataError:
            members[h] = CORRUPT

    # The rule (_core/claims.py), first without the retired records: they can only turn
    # "superseded" into "take", so they are read only for the holders it names.
    decisions: list[ClaimDecision | None] = [None] * n
    for k, c in enumerate(claims):
        if outcomes[k] is not None:
            continue
        take = requests[order[k]].take_superseded
        decisions[k] = decide_claim(
            wid,
            incarnation,
            nonce,
            None if c is None else c[1],
            _member(members, c),
            take_superseded=take,
        )
    rwids = sorted(
        {
            c[1].wid
            for d, c in zip(decisions, claims, strict=True)
            if c and d and d.kind == "superseded"
        }
    )
    rkeys = [layout.retired_key(role, r) for r in rwids]
    retired: dict[str, dict[str, int]] = {}
    for r, key, raw_retired in zip(rwids, rkeys, await _get_all(tr, rkeys), strict=True):
        try:
            retired[r] = decode_retired(key, raw_retired)
        except CorruptDataError:
            retired[r] = {}  # a corrupt marker only loses the shortcut: the wait applies
    for k, d in enumerate(decisions):
        c = claims[k]
        if d is None:
            continue
        if d.kind == "superseded":
            assert c is not None
            d = decide_claim(
                wid,
                incarnation,
                nonce,
                c[1],
                _member(members, c),
                retired[c[1].wid],
                requests[order[k]].take_superseded,
            )
        if d.kind == "ours":
            assert c is not None
            outcomes[k] = ClaimOutcome("claimed", c[0].token)
        elif d.kind == "held":
            assert c is not None
            outcomes[k] = ClaimOutcome("held", holder=c[0])
        elif d.kind == "superseded":
            assert c is not None
            outcomes[k] = ClaimOutcome("superseded", holder=c[0], holder_timeout=d.wait)

    value: dict[str, Any] = {"wid": wid, "incarnation": incarnation, "nonce": nonce}
    if lease_timeout is not None:
        value["timeout"] = lease_timeout
    stamped = stamped_value(value)
    result: list[ClaimOutcome] = [ClaimOutcome("gone")] * n
    for k in range(n):
        out = outcomes[k]
        if out is None:
            if jobs[k] is None:
                out = ClaimOutcome("gone")
            else:
                tr.set_versionstamped_value(ckeys[k], stamped)
                out = ClaimOutcome("claimed")
        result[order[k]] = out
    return result


def _member(
    members: dict[str, HolderRecord],
    claim: tuple[Claim, StoredClaim] | None,
) -> HolderRecord:
    """The holder id's member record (not read for claims of our own incarnation)."""
    return None if claim is None else members.get(claim[1].wid)


async def _get_all(tr: Transaction, keys: Sequence[bytes]) -> list[bytes | None]:
    """Non-snapshot gets of ``keys``, issued together."""
    out: list[bytes | None] = [None] * len(keys)

    async def one(lo: int, hi: int) -> None:
        out[lo] = await tr.get(keys[lo])

    await gather(one, [(i, i + 1) for i in range(len(keys))])
    return out


def _claim_timeout(obj: dict[str, Any]) -> float | None:
    t = obj.get("timeout")
    if isinstance(t, int | float) and not isinstance(t, bool) and math.isfinite(t) and t > 0:
        return float(t)
    return None


@dataclass(frozen=True)
class ReleaseRequest:
    """One claim of a release batch: cleared if it still carries ``token`` (any token of
    ours if None); ``notify`` (the job's next owner) is woken, and with ``handoff`` the
    partition is handed to it."""

    partition: int
    job_id: str
    token: bytes | None = None
    notify: str | None = None
    handoff: bool = False


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
    req = ReleaseRequest(partition, job_id, token, notify, handoff)
    return (await tx_release_many(tr, layout, role, [req], wid, incarnation))[0]


async def tx_release_many(
    tr: Transaction,
    layout: Layout,
    role: str,
    requests: Sequence[ReleaseRequest],
    wid: str,
    incarnation: str,
    keys_per_partition: float = 0.0,
) -> list[bool]:
    """:func:`tx_release` for many claims in one transaction (each by the same rule;
    every next owner's inbox bumped once). True for each claim cleared, in order."""
    n = len(requests)
    order = sorted(range(n), key=lambda i: (requests[i].partition, requests[i].job_id))
    parts = [requests[i].partition for i in order]
    ids = [requests[i].job_id for i in order]
    ckeys = keys_below(layout.claims_range(role)[0], parts, ids)
    raws = await read_keys(tr, ckeys, parts, keys_per_partition)
    released = [False] * n
    notified: set[str] = set()
    for k, raw in enumerate(raws):
        req = requests[order[k]]
        if raw is not None:
            try:
                c = Claim.decode(ckeys[k], raw)
            except CorruptDataError as e:  # not provably ours: left alone
                get_logger("fdbworkers").error("corrupt_claim", key=ckeys[k].hex(), error=str(e))
                c = None
            if (
                c is not None
                and c.wid == wid
                and c.incarnation == incarnation
                and (req.token is None or c.token == req.token)
            ):
                tr.clear(ckeys[k])
                released[order[k]] = True
        if req.notify is not None:
            if req.handoff:
                tr.set(
                    layout.handoff_key(role, req.notify, req.partition),
                    encode({"from": wid, "incarnation": incarnation}),
                )
            notified.add(req.notify)
    for owner in sorted(notified):
        tr.set_versionstamped_value(layout.inbox_key(role, owner), epoch_value())
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


# --- bulk add ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NewJob:
    """A job of a bulk add, checked and encoded before any transaction."""

    id: str
    partition: int
    spec: Any
    weight: float
    key: bytes
    value: bytes


def check_job(
    job_id: Any, spec: Any = None, weight: Any = 1.0, added_at: float | None = None
) -> bytes:
    """The encoded record of a job to add, or ConfigError saying what is wrong (the
    checks of :func:`tx_add_job`). ``added_at``: the wall time to record (now)."""
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
    layout: Layout,
    role: str,
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
        tr.add(layout.job_count_key(role), added.to_bytes(8, "little", signed=True))
        for p, n in added_to.items():  # what the stored plan balances
            tx_count_job(tr, layout, role, p, n)
    if first is not None:
        tr.set_versionstamped_key(
            layout.jobchange_key_template(role, first),
            encode({"partitions": sorted(changed), "op": "add", "jobs": len(jobs) - added}),
        )
        tr.set_versionstamped_value(layout.jobs_epoch_key(role), epoch_value())
        await _trim_job_changes(tr, layout, role)
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
    layout: Layout,
    role: str,
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
                statuses = await transact(
                    tx_add_jobs, layout, role, jobs[lo:hi], keys_per_partition
                )
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
