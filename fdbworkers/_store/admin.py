"""What the CLI reads, and the pure judgements made from it.

Readers are async functions over a :class:`~fdbworkers.Database` and a
:class:`~fdbworkers._core.keys.Layout`; every judgement (member state, job state, status
checks) and every JSON form is a pure function of what was read, so it is tested without
a database.

Liveness is measured as the neighbour check measures it (G6): the CLI reads the health
stamps of a role repeatedly for a short while and times on its *own* monotonic clock how
long each stamp stayed unchanged. It never compares the wall time stored in a stamp with
its own clock; that wall time is shown for people only.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import anyio

from .._core.keys import (
    LAYOUT_VERSION,
    Claim,
    JobHealth,
    Layout,
    MemberRecord,
    RoleConfig,
    check_layout,
    decode,
    jsonable,
    split_stamped,
    stamp_version,
)
from .._core.plan import Plan, plan_weights
from .._db import VERSIONSTAMP_SIZE, Database, Transaction
from .._errors import CorruptDataError
from .plan import tx_read_plan
from .scan import scan

#: How often the health stamps are read while observing.
OBSERVE_POLL: Final = 0.1

#: The stable JSON schema names (docs/cli.md documents each).
SCHEMAS: Final = {
    "roles": "fdbworkers.roles/1",
    "members": "fdbworkers.members/1",
    "jobs": "fdbworkers.jobs/1",
    "job": "fdbworkers.job/1",
    "events": "fdbworkers.events/1",
    "event": "fdbworkers.event/1",
    "status": "fdbworkers.status/1",
    "doctor": "fdbworkers.doctor/1",
}

MEMBER_STATES: Final = ("ok", "suspect", "stale", "draining", "unknown")
JOB_STATES: Final = ("owned", "moving", "unclaimed", "orphaned")


# --- JSON ------------------------------------------------------------------------------


# --- paged scans -------------------------------------------------------------------------


# --- roles -----------------------------------------------------------------------------


@dataclass(frozen=True)
class RoleInfo:
    role: str
    partitions: int
    created_at: float
    members: int
    jobs: int

    def to_json(self) -> dict[str, Any]:
        return {
            "role": self.role,
            "partitions": self.partitions,
            "created_at": self.created_at,
            "members": self.members,
            "jobs": self.jobs,
        }


async def read_layout_version(db: Database, layout: Layout) -> int | None:
    """The layout version under the root (None: nothing written yet); a newer one raises
    :class:`LayoutError`."""

    async def tx(tr: Transaction) -> bytes | None:
        return await tr.snapshot.get(layout.layout_key)

    return check_layout(layout.layout_key, await db.transact(tx))


async def read_role_configs(db: Database, layout: Layout) -> dict[str, RoleConfig]:
    begin, end = layout.roles_range()
    out: dict[str, RoleConfig] = {}
    for key, value in await scan(db, begin, end):
        name = layout.unpack(key)[-1]
        out[str(name)] = RoleConfig.decode(key, value)
    return out


async def count_keys(db: Database, begin: bytes, end: bytes) -> int:
    """How many keys are in [begin, end) (paged; values are read too: the seam has no
    key-only read)."""
    return len(await scan(db, begin, end))


async def read_roles(db: Database, layout: Layout) -> list[RoleInfo]:
    await read_layout_version(db, layout)
    configs = await read_role_configs(db, layout)
    out = []
    for role, cfg in sorted(configs.items()):
        members = await count_keys(db, *layout.members_range(role))
        jobs = await job_count(db, layout, role)
        out.append(RoleInfo(role, cfg.partitions, cfg.created_at, members, jobs))
    return out


async def job_count(db: Database, layout: Layout, role: str) -> int:
    """The role's job counter (kept by job add/remove with atomic adds); a scan of the
    job table when there is no counter (a role written by an older version)."""

    async def tx(tr: Transaction) -> bytes | None:
        return await tr.snapshot.get(layout.job_count_key(role))

    raw = await db.transact(tx)
    if raw is not None and len(raw) == 8:
        return max(0, int.from_bytes(raw, "little", signed=True))
    return await count_keys(db, *layout.jobs_range(role))


async def require_role(db: Database, layout: Layout, role: str) -> RoleConfig:
    """The role's config; :class:`LookupError` naming the known roles if it does not
    exist."""
    await read_layout_version(db, layout)

    async def tx(tr: Transaction) -> bytes | None:
        return await tr.snapshot.get(layout.role_key(role))

    raw = await db.transact(tx)
    if raw is None:
        known = sorted(await read_role_configs(db, layout))
        hint = f"known roles: {', '.join(known)}" if known else "no role exists under this root"
        raise LookupError(f"no role {role!r} under this root ({hint})")
    return RoleConfig.decode(layout.role_key(role), raw)


# --- health observation ---------------------------------------------------------------


@dataclass(frozen=True)
class HealthStamp:
    """A health key as read: the stamp (the heartbeat's commit versionstamp) and the
    informational tail."""

    stamp: bytes | None
    wall_time: float | None = None
    incarnation: str | None = None

    @classmethod
    def parse(cls, key: bytes, raw: bytes | None) -> HealthStamp:
        if raw is None or len(raw) < VERSIONSTAMP_SIZE:
            return cls(None)
        try:
            stamp, tail = split_stamped(key, raw)
        except CorruptDataError:
            return cls(raw[:VERSIONSTAMP_SIZE])
        wall = tail.get("wall_time")
        inc = tail.get("incarnation")
        return cls(
            stamp,
            float(wall) if isinstance(wall, int | float) else None,
            str(inc) if inc is not None else None,
        )


@dataclass
class Observation:
    """One member's health stamp as seen by the CLI, timed on the CLI's own clock."""

    wid: str
    stamp: bytes | None
    wall_time: float | None
    #: When the CLI first saw the current stamp: the end of the first read (a lower
    #: bound of how long it has been unchanged), or the start of the read that saw it
    #: change.
    anchor: float
    #: True once the stamp changed while observed: the silence is then measured
    #: exactly (to the poll interval), not just bounded from below.
    changed: bool = False
    #: The start of the latest read that saw the current stamp.
    last_seen: float = 0.0

    def __post_init__(self) -> None:
        self.last_seen = max(self.last_seen, self.anchor)

    @property
    def silent_for(self) -> float:
        """How long the stamp has stayed the same, as far as the CLI knows."""
        return max(0.0, self.last_seen - self.anchor)

    def update(self, h: HealthStamp, read_start: float, read_end: float) -> None:
        if h.stamp != self.stamp:
            self.stamp = h.stamp
            self.wall_time = h.wall_time
            self.anchor = read_start
            self.changed = True
        self.last_seen = read_start


async def read_health(db: Database, layout: Layout, role: str) -> dict[str, HealthStamp]:
    """Every health stamp of a role in one range read."""
    begin, end = layout.health_range(role)

    async def tx(tr: Transaction) -> dict[str, HealthStamp]:
        out = {}
        for kv in await tr.snapshot.get_range(begin, end):
            wid = str(layout.unpack(kv.key)[-1])
            out[wid] = HealthStamp.parse(kv.key, kv.value)
        return out

    return await db.transact(tx)


def resolved(rec: MemberRecord, obs: Observation | None, resolve_after: float) -> bool:
    """Whether observing ``rec`` longer would tell nothing new: its stamp changed (it
    heartbeats), or it stayed silent for ``resolve_after`` of its timeout."""
    if obs is None:
        return True
    return obs.changed or obs.silent_for >= rec.timeout * resolve_after


async def observe_health(
    db: Database,
    layout: Layout,
    role: str,
    members: Mapping[str, MemberRecord],
    *,
    cap: float,
    resolve_after: float = 0.5,
    poll: float = OBSERVE_POLL,
    clock: Callable[[], float] = anyio.current_time,
) -> dict[str, Observation]:
    """Read the role's health stamps every ``poll`` seconds until each member in
    ``members`` is resolved (its stamp changed, or it stayed silent for
    ``resolve_after`` times its timeout) or ``cap`` seconds passed."""
    out: dict[str, Observation] = {}
    deadline = clock() + max(0.0, cap)
    first = True
    while True:
        start = clock()
        stamps = await read_health(db, layout, role)
        end = clock()
        for wid in members:
            h = stamps.get(wid, HealthStamp(None))
            obs = out.get(wid)
            if obs is None:
                if first:
                    out[wid] = Observation(wid, h.stamp, h.wall_time, anchor=end)
                continue
            obs.update(h, start, end)
        first = False
        if all(resolved(rec, out.get(wid), resolve_after) for wid, rec in members.items()):
            return out
        if clock() + poll > deadline:
            return out
        await anyio.sleep(poll)


# --- members and jobs -----------------------------------------------------------------


@dataclass(frozen=True)
class RoleSnapshot:
    """Members, jobs and claims of a role (members and health at one read version; jobs
    and claims paged)."""

    role: str
    config: RoleConfig
    epoch: bytes
    members: Mapping[str, MemberRecord]
    corrupt_members: Sequence[bytes]
    jobs: Mapping[str, JobInfoRecord]
    claims: Mapping[str, Claim]
    corrupt: Sequence[str] = ()
    #: Job health records (jobs failing on their owner), by job id.
    health: Mapping[str, JobHealth] = field(default_factory=dict)
    #: The stored plan (None: no worker has written one yet).
    plan: Plan | None = None


@dataclass(frozen=True)
class JobInfoRecord:
    """A job as stored (the CLI's own decoding: corrupt records are reported, not
    fatal)."""

    id: str
    partition: int
    spec: Any
    weight: float
    added_at: float


async def read_membership(
    db: Database, layout: Layout, role: str
) -> tuple[bytes, dict[str, MemberRecord], list[bytes]]:
    begin, end = layout.members_range(role)

    async def tx(tr: Transaction) -> tuple[bytes, dict[str, MemberRecord], list[bytes]]:
        epoch = await tr.snapshot.get(layout.epoch_key(role)) or b""
        members: dict[str, MemberRecord] = {}
        corrupt: list[bytes] = []
        for kv in await tr.snapshot.get_range(begin, end):
            try:
                wid = str(layout.unpack(kv.key)[-1])
                members[wid] = MemberRecord.decode(wid, kv.key, kv.value)
            except CorruptDataError:
                corrupt.append(kv.key)
        return epoch, members, corrupt

    return await db.transact(tx)


async def read_jobs_and_claims(
    db: Database, layout: Layout, role: str
) -> tuple[dict[str, JobInfoRecord], dict[str, Claim], list[str]]:
    jobs: dict[str, JobInfoRecord] = {}
    corrupt: list[str] = []
    for key, value in await scan(db, *layout.jobs_range(role)):
        try:
            t = layout.unpack(key)
            jid, part = str(t[-1]), int(t[-2])
            obj = decode(key, value)
            jobs[jid] = JobInfoRecord(
                jid,
                part,
                obj.get("spec"),
                float(obj.get("weight", 1.0)),
                float(obj.get("added_at", 0.0)),
            )
        except (CorruptDataError, ValueError, TypeError, IndexError) as e:
            corrupt.append(f"job record {key!r}: {e}")
    claims: dict[str, Claim] = {}
    for key, value in await scan(db, *layout.claims_range(role)):
        try:
            claims[str(layout.unpack(key)[-1])] = Claim.decode(key, value)
        except (CorruptDataError, IndexError) as e:
            corrupt.append(f"claim {key!r}: {e}")
    return jobs, claims, corrupt


async def read_role_snapshot(db: Database, layout: Layout, role: str) -> RoleSnapshot:
    config = await require_role(db, layout, role)
    epoch, members, corrupt_members = await read_membership(db, layout, role)
    jobs, claims, corrupt = await read_jobs_and_claims(db, layout, role)
    health = await read_job_health(db, layout, role, corrupt)
    plan = await read_plan(db, layout, role)
    return RoleSnapshot(
        role, config, epoch, members, corrupt_members, jobs, claims, corrupt, health, plan
    )


async def read_plan(db: Database, layout: Layout, role: str) -> Plan | None:
    """The role's stored plan (docs/assignment.md, "The plan")."""
    return await db.transact(tx_read_plan, layout, role)  # small: the database's timeout


async def read_job_health(
    db: Database, layout: Layout, role: str, corrupt: list[str]
) -> dict[str, JobHealth]:
    """The role's job health records (only jobs that fail have one: a small range)."""
    out: dict[str, JobHealth] = {}
    for key, value in await scan(db, *layout.jobhealth_range(role)):
        try:
            out[str(layout.unpack(key)[-1])] = JobHealth.decode(key, value)
        except (CorruptDataError, IndexError) as e:
            corrupt.append(f"job health {key!r}: {e}")
    return out


def current_health(claim: Claim | None, health: JobHealth | None) -> JobHealth | None:
    """The health record if it is the current owner's (written under the claim's token):
    a record of an earlier owner, or of a released claim, does not count."""
    if claim is None or health is None or health.token != claim.token:
        return None
    return health


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
    live = {m.id for m in members if m.state not in ("stale",)}
    checks: list[Check] = []

    past = [
        f"{m.id} (silent {m.silent_for:.1f}s >= {m.timeout:g}s)"
        for m in members
        if m.state == "stale"
    ]
    unknown = [m.id for m in members if m.state == "unknown"]
    if past:
        checks.append(
            Check(
                "members_within_timeout",
                False,
                f"{len(past)} member(s) past their timeout: {_some(past)}",
                past,
            )
        )
    elif unknown:
        checks.append(
            Check(
                "members_within_timeout",
                False,
                f"{len(unknown)} member(s) not observed long enough to tell: {_some(unknown)} "
                "(raise --observe)",
                unknown,
            )
        )
    else:
        suspect = [m.id for m in members if m.state == "suspect"]
        detail = f"{len(members)} member(s) heartbeating"
        if suspect:
            detail += f"; {len(suspect)} missed a heartbeat: {_some(suspect)}"
        checks.append(Check("members_within_timeout", True, detail))

    not_live = [
        f"{j.id} ({j.state}{', held by ' + j.owner if j.owner else ''})"
        for j in jobs
        if j.state in ("unclaimed", "orphaned") or (j.owner is not None and j.owner not in live)
    ]
    if not_live:
        checks.append(
            Check(
                "jobs_owned_by_live_workers",
                False,
                f"{len(not_live)} of {len(jobs)} job(s) without a live owner: {_some(not_live)}",
                not_live,
            )
        )
    elif not members and jobs:
        checks.append(
            Check("jobs_owned_by_live_workers", False, f"{len(jobs)} job(s) and no member")
        )
    else:
        checks.append(
            Check(
                "jobs_owned_by_live_workers",
                True,
                f"{len(jobs)} job(s), each held by a live member",
            )
        )

    failing = [
        f"{j.id} ({j.health_state} on {j.owner}: {j.health.failures} failure(s) in a row, "
        f"last: {j.health.last_error[:120]})"
        for j in jobs
        if j.health is not None
    ]
    if failing:
        checks.append(
            Check(
                "jobs_running",
                False,
                f"{len(failing)} job(s) failing or parked: {_some(failing, 3)}",
                failing,
            )
        )
    else:
        checks.append(Check("jobs_running", True, "no job reports failing runs"))

    moving = [f"{j.id} ({j.owner} -> {j.assigned_to})" for j in jobs if j.state == "moving"]
    if moving:
        checks.append(
            Check(
                "agreement_at_rest",
                False,
                f"{len(moving)} job(s) held by another member than the assignment names "
                f"(a rebalance may be under way): {_some(moving)}",
                moving,
            )
        )
    else:
        checks.append(Check("agreement_at_rest", True, "every claim matches the assignment"))

    corrupt = [k.hex() for k in snap.corrupt_members] + list(snap.corrupt)
    orphan_claims = sorted(set(snap.claims) - set(snap.jobs))
    if corrupt:
        checks.append(
            Check("records_readable", False, f"{len(corrupt)} corrupt record(s)", corrupt)
        )
    else:
        detail = "every record decodes"
        if orphan_claims:
            detail += f"; {len(orphan_claims)} claim(s) of removed jobs still being released"
        checks.append(Check("records_readable", True, detail))
    return RoleStatus(snap.role, len(members), len(jobs), checks)


# --- events ----------------------------------------------------------------------------


def layout_summary(version: int | None) -> str:
    if version is None:
        return (
            f"nothing written under this root yet (this fdbworkers writes layout {LAYOUT_VERSION})"
        )
    return f"layout version {version} (this fdbworkers reads up to {LAYOUT_VERSION})"
