"""Operator insight, the plan half (pure: no I/O): what a membership change would move.

It computes the plan the workers would write for the live membership and for the
membership after a hypothetical change, and diffs them. Applying the same change moves
exactly those jobs, because the workers compute the very same function (see
``insight.py`` for the explain half and the fact both rest on)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from .._errors import ConfigError
from .assign import MAX_WEIGHT, MIN_WEIGHT
from .insight import MemberState, assignment_weights
from .keys import validate_name
from .plan import Plan as StoredPlan
from .plan import PlanMap, make_plan

#: Names of hypothetical workers in ``plan --add N``.
HYPOTHETICAL_PREFIX: Final = "planned-"
#: Most hypothetical workers one plan adds.
MAX_ADD: Final = 10_000


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
    before_jobs, after_jobs = _jobs_per_worker(own0, jobs), _jobs_per_worker(own1, jobs)
    s0, s1 = _shares(wb), _shares(wa)
    optimum = _optimum(s0, s1, len(jobs))
    lower = sum(
        max(0, before_jobs.get(w, 0) - after_jobs.get(w, 0))
        for w in set(before_jobs) | set(after_jobs)
    )
    loads = _loads(members, after, change, added, a0, a1, before_jobs, after_jobs, s1, len(jobs))
    unsettled: tuple[str, ...] = ()
    if claims is not None:
        unsettled = tuple(sorted(j for j, p in jobs.items() if claims.get(j) != own0[p]))
    warnings = _warnings(change, added, unsettled, wa)
    return Plan(
        role,
        change,
        tuple(added),
        partitions,
        len(jobs),
        moves,
        optimum,
        lower,
        loads,
        unsettled,
        sum(1 for p in own0 if own0[p] != own1[p]),
        warnings,
    )


def _jobs_per_worker(owners: Mapping[int, str | None], jobs: Mapping[str, int]) -> dict[str, int]:
    """Jobs per worker when partition ``p`` is owned by ``owners[p]`` (None: nobody)."""
    out: dict[str, int] = {}
    for p in jobs.values():
        if owners[p] is not None:
            out[str(owners[p])] = out.get(str(owners[p]), 0) + 1
    return out


def _optimum(s0: Mapping[str, float], s1: Mapping[str, float], jobs: int) -> float:
    """Jobs that must move at least: ``jobs`` times the total variation distance of the
    fair shares before (``s0``) and after (``s1``)."""
    tv = sum(max(0.0, s0.get(w, 0.0) - s1.get(w, 0.0)) for w in set(s0) | set(s1))
    if not s0 or not s1:
        tv = 1.0 if s0 or s1 else 0.0
    return jobs * tv


def _loads(
    members: Mapping[str, MemberState],
    after: Mapping[str, MemberState],
    change: Change,
    added: Sequence[str],
    a0: PlanMap,
    a1: PlanMap,
    before_jobs: Mapping[str, int],
    after_jobs: Mapping[str, int],
    s1: Mapping[str, float],
    jobs: int,
) -> tuple[WorkerLoad, ...]:
    """Each worker's weight, jobs and partitions before and after (``a0``, ``a1``: the
    maps), its fair share after, and what the change does to it."""
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
                jobs * s1.get(w, 0.0),
                note,
            )
        )
    return tuple(loads)


def _warnings(
    change: Change, added: Sequence[str], unsettled: Sequence[str], wa: Mapping[str, float]
) -> tuple[str, ...]:
    """What the plan cannot promise: hypothetical ids, a role not converged, no member."""
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
    return tuple(warnings)
