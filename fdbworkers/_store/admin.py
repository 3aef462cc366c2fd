"""What the CLI reads; the pure judgements made from it are in ``views.py``.

Readers are async functions over a :class:`~fdbworkers.Database` and a
:class:`~fdbworkers._core.keys.Layout`; every judgement (member state, job state, status
checks, in ``views.py``) and every JSON form is a pure function of what was read, so it
is tested without a database.

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

from .._core.keys import LAYOUT_VERSION, Layout, RoleSpace
from .._core.plan import Plan
from .._core.records import (
    Claim,
    JobHealth,
    MemberRecord,
    RoleConfig,
    check_layout,
    decode,
    split_stamped,
)
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
        space = layout.role(role)
        members = await count_keys(db, *space.members_range())
        jobs = await job_count(db, space)
        out.append(RoleInfo(role, cfg.partitions, cfg.created_at, members, jobs))
    return out


async def job_count(db: Database, space: RoleSpace) -> int:
    """The role's job counter (kept by job add/remove with atomic adds); a scan of the
    job table when there is no counter (a role written by an older version)."""

    async def tx(tr: Transaction) -> bytes | None:
        return await tr.snapshot.get(space.job_count_key)

    raw = await db.transact(tx)
    if raw is not None and len(raw) == 8:
        return max(0, int.from_bytes(raw, "little", signed=True))
    return await count_keys(db, *space.jobs_range())


async def require_role(db: Database, space: RoleSpace) -> RoleConfig:
    """The role's config; :class:`LookupError` naming the known roles if it does not
    exist."""
    await read_layout_version(db, space.layout)

    async def tx(tr: Transaction) -> bytes | None:
        return await tr.snapshot.get(space.config_key)

    raw = await db.transact(tx)
    if raw is None:
        known = sorted(await read_role_configs(db, space.layout))
        hint = f"known roles: {', '.join(known)}" if known else "no role exists under this root"
        raise LookupError(f"no role {space.role!r} under this root ({hint})")
    return RoleConfig.decode(space.config_key, raw)


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


async def read_health(db: Database, space: RoleSpace) -> dict[str, HealthStamp]:
    """Every health stamp of a role in one range read."""
    begin, end = space.health_range()

    async def tx(tr: Transaction) -> dict[str, HealthStamp]:
        out = {}
        for kv in await tr.snapshot.get_range(begin, end):
            wid = str(space.unpack(kv.key)[-1])
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
    space: RoleSpace,
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
        stamps = await read_health(db, space)
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
    db: Database, space: RoleSpace
) -> tuple[bytes, dict[str, MemberRecord], list[bytes]]:
    begin, end = space.members_range()

    async def tx(tr: Transaction) -> tuple[bytes, dict[str, MemberRecord], list[bytes]]:
        epoch = await tr.snapshot.get(space.epoch_key) or b""
        members: dict[str, MemberRecord] = {}
        corrupt: list[bytes] = []
        for kv in await tr.snapshot.get_range(begin, end):
            try:
                wid = str(space.unpack(kv.key)[-1])
                members[wid] = MemberRecord.decode(wid, kv.key, kv.value)
            except CorruptDataError:
                corrupt.append(kv.key)
        return epoch, members, corrupt

    return await db.transact(tx)


async def read_jobs_and_claims(
    db: Database, space: RoleSpace
) -> tuple[dict[str, JobInfoRecord], dict[str, Claim], list[str]]:
    jobs: dict[str, JobInfoRecord] = {}
    corrupt: list[str] = []
    for key, value in await scan(db, *space.jobs_range()):
        try:
            t = space.unpack(key)
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
    for key, value in await scan(db, *space.claims_range()):
        try:
            claims[str(space.unpack(key)[-1])] = Claim.decode(key, value)
        except (CorruptDataError, IndexError) as e:
            corrupt.append(f"claim {key!r}: {e}")
    return jobs, claims, corrupt


async def read_role_snapshot(db: Database, space: RoleSpace) -> RoleSnapshot:
    config = await require_role(db, space)
    epoch, members, corrupt_members = await read_membership(db, space)
    jobs, claims, corrupt = await read_jobs_and_claims(db, space)
    health = await read_job_health(db, space, corrupt)
    plan = await read_plan(db, space)
    return RoleSnapshot(
        space.role, config, epoch, members, corrupt_members, jobs, claims, corrupt, health, plan
    )


async def read_plan(db: Database, space: RoleSpace) -> Plan | None:
    """The role's stored plan (docs/assignment.md, "The plan")."""
    return await db.transact(tx_read_plan, space)  # small: the database's timeout


async def read_job_health(
    db: Database, space: RoleSpace, corrupt: list[str]
) -> dict[str, JobHealth]:
    """The role's job health records (only jobs that fail have one: a small range)."""
    out: dict[str, JobHealth] = {}
    for key, value in await scan(db, *space.jobhealth_range()):
        try:
            out[str(space.unpack(key)[-1])] = JobHealth.decode(key, value)
        except (CorruptDataError, IndexError) as e:
            corrupt.append(f"job health {key!r}: {e}")
    return out


def current_health(claim: Claim | None, health: JobHealth | None) -> JobHealth | None:
    """The health record if it is the current owner's (written under the claim's token):
    a record of an earlier owner, or of a released claim, does not count."""
    if claim is None or health is None or health.token != claim.token:
        return None
    return health


# --- events ----------------------------------------------------------------------------


def layout_summary(version: int | None) -> str:
    if version is None:
        return (
            f"nothing written under this root yet (this fdbworkers writes layout {LAYOUT_VERSION})"
        )
    return f"layout version {version} (this fdbworkers reads up to {LAYOUT_VERSION})"
