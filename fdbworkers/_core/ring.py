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

import hashlib
from collections.abc import Callable, Iterable


def ring_position(wid: str) -> tuple[int, str]:
    digest = hashlib.blake2b(wid.encode(), digest_size=8, person=b"fdbw-ring").digest()
    return int.from_bytes(digest, "big"), wid


def ring_order(members: Iterable[str]) -> list[str]:
    """Members in ring order (deterministic across processes and Python versions)."""
    return sorted(set(members), key=ring_position)


def successors(me: str, members: Iterable[str]) -> list[str]:
    """Every other member, in ring order starting after ``me``.

    ``me`` need not be a member (a worker that just got evicted still computes where it
    would sit)."""
    ring = ring_order(set(members) | {me})
    i = ring.index(me)
    return [w for w in ring[i + 1 :] + ring[:i] if w != me]


def watched_neighbours(
    me: str,
    members: Iterable[str],
    suspect: Callable[[str], bool],
    *,
    limit: int = 8,
) -> list[str]:
    """The successors ``me`` observes: the first, and every further one while the ones
    before it are suspect, at most ``limit``."""
    out: list[str] = []
    for wid in successors(me, members):
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
