"""Operator insight (pure: no I/O): why a job is where it is (``explain``) and what a
membership change would move (``plan``).

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
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from .._errors import ConfigError
from .assign import MAX_WEIGHT, MIN_WEIGHT, assign, job_partition
from .keys import stamp_version, validate_name
from .plan import Plan as StoredPlan
from .plan import make_plan, plan_weights

#: Event types that change the membership a role assigns with.
MEMBERSHIP_EVENTS: Final = frozenset({"joined", "evicted", "left", "drained", "drain_requested"})
#: Event types shown in an owner's stint without changing the membership.
NOTE_EVENTS: Final = frozenset({"self_fenced"})
#: A stint shorter than this (wall seconds) may never have run: workers act on a
#: membership once it has been quiet for the settle window (default 2 s, at most
#: ``settle_max``, default 10 s).
BRIEF_STINT: Final = 10.0
#: Names of hypothetical workers in ``plan --add N``.
HYPOTHETICAL_PREFIX: Final = "planned-"
#: Most hypothetical workers one plan adds.
MAX_ADD: Final = 10_000


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

    # Weights are fixed per incarnation: collect every recorded one.
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

    # Backwards: (worker -> (incarnation, drain)) before each change.
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
    start_ids = dict(state)

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

    warnings = list(replay.warnings)
    first = replay.epochs[0].event if replay.epochs else None
    log_begins = first_event or first
    complete = not replay.start
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
    # Self-fences of an owner during its stint.
    out: list[Stint] = []
    for s in stints:
        notes = list(s.notes)
        for n in replay.notes:
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
    stints = out
    assigned = owner_of(current)
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


# --- plan -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Change:
    """A membership change to plan. ``add`` hypothetical workers get the names
    ``planned-1``, ``planned-2``... (real ids place differently: use ``add_ids``)."""

    add: int = 0
    add_ids: tuple[str, ...] = ()
    add_weight: float = 1.0
    remove: tuple[str, ...] = ()
    drain: tuple[str, ...] = ()
    weights: Mapping[str, float] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        return not (self.add or self.add_ids or self.remove or self.drain or self.weights)

    def describe(self) -> str:
        parts = []
        if self.add:
            parts.append(f"add {self.add} worker(s) of weight {self.add_weight:g}")
        if self.add_ids:
            parts.append(f"add {', '.join(self.add_ids)} (weight {self.add_weight:g})")
        if self.remove:
            parts.append(f"remove {', '.join(self.remove)}")
        if self.drain:
            parts.append(f"drain {', '.join(self.drain)}")
        for w, x in sorted(self.weights.items()):
            parts.append(f"weight of {w} -> {x:g}")
        return "; ".join(parts) or "no change"


def hypothetical_ids(n: int, taken: Iterable[str]) -> list[str]:
    """``planned-1``, ``planned-2``, ... skipping ids already taken (deterministic)."""
    taken = set(taken)
    out: list[str] = []
    i = 0
    while len(out) < n:
        i += 1
        wid = f"{HYPOTHETICAL_PREFIX}{i}"
        if wid not in taken:
            out.append(wid)
    return out


def _check_weight(what: str, w: float) -> float:
    if isinstance(w, bool) or not isinstance(w, int | float) or not math.isfinite(w):
        raise ConfigError(f"{what} must be a number, got {w!r}")
    if not MIN_WEIGHT <= w <= MAX_WEIGHT:
        raise ConfigError(f"{what} must be in [{MIN_WEIGHT:g}, {MAX_WEIGHT:g}], got {w:g}")
    return float(w)


def apply_change(
    members: Mapping[str, MemberState], change: Change
) -> tuple[dict[str, MemberState], list[str]]:
    """The membership after ``change`` and the ids it added. Bad input raises
    :class:`ConfigError` naming the member."""
    if change.empty:
        raise ConfigError("nothing to plan: give --add, --add-id, --remove, --drain or --weight")
    if isinstance(change.add, bool) or not 0 <= change.add <= MAX_ADD:
        raise ConfigError(f"--add takes 1 to {MAX_ADD} workers, got {change.add!r}")
    add_weight = _check_weight("the weight of added workers", change.add_weight)
    out = dict(members)
    named = [*change.remove, *change.drain, *change.weights]
    for wid in named:
        if wid not in members:
            known = ", ".join(sorted(members)) or "none"
            raise ConfigError(f"{wid!r} is not a member of the role (members: {known})")
    for wid in change.remove:
        if wid in change.drain or wid in change.weights:
            raise ConfigError(f"{wid!r} is both removed and drained or reweighted")
    for wid in change.remove:
        out.pop(wid, None)
    for wid in change.drain:
        m = out[wid]
        out[wid] = MemberState(m.incarnation, m.weight, True)
    for wid, x in change.weights.items():
        m = out[wid]
        out[wid] = MemberState(m.incarnation, _check_weight(f"the weight of {wid}", x), m.drain)
    added: list[str] = []
    for wid in change.add_ids:
        validate_name("worker id", wid)
        if wid in members or wid in added:
            raise ConfigError(f"{wid!r} is already a member of the role")
        added.append(wid)
    added += hypothetical_ids(change.add, [*members, *added])
    for wid in added:
        out[wid] = MemberState("planned", add_weight, False)
    return out, added


@dataclass(frozen=True)
class Move:
    job: str
    partition: int
    source: str | None
    target: str | None

    def to_json(self) -> dict[str, Any]:
        return {
            "job": self.job,
            "partition": self.partition,
            "from": self.source,
            "to": self.target,
        }


@dataclass(frozen=True)
class WorkerLoad:
    worker: str
    weight_before: float | None
    weight_after: float | None
    jobs_before: int
    jobs_after: int
    partitions_before: int
    partitions_after: int
    fair_after: float
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "worker": self.worker,
            "weight_before": self.weight_before,
            "weight_after": self.weight_after,
            "jobs_before": self.jobs_before,
            "jobs_after": self.jobs_after,
            "partitions_before": self.partitions_before,
            "partitions_after": self.partitions_after,
            "fair_after": round(self.fair_after, 3),
            "note": self.note,
        }


@dataclass(frozen=True)
class Plan:
    role: str
    change: Change
    added: tuple[str, ...]
    partitions: int
    jobs: int
    moves: tuple[Move, ...]
    #: Jobs that must move at least, for the fair shares before and after (J times the
    #: total variation distance of the shares: J/N for one join of N equal workers).
    optimum: float
    #: The least moves that can turn the current loads into the planned loads.
    lower_bound: int
    loads: tuple[WorkerLoad, ...]
    #: Jobs whose claim is not where the current assignment puts them (not converged).
    unsettled: tuple[str, ...]
    partitions_moved: int
    warnings: tuple[str, ...]

    @property
    def ratio(self) -> float | None:
        return len(self.moves) / self.optimum if self.optimum > 0 else None

    def to_json(self) -> dict[str, Any]:
        return {
            "role": self.role,
            "change": self.change.describe(),
            "added": list(self.added),
            "hypothetical": bool(self.change.add),
            "partitions": self.partitions,
            "jobs": self.jobs,
            "moves": len(self.moves),
            "optimum": round(self.optimum, 3),
            "lower_bound": self.lower_bound,
            "ratio": None if self.ratio is None else round(self.ratio, 3),
            "partitions_moved": self.partitions_moved,
            "moved": [m.to_json() for m in self.moves],
            "loads": [x.to_json() for x in self.loads],
            "unsettled": list(self.unsettled),
            "warnings": list(self.warnings),
        }


def _shares(weights: Mapping[str, float]) -> dict[str, float]:
    total = sum(weights.values())
    return {w: x / total for w, x in weights.items()} if total > 0 else {}


def plan_change(
    role: str,
    members: Mapping[str, MemberState],
    jobs: Mapping[str, int],
    partitions: int,
    change: Change,
    claims: Mapping[str, str] | None = None,
    stored: StoredPlan | None = None,
) -> Plan:
    """Which jobs ``change`` moves: the stored plan (``stored``; without one, the plan
    a first worker would write for the live ``members``) against the plan the workers
    would write after the change (:func:`~fdbworkers._core.plan.make_plan`, the same
    function). ``jobs``: job id -> stored partition; ``claims``: job id -> the worker
    holding its claim now (to report a role that has not converged)."""
    after, added = apply_change(members, change)
    wb, wa = assignment_weights(members), assignment_weights(after)
    counts: dict[int, int] = {}
    for p in jobs.values():
        counts[p] = counts.get(p, 0) + 1
    if stored is None or stored.partitions != partitions or not stored.members:
        stored = make_plan(None, wb, counts, partitions, b"")
    nxt = make_plan(stored, wa, counts, partitions, stored.epoch)
    a0, a1 = stored.map(), nxt.map()
    own0 = {p: a0.owner(p) for p in set(jobs.values())}
    own1 = {p: a1.owner(p) for p in set(jobs.values())}
    moves = tuple(
        Move(j, p, own0[p], own1[p])
        for j, p in sorted(jobs.items())
        if own0[p] != own1[p]
    )  # fmt: skip
    before_jobs: dict[str, int] = {}
    after_jobs: dict[str, int] = {}
    for p in jobs.values():
        if own0[p] is not None:
            before_jobs[str(own0[p])] = before_jobs.get(str(own0[p]), 0) + 1
        if own1[p] is not None:
            after_jobs[str(own1[p])] = after_jobs.get(str(own1[p]), 0) + 1
    s0, s1 = _shares(wb), _shares(wa)
    tv = sum(max(0.0, s0.get(w, 0.0) - s1.get(w, 0.0)) for w in set(s0) | set(s1))
    if not s0 or not s1:
        tv = 1.0 if s0 or s1 else 0.0
    optimum = len(jobs) * tv
    lower = sum(
        max(0, before_jobs.get(w, 0) - after_jobs.get(w, 0))
        for w in set(before_jobs) | set(after_jobs)
    )
    pl0 = {w: len(a0.partitions_of(w)) for w in set(members) | set(after)}
    pl1 = {w: len(a1.partitions_of(w)) for w in set(members) | set(after)}
    loads = []
    for w in sorted(set(members) | set(after)):
        note = ""
        if w in added:
            note = "added (hypothetical id)" if w not in change.add_ids else "added"
        elif w not in after:
            note = "removed"
        elif after[w].drain and not members[w].drain:
            note = "draining"
        elif w in change.weights:
            note = "reweighted"
        loads.append(
            WorkerLoad(
                w,
                members[w].weight if w in members else None,
                after[w].weight if w in after else None,
                before_jobs.get(w, 0),
                after_jobs.get(w, 0),
                pl0.get(w, 0),
                pl1.get(w, 0),
                len(jobs) * s1.get(w, 0.0),
                note,
            )
        )
    unsettled: tuple[str, ...] = ()
    if claims is not None:
        unsettled = tuple(sorted(j for j, p in jobs.items() if claims.get(j) != own0[p]))
    warnings = []
    if change.add:
        warnings.append(
            f"the {change.add} added worker(s) are hypothetical ({', '.join(added[:3])}"
            f"{'...' if len(added) > 3 else ''}): a worker's id decides which partitions it "
            "wins, so real ids give different placements (same count on average); plan "
            "with --add-id ID for the exact moves"
        )
    if unsettled:
        warnings.append(
            f"{len(unsettled)} job(s) are not yet where the current assignment puts them "
            "(a handoff in progress, or deferred by a velocity limit): the plan compares "
            "assignments, and those jobs move to their target regardless"
        )
    if not wa:
        warnings.append("no member would remain: every job would stop")
    return Plan(
        role,
        change,
        tuple(added),
        partitions,
        len(jobs),
        moves,
        optimum,
        lower,
        tuple(loads),
        unsettled,
        sum(1 for p in own0 if own0[p] != own1[p]),
        tuple(warnings),
    )
