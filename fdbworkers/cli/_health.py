"""Health commands: ``status`` (is a role healthy: members alive, jobs held, agreement
at rest) and ``doctor`` (is the cluster usable: reachable, layout, a commit, a watch)."""

from __future__ import annotations

import contextlib
import uuid
from typing import Any

import click
import trio

from .._core.keys import LAYOUT_VERSION
from .._db import DEFAULT_MAX_WATCHES, Database, Transaction
from .._errors import FDBError, LayoutError
from .._store.admin import (
    SCHEMAS,
    Observation,
    observe_health,
    read_layout_version,
    read_role_configs,
    read_role_snapshot,
)
from .._store.views import RoleStatus, evaluate_role, job_views, member_views
from ._common import (
    EXIT_FAILURE,
    EXIT_OK,
    FiniteFloatRange,
    Settings,
    echo,
    name_arg,
    print_json,
    run,
    settings,
    stdout_is_terminal,
)
from ._read import json_option, observe_option

#: Watches each worker process holds (membership: epoch + own record; jobs: jobs_epoch
#: + inbox), for doctor's capacity figure.
WATCHES_PER_WORKER = 4


# --- status ----------------------------------------------------------------------------


async def role_status(db: Database, s: Settings, role: str, observe: float | None) -> RoleStatus:
    snap = await read_role_snapshot(db, s.space(role))
    cap = observe
    if cap is None:
        cap = max([m.timeout for m in snap.members.values()] + [0.0]) + 0.5
    start_obs: dict[str, Observation] = {}
    if snap.members and cap > 0:
        start_obs = await observe_health(
            db, s.space(role), snap.members, cap=cap, resolve_after=1.0
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


class _Doctor:
    """The doctor's checks in order, each a step that adds what it found."""

    def __init__(self, db: Database, s: Settings) -> None:
        self.db = db
        self.s = s
        self.layout = s.layout
        self.checks: list[dict[str, Any]] = []

    def add(self, name: str, ok: bool, detail: str, **extra: Any) -> None:
        self.checks.append({"name": name, "ok": ok, "detail": detail, **extra})

    async def timed(self, aw: Any) -> tuple[Any, float]:
        t0 = trio.current_time()
        with trio.fail_after(self.s.timeout + 1):
            value = await aw
        return value, trio.current_time() - t0

    async def reachable(self) -> bool:
        async def grv(tr: Transaction) -> int:
            return await tr.get_read_version()

        try:
            rv, took = await self.timed(self.db.transact(grv))
            self.add(
                "cluster_reachable",
                True,
                f"read version {rv} in {took * 1000:.0f} ms",
                seconds=round(took, 4),
            )
        except (FDBError, trio.TooSlowError) as e:
            self.add("cluster_reachable", False, f"no read version within {self.s.timeout:g}s: {e}")
            return False
        return True

    def backend(self) -> None:
        detail = f"{self.db.backend} at {self.s.cluster}"
        if self.db.backend == "fdb":
            try:
                from .._backends.fdb import fdb_client_info

                info = fdb_client_info()
                detail += ", " + ", ".join(f"{k}={v}" for k, v in info.items())
            except Exception as e:  # informational only
                detail += f" (client info unavailable: {e})"
        self.add("backend", True, detail)

    async def layout_version(self) -> None:
        try:
            version = await read_layout_version(self.db, self.layout)
            if version is None:
                self.add(
                    "layout_version",
                    True,
                    f"nothing under root {self.s.root!r} yet "
                    f"(fdbworkers writes layout {LAYOUT_VERSION})",
                )
            else:
                self.add(
                    "layout_version",
                    True,
                    f"layout {version} (this fdbworkers reads up to {LAYOUT_VERSION})",
                    version=version,
                )
        except LayoutError as e:
            self.add("layout_version", False, str(e))

    async def roles_readable(self) -> None:
        try:
            configs = await read_role_configs(self.db, self.layout)
            self.add(
                "roles_readable",
                True,
                f"{len(configs)} role(s): {', '.join(sorted(configs)) or '-'}",
            )
        except Exception as e:
            self.add("roles_readable", False, f"role configs do not decode: {e}")

    async def commit_and_watch(self) -> None:
        """A write read back, then a watch that must fire on a change."""
        key = self.layout.key("doctor", uuid.uuid4().hex)
        try:

            async def write(tr: Transaction) -> None:
                tr.set(key, b"1")

            _, took = await self.timed(self.db.transact(write))
            self.add(
                "commit", True, f"a write committed in {took * 1000:.0f} ms", seconds=round(took, 4)
            )

            async def arm(tr: Transaction) -> Any:
                return tr.watch(key)

            w = await self.db.transact(arm)
            try:
                t0 = trio.current_time()

                async def change(tr: Transaction) -> None:
                    tr.set(key, b"2")

                await self.db.transact(change)
                with trio.fail_after(self.s.timeout):
                    await w.wait()
                took = trio.current_time() - t0
                self.add(
                    "watch",
                    True,
                    f"a watch fired {took * 1000:.0f} ms after the change",
                    seconds=round(took, 4),
                )
            except (FDBError, trio.TooSlowError) as e:
                self.add(
                    "watch",
                    False,
                    f"a watch did not fire within {self.s.timeout:g}s of a change: {e}",
                )
            finally:
                w.cancel()
        except (FDBError, trio.TooSlowError) as e:
            self.add("commit", False, f"cannot write under the root: {e}")
        finally:
            with trio.move_on_after(self.s.timeout):

                async def clean(tr: Transaction) -> None:
                    tr.clear(key)

                with contextlib.suppress(FDBError):
                    await self.db.transact(clean)

    def watch_capacity(self) -> None:
        limit = DEFAULT_MAX_WATCHES
        self.add(
            "watch_capacity",
            True,
            f"{limit} watches per client process (FDB's max_watches default); each worker holds "
            f"{WATCHES_PER_WORKER}, so one process can host up to {limit // WATCHES_PER_WORKER} "
            "workers before they fall back to polling",
            max_watches=limit,
            watches_per_worker=WATCHES_PER_WORKER,
        )


async def doctor_checks(db: Database, s: Settings) -> list[dict[str, Any]]:
    d = _Doctor(db, s)
    # 1. reachable
    if not await d.reachable():
        return d.checks
    # 2. backend and client
    d.backend()
    # 3. layout
    await d.layout_version()
    # 4. roles decode
    await d.roles_readable()
    # 5. write and read back, then a watch that must fire
    await d.commit_and_watch()
    # 6. watch capacity
    d.watch_capacity()
    return d.checks


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


COMMANDS = [status, doctor]
