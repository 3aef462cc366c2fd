"""Operator insight (pure: no I/O): why a job is where it is (``explain``, here) and what a
membership change would move (``plan``, in ``insight_plan.py``).

Both rest on one fact: every worker computes a job's owner with the deterministic
:func:`~fdbworkers._core.assign.assign` from the settled membership (worker id -> weight,
draining members excluded) and the role's partition count. So

* **explain** rebuilds the membership after every recorded membership change of the
  role (the ``joined``, ``evicted``, ``left``, ``drained`` and ``drain_requested``
  events, each written in the same transaction as the change it records) and replays
  the assignment over it: the owner of the job's partition after each change, and the
  change that moved it;
* **plan** computes the assignment for the live membership and for the membership after
  a hypothetical change, and diffs them. Applying the same change moves exactly those
  jobs, because the workers compute the very same function.

The event log is trimmed (7 days by default), so replay walks *backwards* from the live
membership (which is exact) to the membership before the oldest retained change. A
member's weight is fixed per incarnation; it is taken from whichever event or record
names that incarnation. When the log is older than some of what it needs (weights of
members that joined before the retained log and left without recording their weight,
history before the first retained event), the result says so in plain words.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from .assign import assign, job_partition
from .keys import validate_name
from .plan import Plan as StoredPlan
from .plan import plan_weights
from .records import stamp_version

#: Event types that change the membership a role assigns with.
MEMBERSHIP_EVENTS: Final = frozenset({"joined", "evicted", "left", "drained", "drain_requested"})
#: Event types shown in an owner's stint without changing the membership.
NOTE_EVENTS: Final = frozenset({"self_fenced"})
#: A stint shorter than this (wall seconds) may never have run: workers act on a
#: membership once it has been quiet for the settle window (default 2 s, at most
#: ``settle_max``, default 10 s).
BRIEF_STINT: Final = 10.0


# --- recorded events and membership ---------------------------------------------------


@dataclass(frozen=True)
class RecordedEvent:
    """One event of the audit log, as read (``data`` holds the event's own fields)."""

    stamp: bytes
    type: str
    wall_time: float | None
    data: Mapping[str, Any] = field(default_factory=dict)

    @property
    def version(self) -> int:
        return stamp_version(self.stamp)

    @property
    def worker(self) -> str:
        return str(self.data.get("worker", ""))

    @property
    def incarnation(self) -> str | None:
        inc = self.data.get("incarnation")
        return None if inc is None else str(inc)

    def where(self) -> dict[str, Any]:
        """The event's position, for output."""
        return {
            "stamp": self.stamp.hex(),
            "version": self.version,
            "wall_time": self.wall_time,
            "event": self.type,
            "worker": self.worker or None,
        }


@dataclass(frozen=True)
class MemberState:
    """A member as the assignment sees it."""

    incarnation: str
    weight: float = 1.0
    drain: bool = False


def assignment_weights(members: Mapping[str, MemberState]) -> dict[str, float]:
    """The weights every worker plans with (:func:`~fdbworkers._core.plan.plan_weights`)."""
    return plan_weights(members)


@dataclass(frozen=True)
class Epoch:
    """The membership right after one recorded change."""

    event: RecordedEvent
    members: Mapping[str, MemberState]


@dataclass(frozen=True)
class Replay:
    """The membership before the oldest retained change (``start``) and after each
    retained change (``epochs``, oldest first), and what could not be known."""

    start: Mapping[str, MemberState]
    epochs: Sequence[Epoch]
    #: Events about the role that do not change its membership (self_fenced), in order.
    notes: Sequence[RecordedEvent]
    #: (worker, incarnation) whose weight no event recorded: replay assumed 1.0.
    unknown_weights: frozenset[tuple[str, str]]
    #: Plain-language warnings (inconsistencies, gaps).
    warnings: Sequence[str]

    @property
    def exact(self) -> bool:
        return not self.unknown_weights and not self.warnings


def _weight(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    w = float(value)
    return w if math.isfinite(w) and w > 0 else None


def replay_membership(
    events: Iterable[RecordedEvent], current: Mapping[str, MemberState]
) -> Replay:
    """Rebuild the membership after every retained membership change of one role.

    ``events``: the role's events in log order (oldest first); ``current``: the live
    membership read after the last of them. Walks backwards from ``current`` to the
    membership before the oldest event, then forwards, taking each incarnation's weight
    from whichever source recorded it."""
    ordered = sorted(events, key=lambda e: e.stamp)
    changes = [e for e in ordered if e.type in MEMBERSHIP_EVENTS and e.worker]
    notes = [e for e in ordered if e.type in NOTE_EVENTS]
    warnings: list[str] = []
    weights = _recorded_weights(changes, current)
    start_ids = _walk_back(changes, current, warnings)

    unknown: set[tuple[str, str]] = set()

    def member(wid: str, inc: str, drain: bool) -> MemberState:
        w = weights.get((wid, inc))
        if w is None:
            unknown.add((wid, inc))
            w = 1.0
        return MemberState(inc, w, drain)

    start = {wid: member(wid, inc, drain) for wid, (inc, drain) in start_ids.items()}
    cur = dict(start)
    epochs: list[Epoch] = []
    for e in changes:
        wid, inc = e.worker, e.incarnation or "?"
        if e.type == "joined":
            cur[wid] = member(wid, inc, False)
        elif e.type == "drain_requested":
            if wid in cur:
                cur[wid] = MemberState(cur[wid].incarnation, cur[wid].weight, True)
        else:
            cur.pop(wid, None)
        epochs.append(Epoch(e, dict(cur)))
    return Replay(start, epochs, notes, frozenset(unknown), warnings)


def _recorded_weights(
    changes: Sequence[RecordedEvent], current: Mapping[str, MemberState]
) -> dict[tuple[str, str], float]:
    """Weights are fixed per incarnation: collect every recorded one, by (worker,
    incarnation): the live members' and those the events name."""
    weights: dict[tuple[str, str], float] = {
        (w, m.incarnation): m.weight for w, m in current.items()
    }
    for e in changes:
        inc = e.incarnation
        if inc is not None and (w := _weight(e.data.get("weight"))) is not None:
            weights.setdefault((e.worker, inc), w)
        old = e.data.get("replaced")
        w = _weight(e.data.get("replaced_weight"))
        if e.type == "joined" and old is not None and w is not None:
            weights.setdefault((e.worker, str(old)), w)
    return weights


def _walk_back(
    changes: Sequence[RecordedEvent], current: Mapping[str, MemberState], warnings: list[str]
) -> dict[str, tuple[str, bool]]:
    """Backwards from ``current``: (worker -> (incarnation, drain)) before the oldest
    change. What does not fit a later state is added to ``warnings``."""
    state: dict[str, tuple[str, bool]] = {w: (m.incarnation, m.drain) for w, m in current.items()}
    for e in reversed(changes):
        wid, inc = e.worker, e.incarnation or "?"
        have = state.get(wid)
        if e.type == "joined":
            if have is None or have[0] != inc:
                warnings.append(
                    f"the log says {wid} joined as incarnation {inc[:8]} at version "
                    f"{e.version}, but a later state does not have it: events are missing"
                )
            old = e.data.get("replaced")
            if old is not None:
                state[wid] = (str(old), False)
            else:
                state.pop(wid, None)
        elif e.type == "drain_requested":
            if have is None or have[0] != inc:
                warnings.append(
                    f"the log says a drain of {wid} ({inc[:8]}) was requested at version "
                    f"{e.version}, but a later state does not have it: events are missing"
                )
            state[wid] = (inc, False)
        else:  # evicted, left, drained
            if have is not None:
                warnings.append(
                    f"the log says {wid} {e.type} at version {e.version}, but it is still "
                    "there later without a new join: events are missing"
                )
            # Drain flag before a leave is unknown here; a retained drain_requested
            # event sets it in the forward pass.
            state[wid] = (inc, False)
    return state


# --- explain ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClaimInfo:
    """The job's claim as read now."""

    wid: str
    incarnation: str
    token: bytes


@dataclass(frozen=True)
class Stint:
    """One owner of the job's partition, from one change to the next."""

    owner: str | None
    incarnation: str | None
    since: RecordedEvent | None  # None: before the retained log
    until: RecordedEvent | None  # None: still the owner
    reason: str
    token: bytes | None = None
    notes: tuple[str, ...] = ()

    @property
    def brief(self) -> bool:
        """Shorter than a settle window: the owner may never have claimed it."""
        if self.since is None or self.until is None:
            return False
        a, b = self.since.wall_time, self.until.wall_time
        return a is not None and b is not None and b - a < BRIEF_STINT

    def to_json(self) -> dict[str, Any]:
        return {
            "owner": self.owner,
            "incarnation": self.incarnation,
            "from": self.since.where() if self.since else None,
            "until": self.until.where() if self.until else None,
            "reason": self.reason,
            "token": self.token.hex() if self.token is not None else None,
            "token_version": stamp_version(self.token) if self.token is not None else None,
            "brief": self.brief,
            "notes": list(self.notes),
        }


@dataclass(frozen=True)
class Explanation:
    role: str
    job: str
    partition: int
    partitions: int
    exists: bool
    stints: Sequence[Stint]
    #: The owner the assignment names now, and the claim as read now.
    assigned_to: str | None
    claim: ClaimInfo | None
    state: str
    state_detail: str
    #: First retained event of the role (None: the log holds none).
    log_begins: RecordedEvent | None
    #: True when the history reaches back to the role's first member.
    complete: bool
    warnings: Sequence[str]

    def to_json(self) -> dict[str, Any]:
        return {
            "role": self.role,
            "job": self.job,
            "exists": self.exists,
            "partition": self.partition,
            "partitions": self.partitions,
            "log": {
                "begins": self.log_begins.where() if self.log_begins else None,
                "complete": self.complete,
                "warnings": list(self.warnings),
            },
            "owners": [s.to_json() for s in self.stints],
            "current": {
                "assigned_to": self.assigned_to,
                "claimed_by": self.claim.wid if self.claim else None,
                "claim_incarnation": self.claim.incarnation if self.claim else None,
                "token": self.claim.token.hex() if self.claim else None,
                "token_version": stamp_version(self.claim.token) if self.claim else None,
                "state": self.state,
                "detail": self.state_detail,
            },
        }


def _fmt_weight(w: float) -> str:
    return f"{w:g}"


def move_reason(e: RecordedEvent, old: str | None, new: str | None, epoch: Epoch) -> str:
    """Why the owner changed from ``old`` to ``new`` at the change ``e``."""
    d, wid = e.data, e.worker
    if e.type == "joined":
        w = epoch.members[wid].weight if wid in epoch.members else d.get("weight")
        what = f"{wid} joined (weight {w:g})" if isinstance(w, float | int) else f"{wid} joined"
        if d.get("replaced"):
            what = f"{wid} restarted as a new incarnation (weight {w:g})"
        if new == wid:
            return f"{what}; the assignment gives it this job's partition"
        return f"rebalanced when {what} (a capacity bound moved this partition)"
    if e.type == "evicted":
        silent = d.get("silent_for")
        how = f"{wid} was evicted by {d.get('by', '?')}"
        if silent is not None:
            how += f" after {silent}s of silence"
        if old == wid:
            return how
        return f"rebalanced when {how}"
    if e.type == "drain_requested":
        how = f"a drain of {wid} was requested"
        if d.get("by"):
            how += f" by {d.get('by')}"
        if old == wid:
            return f"{how}: a draining worker gets no jobs"
        return f"rebalanced when {how}"
    how = f"{wid} left" if e.type == "left" else f"{wid} drained (left gracefully)"
    return how if old == wid else f"rebalanced when {how}"


def explain_job(
    role: str,
    job_id: str,
    partitions: int,
    replay: Replay,
    current: Mapping[str, MemberState],
    claim: ClaimInfo | None,
    *,
    exists: bool = True,
    partition: int | None = None,
    first_event: RecordedEvent | None = None,
    current_plan: StoredPlan | None = None,
) -> Explanation:
    """The ownership history of ``job_id``: replays the assignment over ``replay``.

    ``partition`` is the job's stored partition (computed from its id when absent);
    ``first_event`` is the oldest retained event of the role of any type;
    ``current_plan`` the stored plan: the owner for the membership it was made for
    (other epochs replay the rendezvous map, which the plan follows except where it
    overrides it to balance jobs: docs/assignment.md)."""
    validate_name("job id", job_id)
    p = job_partition(job_id, partitions) if partition is None else partition
    owner_of = _owner_of(partitions, p, current_plan)
    warnings = list(replay.warnings)
    first = replay.epochs[0].event if replay.epochs else None
    log_begins = first_event or first
    complete = not replay.start
    stints = _with_notes(_stints(replay, owner_of, log_begins), replay.notes)
    assigned = owner_of(current)
    _up_to_now(stints, claim, assigned, current)
    if stints[-1].owner != assigned:
        warnings.append(
            f"replay ends with {stints[-1].owner} but the live membership assigns {assigned}: "
            "the log is inconsistent with the live membership"
        )
    if replay.unknown_weights:
        names = ", ".join(sorted(f"{w} ({i[:8]})" for w, i in replay.unknown_weights))
        warnings.append(
            f"the weights of {names} were not recorded (events written by an older "
            "fdbworkers, or older than the retained log): replay assumed 1.0, so owners "
            "while they were members may be wrong"
        )
    state, detail = job_state(claim, current, assigned, exists)
    return Explanation(
        role,
        job_id,
        p,
        partitions,
        exists,
        tuple(stints),
        assigned,
        claim,
        state,
        detail,
        log_begins,
        complete and not replay.unknown_weights,
        tuple(warnings),
    )


def _owner_of(
    partitions: int, p: int, current_plan: StoredPlan | None
) -> Callable[[Mapping[str, MemberState]], str | None]:
    """The owner of partition ``p`` for a membership: the stored plan's for the members
    it was made for, else the rendezvous map's (cached per set of weights)."""
    cache: dict[tuple[tuple[str, float], ...], str | None] = {}

    def owner_of(members: Mapping[str, MemberState]) -> str | None:
        weights = assignment_weights(members)
        key = tuple(sorted(weights.items()))
        if key not in cache:
            if (
                current_plan is not None
                and current_plan.partitions == partitions
                and (current_plan.same_members(weights))
            ):
                cache[key] = current_plan.map().owner(p)
            else:
                cache[key] = assign(weights, partitions, balance=None).owner(p) if weights else None
        return cache[key]

    return owner_of


def _stints(
    replay: Replay,
    owner_of: Callable[[Mapping[str, MemberState]], str | None],
    log_begins: RecordedEvent | None,
) -> list[Stint]:
    """The owners of the partition over the replay: one stint per change of owner (or of
    the owner's incarnation), the first from before the retained log if it has a start."""
    stints: list[Stint] = []
    owner = owner_of(replay.start)
    inc = replay.start[owner].incarnation if owner is not None and owner in replay.start else None
    if replay.start:
        when = (
            f"before the retained event log begins (version {log_begins.version})"
            if log_begins is not None
            else "as far back as the retained event log goes"
        )
        reason = (
            f"owner {when}: older history is no longer in the log (events are kept "
            "7 days by default)"
        )
        stints.append(Stint(owner, inc, None, None, reason))
    for ep in replay.epochs:
        new = owner_of(ep.members)
        new_inc = ep.members[new].incarnation if new is not None and new in ep.members else None
        if new == owner and new_inc == inc:
            continue
        if stints:
            last = stints[-1]
            stints[-1] = Stint(
                last.owner, last.incarnation, last.since, ep.event, last.reason, None, last.notes
            )
        if new == owner:
            reason = f"{new} restarted as a new incarnation (same owner, new claim and token)"
        else:
            reason = move_reason(ep.event, owner, new, ep)
        stints.append(Stint(new, new_inc, ep.event, None, reason))
        owner, inc = new, new_inc
    return stints


def _with_notes(stints: Sequence[Stint], fences: Sequence[RecordedEvent]) -> list[Stint]:
    """The stints with the self-fences (``fences``: the replay's notes) of their owner
    during the stint as notes."""
    out: list[Stint] = []
    for s in stints:
        notes = list(s.notes)
        for n in fences:
            if n.worker != s.owner:
                continue
            if s.since is not None and n.stamp < s.since.stamp:
                continue
            if s.until is not None and n.stamp > s.until.stamp:
                continue
            notes.append(
                f"{n.worker} fenced itself at version {n.version} (no heartbeat committed in "
                "time): it stopped the job, and claimed it again with a new token once its "
                "heartbeats committed again (or was evicted)"
            )
        out.append(Stint(s.owner, s.incarnation, s.since, s.until, s.reason, s.token, tuple(notes)))
    return out


def _up_to_now(
    stints: list[Stint],
    claim: ClaimInfo | None,
    assigned: str | None,
    current: Mapping[str, MemberState],
) -> None:
    """End ``stints`` now: the last owner's token if it holds the claim; the current
    owner alone when the retained log holds no membership change."""
    if stints and claim is not None and stints[-1].owner == claim.wid:
        last = stints[-1]
        stints[-1] = Stint(
            last.owner, last.incarnation, last.since, None, last.reason, claim.token, last.notes
        )
    if not stints:
        now_inc = current[assigned].incarnation if assigned is not None else None
        stints.append(
            Stint(
                assigned,
                now_inc,
                None,
                None,
                "the current owner (the retained log holds no membership change of the role)",
            )
        )


def job_state(
    claim: ClaimInfo | None, members: Mapping[str, MemberState], assigned: str | None, exists: bool
) -> tuple[str, str]:
    """(state, explanation) of the job now."""
    if not exists:
        return "missing", "the job does not exist now: shown are the owners of its partition"
    if assigned is None:
        return "unassigned", "the role has no members: nobody runs the job"
    if claim is None:
        return "unclaimed", f"{assigned} has not claimed it yet (a handoff in progress)"
    holder = members.get(claim.wid)
    if holder is None or holder.incarnation != claim.incarnation:
        return (
            "orphaned",
            f"claimed by {claim.wid} ({claim.incarnation[:8]}), no longer a member: "
            f"{assigned} takes it over",
        )
    if claim.wid == assigned:
        return "owned", f"{assigned} holds the claim the assignment gives it"
    return (
        "moving",
        f"{claim.wid} still holds it, the assignment names {assigned}: a handoff is under "
        "way (the old owner's grace period) or deferred by the runner's velocity limit "
        "(max_moves per reconcile)",
    )
