"""The stored plan: per-job balance with only the necessary moves (pure, no I/O).

:func:`~fdbworkers._core.assign.assign` maps *partitions* to workers from the
membership alone; a worker's jobs are then Binomial(J, share): 60 jobs on 5 workers can
come out 10 10 11 12 17, the same on every start. No function of the membership and the
job counts alone can be exactly balanced *and* move only what must move (the balanced
map of the new membership is a different solution, not the old one plus the newcomer's
share). So the assignment keeps state: a :class:`Plan` is stored with the role, and
each new plan is computed from the previous one (:func:`make_plan`), deterministically,
by whichever member the rules pick (docs/assignment.md, "The plan").

A plan is the pure rendezvous map of its members (``assign(..., balance=None)``: what
a partition without jobs follows, so that a job added later lands on its favourite
member) plus **overrides**: the non-empty partitions whose owner differs from it. From
the previous plan, :func:`make_plan`

1. keeps every non-empty partition with its owner when that owner is still a member,
   and frees those of departed members;
2. gives every member an integer quota of *jobs*, ``floor(J w_i / W)`` or one more (the
   extra units to the members that hold the most now: fewest moves), so every quota is
   within 1 of the fair share and the quotas sum to ``J``;
3. has every member above its quota free partitions (those its rendezvous map gives to
   a member below quota first, smallest first, never more jobs than its excess), and
   gives every free partition, largest first, to its rendezvous owner if that one has
   room, else to the member furthest below its quota.

Moves are then exactly the jobs of departed members plus the excess above quota: on a
join, the newcomer's quota and nothing else, taken from the members above theirs. With
at most one job per partition (``J`` well under ``P``) every member ends exactly at its
quota; with larger partitions a member may end up to one partition's jobs away.
"""

from __future__ import annotations

import hashlib
import heapq
import math
import zlib
from array import array
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from itertools import accumulate
from types import MappingProxyType
from typing import Any, Final, Protocol

import msgpack

from .._errors import ConfigError, CorruptDataError, LayoutError
from .assign import ALGORITHM_VERSION, assign, stable_hash64
from .direct import from_le, pair_tie, to_le
from .memo import HeldMemo
from .partset import PartitionSet

__all__ = [
    "PLAN_FORMAT",
    "Plan",
    "PlanMap",
    "decode_plan",
    "encode_plan",
    "make_plan",
    "plan_chunks",
    "plan_weights",
    "view_weights",
]

#: Version of the stored plan's encoding; a newer one is refused with a clear error.
PLAN_FORMAT: Final = 1
#: Largest stored value of a plan chunk (FoundationDB's limit is 100,000 bytes).
CHUNK_BYTES: Final = 90_000


class _Weighted(Protocol):
    @property
    def weight(self) -> float: ...
    @property
    def drain(self) -> bool: ...


def plan_weights(members: Mapping[str, _Weighted]) -> dict[str, float]:
    """The members a plan is made for, id -> weight: draining members get nothing,
    unless every member drains (then the jobs have nowhere else to go)."""
    weights = {w: m.weight for w, m in members.items() if not m.drain}
    return weights or {w: m.weight for w, m in members.items()}


#: Plan weights of the views held lately (see :func:`view_weights`).
WEIGHTS_MEMO_SIZE: Final = 16
_WEIGHTS: dict[int, tuple[Mapping[str, Any], dict[str, float]]] = {}


def view_weights(members: Mapping[str, _Weighted]) -> dict[str, float]:
    """:func:`plan_weights` of a view's members (a mapping that never changes), computed
    once per view in this process (workers simulated in one process share it). The
    result is shared: do not change it."""
    got = _WEIGHTS.get(id(members))
    if got is not None and got[0] is members:
        return got[1]
    weights = plan_weights(members)
    if len(_WEIGHTS) >= WEIGHTS_MEMO_SIZE:
        del _WEIGHTS[next(iter(_WEIGHTS))]  # the oldest
    _WEIGHTS[id(members)] = (members, weights)
    return weights


@dataclass(frozen=True)
class Plan:
    """One stored plan: its members (id -> weight), the view it was made for (the
    membership epoch plus one byte: an interim view sorts before the full view of the
    same epoch, see ``Membership.view_key``), a sequence number (one per write) and the
    overrides of the rendezvous map."""

    seq: int
    epoch: bytes
    members: Mapping[str, float]
    partitions: int
    overrides: Mapping[int, str] = field(default_factory=dict)
    #: Total jobs the plan balanced (by the counts it was made from).
    jobs: int = 0

    def same_members(self, members: Mapping[str, float]) -> bool:
        return dict(self.members) == dict(members)

    def digest(self) -> bytes:
        """16 bytes that name the plan's content (BLAKE2b of its canonical encoding,
        computed once per plan object): what the stored header carries, what a delta
        names as its base, and how a plan rebuilt from deltas is checked."""
        got: bytes | None = self.__dict__.get("_digest")
        if got is None:
            got = self._remember_digest(_packed(self))
        return got

    def _remember_digest(self, packed: bytes) -> bytes:
        """Keep the digest of ``packed``, this plan's canonical encoding (:func:`_packed`)."""
        got = hashlib.blake2b(packed, digest_size=16).digest()
        object.__setattr__(self, "_digest", got)
        return got

    def map(self) -> PlanMap:
        """The plan's map, computed once per plan object (plans are immutable)."""
        got: PlanMap | None = self.__dict__.get("_map")
        if got is None:
            got = PlanMap(self)
            object.__setattr__(self, "_map", got)
        return got


class PlanMap:
    """A plan as the runner reads it: the owner of every partition (what an
    :class:`~fdbworkers._core.assign.Assignment` answers, from the plan)."""

    __slots__ = ("_base", "_by_member", "_ids", "_owner", "plan")

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        base = assign(dict(plan.members), plan.partitions, balance=None)
        self._base = base
        self._ids: tuple[str, ...] = tuple(sorted(plan.members))
        index = {w: i for i, w in enumerate(self._ids)}
        owner = array("i", base._primary.tobytes()) if self._ids else None
        if owner is not None:
            for p, w in plan.overrides.items():
                owner[p] = index[w]
        self._owner = owner
        self._by_member: dict[str, PartitionSet] = {}

    @property
    def partitions(self) -> int:
        return self.plan.partitions

    @property
    def members(self) -> Mapping[str, float]:
        return MappingProxyType(dict(self.plan.members))

    def owner(self, partition: int) -> str | None:
        if not 0 <= partition < self.plan.partitions:
            raise ConfigError(f"partition {partition} outside [0, {self.plan.partitions})")
        if self._owner is None:
            return None
        return self._ids[self._owner[partition]]

    @property
    def member_ids(self) -> tuple[str, ...]:
        """The members, sorted: what :meth:`owner_indices` indexes."""
        return self._ids

    def owner_indices(self) -> Sequence[int] | None:
        """Index (into the sorted member ids) of every partition's owner (read-only)."""
        return None if self._owner is None else memoryview(self._owner).toreadonly()

    def partitions_of(self, worker: str) -> PartitionSet:
        """The partitions ``worker`` owns, as a bitmap (8 KB at 65,536 partitions, where
        a frozenset of all of them takes about 4 MB)."""
        got = self._by_member.get(worker)
        if got is None:
            if self._owner is None or worker not in self.plan.members:
                got = PartitionSet()
            else:
                got = PartitionSet.where(self._owner, self._ids.index(worker))
            self._by_member[worker] = got
        return got

    def loads(self, counts: Mapping[int, int]) -> dict[str, int]:
        """Worker id -> jobs it owns by ``counts`` (partition -> jobs)."""
        out = dict.fromkeys(self._ids, 0)
        if self._owner is None:
            return out
        for p, c in counts.items():
            out[self._ids[self._owner[p]]] += c
        return out


def _tie_keys(ids: tuple[str, ...]) -> list[int]:
    """Per member: the 64-bit key of its tie-breaks (BLAKE2b of the id, so the same in
    every process)."""
    return [stable_hash64(b"fdbw.plan.tie\0" + w.encode()) for w in ids]


def quotas(members: Mapping[str, float], total: int, held: Mapping[str, int]) -> dict[str, int]:
    """Integer quotas summing to ``total``, each ``floor(f)`` or ``floor(f) + 1`` of the
    fair share ``f = total * w / W`` (exact rationals); the extra units go to the members
    holding the most above their floor now (ties by a hash of the id)."""
    if not members:
        return {}
    fw = {w: Fraction(x) for w, x in members.items()}
    wsum = sum(fw.values(), Fraction(0))
    fair = {w: total * x / wsum for w, x in fw.items()}
    out = {w: math.floor(f) for w, f in fair.items()}
    extra = total - sum(out.values())
    # Only a member whose fair share is not a whole number may get one more: the
    # fractional parts sum to ``extra``, each below 1, so there are enough of them.
    order = sorted(
        (w for w in members if fair[w] != out[w]),
        key=lambda w: (-(held.get(w, 0) - out[w]), stable_hash64(w.encode()), w),
    )
    for w in order[:extra]:
        out[w] += 1
    return out


def _quota_list(
    ids: tuple[str, ...], weights: tuple[float, ...], total: int, held: list[int]
) -> list[int]:
    """:func:`quotas` for the sorted ``ids`` as a list, with the exact rationals
    computed once per distinct weight (a fleet has a few), not once per member."""
    mult: dict[float, int] = {}
    for x in weights:
        mult[x] = mult.get(x, 0) + 1
    wsum = sum((Fraction(x) * k for x, k in mult.items()), Fraction(0))
    floor_of: dict[float, int] = {}
    whole_of: dict[float, bool] = {}
    for x in mult:
        f = total * Fraction(x) / wsum
        floor_of[x] = math.floor(f)
        whole_of[x] = f == floor_of[x]
    out = [floor_of[x] for x in weights]
    extra = total - sum(out)
    if extra > 0:
        frac = [i for i, x in enumerate(weights) if not whole_of[x]]
        # By (-(held - floor), hash of the id, id); the ids are sorted, so the index
        # stands for the id.
        frac.sort(key=lambda i: (out[i] - held[i], stable_hash64(ids[i].encode()), i))
        for i in frac[:extra]:
            out[i] += 1
    return out


def make_plan(
    prev: Plan | None,
    members: Mapping[str, float],
    counts: Mapping[int, int],
    partitions: int,
    epoch: bytes,
) -> Plan:
    """The next plan for ``members`` (id -> weight) from ``prev`` and the per-partition
    job ``counts`` (partition -> jobs, zeros may be left out). Deterministic: the same
    inputs give the same plan in every process (module docstring).

    Plain Python over the non-empty partitions and the members (no numpy: a worker that
    runs jobs does without it, module :mod:`~fdbworkers._core.direct`): sorts and
    single passes, ``O(K log K + N log N)`` for ``K`` non-empty partitions."""
    if prev is not None and prev.partitions != partitions:
        raise ConfigError(f"plan of {prev.partitions} partitions for a role of {partitions}")
    ids = tuple(sorted(members))
    seq = (prev.seq + 1) if prev is not None else 1
    if not ids:
        return Plan(seq, epoch, {}, partitions, {}, 0)
    n = len(ids)
    weights = tuple(float(members[w]) for w in ids)
    primary = assign(dict(members), partitions, balance=None)._primary
    nz, cnt = _nonempty(counts)
    total = sum(cnt)
    base_of = [primary[p] for p in nz]
    # 1. Current owners (index into ids; -1: free) by the previous plan; a departed
    # member's partitions are free.
    owner = _kept_owners(prev, ids, nz, base_of)
    held = [0] * n
    for o, c in zip(owner, cnt, strict=True):
        if o >= 0:
            held[o] += c
    # 2. Quotas.
    quota = _quota_list(ids, weights, total, held)
    tkeys = _tie_keys(ids)
    work = _Work(nz, cnt, base_of, tkeys, owner, held, quota)
    # 3a. Members above quota free partitions (``owner`` and ``held`` change in place).
    _free_excess(work)
    # 3b. Free partitions go to their rendezvous owner or the member with most room.
    _place_free(work)
    overrides = {p: ids[o] for p, o, b in zip(nz, owner, base_of, strict=True) if o != b}
    return Plan(seq, epoch, dict(members), partitions, overrides, total)


def _nonempty(counts: Mapping[int, int]) -> tuple[list[int], list[int]]:
    """The non-empty partitions of ``counts``, sorted, and their job counts."""
    items = sorted((int(p), int(c)) for p, c in counts.items() if c > 0)
    return [p for p, _ in items], [c for _, c in items]


def _kept_owners(
    prev: Plan | None, ids: tuple[str, ...], nz: list[int], base_of: list[int]
) -> list[int]:
    """Step 1: the owner (index into ``ids``; -1: free) of each partition of ``nz`` by
    the previous plan, a departed member's partitions free; without a previous plan,
    the rendezvous owners ``base_of``."""
    old = prev.map() if prev is not None and prev.members else None
    old_idx = old.owner_indices() if old is not None else None
    if old is not None and old_idx is not None:
        index = {w: i for i, w in enumerate(ids)}
        remap = [index.get(w, -1) for w in old.member_ids]
        return [remap[old_idx[p]] for p in nz]
    return list(base_of)


@dataclass(slots=True)
class _Work:
    """Step 3's state, by index ``k`` into the non-empty partitions ``nz`` (sorted) and
    index ``m`` into the sorted member ids: what steps 3a and 3b read and change."""

    nz: list[int]  # the partitions
    cnt: list[int]  # their jobs
    base_of: list[int]  # their rendezvous owners
    tkeys: list[int]  # per member: the key of its tie-breaks
    owner: list[int]  # their owners now (-1: free); changed in place
    held: list[int]  # per member: the jobs it holds now; changed in place
    quota: list[int]  # per member: its quota


def _free_excess(w: _Work) -> None:
    """Step 3a: members above quota free partitions (``owner`` -1, ``held`` lowered, in
    place): those whose rendezvous owner is below quota first (group 0: the move also
    removes an override), then the smallest, then by tie-break (:func:`pair_tie`), then
    by partition, never more jobs than the excess. Each (member, group)'s take is the
    longest prefix of that order whose jobs stay within the excess the member had when
    the group began.

    Jobs only grow along the order, so the prefix is every level of job count below
    some ``c`` and the first ``t`` of level ``c``: the tie-breaks are computed for that
    one level only (a hash per partition of all of them would cost more than the rest
    of the plan)."""
    owner, held, quota, base_of = w.owner, w.held, w.quota, w.base_of
    cands: dict[int, tuple[list[int], list[int]]] = {}
    for k, o in enumerate(owner):
        if o >= 0 and held[o] > quota[o]:
            b = base_of[k]
            group = 0 if b != o and held[b] < quota[b] else 1
            cands.setdefault(o, ([], []))[group].append(k)
    if not cands:
        return
    left = [h - q for h, q in zip(held, quota, strict=True)]
    for group in (0, 1):
        freed: dict[int, int] = {}
        for m, lists in cands.items():
            got = _take_within(lists[group], left[m], w.cnt, w.nz, w.tkeys[m])
            for k in got:
                owner[k] = -1
            if got:
                freed[m] = sum(w.cnt[k] for k in got)
        for m, f in freed.items():
            held[m] -= f
            left[m] -= f
    _free_overshoot(w, left, cands)


def _take_within(ks: list[int], budget: int, cnt: list[int], nz: list[int], tkey: int) -> list[int]:
    """The longest prefix of ``ks`` ordered by (jobs, tie-break, index) whose jobs stay
    within ``budget`` (``ks`` ascending; see :func:`_free_excess`)."""
    if budget <= 0 or not ks:
        return []
    ks = sorted(ks, key=cnt.__getitem__)  # stable: by (jobs, index)
    out: list[int] = []
    i, n = 0, len(ks)
    while i < n:
        c = cnt[ks[i]]
        j = i + 1
        while j < n and cnt[ks[j]] == c:
            j += 1
        fit = budget // c
        if fit >= j - i:
            out.extend(ks[i:j])
            budget -= c * (j - i)
            i = j
            continue
        if fit > 0:
            level = sorted(ks[i:j], key=lambda k: (pair_tie(tkey, nz[k]), k))
            out.extend(level[:fit])
        break
    return out


def _free_overshoot(
    w: _Work, left: list[int], cands: dict[int, tuple[list[int], list[int]]]
) -> None:
    """Step 3a, last: a member still ``left`` jobs above quota frees its smallest
    partition too (by jobs, tie-break, group, index) when that leaves it nearer its
    quota (``c < 2 * left``: below it by ``c - left``). With partitions of several jobs
    each, freeing only within the excess could keep a member a whole partition above
    quota and another as far below (found by Hypothesis: three partitions of 5 jobs on
    members weighted 1, 0.5 and 1 ended 0 / 5 / 10 against quotas 6 / 3 / 6; now 5 / 5
    / 5)."""
    owner, cnt = w.owner, w.cnt
    for m, lists in cands.items():
        if left[m] <= 0:
            continue
        rest = [(g, k) for g in (0, 1) for k in lists[g] if owner[k] >= 0]
        if not rest:
            continue
        c = min(cnt[k] for _, k in rest)
        if c >= 2 * left[m]:
            continue
        _, _, k = min((pair_tie(w.tkeys[m], w.nz[k]), g, k) for g, k in rest if cnt[k] == c)
        owner[k] = -1
        w.held[m] -= c


def _place_free(w: _Work) -> None:
    """Step 3b: every free partition (``owner`` -1), largest first (then by partition),
    goes to its rendezvous owner if it has room, else to the member furthest below
    quota (ties by its key); ``owner`` is set in place. A heap of the members by room."""
    owner, held, quota, cnt, nz, tkeys = w.owner, w.held, w.quota, w.cnt, w.nz, w.tkeys
    base_of = w.base_of
    n = len(held)
    free = [k for k, o in enumerate(owner) if o < 0]
    if not free:
        return
    free.sort(key=lambda k: (-cnt[k], nz[k]))
    room = [q - h for q, h in zip(quota, held, strict=True)]
    heap = [(-room[i], tkeys[i], i) for i in range(n)]
    heapq.heapify(heap)
    for k in free:
        c, b = cnt[k], base_of[k]
        if room[b] >= c:
            to = b
        else:
            while -heap[0][0] != room[heap[0][2]]:
                heapq.heappop(heap)  # an entry from before the member's room changed
            to = heap[0][2]
        owner[k] = to
        room[to] -= c
        heapq.heappush(heap, (-room[to], tkeys[to], to))


# ------------------------------------------------------------------------- codec


def encode_plan(plan: Plan) -> bytes:
    """The plan as bytes (msgpack, then zlib); split with :func:`plan_chunks`. The plan
    keeps the digest of the same encoding: the writer, which stores both, encodes once."""
    packed = _packed(plan)
    if "_digest" not in plan.__dict__:
        plan._remember_digest(packed)
    return zlib.compress(packed, 6)


def _packed(plan: Plan) -> bytes:
    """The plan's canonical msgpack (members and overrides sorted, weights as floats):
    the same bytes for the same content in every process."""
    ids = sorted(plan.members)
    index = {w: i for i, w in enumerate(ids)}
    ps = sorted(plan.overrides)
    deltas = to_le(array("I", [b - a for a, b in zip([0, *ps], ps, strict=False)]))
    who = to_le(array("I", [index[plan.overrides[p]] for p in ps]))
    body: dict[str, Any] = {
        "format": PLAN_FORMAT,
        "algorithm": ALGORITHM_VERSION,
        "seq": plan.seq,
        "epoch": plan.epoch,
        "members": [[w, float(plan.members[w])] for w in ids],
        "partitions": plan.partitions,
        "jobs": plan.jobs,
        "p": deltas,
        "m": who,
    }
    packed: bytes = msgpack.packb(body, use_bin_type=True)
    return packed


def plan_chunks(data: bytes) -> list[bytes]:
    return [data[i : i + CHUNK_BYTES] for i in range(0, len(data), CHUNK_BYTES)] or [b""]


#: Plans decoded in this process, by their bytes, while held (see :func:`decode_plan`).
_PLAN_MEMO: HeldMemo[bytes, Plan] = HeldMemo(keep_last=False)


def decode_plan(data: bytes, where: str = "the stored plan") -> Plan:
    """Decode :func:`encode_plan`'s bytes; corrupt data or a newer format is refused.
    The same bytes give the same (immutable) plan object: workers in one process that
    read the same plan (a simulation of many workers) share it and its map instead of
    holding a copy each (N members, up to P overrides, P owners)."""
    got = _PLAN_MEMO.get(data)
    if got is None:
        got = _PLAN_MEMO.put(data, _decode_plan(data, where))
    return got


def unpack_compressed(data: bytes, where: str) -> dict[str, Any]:
    """A zlib-compressed msgpack map (a plan, a plan delta), or CorruptDataError."""
    try:
        body = msgpack.unpackb(zlib.decompress(data), raw=False)
    except Exception as e:  # zlib.error, msgpack's several errors
        raise CorruptDataError(f"{where} cannot be decoded: {e}") from e
    if not isinstance(body, dict):
        raise CorruptDataError(f"{where} is not a record")
    return body


def _decode_plan(data: bytes, where: str) -> Plan:
    body = unpack_compressed(data, where)
    fmt = body.get("format")
    if isinstance(fmt, int) and fmt > PLAN_FORMAT:
        raise LayoutError(
            f"{where} has format {fmt}, newer than this version understands ({PLAN_FORMAT}):"
            " upgrade fdbworkers"
        )
    if body.get("algorithm") != ALGORITHM_VERSION:
        raise LayoutError(
            f"{where} was made by assignment algorithm {body.get('algorithm')!r}, this "
            f"version runs {ALGORITHM_VERSION}: upgrade every worker of the role"
        )
    try:
        members = {str(w): float(x) for w, x in body["members"]}
        ids = sorted(members)
        deltas = from_le(body["p"], "I")
        who = from_le(body["m"], "I")
        ps = list(accumulate(deltas))
        partitions = int(body["partitions"])
        if len(ps) != len(who) or 0 in deltas[1:]:
            raise ValueError("override arrays do not match")
        if ps and not 0 <= ps[-1] < partitions:
            raise ValueError("an override's partition is out of range")
        overrides = {p: ids[m] for p, m in zip(ps, who, strict=True)}
        epoch = body["epoch"]
        if not isinstance(epoch, bytes):
            raise ValueError("epoch is not bytes")
        return Plan(int(body["seq"]), epoch, members, partitions, overrides, int(body["jobs"]))
    except (KeyError, TypeError, ValueError, IndexError) as e:
        raise CorruptDataError(f"{where} is malformed: {e}") from e
