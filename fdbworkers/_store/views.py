"""The admin read model's judgements: member and job states, the member and job views
the CLI prints, and a role's status checks. Pure functions of what ``admin.py`` read
(a :class:`RoleSnapshot` and the health observations), so they are tested without a
database."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from .._core.plan import Plan, plan_weights
from .._core.records import Claim, JobHealth, MemberRecord, jsonable, stamp_version
from .admin import JobInfoRecord, Observation, RoleSnapshot, current_health

MEMBER_STATES: Final = ("ok", "suspect", "stale", "draining", "unknown")
JOB_STATES: Final = ("owned", "moving", "unclaimed", "orphaned")


# --- judgements (pure) ----------------------------------------------------------------


def member_state(rec: MemberRecord, obs: Observation | None) -> str:
    """``stale`` (silent for at least its timeout: its neighbour evicts it), then
    ``draining`` (an operator asked it to leave), ``suspect`` (silent for half its
    timeout: it missed a heartbeat, they come every timeout/3), ``ok`` (its stamp
    changed while observed, or it stayed unchanged for less than a heartbeat interval),
    ``unknown`` (not observed long enough to tell)."""
    silent = obs.silent_for if obs is not None else None
    if silent is not None and silent >= rec.timeout:
        return "stale"
    if rec.drain:
        return "draining"
    if obs is None or silent is None:
        return "unknown"
    if silent >= rec.timeout / 2:
        return "suspect"
    if obs.changed:
        return "ok"
    return "unknown"


def assignment_weights(members: Mapping[str, MemberRecord]) -> dict[str, float]:
    """The weights the job runner plans with (:func:`~fdbworkers._core.plan.plan_weights`)."""
    return plan_weights(members)


def assigned_owners(
    members: Mapping[str, MemberRecord],
    jobs: Mapping[str, JobInfoRecord],
    partitions: int,
    plan: Plan | None = None,
) -> dict[str, str | None]:
    """job -> the member the stored plan gives it (what every worker follows). Before
    any worker wrote a plan: the rendezvous map of the members (what the first plan
    starts from). A plan made for other members names the owners a rebalance leads
    from; owners that are gone are reported as None."""
    if not members:
        return dict.fromkeys(jobs)
    if plan is not None and plan.partitions == partitions and plan.members:
        m = plan.map()
        out: dict[str, str | None] = {}
        for jid, j in jobs.items():
            o = m.owner(j.partition)
            out[jid] = o if o in members else None
        return out
    from .._core.assign import assign

    a = assign(assignment_weights(members), partitions, balance=None)
    return {jid: a.owner(j.partition) for jid, j in jobs.items()}


@dataclass(frozen=True)
class JobView:
    id: str
    partition: int
    spec: Any
    weight: float
    added_at: float
    owner: str | None
    owner_incarnation: str | None
    token: bytes | None
    assigned_to: str | None
    state: str
    #: The owner's report when the job fails there (None: it runs, as far as we know).
    health: JobHealth | None = None

    @property
    def health_state(self) -> str:
        """``ok``, ``failing`` (its runs fail on its owner) or ``parked`` (its owner
        stopped running it after ``park_after`` failures in a row)."""
        return "ok" if self.health is None else self.health.state

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "partition": self.partition,
            "spec": jsonable(self.spec),
            "weight": self.weight,
            "added_at": self.added_at,
            "owner": self.owner,
            "owner_incarnation": self.owner_incarnation,
            "token": self.token.hex() if self.token is not None else None,
            "token_version": stamp_version(self.token) if self.token is not None else None,
            "assigned_to": self.assigned_to,
            "state": self.state,
            "health": self.health_state,
            "failures": self.health.failures if self.health else 0,
            "restarts": self.health.restarts if self.health else 0,
            "last_error": self.health.last_error if self.health else None,
            "failing_since": self.health.since if self.health else None,
            "last_failure_at": self.health.last_failure_at if self.health else None,
        }


def job_state(
    claim: Claim | None, members: Mapping[str, MemberRecord], assigned: str | None
) -> str:
    """``owned`` (claimed by a current member, the one the assignment names), ``moving``
    (claimed by a current member, but the assignment names another: a handoff is under
    way or pending), ``unclaimed`` (no claim), ``orphaned`` (claimed by a worker that is
    no longer a member: the new owner takes it over)."""
    if claim is None:
        return "unclaimed"
    rec = members.get(claim.wid)
    if rec is None or rec.incarnation != claim.incarnation:
        return "orphaned"
    return "owned" if claim.wid == assigned else "moving"


def job_views(snap: RoleSnapshot) -> list[JobView]:
    owners = assigned_owners(snap.members, snap.jobs, snap.config.partitions, snap.plan)
    out = []
    for jid in sorted(snap.jobs):
        j = snap.jobs[jid]
        c = snap.claims.get(jid)
        out.append(
            JobView(
                jid,
                j.partition,
                j.spec,
                j.weight,
                j.added_at,
                c.wid if c else None,
                c.incarnation if c else None,
                c.token if c else None,
                owners.get(jid),
                job_state(c, snap.members, owners.get(jid)),
                current_health(c, snap.health.get(jid)),
            )
        )
    return out


@dataclass(frozen=True)
class MemberView:
    id: str
    host: str
    pid: int
    incarnation: str
    weight: float
    timeout: float
    joined_at: float
    drain: bool
    meta: Mapping[str, Any]
    state: str
    silent_for: float | None
    silent_for_exact: bool
    last_heartbeat_wall_time: float | None
    jobs: int
    assigned: int

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "host": self.host,
            "pid": self.pid,
            "incarnation": self.incarnation,
            "weight": self.weight,
            "timeout": self.timeout,
            "joined_at": self.joined_at,
            "drain": self.drain,
            "meta": jsonable(dict(self.meta)),
            "state": self.state,
            "silent_for": None if self.silent_for is None else round(self.silent_for, 3),
            "silent_for_exact": self.silent_for_exact,
            "last_heartbeat_wall_time": self.last_heartbeat_wall_time,
            "jobs": self.jobs,
            "assigned_jobs": self.assigned,
        }


def member_views(
    snap: RoleSnapshot, observations: Mapping[str, Observation], jobs: Sequence[JobView]
) -> list[MemberView]:
    held: dict[str, int] = {}
    assigned: dict[str, int] = {}
    for j in jobs:
        if j.owner is not None and j.state in ("owned", "moving"):
            held[j.owner] = held.get(j.owner, 0) + 1
        if j.assigned_to is not None:
            assigned[j.assigned_to] = assigned.get(j.assigned_to, 0) + 1
    out = []
    for wid in sorted(snap.members):
        rec = snap.members[wid]
        obs = observations.get(wid)
        out.append(
            MemberView(
                wid,
                rec.host,
                rec.pid,
                rec.incarnation,
                rec.weight,
                rec.timeout,
                rec.joined_at,
                rec.drain,
                rec.meta,
                member_state(rec, obs),
                obs.silent_for if obs is not None else None,
                bool(obs and obs.changed),
                obs.wall_time if obs is not None else None,
                held.get(wid, 0),
                assigned.get(wid, 0),
            )
        )
    return out


# --- status (pure) --------------------------------------------------------------------


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    items: Sequence[str] = ()

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "ok": self.ok, "detail": self.detail, "items": list(self.items)}


@dataclass(frozen=True)
class RoleStatus:
    role: str
    members: int
    jobs: int
    checks: Sequence[Check]

    @property
    def healthy(self) -> bool:
        return all(c.ok for c in self.checks)

    def to_json(self) -> dict[str, Any]:
        return {
            "role": self.role,
            "healthy": self.healthy,
            "members": self.members,
            "jobs": self.jobs,
            "checks": [c.to_json() for c in self.checks],
        }


def _some(items: Sequence[str], n: int = 5) -> str:
    head = ", ".join(items[:n])
    return head + (f" and {len(items) - n} more" if len(items) > n else "")


def evaluate_role(
    snap: RoleSnapshot, members: Sequence[MemberView], jobs: Sequence[JobView]
) -> RoleStatus:
    """The health summary of a role (the Akutan seed's spirit): every job owned by a live
    worker, agreement at rest, no member past its timeout, nothing corrupt."""
    checks = [
        _check_members_within_timeout(members),
        _check_jobs_owned_by_live_workers(members, jobs),
        _check_jobs_running(jobs),
        _check_agreement_at_rest(jobs),
        _check_records_readable(snap),
    ]
    return RoleStatus(snap.role, len(members), len(jobs), checks)


def _check_members_within_timeout(members: Sequence[MemberView]) -> Check:
    past = [
        f"{m.id} (silent {m.silent_for:.1f}s >= {m.timeout:g}s)"
        for m in members
        if m.state == "stale"
    ]
    unknown = [m.id for m in members if m.state == "unknown"]
    if past:
        return Check(
            "members_within_timeout",
            False,
            f"{len(past)} member(s) past their timeout: {_some(past)}",
            past,
        )
    if unknown:
        return Check(
            "members_within_timeout",
            False,
            f"{len(unknown)} member(s) not observed long enough to tell: {_some(unknown)} "
            "(raise --observe)",
            unknown,
        )
    suspect = [m.id for m in members if m.state == "suspect"]
    detail = f"{len(members)} member(s) heartbeating"
    if suspect:
        detail += f"; {len(suspect)} missed a heartbeat: {_some(suspect)}"
    return Check("members_within_timeout", True, detail)


def _check_jobs_owned_by_live_workers(
    members: Sequence[MemberView], jobs: Sequence[JobView]
) -> Check:
    live = {m.id for m in members if m.state not in ("stale",)}
    not_live = [
        f"{j.id} ({j.state}{', held by ' + j.owner if j.owner else ''})"
        for j in jobs
        if j.state in ("unclaimed", "orphaned") or (j.owner is not None and j.owner not in live)
    ]
    if not_live:
        return Check(
            "jobs_owned_by_live_workers",
            False,
            f"{len(not_live)} of {len(jobs)} job(s) without a live owner: {_some(not_live)}",
            not_live,
        )
    if not members and jobs:
        return Check("jobs_owned_by_live_workers", False, f"{len(jobs)} job(s) and no member")
    return Check(
        "jobs_owned_by_live_workers",
        True,
        f"{len(jobs)} job(s), each held by a live member",
    )


def _check_jobs_running(jobs: Sequence[JobView]) -> Check:
    failing = [
        f"{j.id} ({j.health_state} on {j.owner}: {j.health.failures} failure(s) in a row, "
        f"last: {j.health.last_error[:120]})"
        for j in jobs
        if j.health is not None
    ]
    if failing:
        return Check(
            "jobs_running",
            False,
            f"{len(failing)} job(s) failing or parked: {_some(failing, 3)}",
            failing,
        )
    return Check("jobs_running", True, "no job reports failing runs")


def _check_agreement_at_rest(jobs: Sequence[JobView]) -> Check:
    moving = [f"{j.id} ({j.owner} -> {j.assigned_to})" for j in jobs if j.state == "moving"]
    if moving:
        return Check(
            "agreement_at_rest",
            False,
            f"{len(moving)} job(s) held by another member than the assignment names "
            f"(a rebalance may be under way): {_some(moving)}",
            moving,
        )
    return Check("agreement_at_rest", True, "every claim matches the assignment")


def _check_records_readable(snap: RoleSnapshot) -> Check:
    corrupt = [k.hex() for k in snap.corrupt_members] + list(snap.corrupt)
    orphan_claims = sorted(set(snap.claims) - set(snap.jobs))
    if corrupt:
        return Check("records_readable", False, f"{len(corrupt)} corrupt record(s)", corrupt)
    detail = "every record decodes"
    if orphan_claims:
        detail += f"; {len(orphan_claims)} claim(s) of removed jobs still being released"
    return Check("records_readable", True, detail)
