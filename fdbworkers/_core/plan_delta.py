"""Plan deltas (pure, no I/O): each stored plan also as what changed from the one before.

A plan names every member and every override: at 10,000 members about 54 KB
compressed, which every worker read again after every change. A change moves little
(a join: the newcomer's share), so each plan is also stored as a **delta** of the one
before: the members added, dropped or reweighted, the overrides set and unset, and
the digest of the plan it applies to. A reader that holds plan ``s`` and finds plan
``t`` stored reads the deltas ``s+1 .. t`` (one range) and applies them; it uses the
result only if every delta's base is the digest of the plan it is applied to and the
result's digest is the stored header's. Anything else (a gap, a delta of a newer
format, a reader too far behind, a plan written by a version without deltas) reads
the whole plan, as before: deltas save reads, they never decide an owner.
"""

from __future__ import annotations

import zlib
from array import array
from itertools import accumulate
from typing import Any, Final

import msgpack

from .._errors import CorruptDataError, LayoutError
from .direct import from_le, to_le
from .memo import HeldMemo
from .plan import CHUNK_BYTES, Plan, unpack_compressed

__all__ = [
    "PLAN_DELTAS_KEPT",
    "PLAN_DELTA_FORMAT",
    "apply_plan_delta",
    "encode_plan_delta",
    "rebuilt_plan",
    "share_plan",
]

#: Version of a plan delta's encoding (one newer than this is not applied: the reader
#: reads the whole plan, which says whether this version can follow it).
PLAN_DELTA_FORMAT: Final = 1
#: Deltas kept beside the stored plan: a reader at most this many plans behind reads
#: the deltas since its own plan instead of the whole plan.
PLAN_DELTAS_KEPT: Final = 16


def encode_plan_delta(prev: Plan, plan: Plan, limit: int = CHUNK_BYTES) -> bytes | None:
    """What turns ``prev`` into ``plan`` (its successor, same partitions), compressed,
    or None when there is no such delta or it would not be smaller than ``limit``
    bytes (the whole plan's size: then readers read that)."""
    if plan.seq != prev.seq + 1 or plan.partitions != prev.partitions:
        return None
    add = [[w, float(x)] for w, x in sorted(plan.members.items()) if prev.members.get(w) != x]
    drop = sorted(w for w in prev.members if w not in plan.members)
    changed = sorted(p for p, w in plan.overrides.items() if prev.overrides.get(p) != w)
    unset = sorted(p for p in prev.overrides if p not in plan.overrides)
    names = sorted({plan.overrides[p] for p in changed})
    index = {w: i for i, w in enumerate(names)}
    body: dict[str, Any] = {
        "format": PLAN_DELTA_FORMAT,
        "base": prev.digest(),
        "seq": plan.seq,
        "epoch": plan.epoch,
        "jobs": plan.jobs,
        "add": add,
        "drop": drop,
        "set": _gaps(changed),
        "names": names,
        "to": to_le(array("I", [index[plan.overrides[p]] for p in changed])),
        "unset": _gaps(unset),
    }
    data = zlib.compress(msgpack.packb(body, use_bin_type=True), 6)
    return data if len(data) < min(limit, CHUNK_BYTES) else None


def _gaps(ps: list[int]) -> bytes:
    """Sorted distinct partitions as their gaps, little-endian uint32 (they compress)."""
    return to_le(array("I", [b - a for a, b in zip([0, *ps], ps, strict=False)]))


def _ungap(data: Any) -> list[int]:
    gaps = from_le(data, "I")
    if 0 in gaps[1:]:
        raise ValueError("partitions repeat")
    return list(accumulate(gaps))


def apply_plan_delta(prev: Plan, data: bytes, where: str = "a plan delta") -> Plan:
    """The plan that :func:`encode_plan_delta`'s ``data`` makes of ``prev``. Raises
    CorruptDataError when the delta cannot be decoded, does not apply to ``prev`` (its
    base is another plan) or makes no valid plan, LayoutError when it is of a newer
    format: the caller then reads the whole plan."""
    body = unpack_compressed(data, where)
    fmt = body.get("format")
    if isinstance(fmt, int) and fmt > PLAN_DELTA_FORMAT:
        raise LayoutError(f"{where} has format {fmt}, newer than {PLAN_DELTA_FORMAT}")
    try:
        if body["base"] != prev.digest() or int(body["seq"]) != prev.seq + 1:
            raise CorruptDataError(f"{where} does not follow plan {prev.seq}")
        members = dict(prev.members)
        for w in body["drop"]:
            del members[str(w)]
        for w, x in body["add"]:
            members[str(w)] = float(x)
        overrides = dict(prev.overrides)
        for p in _ungap(body["unset"]):
            del overrides[p]
        changed = _ungap(body["set"])
        to = from_le(body["to"], "I")
        names = [str(w) for w in body["names"]]
        if len(to) != len(changed):
            raise ValueError("override arrays do not match")
        for p, i in zip(changed, to, strict=True):
            overrides[p] = names[i]
        if changed and changed[-1] >= prev.partitions:
            raise ValueError("an override's partition is out of range")
        if not set(names) <= members.keys() or not set(overrides.values()) <= members.keys():
            raise ValueError("an override names no member")
        epoch = body["epoch"]
        if not isinstance(epoch, bytes):
            raise ValueError("epoch is not bytes")
        plan = Plan(prev.seq + 1, epoch, members, prev.partitions, overrides, int(body["jobs"]))
    except (KeyError, TypeError, ValueError, IndexError) as e:
        raise CorruptDataError(f"{where} is malformed: {e}") from e
    return plan


#: Plans rebuilt from deltas that some worker of this process still holds, by digest
#: (a plan no worker holds any more is not kept alive here).
_BY_DIGEST: HeldMemo[bytes, Plan] = HeldMemo(keep_last=False)


def rebuilt_plan(digest: bytes) -> Plan | None:
    """A plan of this digest rebuilt from deltas in this process and still held."""
    return _BY_DIGEST.get(digest)


def share_plan(plan: Plan) -> None:
    """Remember a plan rebuilt from deltas by its digest, while it is held: workers in
    one process that rebuild the same plan (a simulation of many workers) then share
    one object and its map (:func:`rebuilt_plan`), as :func:`decode_plan` shares plans
    decoded from the same bytes, instead of each applying the deltas to a copy of N
    members and computing its own map."""
    _BY_DIGEST.put(plan.digest(), plan)
