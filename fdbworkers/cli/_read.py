"""Read commands: roles, members, jobs, events, watch (status and doctor: ``_health``)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import click
import trio

from .._core.keys import Layout
from .._db import Database, Transaction
from .._errors import FDBError
from .._store.admin import (
    SCHEMAS,
    Observation,
    RoleSnapshot,
    observe_health,
    read_role_snapshot,
    read_roles,
)
from .._store.events import EventInfo, read_events_after, read_recent_events
from .._store.views import (
    JobView,
    MemberView,
    job_views,
    member_views,
)
from ._common import (
    EXIT_INTERRUPTED,
    CliError,
    FiniteFloatRange,
    Settings,
    echo,
    guarded,
    name_arg,
    print_json,
    print_json_line,
    print_table,
    run,
    settings,
    stdout_is_terminal,
)

if TYPE_CHECKING:
    from ._view import LiveRole


json_option = click.option(
    "--json", "as_json", is_flag=True, help="Print JSON (schema in docs/cli.md)."
)


def fmt_wall(t: float | None) -> str:
    if t is None or t <= 0:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def fmt_silent(m: MemberView) -> str:
    if m.silent_for is None:
        return "?"
    return ("" if m.silent_for_exact else ">=") + f"{m.silent_for:.1f}s"


STATE_COLOURS = {
    "ok": "green",
    "suspect": "yellow",
    "stale": "bold red",
    "draining": "cyan",
    "unknown": "dim",
    "owned": "green",
    "moving": "yellow",
    "unclaimed": "red",
    "orphaned": "red",
    "failing": "red",
    "parked": "bold red",
}


# --- roles -----------------------------------------------------------------------------


@click.command()
@json_option
@click.pass_context
def roles(ctx: click.Context, as_json: bool) -> None:
    """List the roles under the root, with their member and job counts.

    \b
    Example:
      fdbworkers roles --json
    """
    s = settings(ctx)
    found = run(s, lambda db: read_roles(db, s.layout))
    if as_json:
        print_json(
            {"schema": SCHEMAS["roles"], "root": s.root, "roles": [r.to_json() for r in found]}
        )
        return
    if not found:
        echo(f"no roles under root {s.root!r}", err=True)
        return
    print_table(
        ["ROLE", "MEMBERS", "JOBS", "PARTITIONS", "CREATED"],
        [
            [r.role, str(r.members), str(r.jobs), str(r.partitions), fmt_wall(r.created_at)]
            for r in found
        ],
    )


# --- members ---------------------------------------------------------------------------


async def observed_role(
    db: Database, s: Settings, role: str, *, observe: float, resolve_after: float
) -> tuple[RoleSnapshot, list[MemberView], list[JobView], float]:
    snap = await read_role_snapshot(db, s.space(role))
    start = trio.current_time()
    obs: dict[str, Observation] = {}
    if snap.members and observe > 0:
        obs = await observe_health(
            db, s.space(role), snap.members, cap=observe, resolve_after=resolve_after
        )
    jobs = job_views(snap)
    return snap, member_views(snap, obs, jobs), jobs, trio.current_time() - start


def observe_option(
    default: float | None, help_text: str
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    return click.option(
        "--observe",
        type=FiniteFloatRange(min=0, max=600),
        default=default,
        show_default=default is not None,
        metavar="SECONDS",
        help=help_text,
    )


@click.command()
@click.argument("role", callback=name_arg("role"))
@json_option
@observe_option(
    10.0,
    "Watch the heartbeat stamps at most this long (each member until its stamp changes, "
    "or it stays silent for half its timeout).",
)
@click.pass_context
def members(ctx: click.Context, role: str, as_json: bool, observe: float) -> None:
    """The members of ROLE: id, state, seconds since the last heartbeat, jobs held.

    The heartbeat age is measured as the neighbour check measures it: the health stamps
    are read repeatedly and timed on this machine's clock until each one changes (so it
    takes up to a heartbeat interval, timeout/3). STATE is ok, suspect (missed a
    heartbeat), stale (silent for its timeout: about to be evicted), draining, or
    unknown (not observed long enough; see --observe). SILENT ">=3.0s" is a lower bound:
    the stamp did not change while observed. LAST HEARTBEAT is the worker's own wall
    clock, for information only.

    \b
    Examples:
      fdbworkers members replicator
      fdbworkers members replicator --json | jq '.members[] | select(.state != "ok")'
    """
    s = settings(ctx)
    snap, views, _jobs, took = run(
        s,
        lambda db: observed_role(db, s, role, observe=observe, resolve_after=0.5),
        extra=observe,
    )
    if as_json:
        print_json(
            {
                "schema": SCHEMAS["members"],
                "role": role,
                "epoch": snap.epoch.hex(),
                "observed_for": round(took, 3),
                "members": [m.to_json() for m in views],
            }
        )
        return
    if not views:
        echo(f"role {role!r} has no members", err=True)
        return
    rows = [
        [
            m.id,
            m.state,
            fmt_silent(m),
            fmt_wall(m.last_heartbeat_wall_time),
            str(m.jobs),
            str(m.assigned),
            m.host,
            str(m.pid),
            m.incarnation[:8],
            f"{m.weight:g}",
            f"{m.timeout:g}s",
        ]
        for m in views
    ]
    styles = [[None, STATE_COLOURS.get(m.state)] + [None] * 9 for m in views]
    print_table(
        ["WORKER", "STATE", "SILENT", "LAST HEARTBEAT", "JOBS", "ASSIGNED", "HOST", "PID",
         "INCARNATION", "WEIGHT", "TIMEOUT"],
        rows,
        styles=styles,
    )  # fmt: skip


# --- jobs ------------------------------------------------------------------------------


def spec_text(spec: Any, width: int | None) -> str:
    import json

    from .._core.records import jsonable

    text = "" if spec is None else json.dumps(jsonable(spec), separators=(",", ":"))
    if width is not None and len(text) > width:
        return text[: width - 1] + "…"
    return text


@click.command()
@click.argument("role", callback=name_arg("role"))
@click.option("--owner", metavar="WORKER", help="Only jobs claimed by this worker.")
@click.option(
    "--state",
    "states",
    multiple=True,
    type=click.Choice(["owned", "moving", "unclaimed", "orphaned", "failing", "parked"]),
    help="Only jobs in this state, or of this health: failing, parked (repeatable).",
)
@json_option
@click.pass_context
def jobs(
    ctx: click.Context, role: str, owner: str | None, states: Sequence[str], as_json: bool
) -> None:
    """The jobs of ROLE with their owner (the worker holding the claim), the member the
    assignment names, the fencing token and the state: owned, moving (a handoff under
    way), unclaimed, or orphaned (held by a worker that is gone); and its health: ok,
    failing (its runs fail on its owner: crashes, --exec exits other than 0) with the
    failures in a row, or parked (no longer run after --park-after failures).

    \b
    Examples:
      fdbworkers jobs replicator --owner host1-3f2a
      fdbworkers jobs replicator --state moving --state unclaimed --json
    """
    s = settings(ctx)
    snap = run(s, lambda db: read_role_snapshot(db, s.space(role)))
    views = [
        j
        for j in job_views(snap)
        if (owner is None or j.owner == owner)
        and (not states or j.state in states or j.health_state in states)
    ]
    if as_json:
        print_json({"schema": SCHEMAS["jobs"], "role": role, "jobs": [j.to_json() for j in views]})
        return
    if not views:
        echo(
            "no jobs" + (f" claimed by {owner!r}" if owner else "") + f" in role {role!r}", err=True
        )
        return
    width = 40 if stdout_is_terminal() else None
    print_table(
        ["JOB", "STATE", "OWNER", "ASSIGNED", "PARTITION", "TOKEN", "WEIGHT", "SPEC", "HEALTH"],
        [
            [
                j.id,
                j.state,
                j.owner or "-",
                j.assigned_to or "-",
                str(j.partition),
                j.token.hex() if j.token else "-",
                f"{j.weight:g}",
                spec_text(j.spec, width),
                health_text(j),
            ]
            for j in views
        ],
        styles=[
            [None, STATE_COLOURS.get(j.state)] + [None] * 6 + [STATE_COLOURS.get(j.health_state)]
            for j in views
        ],
    )


def health_text(j: JobView, error_width: int | None = 60) -> str:
    """``ok``, or ``failing x3: <last error>`` / ``parked x5: ...`` (failures in a row;
    the error cut to ``error_width`` characters; ``job show`` has it whole)."""
    if j.health is None:
        return "ok"
    text = f"{j.health.state} x{j.health.failures}"
    if error_width is None:
        return text
    error = " ".join(j.health.last_error.split())
    if len(error) > error_width:
        error = error[: error_width - 3] + "..."
    return f"{text}: {error}"


def show_job(s: Settings, role: str, job_id: str, as_json: bool) -> None:
    snap = run(s, lambda db: read_role_snapshot(db, s.space(role)))
    views = {j.id: j for j in job_views(snap)}
    j = views.get(job_id)
    if j is None:
        raise CliError(f"no job {job_id!r} in role {role!r}")
    if as_json:
        print_json({"schema": SCHEMAS["job"], "role": role, "job": j.to_json()})
        return
    import json

    from .._core.records import jsonable

    fields = [
        ("job", j.id),
        ("role", role),
        ("state", j.state),
        ("health", health_text(j, None)),
        *(
            [
                ("restarts", str(j.health.restarts)),
                ("failing since", fmt_wall(j.health.since)),
                ("last error", j.health.last_error),
            ]
            if j.health is not None
            else []
        ),
        ("owner", f"{j.owner} (incarnation {j.owner_incarnation})" if j.owner else "-"),
        ("assigned to", j.assigned_to or "-"),
        ("fencing token", j.token.hex() if j.token else "-"),
        ("partition", str(j.partition)),
        ("weight", f"{j.weight:g}"),
        ("added", fmt_wall(j.added_at)),
        ("spec", json.dumps(jsonable(j.spec), indent=2)),
    ]
    width = max(len(k) for k, _ in fields)
    for k, v in fields:
        lines = v.splitlines() or [""]
        click.echo(f"{k.ljust(width)}  {lines[0]}")
        for line in lines[1:]:
            click.echo(" " * (width + 2) + line)


# --- events ----------------------------------------------------------------------------


def event_row(ev: EventInfo) -> list[str]:
    return [fmt_wall(ev.wall_time), ev.role, ev.type, ev.summary()]


@click.command()
@click.option("--role", callback=name_arg("role"), help="Only events of this role.")
@click.option(
    "--limit",
    "-n",
    type=click.IntRange(min=1, max=100_000),
    default=20,
    show_default=True,
    help="How many of the latest events to show.",
)
@click.option("--follow", "-f", is_flag=True, help="Then keep printing new events as they come.")
@json_option
@click.pass_context
def events(ctx: click.Context, role: str | None, limit: int, follow: bool, as_json: bool) -> None:
    """The audit log: joins, leaves, evictions (who evicted whom, after how long),
    drains, self-fences. With --follow, new events are printed as they are committed
    (an FDB watch on the events head key wakes the reader: no polling).

    With --json: one document; with --json --follow: one event object per line.

    \b
    Examples:
      fdbworkers events --role replicator -n 50
      fdbworkers events --follow --json | jq -c 'select(.type == "evicted")'
    """
    s = settings(ctx)
    layout = s.layout

    async def main(db: Database) -> None:
        latest = await guarded(s, read_recent_events(db, layout, limit=limit, role=role))
        if as_json and not follow:
            print_json({"schema": SCHEMAS["events"], "events": [e.to_json() for e in latest]})
            return
        if as_json:
            for ev in latest:
                print_json_line({"schema": SCHEMAS["event"], **ev.to_json()})
        else:
            for ev in latest:
                click.echo("  ".join(event_row(ev)))
        if not follow:
            return
        after = latest[-1].key if latest else await guarded(s, newest_event_key(db, layout))
        await follow_events(db, s, after, role, as_json)

    try:
        run(s, main, bounded=not follow)
    except CliError as e:
        if not (follow and e.code == EXIT_INTERRUPTED):
            raise
        # Ctrl-C is how --follow ends: not an error.


async def follow_events(
    db: Database, s: Settings, after: bytes | None, role: str | None, as_json: bool
) -> None:
    """Print the events committed after ``after`` as they come (an FDB watch on the
    events head key wakes the reader), until cancelled."""
    failures = 0
    while True:
        try:
            new, watch = await guarded(s, read_events_after(db, s.layout, after, arm=True))
            failures = 0
        except (FDBError, trio.TooSlowError) as e:
            failures += 1
            if failures >= 3:
                raise
            echo(f"warning: reading events failed ({e}); retrying", err=True)
            await trio.sleep(1.0)
            continue
        for ev in new:
            after = ev.key
            if role is not None and ev.role != role:
                continue
            if as_json:
                print_json_line({"schema": SCHEMAS["event"], **ev.to_json()})
            else:
                click.echo("  ".join(event_row(ev)))
        try:
            if watch is not None:
                with trio.move_on_after(60):  # re-arm now and then (a lost watch)
                    await watch.wait()
        except FDBError:
            await trio.sleep(0.5)
        finally:
            if watch is not None:
                watch.cancel()


async def newest_event_key(db: Database, layout: Layout) -> bytes | None:
    async def tx(tr: Transaction) -> bytes | None:
        begin, end = layout.events_range()
        kvs = await tr.snapshot.get_range(begin, end, limit=1, reverse=True)
        return kvs[0].key if kvs else None

    return await db.transact(tx)


# --- watch -----------------------------------------------------------------------------


@click.command()
@click.argument("role", callback=name_arg("role"))
@click.option("--once", is_flag=True, help="Print one frame and exit.")
@click.option(
    "--events",
    "n_events",
    type=click.IntRange(min=0, max=100),
    default=8,
    show_default=True,
    help="Recent events shown.",
)
@click.pass_context
def watch(ctx: click.Context, role: str, once: bool, n_events: int) -> None:
    """A live view of ROLE: members with their state and heartbeat age, jobs per worker
    (held, and what the assignment gives them), recent events.

    It updates when FDB watches fire on the role's epoch and jobs_epoch keys, on the
    events head, on the claims of jobs changing hands and on each member's health key:
    it does not poll. When stdout is not a terminal it prints a plain frame whenever
    something changes. Ctrl-C quits.

    \b
    Example:
      fdbworkers watch replicator
    """
    s = settings(ctx)
    from ._view import LiveRole

    async def main(db: Database) -> None:
        await guarded(s, read_role_snapshot(db, s.space(role)))  # the role must exist
        live = LiveRole(db, s.space(role), cluster=str(s.cluster), events=n_events)
        async with trio.open_nursery() as nursery:
            with trio.fail_after(s.timeout * 3 + 2):
                await nursery.start(live.run)
            if once:
                await show_once(live)
                nursery.cancel_scope.cancel()
                return
            if not stdout_is_terminal():
                await show_changes(live)
            await show_live(live)

    try:
        run(s, main, bounded=False)
    except CliError as e:
        if e.code != EXIT_INTERRUPTED:
            raise
        # Ctrl-C is how a live view ends: not an error.


async def show_once(live: LiveRole) -> None:
    """One frame, once each member's stamp changed (or it missed a heartbeat)."""
    from ._view import render_plain, render_view

    with trio.move_on_after(10):
        while any(m.state == "unknown" for m in live.snapshot().members):
            with trio.move_on_after(0.1):
                await live.wait_changed()
    if stdout_is_terminal():
        from rich.console import Console

        Console().print(render_view(live.snapshot()))
    else:
        click.echo(render_plain(live.snapshot()))


async def show_changes(live: LiveRole) -> None:
    """A plain frame whenever something changes (stdout is not a terminal)."""
    from ._view import render_plain

    last = ""
    while True:
        frame = render_plain(live.snapshot(), with_ages=False)
        if frame != last:
            click.echo(frame)
            click.echo("")
            last = frame
        with trio.move_on_after(1.0):  # states also change with time
            await live.wait_changed()


async def show_live(live: LiveRole) -> None:
    """A live view on the terminal, redrawn as the role changes."""
    from rich.console import Console
    from rich.live import Live

    from ._view import render_view

    console = Console()
    with Live(console=console, auto_refresh=False, screen=False, transient=False) as view:
        while True:
            view.update(render_view(live.snapshot()), refresh=True)
            with trio.move_on_after(0.25):
                await live.wait_changed()


COMMANDS = [roles, members, jobs, events, watch]
