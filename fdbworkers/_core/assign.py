"""Job-to-worker assignment: pure, deterministic, balanced, near-minimal movement.

Jobs live in ``P`` partitions fixed at role creation (:func:`job_partition`). Every
member computes the same owner for every partition from the same membership (worker id
-> weight) with :func:`assign`. Nothing here does I/O, reads a clock or uses Python's
randomized ``hash()``, and every value that decides an owner is computed with integer
operations and IEEE basic float operations only (no libm), so the map is the same on
every machine, platform and Python version (G4).

Two layers (measurements and reasons in ``docs/assignment.md``), the building blocks of
the first in :mod:`fdbworkers._core.rendezvous`:

1. **Rank rendezvous.** Each member ranks all partitions by its own keyed permutation
   (a 4-round Feistel network keyed by a BLAKE2b hash of the member id). A partition
   prefers members by the score ``E(rank) / weight`` with ``E(r) = -ln(1 - (r + 0.5)/P)``
   (weighted rendezvous hashing: a member wins a partition with probability
   proportional to its weight). A pair's score depends on that member and partition
   only, so every partition has a fixed preference order over all possible members.
   Since a member's ranks form a permutation rather than independent draws, loads are
   more even than classic rendezvous (variance about ``q/2`` instead of ``q`` for ``q``
   partitions per member), and a member's best partitions can be *listed* (permute its
   ranks 0, 1, 2, ...): computing the whole map costs ``O(P)`` candidate pairs, not
   ``O(P * N)`` hashes.
2. **Capacities.** Member ``i`` may own at most ``cap_i = floor(fair_i + slack_i + d_i)``
   partitions, ``fair_i = P * w_i / W``, ``d_i`` a per-member dither in [0, 1) (so that
   capacities drop one member at a time as the membership grows, not all at once).
   Partitions go to their most preferred member with room: the unique stable matching
   between partitions and capacities, i.e. take all (member, partition) pairs by
   ascending score and keep a pair while its partition is free and its member under
   capacity. ``balance="auto"`` sizes the slack so that capacities trim the load
   outliers while the extra movement they cause stays at a few per cent; a number sets
   ``slack_i = (balance - 1) * fair_i``; ``None`` removes capacities (pure rendezvous,
   whose movement is exactly minimal).

Golden vectors in the tests pin the map: changing any constant here changes every
deployment's map, so it must bump :data:`ALGORITHM_VERSION`.
"""

from __future__ import annotations

import functools
import hashlib
import math
import numbers
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Final

from .._errors import ConfigError
from .rendezvous import _Domain, _exp_score, _ln, _member_keys, _pair_ties, lazy_numpy

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray

    from .rendezvous import F64Array, I64Array, U64Array
else:
    np = lazy_numpy(globals())  # numpy is loaded with the first map, not on import

__all__ = [
    "ALGORITHM_VERSION",
    "DEFAULT_BALANCE",
    "DEFAULT_PARTITIONS",
    "Assignment",
    "Step",
    "assign",
    "job_partition",
    "moved",
    "next_step",
    "stable_hash64",
]

#: Version of the partition -> member function. Anything that changes the map for some
#: input (hashes, Feistel constants, score, capacity rule, tie-breaks) must bump it;
#: store it with the role so that members running different versions are noticed.
ALGORITHM_VERSION: Final = 1
#: Default number of partitions of a role (a power of 4: no cycle walking), chosen from
#: measurements (docs/assignment.md): balanced jobs for up to a few hundred workers.
DEFAULT_PARTITIONS: Final = 65536
#: Default capacity rule (see :func:`assign`).
DEFAULT_BALANCE: Final = "auto"

#: Largest partition count accepted (the solver keeps a few arrays of P entries).
MAX_PARTITIONS: Final = 1 << 24
#: Accepted weights (a worker's share is proportional to its weight).
MIN_WEIGHT: Final = 1e-9
MAX_WEIGHT: Final = 1e9


# --------------------------------------------------------------------------- hashing


def stable_hash64(data: bytes) -> int:
    """A 64-bit hash of ``data`` that is the same everywhere, forever (BLAKE2b-64).

    Unlike ``hash()``, it does not depend on ``PYTHONHASHSEED``, the process, the
    platform or the Python version.
    """
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


def job_partition(job_id: str, partitions: int) -> int:
    """The partition of a job: ``(stable_hash64(utf-8 id) * partitions) >> 64``.

    Computed once, when the job is added, and stored in its key. Multiply-shift rather
    than modulo: as uniform, and monotone in the hash, so partition ``p`` is the hash
    interval ``[p * 2**64 / P, (p + 1) * 2**64 / P)`` (partitions of ``P`` and ``k * P``
    nest).
    """
    _check_partitions(partitions)
    if not isinstance(job_id, str):
        raise ConfigError(f"job id must be a str, not {type(job_id).__name__}")
    return (stable_hash64(job_id.encode("utf-8")) * int(partitions)) >> 64


# ------------------------------------------------------------------- validation


def _check_partitions(partitions: int) -> None:
    if isinstance(partitions, bool) or not isinstance(partitions, numbers.Integral):
        raise ConfigError(f"partitions must be an int, not {type(partitions).__name__}")
    if not 1 <= partitions <= MAX_PARTITIONS:
        raise ConfigError(f"partitions must be in [1, {MAX_PARTITIONS}], got {partitions}")


def _check_members(members: Mapping[str, float]) -> tuple[tuple[str, ...], tuple[float, ...]]:
    if not isinstance(members, Mapping):
        raise ConfigError(f"members must be a mapping of worker id -> weight, not {members!r}")
    for wid, w in members.items():
        # The common case first (a str id and a float weight in range), then the rest.
        if type(wid) is str and wid and type(w) is float and MIN_WEIGHT <= w <= MAX_WEIGHT:
            continue
        if not isinstance(wid, str) or not wid:
            raise ConfigError(f"worker id must be a non-empty str, got {wid!r}")
        if isinstance(w, bool) or not isinstance(w, numbers.Real):
            raise ConfigError(f"weight of worker {wid!r} must be a number, got {w!r}")
        try:
            wf = float(w)
        except (OverflowError, ValueError):
            wf = math.inf
        if not MIN_WEIGHT <= wf <= MAX_WEIGHT:  # also false for NaN
            raise ConfigError(
                f"weight of worker {wid!r} must be in [{MIN_WEIGHT}, {MAX_WEIGHT}], got {w!r}"
            )
    ids = tuple(sorted(members))
    return ids, tuple(float(members[i]) for i in ids)


def _check_replicas(replicas: int) -> None:
    if isinstance(replicas, bool) or not isinstance(replicas, numbers.Integral):
        raise ConfigError(f"replicas must be an int, not {type(replicas).__name__}")
    if replicas < 1:
        raise ConfigError(f"replicas must be >= 1, got {replicas}")


def _check_balance(balance: float | str | None) -> None:
    if balance is None or balance == "auto":
        return
    if isinstance(balance, bool) or not isinstance(balance, numbers.Real):
        raise ConfigError(f"balance must be 'auto', a number >= 1.0 or None, got {balance!r}")
    if not (math.isfinite(float(balance)) and float(balance) >= 1.0):
        raise ConfigError(f"balance must be a finite number >= 1.0 or None, got {balance!r}")


#: Expected listed candidates per partition (the rest are completed on demand).
_BAND = 5.0
#: Shortest prefix listed for a partition that needs more than the band.
_MIN_PREFIX = 16
#: balance="auto": the target fraction of members at capacity is this times
#: sqrt(fair share / N) (calibrated in benchmarks/assign_bench.py, docs/assignment.md).
_AUTO_GAIN = 0.04


# ----------------------------------------------------------------------- solver


class _Solver:
    """The capacity matching over lazily listed candidate pairs.

    Every pair (member, partition) has a score (lower is preferred) that depends on the
    member and the partition only, and pairs are ordered by (score, tie-break, member).
    The solver never builds the ``P x N`` table. It lists every pair scoring below a
    threshold (about ``_BAND`` pairs per partition, found by walking each member's
    permutation from rank 0), and gives a partition more candidates only when it needs
    them (fewer listed than replicas, or all of them full): then it scores all ``N``
    members for that partition (ranks by the inverse permutation) and keeps a prefix of
    its preference order, twice as long each time. Each partition's list is always a
    prefix of its full preference order, so the result is the one the full table gives.
    """

    def __init__(
        self, weights: tuple[float, ...], keys: U64Array, partitions: int, caps: I64Array | None
    ) -> None:
        self.n = len(weights)
        self.p = partitions
        self.w = np.asarray(weights, dtype=np.float64)
        self.total_w = math.fsum(weights)
        self.keys = keys
        self.caps = caps
        self.domain = _Domain.of(partitions)
        # With one weight for everybody, E(r)/w orders pairs exactly as r does: use ranks
        # as scores and skip the logarithms (same result, see _scores).
        self.uniform = bool(np.all(self.w == self.w[0]))
        self.mass = _BAND  # expected pairs per partition of the next band
        self.listed = np.zeros(self.n, dtype=np.int64)  # ranks [0, listed_i) are listed
        # prefix[p] > 0: partition p's list is the first prefix[p] of its order (the
        # band no longer adds to it); 0: its list is the band's pairs.
        self.prefix = np.zeros(partitions, dtype=np.int64)
        # Candidate pairs grouped by partition, each group in preference order.
        self.cp = np.zeros(0, dtype=np.int64)
        self.cm = np.zeros(0, dtype=np.int64)
        self.cs = np.zeros(0, dtype=np.float64)

    # -- scores --------------------------------------------------------------------

    def _scores(self, rank: I64Array, member: I64Array | None) -> F64Array:
        """Scores of ranks, of the given members (``None``: rank i of member i)."""
        if self.uniform:
            return rank.astype(np.float64)
        w = self.w if member is None else self.w[member]
        return _exp_score(rank, self.p) / w

    def _ties(self, part: I64Array, member: I64Array) -> U64Array:
        return _pair_ties(self.keys[member, 4], part)

    def _order(self, part: I64Array, member: I64Array, score: F64Array) -> I64Array:
        """The permutation sorting pairs by (partition, score, tie-break, member)."""
        pbits = self.p.bit_length()
        ibits = max(1, (part.size - 1).bit_length())
        if self.uniform and 2 * pbits + ibits <= 64:
            # Scores are ranks < P: pack (partition, rank, batch index) in one word and
            # sort the words, much faster than an argsort; the index is the permutation.
            word = (part.astype(np.uint64) << np.uint64(pbits + ibits)) | (
                score.astype(np.uint64) << np.uint64(ibits)
            )
            word |= np.arange(part.size, dtype=np.uint64)
            order = (np.sort(word) & np.uint64((1 << ibits) - 1)).astype(np.int64)
        elif self.uniform:
            key = (part.astype(np.uint64) << np.uint64(32)) | score.astype(np.uint64)
            order = np.argsort(key)
        else:
            order = np.argsort(score)
            order = order[np.argsort(part[order], kind="stable")]
        sp, ss = part[order], score[order]
        same = (sp[1:] == sp[:-1]) & (ss[1:] == ss[:-1])
        if bool(same.any()):  # equal scores for one partition: sort those runs exactly
            run = np.zeros(order.size, dtype=bool)
            run[1:] |= same
            run[:-1] |= same
            at = np.flatnonzero(run)
            sub = order[at]
            tie = self._ties(part[sub], member[sub])
            order[at] = sub[np.lexsort((member[sub], tie, score[sub], part[sub]))]
        return order

    def _rank_bound(self, threshold: float) -> I64Array:
        """Per member: how many of its ranks score below ``threshold``."""
        p = self.p
        if self.uniform:
            return np.full(self.n, min(p, math.ceil(threshold)), dtype=np.int64)
        # Estimate with libm, then settle exactly with the deterministic score (it is
        # non-decreasing in the rank, so the count is well defined).
        wt = np.minimum(self.w * threshold, 700.0)
        k = np.clip((p * -np.expm1(-wt)).astype(np.int64), 0, p)
        while True:
            back = (k > 0) & ~(self._scores(np.maximum(k - 1, 0), None) < threshold)
            if not bool(back.any()):
                break
            k[back] -= 1
        while True:
            fwd = (k < p) & (self._scores(np.minimum(k, p - 1), None) < threshold)
            if not bool(fwd.any()):
                break
            k[fwd] += 1
        return k

    def _merge(
        self, drop: NDArray[np.bool_], part: I64Array, member: I64Array, score: F64Array
    ) -> None:
        """Replace the groups of partitions in ``drop`` and add new pairs (grouped by
        partition, in preference order) after each group's kept pairs."""
        keep = ~drop[self.cp]
        old_p = self.cp[keep]
        size = old_p.size + part.size
        at_old = np.arange(old_p.size) + np.searchsorted(part, old_p, side="left")
        at_new = np.arange(part.size) + np.searchsorted(old_p, part, side="right")
        cp = np.empty(size, dtype=np.int64)
        cm = np.empty(size, dtype=np.int64)
        cs = np.empty(size, dtype=np.float64)
        cp[at_old], cm[at_old], cs[at_old] = old_p, self.cm[keep], self.cs[keep]
        cp[at_new], cm[at_new], cs[at_new] = part, member, score
        self.cp, self.cm, self.cs = cp, cm, cs

    # -- listing -------------------------------------------------------------------

    def band_done(self) -> bool:
        return bool(np.all(self.listed >= self.p))

    def list_band(self) -> None:
        """List every pair below the next threshold (the band's mass doubles at each
        call), except for partitions that already have a prefix of their own."""
        threshold = self.mass * self.p / self.n if self.uniform else self.mass / self.total_w
        self.mass *= 2.0
        upto = np.maximum(self._rank_bound(threshold), self.listed)
        count = upto - self.listed
        total = int(count.sum())
        member = np.repeat(np.arange(self.n, dtype=np.int64), count)
        starts = np.cumsum(count) - count
        rank = np.arange(total, dtype=np.int64) - np.repeat(starts - self.listed, count)
        self.listed = upto
        part = self.domain.permute(rank.astype(np.uint64), self.keys[member, :4])
        part = part.astype(np.int64)
        new = self.prefix[part] == 0
        part, member, rank = part[new], member[new], rank[new]
        score = self._scores(rank, member)
        order = self._order(part, member, score)
        self._merge(np.zeros(self.p, dtype=bool), part[order], member[order], score[order])

    def extend_prefix(self, parts: I64Array, at_least: int) -> None:
        """Give each partition of ``parts`` a longer prefix of its preference order."""
        parts = np.unique(parts)
        n = self.n
        counts = np.bincount(self.cp, minlength=self.p)[parts]
        length = np.minimum(n, np.maximum(np.maximum(2 * counts, _MIN_PREFIX), at_least))
        self.prefix[parts] = length
        part = np.repeat(parts, n)
        member = np.tile(np.arange(n, dtype=np.int64), parts.size)
        rank = self.domain.unpermute(part.astype(np.uint64), self.keys[member, :4])
        score = self._scores(rank.astype(np.int64), member).reshape(parts.size, n)
        # Everything scoring at most the length-th best score, then exactly ordered.
        top = int(length.max())
        best = np.sort(np.partition(score, top - 1, axis=1)[:, :top], axis=1)
        kth = np.take_along_axis(best, (length - 1)[:, None], axis=1)
        row, col = np.nonzero(score <= kth)
        sel_p, sel_m, sel_s = parts[row], col.astype(np.int64), score[row, col]
        order = self._order(sel_p, sel_m, sel_s)
        sel_p, sel_m, sel_s = sel_p[order], sel_m[order], sel_s[order]
        first = np.searchsorted(sel_p, sel_p, side="left")
        within = np.arange(sel_p.size) - first
        keep = within < length[np.searchsorted(parts, sel_p)]
        drop = np.zeros(self.p, dtype=bool)
        drop[parts] = True
        self._merge(drop, sel_p[keep], sel_m[keep], sel_s[keep])

    def widen(self, parts: I64Array, at_least: int = 1) -> None:
        """More candidates for ``parts``: a longer prefix each, or the next band for
        everybody when that is cheaper (many partitions short at once)."""
        fresh = parts[self.prefix[parts] == 0]
        if fresh.size * self.n > 4 * self.mass * self.p and not self.band_done():
            self.list_band()
        else:
            self.extend_prefix(parts, at_least)

    # -- matching ------------------------------------------------------------------

    def solve(self, replicas: int) -> tuple[I64Array, I64Array]:
        """Primary owner of each partition and the first ``replicas`` members of each
        partition's preference order (-1 padded)."""
        need = min(replicas, self.n)
        self.list_band()
        while True:
            short = np.flatnonzero(np.bincount(self.cp, minlength=self.p) < need)
            if not short.size:
                break
            self.widen(short, need)
        # cut[i]: the worst score member i still accepts; only ever decreases.
        cut = np.full(self.n, np.inf, dtype=np.float64)
        while True:
            counts = np.bincount(self.cp, minlength=self.p)
            end = np.cumsum(counts)
            start = end - counts
            pos, exhausted = self._match(start, end, cut)
            if exhausted.size:
                if bool(np.all(self.prefix[exhausted] >= self.n)):  # pragma: no cover
                    raise AssertionError("capacities sum below the partition count")
                self.widen(exhausted)
                continue
            prefs = np.full((self.p, need), -1, dtype=np.int64)
            for j in range(need):
                at = start + j
                ok = at < end
                prefs[ok, j] = self.cm[at[ok]]
            return self.cm[pos], prefs

    def _match(self, start: I64Array, end: I64Array, cut: F64Array) -> tuple[I64Array, I64Array]:
        """Deferred acceptance with all partitions proposing at once.

        A member over capacity keeps its ``cap`` best partitions and lowers its cut-off
        to the worst of them (a member's scores are distinct); refused partitions propose
        to their next candidate. Cut-offs only decrease and a refused pair is never
        accepted later, so the result is the unique partition-optimal stable matching
        whatever the order of rounds, and ``cut`` stays valid when lists grow. Returns
        each partition's position in the candidate arrays, and the partitions that ran
        out of listed candidates (the caller lists more and calls again).
        """
        mem, score = self.cm, self.cs
        pos = start.copy()
        active = np.arange(self.p, dtype=np.int64)
        caps = self.caps
        none = np.zeros(0, dtype=np.int64)
        while True:
            a = active
            out: list[I64Array] = []
            while a.size:
                live = pos[a] < end[a]
                if not bool(live.all()):
                    out.append(a[~live])
                    a = a[live]
                at = pos[a]
                a = a[score[at] > cut[mem[at]]]
                pos[a] += 1
            if out:
                return pos, np.concatenate(out)
            if caps is None:
                return pos, none
            owner = mem[pos]
            over = np.bincount(owner, minlength=self.n) > caps
            if not bool(over.any()):
                return pos, none
            idx = np.flatnonzero(over[owner])
            held = owner[idx]
            s = score[pos[idx]]
            order = np.lexsort((s, held))
            idx, held, s = idx[order], held[order], s[order]
            rank = np.arange(held.size) - np.searchsorted(held, held, side="left")
            keep = rank < caps[held]
            cut[over] = -np.inf  # capacity 0 accepts nothing
            last = keep & (rank + 1 == caps[held])
            cut[held[last]] = s[last]
            active = idx[~keep]
            pos[active] += 1


def _normal_quantile(upper: F64Array) -> F64Array:
    """``z`` with ``P(Z > z) = upper`` for ``0 < upper <= 0.5`` (Abramowitz & Stegun
    26.2.23, error < 4.5e-4), with the deterministic log: capacities must not depend
    on the platform's libm."""
    t = np.sqrt(-2.0 * _ln(upper))
    num = 2.515517 + t * (0.802853 + t * 0.010328)
    den = 1.0 + t * (1.432788 + t * (0.189269 + t * 0.001308))
    return np.maximum(t - num / den, 0.0)


def _capacities(
    weights: tuple[float, ...], keys: U64Array, partitions: int, balance: float | str
) -> I64Array:
    """Per-member capacities ``floor(fair_i + slack_i + d_i)``, raised to sum >= P.

    ``fair_i = P * w_i / W``; ``d_i`` in [0, 1) is a per-member dither, so that as the
    fair share shrinks one member's capacity drops at a time. A float ``balance`` gives
    ``slack_i = (balance - 1) * fair_i``. ``"auto"`` sizes the slack from the spread of
    rank-rendezvous loads (sd ~ sqrt(fair/2)): the capacity sits ``z`` sd above the fair
    share, where ``z`` keeps the fraction of members at capacity near
    ``_AUTO_GAIN * sqrt(fair_i / N)``; the extra movement that capacities cause grows
    like that fraction times sqrt(N / fair_i) (docs/assignment.md), so it stays a few per
    cent whatever N and P.
    """
    n = len(weights)
    w = np.asarray(weights, dtype=np.float64)
    fair = float(partitions) * (w / math.fsum(weights))
    if balance == "auto":
        frac = np.minimum(0.5, _AUTO_GAIN * np.sqrt(fair / float(n)))
        slack = _normal_quantile(frac) * np.sqrt(fair * 0.5)
    else:
        slack = (float(balance) - 1.0) * fair
    dither = (keys[:, 5] >> np.uint64(11)).astype(np.float64) * (1.0 / 9007199254740992.0)
    raw = fair + slack + dither
    caps = np.floor(raw).astype(np.int64)
    short = partitions - int(caps.sum())
    if short > 0:
        # Capacities below the partition count (a balance within a partition or so of
        # the fair share): give the missing units to the largest remainders.
        order = np.lexsort((np.arange(n), -(raw - caps)))
        caps[order[:short]] += 1
    return np.minimum(caps, partitions)


# ------------------------------------------------------------------- the result


class Assignment:
    """Owner(s) of every partition for one membership; immutable.

    Built by :func:`assign`. ``owner(p)`` is the primary, ``owners(p)`` the primary
    followed by standbys (the next members in the partition's preference order).
    """

    __slots__ = (
        "_balance",
        "_by_member",
        "_ids",
        "_index",
        "_members",
        "_names",
        "_partitions",
        "_prefs",
        "_primary",
        "_replicas",
    )

    _ids: tuple[str, ...]
    _index: Mapping[str, int]
    _members: Mapping[str, float]
    _partitions: int
    _replicas: int
    _balance: float | str | None
    _primary: NDArray[np.int32]
    _prefs: NDArray[np.int32]
    _by_member: dict[int, frozenset[int]]
    _names: list[tuple[str | None, ...]]

    def __init__(
        self,
        ids: tuple[str, ...],
        weights: tuple[float, ...],
        partitions: int,
        replicas: int,
        balance: float | str | None,
        primary: I64Array,
        prefs: I64Array,
    ) -> None:
        primary = primary.astype(np.int32)
        prefs = prefs.astype(np.int32)
        primary.setflags(write=False)
        prefs.setflags(write=False)
        setter = object.__setattr__
        setter(self, "_ids", ids)
        setter(self, "_index", MappingProxyType({w: i for i, w in enumerate(ids)}))
        setter(self, "_members", MappingProxyType(dict(zip(ids, weights, strict=True))))
        setter(self, "_partitions", partitions)
        setter(self, "_replicas", replicas)
        setter(self, "_balance", balance)
        setter(self, "_primary", primary)
        setter(self, "_prefs", prefs)
        setter(self, "_by_member", {})
        setter(self, "_names", [])

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("Assignment is immutable")

    # -- description ---------------------------------------------------------------

    @property
    def partitions(self) -> int:
        return self._partitions

    @property
    def replicas(self) -> int:
        return self._replicas

    @property
    def balance(self) -> float | str | None:
        return self._balance

    @property
    def members(self) -> Mapping[str, float]:
        """Worker id -> weight, sorted by id (read-only)."""
        return self._members

    def __repr__(self) -> str:
        loads = self._loads()
        spread = f"{int(loads.min())}..{int(loads.max())}" if loads.size else "-"
        return (
            f"<Assignment {len(self._ids)} members, {self._partitions} partitions, "
            f"replicas={self._replicas}, balance={self._balance}, load {spread}>"
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Assignment):
            return NotImplemented
        return (
            self._ids == other._ids
            and self._partitions == other._partitions
            and np.array_equal(self._primary, other._primary)
            and np.array_equal(self._prefs, other._prefs)
        )

    __hash__ = None  # type: ignore[assignment]

    # -- queries -------------------------------------------------------------------

    def _check_p(self, partition: int) -> int:
        if isinstance(partition, bool) or not isinstance(partition, numbers.Integral):
            raise ConfigError(f"partition must be an int, got {partition!r}")
        if not 0 <= partition < self._partitions:
            raise ConfigError(f"partition {partition} outside [0, {self._partitions})")
        return int(partition)

    def owner(self, partition: int) -> str | None:
        """The primary owner of ``partition``, None when there are no members."""
        p = self._check_p(partition)
        if not self._ids:
            return None
        return self._ids[int(self._primary[p])]

    def owners(self, partition: int) -> tuple[str, ...]:
        """Primary first, then up to ``replicas - 1`` standbys, all distinct."""
        p = self._check_p(partition)
        if not self._ids:
            return ()
        first = int(self._primary[p])
        out = [self._ids[first]]
        for m in self._prefs[p].tolist():
            if len(out) >= self._replicas:
                break
            if m >= 0 and m != first:
                out.append(self._ids[m])
        return tuple(out)

    def partitions_of(self, worker: str) -> frozenset[int]:
        """The partitions whose primary is ``worker`` (empty for a non-member)."""
        i = self._index.get(worker)
        if i is None:
            return frozenset()
        got = self._by_member.get(i)
        if got is None:
            got = frozenset(np.flatnonzero(self._primary == i).tolist())
            self._by_member[i] = got
        return got

    def share(self, worker: str) -> float:
        """Fraction of the partitions ``worker`` owns as primary."""
        return len(self.partitions_of(worker)) / self._partitions

    def _loads(self) -> I64Array:
        if not self._ids:
            return np.zeros(0, dtype=np.int64)
        return np.bincount(self._primary, minlength=len(self._ids)).astype(np.int64)

    def load(self) -> dict[str, int]:
        """Worker id -> number of partitions it owns as primary."""
        return dict(zip(self._ids, self._loads().tolist(), strict=True))

    def primaries(self) -> tuple[str | None, ...]:
        """The primary owner of every partition, indexed by partition."""
        if not self._names:
            if not self._ids:
                self._names.append((None,) * self._partitions)
            else:
                ids = self._ids
                self._names.append(tuple(ids[m] for m in self._primary.tolist()))
        return self._names[0]

    def __iter__(self) -> Iterator[tuple[int, str | None]]:
        return iter(enumerate(self.primaries()))


# ------------------------------------------------------------------------ API


def assign(
    members: Mapping[str, float],
    partitions: int = DEFAULT_PARTITIONS,
    *,
    replicas: int = 1,
    balance: float | str | None = DEFAULT_BALANCE,
) -> Assignment:
    """Assign ``partitions`` partitions to ``members`` (worker id -> weight > 0).

    Deterministic: the same membership gives the same map in any process, whatever the
    order of ``members``. ``balance`` bounds each member's partitions:

    * ``"auto"`` (default): a capacity a few standard deviations of the natural spread
      above the fair share ``P * w_i / W``, as tight as it can be while the partitions it
      displaces on a join or leave stay a few per cent of those that must move;
    * a number ``b >= 1``: at most ``b`` times the fair share (plus a dither < 1);
      tighter balance, more movement (measurements in docs/assignment.md);
    * ``None``: no capacity, pure weighted rendezvous: one join moves only partitions
      to the newcomer and one leave only the leaver's partitions, exactly.

    ``replicas`` is the length of :meth:`Assignment.owners` (the primary, then standbys
    in the partition's preference order). The work is ``O(P + N)`` vector operations;
    run it off the event loop for large ``P`` (about 0.1 s for ``P = 65536``).
    """
    _check_partitions(partitions)
    _check_replicas(replicas)
    _check_balance(balance)
    ids, weights = _check_members(members)
    return _assign(ids, weights, int(partitions), int(replicas), balance)


@functools.lru_cache(maxsize=4)
def _assign(
    ids: tuple[str, ...],
    weights: tuple[float, ...],
    p: int,
    replicas: int,
    balance: float | str | None,
) -> Assignment:
    """:func:`assign` after validation; memoized (the result is immutable), since every
    reconcile of a worker asks for the map of the same settled membership."""
    if not ids:
        empty = np.zeros(p, dtype=np.int64)
        return Assignment(ids, weights, p, replicas, balance, empty, np.zeros((p, 0), np.int64))
    keys = _member_keys(ids)
    caps = None if balance is None else _capacities(weights, keys, p, balance)
    primary, prefs = _Solver(weights, keys, p, caps).solve(replicas)
    if replicas == 1:  # owners() is the primary alone: keep no preference lists
        prefs = np.zeros((p, 0), dtype=np.int64)
    return Assignment(ids, weights, p, replicas, balance, primary, prefs)


def moved(old: Assignment, new: Assignment) -> frozenset[int]:
    """Partitions whose primary owner differs between ``old`` and ``new``."""
    if old.partitions != new.partitions:
        raise ConfigError(
            f"cannot compare assignments of {old.partitions} and {new.partitions} partitions"
        )
    a, b = old.primaries(), new.primaries()
    return frozenset(p for p in range(old.partitions) if a[p] != b[p])


@dataclass(frozen=True, slots=True)
class Step:
    """One step of a gradual rebalance (see :func:`next_step`)."""

    #: Partition -> owner after this step (every partition of the target).
    ownership: Mapping[int, str]
    #: Partitions handed over now because their current owner is gone (not counted).
    adopted: frozenset[int]
    #: Partitions moved now from one live member to another (at most ``max_moves``).
    moved: frozenset[int]
    #: Live-to-live moves still left after this step.
    remaining: int


def next_step(current: Mapping[int, str | None], target: Assignment, max_moves: int) -> Step:
    """The next step from ``current`` ownership towards ``target``, moving at most
    ``max_moves`` partitions between live members.

    Partitions whose current owner is missing or no longer a member of ``target`` are
    orphans: they go to their target owner at once and do not count against
    ``max_moves`` (nobody is running them). Among the live-to-live moves, the step takes
    them round-robin over the receiving members (so a newcomer and an under-loaded
    member both make progress), in a fixed pseudo-random order of partitions.
    """
    if isinstance(max_moves, bool) or not isinstance(max_moves, numbers.Integral):
        raise ConfigError(f"max_moves must be an int, got {max_moves!r}")
    if max_moves < 0:
        raise ConfigError(f"max_moves must be >= 0, got {max_moves}")
    goal = target.primaries()
    live = target.members
    ownership: dict[int, str] = {}
    adopted: list[int] = []
    pending: dict[str, list[int]] = {}
    for p, want in enumerate(goal):
        if want is None:
            continue
        have = current.get(p)
        if have is None or have not in live:
            ownership[p] = want
            adopted.append(p)
        elif have == want:
            ownership[p] = have
        else:
            ownership[p] = have
            pending.setdefault(want, []).append(p)
    # Round-robin over receivers: the k-th move of each receiver before anyone's k+1-th.
    queue: list[tuple[int, int, str, int]] = []
    for to, parts in pending.items():
        keyed = sorted((_partition_order(q), q) for q in parts)
        queue.extend((k, h, to, q) for k, (h, q) in enumerate(keyed))
    queue.sort()
    chosen = queue[: int(max_moves)]
    for _, _, to, q in chosen:
        ownership[q] = to
    return Step(
        ownership=MappingProxyType(ownership),
        adopted=frozenset(adopted),
        moved=frozenset(q for _, _, _, q in chosen),
        remaining=len(queue) - len(chosen),
    )


def _partition_order(p: int) -> int:
    return stable_hash64(p.to_bytes(8, "little"))
