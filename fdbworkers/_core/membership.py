"""Membership snapshots and their differences (pure)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from .records import MemberRecord


@dataclass(frozen=True)
class Membership:
    """The members of a role as read at one read version, with the epoch stamp."""

    role: str
    epoch: bytes
    members: Mapping[str, MemberRecord]
    #: An interim view (:func:`without_departed`): ``epoch`` is the latest read, but
    #: joins and restarts read at it are not in ``members`` yet.
    partial: bool = False

    @property
    def view_key(self) -> bytes:
        """Orders views: by epoch, and at one epoch the full view after the interim
        one (the stored plan records the key of the view it was made for)."""
        return self.epoch + (b"\x00" if self.partial else b"\x01")

    @property
    def weights(self) -> dict[str, float]:
        return {w: m.weight for w, m in self.members.items()}

    def __contains__(self, wid: object) -> bool:
        return wid in self.members


@dataclass(frozen=True)
class MembershipChange:
    """What changed between two reported memberships of a role.

    ``restarted`` holds members whose id stayed but whose incarnation changed (a quick
    restart with a persisted id); they are in neither ``added`` nor ``removed``.
    """

    role: str
    added: frozenset[str]
    removed: frozenset[str]
    restarted: frozenset[str]
    members: Mapping[str, MemberRecord]
    epoch: bytes

    @property
    def empty(self) -> bool:
        return not (self.added or self.removed or self.restarted)


#: Views kept for sharing (see :func:`shared_view` and :func:`apply_changes`).
VIEW_MEMO_SIZE = 16
_VIEWS: dict[tuple[bytes, str, bytes], Membership] = {}


#: Views derived lately (see :func:`apply_changes`).
_DERIVED: dict[tuple[int, bytes], tuple[Mapping[str, MemberRecord], Membership]] = {}


def apply_changes(
    known: Membership, epoch: bytes, changes: Mapping[str, MemberRecord | None]
) -> Membership:
    """The view at ``epoch``: ``known`` with the records re-read since (``None``: gone
    or unreadable). Members stay sorted by id. Workers of one process that apply the
    same changes to the same view get one result (checked: every record of ``changes``
    is the one in the result), so a storm of joins makes one copy of the N records per
    process, not one per worker, and costs a worker O(changes) when another already
    made it."""
    key = (id(known.members), epoch)
    got = _DERIVED.get(key)
    if got is not None and got[0] is known.members:
        view = got[1]
        now = view.members
        if all(now.get(wid) is rec for wid, rec in changes.items()):
            return view
    members = dict(known.members)
    added = False
    for wid, rec in changes.items():
        if rec is None:
            members.pop(wid, None)
        else:
            added = added or wid not in members
            members[wid] = rec
    if added:
        members = dict(sorted(members.items()))
    view = Membership(known.role, epoch, members)
    if len(_DERIVED) >= VIEW_MEMO_SIZE:
        del _DERIVED[next(iter(_DERIVED))]  # the oldest
    _DERIVED[key] = (known.members, view)
    return view


def shared_view(scope: bytes, m: Membership) -> Membership:
    """``m``, or an equal view already read in this process (same scope, role, epoch
    and records): views are immutable, so workers in one process that read the same
    view (a simulation of many workers, an application running several) hold one copy
    of its N records instead of one each. ``scope`` tells databases and roots apart
    (the members' key prefix); the records are compared, so a view that differs in
    anything is never replaced by another."""
    if m.partial:
        return m
    key = (scope, m.role, m.epoch)
    known = _VIEWS.get(key)
    if known is not None and (known is m or known.members == m.members):
        return known  # (records are shared: the comparison is one of identities)
    if len(_VIEWS) >= VIEW_MEMO_SIZE:
        del _VIEWS[next(iter(_VIEWS))]  # the oldest
    _VIEWS[key] = m
    return m


def diff(old: Membership | None, new: Membership) -> MembershipChange:
    before: Mapping[str, MemberRecord] = old.members if old else {}
    added = frozenset(new.members.keys() - before.keys())
    removed = frozenset(before.keys() - new.members.keys())
    now = new.members
    # Records are shared while unchanged (MemberRecord.decode): identity first.
    restarted = frozenset(
        w
        for w, rec in before.items()
        if (cur := now.get(w)) is not rec and cur is not None and cur.incarnation != rec.incarnation
    )
    return MembershipChange(new.role, added, removed, restarted, new.members, new.epoch)


def without_departed(reported: Membership | None, latest: Membership) -> Membership | None:
    """The reported membership less the members whose record is gone from ``latest``
    (evicted, or left), or None when nobody departed.

    A departure is not churn: the departed worker's jobs have no runner, so the view
    that drops it is reported at once instead of after the settle window, while joins
    and restarts in ``latest`` still wait for it. The result keeps ``reported``'s
    members and records otherwise, so the assignment moves only the departed workers'
    jobs (G5)."""
    if reported is None:
        return None
    departed = reported.members.keys() - latest.members.keys()
    if not departed:
        return None
    kept = {w: r for w, r in reported.members.items() if w not in departed}
    return Membership(reported.role, latest.epoch, kept, partial=True)


def replaced_or_gone(
    old: Membership | None, new: Membership, me: str
) -> list[tuple[str, str, float]]:
    """``(wid, incarnation, timeout)`` of every member of ``old`` other than ``me`` that
    ``new`` shows replaced by another incarnation of its id, or gone.

    Such an incarnation can no longer commit a heartbeat (its heartbeat reads its own
    member record without snapshot, so the replacement or removal, committed before
    ``new`` was read, makes every later one conflict), so its lease has run out once its
    own ``timeout`` has passed on the reader's clock since the reader saw ``new``: the
    reader may then retire it (see ``NeighbourTracker``)."""
    if old is None:
        return []
    out: list[tuple[str, str, float]] = []
    members = new.members
    for wid, rec in old.members.items():
        now = members.get(wid)
        if now is rec:  # unchanged (records are shared while unchanged)
            continue
        if (now is None or now.incarnation != rec.incarnation) and wid != me:
            out.append((wid, rec.incarnation, rec.timeout))
    return sorted(out)
