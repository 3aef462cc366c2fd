"""Read commands: roles, members, jobs, events, watch, status, doctor."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import click
import trio

from .._core.keys import LAYOUT_VERSION, Layout, validate_name
from .._db import DEFAULT_MAX_WATCHES, Database, Transaction
from .._errors import ConfigError, FDBError, LayoutError
from .._store.admin import (
    SCHEMAS,
    JobView,
    MemberView,
    Observation,
    RoleSnapshot,
    RoleStatus,
    evaluate_role,
    job_views,
    member_views,
    observe_health,
    read_layout_version,
    read_role_configs,
    read_role_snapshot,
    read_roles,
)
from .._store.events import EventInfo, read_events_after, read_recent_events
from ._common import (
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_OK,
    CliError,
    FiniteFloatRange,
    Settings,
    echo,
    guarded,
    print_json,
    print_json_line,
    print_table,
    run,
    settings,
    stdout_is_terminal,
)

#: Watches each worker process holds (membership: epoch + own record; jobs: jobs_epoch
#: + inbox), for doctor's capacity figure.
WATCHES_PER_WORKER = 4


def name_arg(kind: str) -> Any:
    def check(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        if value is None:
            return None
        try:
            return validate_name(kind, value)
        except ConfigError as e:
            raise click.BadParameter(str(e)) from e

    return check


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
    snap = await read_role_snapshot(db, s.layout, role)
    start = trio.current_time()
    obs: dict[str, Observation] = {}
    if snap.members and observe > 0:
        obs = await observe_health(
            db, s.layout, role, snap.members, cap=observe, resolve_after=resolve_after
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

    from .._core.keys import jsonable

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
    snap = run(s, lambda db: read_role_snapshot(db, s.layout, role))
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
    snap = run(s, lambda db: read_role_snapshot(db, s.layout, role))
    views = {j.id: j for j in job_views(snap)}
    j = views.get(job_id)
    if j is None:
        raise CliError(f"no job {job_id!r} in role {role!r}")
    if as_json:
        print_json({"schema": SCHEMAS["job"], "role": role, "job": j.to_json()})
        return
    import json

    from .._core.keys import jsonable

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
        failures = 0
        while True:
            try:
                new, watch = await guarded(s, read_events_after(db, layout, after, arm=True))
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

    try:
        run(s, main, bounded=not follow)
    except CliError as e:
        if not (follow and e.code == EXIT_INTERRUPTED):
            raise
        # Ctrl-C is how --follow ends: not an error.


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
    from ._view import LiveRole, render_plain, render_view

    async def main(db: Database) -> None:
        await guarded(s, read_role_snapshot(db, s.layout, role))  # the role must exist
        live = LiveRole(db, s.layout, role, cluster=str(s.cluster), events=n_events)
        async with trio.open_nursery() as nursery:
            with trio.fail_after(s.timeout * 3 + 2):
                await nursery.start(live.run)
            if once:
                # Until each member's stamp changed (or it missed a heartbeat).
                with trio.move_on_after(10):
                    while any(m.state == "unknown" for m in live.snapshot().members):
                        with trio.move_on_after(0.1):
                            await live.wait_changed()
                if stdout_is_terminal():
                    from rich.console import Console

                    Console().print(render_view(live.snapshot()))
                else:
                    click.echo(render_plain(live.snapshot()))
                nursery.cancel_scope.cancel()
                return
            if not stdout_is_terminal():
                last = ""
                while True:
                    frame = render_plain(live.snapshot(), with_ages=False)
                    if frame != last:
                        click.echo(frame)
                        click.echo("")
                        last = frame
                    with trio.move_on_after(1.0):  # states also change with time
                        await live.wait_changed()
            from rich.console import Console
            from rich.live import Live

            console = Console()
            with Live(console=console, auto_refresh=False, screen=False, transient=False) as view:
                while True:
                    view.update(render_view(live.snapshot()), refresh=True)
                    with trio.move_on_after(0.25):
                        await live.wait_changed()

    try:
        run(s, main, bounded=False)
    except CliError as e:
        if e.code != EXIT_INTERRUPTED:
            raise
        # Ctrl-C is how a live view ends: not an error.


# --- status ----------------------------------------------------------------------------


async def role_status(db: Database, s: Settings, role: str, observe: float | None) -> RoleStatus:
    snap = await read_role_snapshot(db, s.layout, role)
    cap = observe
    if cap is None:
        cap = max([m.timeout for m in snap.members.values()] + [0.0]) + 0.5
    start_obs: dict[str, Observation] = {}
    if snap.members and cap > 0:
        start_obs = await observe_health(
            db, s.layout, role, snap.members, cap=cap, resolve_after=1.0
        )
    jobs = job_views(snap)
    return evaluate_role(snap, member_views(snap, start_obs, jobs), jobs)


@click.command()
@click.argument("role", required=False, callback=name_arg("role"))
@json_option
@observe_option(
    None,
    "Watch the heartbeat stamps at most this long [default: the longest member timeout "
    "+ 0.5 s; a healthy role answers within a heartbeat interval].",
)
@click.option(
    "--wait",
    "wait_for",
    type=FiniteFloatRange(min=0, max=3600),
    default=0,
    metavar="SECONDS",
    help="Re-check until healthy or this long has passed (e.g. after a deploy).",
)
@click.pass_context
def status(
    ctx: click.Context, role: str | None, as_json: bool, observe: float | None, wait_for: float
) -> None:
    """A health summary of ROLE (or of every role). Healthy means: no member is past its
    timeout, every job is held by a live member, every claim matches the assignment
    (agreement at rest), and every record decodes. Exit code 0 when healthy, 1 when not.

    \b
    Examples:
      fdbworkers status                    # all roles
      fdbworkers status replicator --wait 30 && echo rebalanced
    """
    s = settings(ctx)

    async def main(db: Database) -> list[RoleStatus]:
        deadline = trio.current_time() + wait_for
        while True:
            try:
                with trio.fail_after(s.timeout * 3 + 2 + (observe if observe is not None else 60)):
                    names = [role] if role else sorted(await read_role_configs(db, s.layout))
                    await read_layout_version(db, s.layout)
                    out = [await role_status(db, s, r, observe) for r in names]
            except LookupError:  # the role does not exist (yet)
                if trio.current_time() >= deadline:
                    raise
                await trio.sleep(0.5)
                continue
            if all(r.healthy for r in out) or trio.current_time() >= deadline:
                return out
            await trio.sleep(min(1.0, max(0.0, deadline - trio.current_time())))

    results = run(s, main, bounded=False)
    healthy = all(r.healthy for r in results)
    if as_json:
        print_json(
            {
                "schema": SCHEMAS["status"],
                "healthy": healthy,
                "roles": [r.to_json() for r in results],
            }
        )
    else:
        if not results:
            echo(f"no roles under root {s.root!r}")
        tty = stdout_is_terminal()
        for r in results:
            mark = "healthy" if r.healthy else "UNHEALTHY"
            echo(
                f"{r.role}: {mark} ({r.members} members, {r.jobs} jobs)",
                style="green" if r.healthy else "red",
            )
            for c in r.checks:
                sign = ("✓" if c.ok else "✗") if tty else ("ok  " if c.ok else "FAIL")
                echo(f"  {sign} {c.name}: {c.detail}", style=None if c.ok else "red")
    ctx.exit(EXIT_OK if healthy else EXIT_FAILURE)


# --- doctor ----------------------------------------------------------------------------


async def doctor_checks(db: Database, s: Settings) -> list[dict[str, Any]]:
    checks: list[dict[str, Any]] = []
    layout = s.layout

    def add(name: str, ok: bool, detail: str, **extra: Any) -> None:
        checks.append({"name": name, "ok": ok, "detail": detail, **extra})

    async def timed(aw: Any) -> tuple[Any, float]:
        t0 = trio.current_time()
        with trio.fail_after(s.timeout + 1):
            value = await aw
        return value, trio.current_time() - t0

    # 1. reachable
    async def grv(tr: Transaction) -> int:
        return await tr.get_read_version()

    try:
        rv, took = await timed(db.transact(grv))
        add(
            "cluster_reachable",
            True,
            f"read version {rv} in {took * 1000:.0f} ms",
            seconds=round(took, 4),
        )
    except (FDBError, trio.TooSlowError) as e:
        add("cluster_reachable", False, f"no read version within {s.timeout:g}s: {e}")
        return checks
    # 2. backend and client
    detail = f"{db.backend} at {s.cluster}"
    if db.backend == "fdb":
        try:
            from .._backends.fdb import fdb_client_info

            info = fdb_client_info()
            detail += ", " + ", ".join(f"{k}={v}" for k, v in info.items())
        except Exception as e:  # informational only
            detail += f" (client info unavailable: {e})"
    add("backend", True, detail)
    # 3. layout
    try:
        version = await read_layout_version(db, layout)
        if version is None:
            add(
                "layout_version",
                True,
                f"nothing under root {s.root!r} yet (fdbworkers writes layout {LAYOUT_VERSION})",
            )
        else:
            add(
                "layout_version",
                True,
                f"layout {version} (this fdbworkers reads up to {LAYOUT_VERSION})",
                version=version,
            )
    except LayoutError as e:
        add("layout_version", False, str(e))
    # 4. roles decode
    try:
        configs = await read_role_configs(db, layout)
        add("roles_readable", True, f"{len(configs)} role(s): {', '.join(sorted(configs)) or '-'}")
    except Exception as e:
        add("roles_readable", False, f"role configs do not decode: {e}")
    # 5. write and read back, then a watch that must fire
    key = layout.key("doctor", uuid.uuid4().hex)
    try:

        async def write(tr: Transaction) -> None:
            tr.set(key, b"1")

        _, took = await timed(db.transact(write))
        add("commit", True, f"a write committed in {took * 1000:.0f} ms", seconds=round(took, 4))

        async def arm(tr: Transaction) -> Any:
            return tr.watch(key)

        w = await db.transact(arm)
        try:
            t0 = trio.current_time()

            async def change(tr: Transaction) -> None:
                tr.set(key, b"2")

            await db.transact(change)
            with trio.fail_after(s.timeout):
                await w.wait()
            took = trio.current_time() - t0
            add(
                "watch",
                True,
                f"a watch fired {took * 1000:.0f} ms after the change",
                seconds=round(took, 4),
            )
        except (FDBError, trio.TooSlowError) as e:
            add("watch", False, f"a watch did not fire within {s.timeout:g}s of a change: {e}")
        finally:
            w.cancel()
    except (FDBError, trio.TooSlowError) as e:
        add("commit", False, f"cannot write under the root: {e}")
    finally:
        with trio.move_on_after(s.timeout):

            async def clean(tr: Transaction) -> None:
                tr.clear(key)

            with contextlib.suppress(FDBError):
                await db.transact(clean)
    # 6. watch capacity
    limit = DEFAULT_MAX_WATCHES
    add(
        "watch_capacity",
        True,
        f"{limit} watches per client process (FDB's max_watches default); each worker holds "
        f"{WATCHES_PER_WORKER}, so one process can host up to {limit // WATCHES_PER_WORKER} "
        "workers before they fall back to polling",
        max_watches=limit,
        watches_per_worker=WATCHES_PER_WORKER,
    )
    return checks


@click.command()
@json_option
@click.pass_context
def doctor(ctx: click.Context, as_json: bool) -> None:
    """Check the cluster and the key space: reachable (and how fast), backend and client
    versions, layout version under the root, role records, a commit, a watch that fires,
    and the watch capacity. Exit code 0 when every check passes.

    \b
    Example:
      fdbworkers --cluster-file /etc/foundationdb/fdb.cluster doctor
    """
    s = settings(ctx)
    checks = run(s, lambda db: doctor_checks(db, s), extra=s.timeout * 3)
    ok = all(c["ok"] for c in checks)
    if as_json:
        print_json(
            {
                "schema": SCHEMAS["doctor"],
                "ok": ok,
                "cluster": s.cluster,
                "root": s.root,
                "checks": checks,
            }
        )
    else:
        tty = stdout_is_terminal()
        for c in checks:
            sign = ("✓" if c["ok"] else "✗") if tty else ("ok  " if c["ok"] else "FAIL")
            echo(f"{sign} {c['name']}: {c['detail']}", style=None if c["ok"] else "red")
    ctx.exit(EXIT_OK if ok else EXIT_FAILURE)


COMMANDS = [roles, members, jobs, events, watch, status, doctor]
