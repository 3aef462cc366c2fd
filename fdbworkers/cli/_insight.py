"""Insight commands: ``explain`` (a job's ownership history, replayed from the event
log) and ``plan`` (a dry run of a membership change). The logic is pure, in
``fdbworkers._core.insight`` (explain) and ``fdbworkers._core.insight_plan`` (plan); this
module reads and prints. See docs/insight.md."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import click

from .._core.assign import job_partition
from .._core.insight import (
    ClaimInfo,
    Epoch,
    Explanation,
    MemberState,
    RecordedEvent,
    Replay,
    explain_job,
    replay_membership,
)
from .._core.insight_plan import (
    MAX_ADD,
    Change,
    Plan,
    plan_change,
)
from .._core.keys import RoleSpace, validate_name
from .._core.plan import Plan as StoredPlan
from .._core.records import Claim, MemberRecord, RoleConfig
from .._db import Database, Transaction
from .._errors import ConfigError, CorruptDataError
from .._store.admin import read_plan, read_role_snapshot, require_role
from .._store.events import EventInfo, parse_event, read_events_after
from ._common import (
    CliError,
    FiniteFloatRange,
    echo,
    name_arg,
    print_json,
    print_table,
    run,
    settings,
)
from ._read import json_option

SCHEMAS: Final = {"explain": "fdbworkers.explain/1", "plan": "fdbworkers.plan/1"}
#: Membership changes explain replays by default (each distinct membership costs one
#: assignment: about 0.1 s at the default 65536 partitions).
DEFAULT_REPLAY_LIMIT: Final = 300


def fmt_time(t: float | None) -> str:
    if t is None or t <= 0:
        return "?"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def recorded(ev: EventInfo) -> RecordedEvent:
    return RecordedEvent(ev.stamp, ev.type, ev.wall_time, dict(ev.data))


def member_states(members: Mapping[str, MemberRecord]) -> dict[str, MemberState]:
    return {w: MemberState(r.incarnation, r.weight, r.drain) for w, r in members.items()}


# --- reading ----------------------------------------------------------------------------


@dataclass(frozen=True)
class History:
    config: RoleConfig
    events: list[RecordedEvent]
    #: The oldest retained event of any role (where the log begins).
    first_any: RecordedEvent | None
    members: dict[str, MemberState]
    claim: ClaimInfo | None
    job_partition: int | None
    #: The stored plan now (the owners of the latest epoch).
    plan: StoredPlan | None = None


async def read_history(db: Database, space: RoleSpace, job_id: str) -> History:
    """Every retained event of ``role``, then (in one transaction, so the membership is
    the state after the last event read) the live membership, the job and its claim, and
    any event committed meanwhile."""
    config = await require_role(db, space)
    found, _ = await read_events_after(db, space.layout, None)
    events = list(found)
    p = job_partition(job_id, config.partitions)

    async def tail(
        tr: Transaction, after: bytes | None
    ) -> tuple[list[EventInfo], dict[str, MemberRecord], bytes | None, bytes | None]:
        begin, end = space.layout.events_range()
        if after is not None:
            begin = after + b"\x00"
        kvs = await tr.snapshot.get_range(begin, end)
        new = [parse_event(space.layout, kv.key, kv.value) for kv in kvs]
        members: dict[str, MemberRecord] = {}
        mb, me = space.members_range()
        for kv in await tr.snapshot.get_range(mb, me):
            wid = str(space.unpack(kv.key)[-1])
            try:
                members[wid] = MemberRecord.decode(wid, kv.key, kv.value)
            except CorruptDataError as e:
                raise CliError(f"the member record of {wid!r} is corrupt: {e}") from e
        job = await tr.snapshot.get(space.job_key(p, job_id))
        claim = await tr.snapshot.get(space.claim_key(p, job_id))
        return new, members, job, claim

    new, members, job_raw, claim_raw = await db.transact(tail, events[-1].key if events else None)
    events.extend(new)
    claim = None
    if claim_raw is not None:
        c = Claim.decode(space.claim_key(p, job_id), claim_raw)
        claim = ClaimInfo(c.wid, c.incarnation, c.token)
    return History(
        config,
        [recorded(e) for e in events if e.role == space.role],
        recorded(events[0]) if events else None,
        member_states(members),
        claim,
        p if job_raw is not None else None,
        await read_plan(db, space),
    )


def limit_replay(replay: Replay, limit: int) -> Replay:
    """Only the last ``limit`` membership changes (the rest becomes "before the log")."""
    if len(replay.epochs) <= limit:
        return replay
    cut = len(replay.epochs) - limit
    start_epoch: Epoch = replay.epochs[cut - 1]
    return Replay(
        start_epoch.members,
        replay.epochs[cut:],
        [n for n in replay.notes if n.stamp > start_epoch.event.stamp],
        replay.unknown_weights,
        [
            *replay.warnings,
            f"only the last {limit} of {len(replay.epochs)} retained membership changes "
            "were replayed (raise --limit for more)",
        ],
    )


# --- explain ----------------------------------------------------------------------------


def _where(ev: RecordedEvent | None, before: str) -> str:
    if ev is None:
        return before
    return f"{fmt_time(ev.wall_time)} (version {ev.version}, {ev.type} {ev.worker})"


def print_explanation(x: Explanation) -> None:
    head = f"job {x.job!r} in role {x.role!r}: partition {x.partition} of {x.partitions}"
    echo(head)
    echo(f"now: {x.state}: {x.state_detail}")
    if x.claim is not None:
        echo(
            f"     claim token {x.claim.token.hex()} (version {int.from_bytes(x.claim.token[:8])})"
        )
    echo("")
    for i, s in enumerate(x.stints, 1):
        who = s.owner if s.owner is not None else "(nobody: no member)"
        inc = f" (incarnation {s.incarnation[:8]})" if s.incarnation else ""
        echo(f"{i}. {who}{inc}", style="cyan")
        echo(f"   from:  {_where(s.since, 'before the retained event log')}")
        echo(f"   until: {_where(s.until, 'now')}")
        echo(f"   why:   {s.reason}")
        if s.token is not None:
            echo(f"   token: {s.token.hex()} (the current claim)")
        elif s.owner is not None:
            echo("   token: not recorded (claims are not logged; only the current one is known)")
        if s.brief:
            echo("   brief: shorter than a settle window: it may never have claimed the job")
        for n in s.notes:
            echo(f"   note:  {n}")
    if x.log_begins is not None:
        echo("")
        echo(f"the retained event log begins {_where(x.log_begins, '?')}")
    if not x.complete:
        echo(
            "the history is older than the retained event log: owners before it are not "
            "known (events are kept 7 days by default)",
            style="yellow",
        )
    for w in x.warnings:
        echo(f"warning: {w}", style="yellow")


@click.command()
@click.argument("role", callback=name_arg("role"))
@click.argument("job_id", metavar="JOB", callback=name_arg("job id"))
@click.option(
    "--limit",
    type=click.IntRange(min=1, max=100_000),
    default=DEFAULT_REPLAY_LIMIT,
    show_default=True,
    metavar="N",
    help="Replay at most the last N membership changes.",
)
@json_option
@click.pass_context
def explain(ctx: click.Context, role: str, job_id: str, limit: int, as_json: bool) -> None:
    """Why JOB of ROLE is where it is: each owner it had over the retained event log,
    from when to when, and why it moved (a join, an eviction after so many seconds of
    silence, a drain, a leave).

    Replays the deterministic assignment over the membership recorded in the events,
    as every worker computed it. The fencing token is shown for the current claim
    (claims are not logged). Says so when the history is older than the retained log.

    \b
    Examples:
      fdbworkers explain replicator db1-to-db2
      fdbworkers explain replicator db1-to-db2 --json | jq '.owners[] | {owner, reason}'
    """
    s = settings(ctx)
    space = s.space(role)
    h = run(s, lambda db: read_history(db, space, job_id))
    replay = limit_replay(replay_membership(h.events, h.members), limit)
    try:
        x = explain_job(
            role,
            job_id,
            h.config.partitions,
            replay,
            h.members,
            h.claim,
            exists=h.job_partition is not None,
            partition=h.job_partition,
            first_event=h.first_any,
            current_plan=h.plan,
        )
    except ConfigError as e:
        raise CliError(str(e), 2) from e
    if as_json:
        print_json({"schema": SCHEMAS["explain"], **x.to_json()})
    else:
        print_explanation(x)


# --- plan -------------------------------------------------------------------------------


def check_id(value: str) -> str:
    try:
        return validate_name("worker id", value)
    except ConfigError as e:
        raise click.BadParameter(str(e)) from e


def parse_weights(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]) -> Any:
    out: dict[str, float] = {}
    for item in value:
        wid, sep, x = item.rpartition("=")
        if not sep or not wid:
            raise click.BadParameter(f"expected WORKER=WEIGHT, got {item!r}")
        try:
            out[wid] = float(x)
        except ValueError:
            raise click.BadParameter(f"the weight in {item!r} is not a number") from None
    return out


def print_plan(p: Plan, show: int) -> None:
    echo(f"plan for role {p.role!r}: {p.change.describe()}")
    ratio = f", {p.ratio:.2f}x the optimum" if p.ratio is not None else ""
    echo(
        f"moves {len(p.moves)} of {p.jobs} jobs (optimum {p.optimum:.1f}: the jobs' share "
        f"that must change hands{ratio}; at least {p.lower_bound} for these loads), "
        f"{p.partitions_moved} of {p.partitions} partitions"
    )
    echo("")
    print_table(
        ["WORKER", "WEIGHT", "JOBS NOW", "JOBS AFTER", "FAIR AFTER", "NOTE"],
        [
            [
                x.worker,
                "-"
                if x.weight_after is None
                else (
                    f"{x.weight_before:g}->{x.weight_after:g}"
                    if x.weight_before is not None and x.weight_before != x.weight_after
                    else f"{x.weight_after:g}"
                ),
                str(x.jobs_before),
                str(x.jobs_after),
                f"{x.fair_after:.1f}",
                x.note,
            ]
            for x in p.loads
        ],
    )
    if p.moves and show > 0:
        echo("")
        more = f" (first {show}; --show N for more, --json for all)" if len(p.moves) > show else ""
        echo(f"jobs that move{more}:")
        for m in p.moves[:show]:
            echo(f"  {m.job}  {m.source or '-'} -> {m.target or '-'}")
    for w in p.warnings:
        echo(f"warning: {w}", style="yellow")


@click.command()
@click.argument("role", callback=name_arg("role"))
@click.option(
    "--add",
    "add",
    type=click.IntRange(min=1, max=MAX_ADD),
    default=None,
    metavar="N",
    help="Add N hypothetical workers (named planned-1, planned-2...).",
)
@click.option(
    "--add-id",
    "add_ids",
    multiple=True,
    callback=lambda ctx, param, value: tuple(check_id(v) for v in value),
    metavar="ID",
    help="Add a worker with this id (exact placements). Repeatable.",
)
@click.option(
    "--add-weight",
    type=FiniteFloatRange(min=1e-9, max=1e9),
    default=1.0,
    show_default=True,
    metavar="X",
    help="Weight of the added workers.",
)
@click.option("--remove", multiple=True, metavar="W", help="Remove worker W. Repeatable.")
@click.option("--drain", multiple=True, metavar="W", help="Drain worker W. Repeatable.")
@click.option(
    "--weight",
    "weights",
    multiple=True,
    callback=parse_weights,
    metavar="W=X",
    help="Give worker W the weight X (a restart with --weight X). Repeatable.",
)
@click.option(
    "--show",
    type=click.IntRange(min=0),
    default=20,
    show_default=True,
    metavar="N",
    help="List at most N moved jobs (text output).",
)
@json_option
@click.pass_context
def plan(
    ctx: click.Context,
    role: str,
    add: int | None,
    add_ids: tuple[str, ...],
    add_weight: float,
    remove: tuple[str, ...],
    drain: tuple[str, ...],
    weights: dict[str, float],
    show: int,
    as_json: bool,
) -> None:
    """Dry run of a membership change of ROLE: which jobs would move, how many against
    the optimum, and the resulting load per worker, from the live membership and jobs.

    Exact: the workers compute the same assignment, so applying the change moves
    exactly the listed jobs (for --add N, the hypothetical ids place differently from
    real ones: use --add-id ID for the exact moves). --remove is a leave, an eviction or
    a crash alike; --weight W=X is W restarted with weight X.

    \b
    Examples:
      fdbworkers plan replicator --add 2
      fdbworkers plan replicator --add-id host7-1a2b
      fdbworkers plan replicator --drain host1-3f2a --json | jq '.moves'
      fdbworkers plan replicator --weight host2-77aa=2
    """
    s = settings(ctx)
    change = Change(
        add=add or 0,
        add_ids=tuple(add_ids),
        add_weight=add_weight,
        remove=tuple(remove),
        drain=tuple(drain),
        weights=weights,
    )
    if change.empty:
        raise click.UsageError(
            "nothing to plan: give --add, --add-id, --remove, --drain or --weight"
        )
    snap = run(s, lambda db: read_role_snapshot(db, s.space(role)))
    members = member_states(snap.members)
    jobs = {j: r.partition for j, r in snap.jobs.items()}
    claims = {j: c.wid for j, c in snap.claims.items()}
    try:
        p = plan_change(
            role, members, jobs, snap.config.partitions, change, claims, stored=snap.plan
        )
    except ConfigError as e:
        raise CliError(str(e), 2) from e
    if as_json:
        print_json({"schema": SCHEMAS["plan"], **p.to_json()})
    else:
        print_plan(p, show)


COMMANDS = [explain, plan]
