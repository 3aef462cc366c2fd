"""The ring of members and the neighbour rule (pure).

Members sit on a ring ordered by a stable hash of their id (ties broken by the id), so
neighbours do not follow naming patterns (``w1``, ``w2``... of one host stay spread out)
and every member computes the same ring from the same membership.

Each member checks its successor. When that successor looks suspect (it has missed a
heartbeat), the checker also observes the next one, and so on up to the first healthy
successor, so that one dead checker never hides another: a chain of dead members is
cleaned up in about one timeout, not one timeout per dead member.
"""

from __future__ import annotations

import bisect
import functools
import hashlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from collections.abc import Set as AbstractSet
from typing import Any


def ring_position(wid: str) -> tuple[int, str]:
    return _position(wid)


@functools.lru_cache(maxsize=65_536)
def _position(wid: str) -> tuple[int, str]:
    digest = hashlib.blake2b(wid.encode(), digest_size=8, person=b"fdbw-ring").digest()
    return int.from_bytes(digest, "big"), wid


def ring_order(members: Iterable[str]) -> list[str]:
    """Members in ring order (deterministic across processes and Python versions)."""
    return sorted(set(members), key=_position)


class Ring:
    """The members in ring order, kept up to date by :meth:`update` at the cost of the
    change (a join or a leave: one hash and one insertion), not of N: a worker asks for
    its successors at every check, and sorting N hashed ids each time made the cost at
    rest O(N log N) per worker (13 ms at N = 10,000, about once a second)."""

    __slots__ = ("_of", "_pos")

    #: Above this fraction of the members changed at once, :meth:`update` re-sorts.
    REBUILD_FRACTION = 0.25

    def __init__(self, members: Iterable[str] = ()) -> None:
        self._of: AbstractSet[str] = frozenset()
        self._pos: list[tuple[int, str]] = []
        self._rebuild(members)

    def _rebuild(self, members: Iterable[str]) -> None:
        self._of = members if isinstance(members, AbstractSet) else frozenset(members)
        self._pos = sorted(ring_position(w) for w in self._of)

    def __len__(self) -> int:
        return len(self._pos)

    def __contains__(self, wid: object) -> bool:
        return wid in self._of

    def order(self) -> list[str]:
        return [w for _, w in self._pos]

    def update(self, members: Iterable[str]) -> None:
        """Make the ring hold exactly ``members``. A set-like ``members`` (a dict's keys,
        which a membership never changes) is kept, not copied."""
        keys = members if isinstance(members, AbstractSet) else frozenset(members)
        added = keys - self._of
        removed = self._of - keys
        if not added and not removed:
            self._of = keys
            return
        if len(added) + len(removed) > self.REBUILD_FRACTION * max(1, len(self._pos)):
            self._rebuild(keys)
            return
        for w in removed:
            self._pos.pop(bisect.bisect_left(self._pos, ring_position(w)))
        for w in added:
            bisect.insort(self._pos, ring_position(w))
        self._of = keys

    def successors(self, me: str) -> Iterator[str]:
        """Every member other than ``me``, in ring order starting after ``me``, who
        need not be a member (a worker that just got evicted still computes where it
        would sit)."""
        n = len(self._pos)
        start = bisect.bisect_right(self._pos, ring_position(me))
        for k in range(n):
            w = self._pos[(start + k) % n][1]
            if w != me:
                yield w

    def copy(self) -> Ring:
        ring = Ring()
        ring._of, ring._pos = self._of, list(self._pos)
        return ring


#: Rings of the views held lately (see :func:`ring_of`).
RING_MEMO_SIZE = 16
_RINGS: dict[int, tuple[Mapping[str, Any], Ring]] = {}


def ring_of(members: Mapping[str, Any], previous: Ring | None = None) -> Ring:
    """The ring of ``members`` (a view's members, which never change), shared by the
    callers in this process that hold the same view (workers simulated in one process
    hold one ring, not one each). A new one is made from ``previous`` at the cost of
    the change. Do not :meth:`~Ring.update` the result."""
    got = _RINGS.get(id(members))
    if got is not None and got[0] is members:
        return got[1]
    ring = previous.copy() if previous is not None else Ring()
    ring.update(members.keys())
    if len(_RINGS) >= RING_MEMO_SIZE:
        del _RINGS[next(iter(_RINGS))]  # the oldest
    _RINGS[id(members)] = (members, ring)
    return ring


def successors(me: str, members: Iterable[str]) -> list[str]:
    """Every other member, in ring order starting after ``me``.

    ``me`` need not be a member (a worker that just got evicted still computes where it
    would sit)."""
    return list(Ring(members).successors(me))


def watched_neighbours(
    me: str,
    members: Ring | Iterable[str],
    suspect: Callable[[str], bool],
    *,
    limit: int = 8,
) -> list[str]:
    """The successors ``me`` observes: the first, and every further one while the ones
    before it are suspect, at most ``limit``."""
    ring = members if isinstance(members, Ring) else Ring(members)
    out: list[str] = []
    for wid in ring.successors(me):
        out.append(wid)
        if len(out) >= limit or not suspect(wid):
            break
    return out


def checker_of(wid: str, members: Iterable[str]) -> str | None:
    """The member whose first successor is ``wid`` (its primary checker)."""
    ring = ring_order(members)
    if wid not in ring or len(ring) < 2:
        return None
    return ring[ring.index(wid) - 1]
