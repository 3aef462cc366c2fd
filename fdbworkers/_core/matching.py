"""Capacities and the stable matching: the solver of the map (pure, deterministic, numpy).

Member ``i`` may own at most ``cap_i = floor(fair_i + slack_i + d_i)`` partitions
(:func:`_capacities`). Partitions go to the unique stable matching between partitions
(with their rank-rendezvous preference orders, :mod:`fdbworkers._core.rendezvous`) and
capacities, computed by :class:`_Solver` as vectorized deferred acceptance over
candidate pairs listed lazily (about ``_BAND`` per partition), so it costs ``O(P)``
pairs, not ``O(P * N)``. Without capacities and with one replica, a map of few members
is cheaper computed directly (:func:`direct_primaries`, the same owners). The map's API
is :mod:`fdbworkers._core.assign`; reasons and measurements in docs/assignment.md.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from .rendezvous import _Domain, _exp_score, _ln, _pair_ties, lazy_numpy

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray

    from .rendezvous import F64Array, I64Array, U64Array
else:
    np = lazy_numpy(globals())  # numpy is loaded with the first map, not on import

#: Expected listed candidates per partition (the rest are completed on demand).
_BAND = 5.0
#: Shortest prefix listed for a partition that needs more than the band.
_MIN_PREFIX = 16
#: balance="auto": the target fraction of members at capacity is this times
#: sqrt(fair share / N) (calibrated in benchmarks/assign_bench.py, docs/assignment.md).
_AUTO_GAIN = 0.04


#: The map without capacities and with one replica is computed directly
#: (:func:`direct_primaries`) while ``N * (domain size + _DIRECT_CALL) <= _DIRECT_GAIN * P``
#: (:func:`direct_pays`): the solver's cost grows with ``P`` and hardly with ``N``, the
#: direct one with ``N`` passes over the Feistel domain plus a fixed cost per member
#: (``_DIRECT_CALL``, in entries of a pass). Measured with benchmarks/assign_bench.py
#: ``--part direct`` (docs/assignment.md): at P = 65536 the direct path is faster up to
#: N = 80-100, and the rule takes it up to N = 60.
_DIRECT_GAIN = 64
_DIRECT_CALL = 4096


# ------------------------------------------------------------------ direct path


def direct_pays(members: int, partitions: int) -> bool:
    """Whether :func:`direct_primaries` is cheaper than the solver (rule above)."""
    size = _Domain.of(partitions).size
    return members == 1 or members * (size + _DIRECT_CALL) <= _DIRECT_GAIN * partitions


def direct_primaries(weights: tuple[float, ...], keys: U64Array, partitions: int) -> I64Array:
    """The primary of every partition when nothing caps a member, computed directly.

    Without capacities the solver gives each partition its first candidate: the member
    first in the pair order (score, tie-break, member index) that ``_Solver._order``
    sorts by. Here every member's rank of every partition is computed
    (:meth:`_Domain.ranks`), one member at a time, with a running best: a member takes
    a partition when its score is lower, or equal with a lower tie-break
    (:func:`_pair_ties`; equal tie-breaks keep the lower index, the earlier member).
    The scores are the solver's value for value (ranks with equal weights, else
    ``E(rank) / w`` from the same elementwise operations), so the result is the
    solver's, bit for bit. O(N * domain) work, O(P) memory whatever N.
    """
    n, p = len(weights), partitions
    best = np.zeros(p, dtype=np.int64)
    if n == 1:
        return best
    domain = _Domain.of(p)
    w = np.asarray(weights, dtype=np.float64)
    # The solver's scores: with one weight for everybody the ranks, else E(rank) / w
    # (a table of E over all ranks: the same values as scoring each rank alone).
    exp = None if bool(np.all(w == w[0])) else _exp_score(np.arange(p, dtype=np.int64), p)

    def scores(m: int) -> F64Array:
        rank = domain.ranks(keys[m])  # < P: exact as float64, valid as an index
        return rank.astype(np.float64) if exp is None else exp[rank] / w[m]

    low = scores(0)
    for m in range(1, n):
        score = scores(m)
        better = score < low
        tied = np.flatnonzero(score == low)
        if tied.size:
            mine = _pair_ties(np.full(tied.size, keys[m, 4], dtype=np.uint64), tied)
            better[tied[mine < _pair_ties(keys[best[tied], 4], tied)]] = True
        best[better] = m
        np.minimum(low, score, out=low)
    return best


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
