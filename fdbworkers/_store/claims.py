"""Claims, releases and handoffs: the transactions of the claim rule (``_core/claims.py``
decides from the values they read). A claim's commit versionstamp is its fencing token.
Transaction functions only: the runner (fdbworkers._runner) decides when to call them."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .._core.claims import CORRUPT, ClaimDecision, HolderRecord, StoredClaim, decide_claim
from .._core.keys import RoleSpace
from .._core.records import (
    Claim,
    MemberRecord,
    decode,
    decode_retired,
    encode,
    epoch_value,
    split_stamped,
    stamped_value,
)
from .._core.tuples import pack_int_str
from .._db import Transaction
from .._errors import CorruptDataError
from .._log import get_logger
from .batch import gather, keys_below, read_keys

#: Handoffs read per inbox wake-up (a leaver hands over at most its own partitions; any
#: left over are dropped: those jobs take the normal path, after the settle window).
MAX_HANDOFFS = 100_000


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


#: The outcomes that carry nothing but their kind (immutable: shared, not rebuilt per
#: claim; a claim's token is its commit's versionstamp, read after the commit).
_GONE = ClaimOutcome("gone")
_NOT_MEMBER = ClaimOutcome("not_member")
_CLAIMED = ClaimOutcome("claimed")

#: Claims (or releases) per transaction: about 150 bytes written and two keys read each.
CLAIM_BATCH = 1000


async def tx_claim(
    tr: Transaction,
    space: RoleSpace,
    partition: int,
    job_id: str,
    wid: str,
    incarnation: str,
    nonce: str,
    take_superseded: frozenset[str],
    lease_timeout: float | None = None,
) -> ClaimOutcome:
    """Claim one job (see :func:`tx_claim_many`, which applies the same rules to many).

    Its three keys (our member record, the claim, the job) are read in one round trip,
    with the conflicts of three gets. The common case, no claim, is decided here: the
    rule takes an absent claim (``decide_claim(claim=None)`` is "take") without reading
    anything more; a claim present goes through the same steps as a batch."""
    me_key = space.member_key(wid)
    tail = pack_int_str(partition, job_id)
    ckey = space.claim_head + tail
    me_raw, raw, job = await tr.get_many([me_key, ckey, space.job_head + tail])
    if me_raw is None or MemberRecord.decode(wid, me_key, me_raw).incarnation != incarnation:
        return _NOT_MEMBER
    if raw is None:
        if job is None:
            return _GONE
        tr.set_versionstamped_value(ckey, _claim_value(wid, incarnation, nonce, lease_timeout))
        return _CLAIMED
    outs = await _decide_and_write(
        tr,
        space,
        [ckey],
        [raw],
        [job],
        [0],
        [take_superseded],
        wid,
        incarnation,
        nonce,
        lease_timeout,
    )
    return outs[0]


async def tx_claim_many(
    tr: Transaction,
    space: RoleSpace,
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
    ``_core.records.retire``), or it was superseded by a newer incarnation of its id and
    the claimant already waited out the longest lease that holder may believe it holds
    (``take_superseded``: the claimant's own clock). One outcome per request, in order.

    Reads: our own member record (it conflicts with our eviction), each job's claim and
    job key (with read conflicts, by range where they are neighbours: see
    :func:`read_keys`), and, once per holder id, the records that decide about a
    holder. ``keys_per_partition`` (the role's J/P) sizes the range reads."""
    n = len(requests)
    if n == 0:
        return []
    if n == 1:
        r = requests[0]
        one = await tx_claim(
            tr,
            space,
            r.partition,
            r.job_id,
            wid,
            incarnation,
            nonce,
            r.take_superseded,
            lease_timeout,
        )
        return [one]
    me_key = space.member_key(wid)
    order = sorted(range(n), key=lambda i: (requests[i].partition, requests[i].job_id))
    parts = [requests[i].partition for i in order]
    ids = [requests[i].job_id for i in order]
    ckeys = keys_below(space.claim_head, parts, ids)
    jkeys = keys_below(space.job_head, parts, ids)
    read = await _read_claim_keys(tr, me_key, ckeys, jkeys, parts, keys_per_partition)
    if read is None or MemberRecord.decode(wid, me_key, read[0]).incarnation != incarnation:
        return [_NOT_MEMBER] * n
    _, raws, jobs = read
    takes = [requests[i].take_superseded for i in order]
    return await _decide_and_write(
        tr, space, ckeys, raws, jobs, order, takes, wid, incarnation, nonce, lease_timeout
    )


async def _decide_and_write(
    tr: Transaction,
    space: RoleSpace,
    ckeys: Sequence[bytes],
    raws: Sequence[bytes | None],
    jobs: Sequence[bytes | None],
    order: Sequence[int],
    takes: Sequence[frozenset[str]],
    wid: str,
    incarnation: str,
    nonce: str,
    lease_timeout: float | None,
) -> list[ClaimOutcome]:
    """The rule over the claims and jobs read (in key order): the holders' records are
    read where it needs them, our claim is written over each job left to take."""
    claims, outcomes = _decode_claims(ckeys, raws)
    members = await _read_holders(tr, space, claims, wid, incarnation)
    await _decide_claims(tr, space, claims, members, takes, outcomes, wid, incarnation, nonce)
    return _write_claims(tr, ckeys, jobs, order, outcomes, wid, incarnation, nonce, lease_timeout)


async def _read_claim_keys(
    tr: Transaction,
    me_key: bytes,
    ckeys: Sequence[bytes],
    jkeys: Sequence[bytes],
    parts: Sequence[int],
    keys_per_partition: float,
) -> tuple[bytes, list[bytes | None], list[bytes | None]] | None:
    """Our own member record (its read conflicts with our own eviction), then the claim
    and the job of each request, or None where the record is gone (nothing more read)."""
    me_raw = await tr.get(me_key)
    if me_raw is None:
        return None
    # Claims are written by claimers and releasers only: a conflict range over each run
    # of our own partitions costs far fewer calls than one per key. Jobs are written by
    # every add: one conflict per job key, so that adds next to it do not conflict.
    raws = await read_keys(tr, ckeys, parts, keys_per_partition, conflicts="runs")
    jobs = await read_keys(tr, jkeys, parts, keys_per_partition)
    return me_raw, raws, jobs


#: A claim as read: the claim, and what is stored of it (the rule decides on the latter).
_ReadClaim = tuple[Claim, StoredClaim]


def _decode_claims(
    ckeys: Sequence[bytes], raws: Sequence[bytes | None]
) -> tuple[list[_ReadClaim | None], list[ClaimOutcome | None]]:
    """The claims read (None where there is none), and the outcomes they already decide:
    a corrupt claim is "held"."""
    n = len(raws)
    claims: list[_ReadClaim | None] = [None] * n
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
    return claims, outcomes


async def _read_holders(
    tr: Transaction,
    space: RoleSpace,
    claims: Sequence[_ReadClaim | None],
    wid: str,
    incarnation: str,
) -> dict[str, HolderRecord]:
    """The member record of each other holder id, read once per id (None: not a
    member; ``CORRUPT``: unreadable)."""
    hwids = sorted(
        {
            c[1].wid
            for c in claims
            if c is not None and (c[1].wid, c[1].incarnation) != (wid, incarnation)
        }
    )
    hraws = await _get_all(tr, [space.member_key(h) for h in hwids])
    members: dict[str, HolderRecord] = {}
    for h, hraw in zip(hwids, hraws, strict=True):
        try:
            members[h] = None if hraw is None else MemberRecord.decode(h, space.member_key(h), hraw)
        except CorruptDataError:
            members[h] = CORRUPT
    return members


async def _decide_claims(
    tr: Transaction,
    space: RoleSpace,
    claims: Sequence[_ReadClaim | None],
    members: dict[str, HolderRecord],
    takes: Sequence[frozenset[str]],
    outcomes: list[ClaimOutcome | None],
    wid: str,
    incarnation: str,
    nonce: str,
) -> None:
    """Fill in ``outcomes`` by the rule (_core/claims.py), first without the retired
    records: they can only turn "superseded" into "take", so they are read only for the
    holders it names. None left: the claim may be taken."""
    decisions: list[ClaimDecision | None] = [None] * len(claims)
    for k, c in enumerate(claims):
        if outcomes[k] is not None:
            continue
        decisions[k] = decide_claim(
            wid,
            incarnation,
            nonce,
            None if c is None else c[1],
            _member(members, c),
            take_superseded=takes[k],
        )
    rwids = sorted(
        {
            c[1].wid
            for d, c in zip(decisions, claims, strict=True)
            if c and d and d.kind == "superseded"
        }
    )
    retired = await _read_retired(tr, space, rwids)
    for k, d in enumerate(decisions):
        c = claims[k]
        if d is None:
            continue
        if d.kind == "superseded":
            assert c is not None
            d = decide_claim(
                wid, incarnation, nonce, c[1], _member(members, c), retired[c[1].wid], takes[k]
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


async def _read_retired(
    tr: Transaction, space: RoleSpace, rwids: Sequence[str]
) -> dict[str, dict[str, int]]:
    """The retired incarnations of each holder id in ``rwids``."""
    rkeys = [space.retired_key(r) for r in rwids]
    retired: dict[str, dict[str, int]] = {}
    for r, key, raw_retired in zip(rwids, rkeys, await _get_all(tr, rkeys), strict=True):
        try:
            retired[r] = decode_retired(key, raw_retired)
        except CorruptDataError:
            retired[r] = {}  # a corrupt marker only loses the shortcut: the wait applies
    return retired


def _write_claims(
    tr: Transaction,
    ckeys: Sequence[bytes],
    jobs: Sequence[bytes | None],
    order: Sequence[int],
    outcomes: Sequence[ClaimOutcome | None],
    wid: str,
    incarnation: str,
    nonce: str,
    lease_timeout: float | None,
) -> list[ClaimOutcome]:
    """Write our claim (its commit versionstamp is the token) over each job left to
    take; "gone" where the job is not there. The outcomes in request order."""
    n = len(ckeys)
    stamped = _claim_value(wid, incarnation, nonce, lease_timeout)
    result: list[ClaimOutcome] = [_GONE] * n
    for k in range(n):
        out = outcomes[k]
        if out is None:
            if jobs[k] is None:
                out = _GONE
            else:
                tr.set_versionstamped_value(ckeys[k], stamped)
                out = _CLAIMED
        result[order[k]] = out
    return result


def _claim_value(wid: str, incarnation: str, nonce: str, lease_timeout: float | None) -> bytes:
    """The SET_VERSIONSTAMPED_VALUE parameter of our claim: the commit's stamp is its
    token, the tail names the holder (and its lease timeout when it has one)."""
    value: dict[str, Any] = {"wid": wid, "incarnation": incarnation, "nonce": nonce}
    if lease_timeout is not None:
        value["timeout"] = lease_timeout
    return stamped_value(value)


def _member(
    members: dict[str, HolderRecord],
    claim: _ReadClaim | None,
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
    space: RoleSpace,
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
    return (await tx_release_many(tr, space, [req], wid, incarnation))[0]


async def tx_release_many(
    tr: Transaction,
    space: RoleSpace,
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
    ckeys = keys_below(space.claim_head, parts, ids)
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
                    space.handoff_key(req.notify, req.partition),
                    encode({"from": wid, "incarnation": incarnation}),
                )
            notified.add(req.notify)
    for owner in sorted(notified):
        tr.set_versionstamped_value(space.inbox_key(owner), epoch_value())
    return released


async def tx_take_handoffs(
    tr: Transaction, space: RoleSpace, wid: str
) -> dict[int, tuple[str, str]]:
    """Read and clear the partitions handed to ``wid``: partition -> (from, incarnation)."""
    begin, end = space.handoffs_range(wid)
    out: dict[int, tuple[str, str]] = {}
    for kv in await tr.get_range(begin, end, limit=MAX_HANDOFFS):
        try:
            obj = decode(kv.key, kv.value)
            partition = int(space.unpack_below(begin, kv.key)[0])
            out[partition] = (str(obj["from"]), str(obj["incarnation"]))
        except (CorruptDataError, KeyError, ValueError, IndexError):
            get_logger("fdbworkers").error("corrupt_handoff", key=kv.key.hex())
    tr.clear_range(begin, end)
    return out
