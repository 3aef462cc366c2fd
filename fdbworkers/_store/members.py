"""Member transactions: ensure the role, register, heartbeat, read membership and health,
evict, leave. Each takes the transaction first and runs in the shared retry loop; every
write is idempotent under a retry after commit_unknown_result."""

from __future__ import annotations

import time
from typing import Any

from .._core.assign import ALGORITHM_VERSION
from .._core.keys import RoleSpace
from .._core.membership import Membership, apply_changes
from .._core.records import (
    VERSIONS_PER_SECOND,
    MemberRecord,
    RoleConfig,
    check_layout,
    decode_retired,
    encode_retired,
    epoch_value,
    layout_value,
    retire,
    stamp_version,
    stamped_value,
)
from .._db import Transaction, Watch
from .._errors import CorruptDataError
from .._store.events import trim_events, write_event


async def tx_ensure_role(tr: Transaction, space: RoleSpace, partitions: int) -> RoleConfig:
    """Check the layout version and create the role's config once (set at creation)."""
    lv = await tr.get(space.layout.layout_key)
    if check_layout(space.layout.layout_key, lv) is None:
        tr.set(space.layout.layout_key, layout_value())
    key = space.config_key
    raw = await tr.get(key)
    if raw is not None:
        return RoleConfig.decode(key, raw)
    cfg = RoleConfig(partitions, time.time(), ALGORITHM_VERSION)
    tr.set(key, cfg.encode())
    # The job counter starts at 0, so readers of a new role choose the cheap scan.
    tr.set(space.job_count_key, (0).to_bytes(8, "little", signed=True))
    # ... and so are the per-partition counts of the stored plan (_store/plan.py).
    tr.set(space.counted_key, b"")
    return cfg


#: Membership change-log entries are kept this long (seconds of commit versions); a
#: reader whose cursor is older than half of it reads the whole membership instead.
MEMBERCHANGE_RETENTION = 600.0


async def bump_epoch(tr: Transaction, space: RoleSpace, wid: str) -> None:
    """Stamp the epoch and log the change of ``wid``'s record (same versionstamp), so
    that readers re-read that one record instead of all of them; trim old entries.
    Blind writes only: two joins never conflict (G7)."""
    tr.set_versionstamped_value(space.epoch_key, epoch_value())
    tr.set_versionstamped_key(space.memberchange_key_template(wid), b"")
    rv = await tr.get_read_version()
    cut = rv - int(MEMBERCHANGE_RETENTION * VERSIONS_PER_SECOND)
    if cut > 0:
        begin, _ = space.memberchange_range()
        tr.clear_range(begin, space.memberchange_before_version(cut))


async def tx_register(
    tr: Transaction, space: RoleSpace, record: MemberRecord, retention: float
) -> MemberRecord:
    """Write member record + health, bump the epoch, log the join. Blind writes only
    (plus a snapshot read of our own record), so joins never conflict with each other."""
    key = space.member_key(record.wid)
    old_raw = await tr.snapshot.get(key)
    replaced = None
    replaced_weight: float | None = None
    replaced_timeout: float | None = None
    if old_raw is not None:
        try:
            old = MemberRecord.decode(record.wid, key, old_raw)
        except CorruptDataError:
            old = None
        if old is not None and old.incarnation == record.incarnation:
            return old  # an earlier attempt committed (1021): nothing more to do
        replaced = old.incarnation if old is not None else None
        replaced_weight = old.weight if old is not None else None
        replaced_timeout = old.timeout if old is not None else None
    rec = MemberRecord(
        **{**record.__dict__, "replaced": replaced, "replaced_timeout": replaced_timeout}
    )
    tr.set(key, rec.encode())
    tr.set_versionstamped_value(
        space.health_key(rec.wid),
        stamped_value({"wall_time": time.time(), "incarnation": rec.incarnation}),
    )
    await bump_epoch(tr, space, rec.wid)
    write_event(
        tr,
        space,
        "joined",
        worker=rec.wid,
        incarnation=rec.incarnation,
        replaced=replaced,
        replaced_weight=replaced_weight,
        host=rec.host,
        pid=rec.pid,
        weight=rec.weight,
        timeout=rec.timeout,
    )
    await trim_events(tr, space.layout, retention)
    return rec


async def tx_heartbeat(
    tr: Transaction, space: RoleSpace, wid: str, incarnation: str
) -> MemberRecord | None:
    """A versionstamped write of the health key, if our record is still ours.

    The read of our own record is *not* a snapshot read: if our eviction (or a newer
    incarnation of our id) commits between this read and our commit, the heartbeat
    conflicts and its retry finds the record gone, so a heartbeat that commits proves
    we were still a member at its commit, which the lease relies on (see _liveness).
    Nothing else writes our member key, so heartbeats never conflict otherwise (G7)."""
    key = space.member_key(wid)
    raw = await tr.get(key)
    if raw is None:
        return None
    rec = MemberRecord.decode(wid, key, raw)
    if rec.incarnation != incarnation:
        return rec
    tr.set_versionstamped_value(
        space.health_key(wid),
        stamped_value({"wall_time": time.time(), "incarnation": incarnation}),
    )
    return rec


async def tx_read_membership(
    tr: Transaction, space: RoleSpace, arm_for: str | None
) -> tuple[Membership, list[bytes], int, list[Any]]:
    """Membership at one read version; optionally arms watches (epoch key and our own
    member key) in the same transaction, so no later change can be missed."""
    epoch = await tr.get(space.epoch_key) or b""
    begin, end = space.members_range()
    members: dict[str, MemberRecord] = {}
    corrupt: list[bytes] = []
    for kv in await tr.get_range(begin, end):
        try:
            rec = MemberRecord.decode_stored(
                kv.key, kv.value, lambda key: str(space.unpack_below(begin, key)[-1])
            )
            members[rec.wid] = rec
        except CorruptDataError:
            corrupt.append(kv.key)
    watches: list[Any] = []
    if arm_for is not None:
        watches = [tr.watch(space.epoch_key), tr.watch(space.member_key(arm_for))]
    rv = await tr.get_read_version()
    return Membership(space.role, epoch, members), corrupt, rv, watches


#: Change-log entries read per incremental membership read; more: read it all.
MEMBERCHANGE_READ_LIMIT = 1000


async def tx_read_membership_since(
    tr: Transaction,
    space: RoleSpace,
    arm_for: str | None,
    known: Membership | None,
) -> tuple[Membership, list[bytes], int, list[Any], bool]:
    """The membership, read incrementally from ``known`` when it can be: the change
    log names the records changed since ``known.epoch`` (each epoch bump writes an
    entry with the same versionstamp), and only those are read again, so a join costs
    every worker O(1) keys instead of all N records. Falls back to
    :func:`tx_read_membership` (returns ``full=True``) when there is no ``known`` view,
    when its epoch is older than half the log's retention (entries may be trimmed),
    when more than :data:`MEMBERCHANGE_READ_LIMIT` entries follow it, or when the
    entries do not end at the current epoch (a writer that does not log: an older
    version). Our own record is always read again (an out-of-band write to it must be
    seen, e.g. garbage). Returns (membership, corrupt keys, read version, watches,
    full)."""
    epoch = await tr.get(space.epoch_key) or b""
    rv = await tr.get_read_version()
    if known is None or not known.epoch or known.partial:
        return (*await tx_read_membership(tr, space, arm_for), True)
    if epoch == known.epoch:
        entries: list[tuple[bytes, str]] = []
    else:
        if stamp_version(known.epoch) < rv - int(MEMBERCHANGE_RETENTION / 2 * VERSIONS_PER_SECOND):
            return (*await tx_read_membership(tr, space, arm_for), True)
        begin = space.memberchange_after(known.epoch)
        _, end = space.memberchange_range()
        kvs = await tr.get_range(begin, end, limit=MEMBERCHANGE_READ_LIMIT + 1)
        try:
            entries = space.memberchange_entries([kv.key for kv in kvs])
        except CorruptDataError:
            return (*await tx_read_membership(tr, space, arm_for), True)
        if len(entries) > MEMBERCHANGE_READ_LIMIT or not entries or entries[-1][0] != epoch:
            return (*await tx_read_membership(tr, space, arm_for), True)
    corrupt: list[bytes] = []
    changed = {wid for _, wid in entries}
    if arm_for is not None:
        changed.add(arm_for)
    wids = sorted(changed)
    keys = space.member_keys(wids)
    changes: dict[str, MemberRecord | None] = {}
    # Sent together: one round trip for a storm of joins, not one per joiner.
    for wid, key, raw in zip(wids, keys, await tr.get_many(keys), strict=True):
        changes[wid] = None
        if raw is not None:
            try:
                changes[wid] = MemberRecord.decode(wid, key, raw)
            except CorruptDataError:
                corrupt.append(key)
    watches: list[Any] = []
    if arm_for is not None:
        watches = [tr.watch(space.epoch_key), tr.watch(space.member_key(arm_for))]
    return apply_changes(known, epoch, changes), corrupt, rv, watches, False


async def tx_check_epoch(
    tr: Transaction, space: RoleSpace, arm_for: str
) -> tuple[bytes, list[Watch]]:
    """The epoch alone (one key) and fresh watches on it and on our member key: the
    cheap check that a membership watch was not lost (see
    ``_worker_membership.wait_membership_watches``)."""
    epoch = await tr.get(space.epoch_key) or b""
    return epoch, [tr.watch(space.epoch_key), tr.watch(space.member_key(arm_for))]


async def tx_read_health(
    tr: Transaction, space: RoleSpace, wids: list[str]
) -> dict[str, bytes | None]:
    out: dict[str, bytes | None] = {}
    for wid in wids:
        raw = await tr.get(space.health_key(wid))
        out[wid] = raw[:10] if raw is not None and len(raw) >= 10 else None
    return out


async def tx_watch_health(
    tr: Transaction, space: RoleSpace, wids: list[str]
) -> tuple[dict[str, bytes | None], list[Watch]]:
    """The neighbours' stamps and a watch on each health key, at one read version: a
    heartbeat committed after it fires a watch, so the checker sees every new stamp
    within a watch's delivery instead of up to a check interval late (the eviction
    then comes ``timeout`` after the last heartbeat, not ``timeout + check_interval``)."""
    stamps = await tx_read_health(tr, space, wids)
    return stamps, [tr.watch(space.health_key(wid)) for wid in wids]


async def tx_evict(
    tr: Transaction,
    space: RoleSpace,
    wid: str,
    incarnation: str,
    stamp: bytes | None,
    by: str,
    silent_for: float,
    reason: str,
    retention: float,
    *,
    retire: bool = True,
) -> bool:
    """Compare-and-clear: clear the member only if its stamp is still the one seen going
    stale. The (non-snapshot) read of the health key makes a concurrent heartbeat
    conflict with this transaction: a late heartbeat wins. ``retire`` (the default:
    the evictor watched it silent for its timeout) attests that the incarnation runs
    nothing any more; an operator's forced eviction of a worker that may be alive
    passes False, so its claims are taken only once its timeout has passed."""
    hkey = space.health_key(wid)
    raw = await tr.get(hkey)
    current = raw[:10] if raw is not None and len(raw) >= 10 else None
    if current != stamp:
        return False
    return await _remove_member(
        tr,
        space,
        wid,
        incarnation,
        "evicted",
        retention,
        by=by,
        retire=retire,
        reason=reason,
        silent_for=round(silent_for, 3),
    )


async def _remove_member(
    tr: Transaction,
    space: RoleSpace,
    wid: str,
    incarnation: str,
    kind: str,
    retention: float,
    *,
    retire: bool = True,
    **event: Any,
) -> bool:
    """Clear member and health of ``wid`` if its record is still ``incarnation`` (a
    corrupt record counts as it), bump the epoch and log ``kind``. False otherwise, so
    a retry after 1021 of an already applied removal writes nothing twice."""
    mkey = space.member_key(wid)
    raw = await tr.get(mkey)
    if raw is None:
        return False
    weight: float | None = None  # recorded for replay (fdbworkers explain)
    try:
        rec = MemberRecord.decode(wid, mkey, raw)
        if rec.incarnation != incarnation:
            return False
        weight = rec.weight
    except CorruptDataError:
        pass  # a corrupt record of a silent worker is removed like any other
    tr.clear(mkey)
    tr.clear(space.health_key(wid))
    tr.clear_range(*space.handoffs_range(wid))  # partitions handed to it, unread
    # Evicted (its lease ran out before) or left (its handlers stopped before): this
    # incarnation runs nothing, so its remaining claims may be taken at once even after
    # its id registers again (a crash-looping id must not restart the wait each time).
    if retire:
        await tx_retire(tr, space, wid, incarnation)
    await bump_epoch(tr, space, wid)
    write_event(tr, space, kind, worker=wid, incarnation=incarnation, weight=weight, **event)
    await trim_events(tr, space.layout, retention)
    return True


async def tx_leave(
    tr: Transaction,
    space: RoleSpace,
    wid: str,
    incarnation: str,
    kind: str,
    retention: float,
) -> bool:
    return await _remove_member(tr, space, wid, incarnation, kind, retention)


async def tx_request_drain(tr: Transaction, space: RoleSpace, wid: str, by: str) -> str:
    """Set ``drain`` in the member record and bump the epoch (so the others move its jobs
    away at once). Returns "requested", "already" or "missing"."""
    key = space.member_key(wid)
    raw = await tr.get(key)
    if raw is None:
        return "missing"
    rec = MemberRecord.decode(wid, key, raw)
    if rec.drain:
        return "already"
    tr.set(key, MemberRecord(**{**rec.__dict__, "drain": True}).encode())
    await bump_epoch(tr, space, wid)
    write_event(tr, space, "drain_requested", worker=wid, incarnation=rec.incarnation, by=by)
    return "requested"


async def tx_park(
    tr: Transaction, space: RoleSpace, wid: str, incarnation: str, retention: float
) -> None:
    """A worker leaving to come back as the same id (restart in place): its incarnation
    is retired (it runs nothing: its claims may be taken) but its member record stays,
    so the membership, and the plan, do not change while it restarts. If no incarnation
    of the id heartbeats within its timeout, its neighbour evicts it as usual and its
    jobs are handed off then."""
    await tx_retire(tr, space, wid, incarnation)
    write_event(tr, space, "restarting", worker=wid, incarnation=incarnation)
    await trim_events(tr, space.layout, retention)


async def tx_retire(tr: Transaction, space: RoleSpace, wid: str, incarnation: str) -> None:
    """Record that ``incarnation`` of ``wid`` runs nothing any more (idempotent: the
    newest :data:`RETIRED_CAP` entries are kept). Conflicts only with another retirement
    of the same id."""
    key = space.retired_key(wid)
    try:
        entries = decode_retired(key, await tr.get(key))
    except CorruptDataError:
        entries = {}  # overwritten: a corrupt marker only loses shortcuts
    if incarnation in entries:
        return
    tr.set(key, encode_retired(retire(entries, incarnation, await tr.get_read_version())))
