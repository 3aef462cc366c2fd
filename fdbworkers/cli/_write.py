"""Write commands: job add/remove (and show), evict, drain."""

from __future__ import annotations

import getpass
import json
import socket
import sys
from typing import IO, Any

import click
import trio

from .._core.keys import RoleSpace
from .._core.records import MAX_SPEC_DEPTH, MAX_VALUE_BYTES, MemberRecord, check_spec
from .._db import Database, Transaction
from .._errors import ClusterUnreachableError, ConfigError, CorruptDataError
from .._store.admin import HealthStamp, observe_health, require_role
from .._store.events import DEFAULT_EVENT_RETENTION
from .._store.members import tx_evict, tx_request_drain
from .._worker_options import DEFAULT_PARTITIONS
from ._common import (
    EXIT_USAGE,
    CliError,
    FiniteFloatRange,
    Settings,
    echo,
    name_arg,
    run,
    settings,
    translate,
)
from ._read import json_option, show_job


def operator() -> str:
    """Who is acting, for the audit log: ``cli:user@host``."""
    try:
        user = getpass.getuser()
    except Exception:
        user = "?"
    return f"cli:{user}@{socket.gethostname()}"


def parse_spec(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
    if value is None:
        return None
    if len(value) > MAX_VALUE_BYTES:
        raise click.BadParameter(
            f"the spec is {len(value):,} bytes; the limit is {MAX_VALUE_BYTES:,} bytes "
            "(FoundationDB's value size limit)"
        )

    def no_constants(name: str) -> Any:
        raise click.BadParameter(f"{name} is not JSON: only finite numbers are allowed")

    try:
        spec = json.loads(value, parse_constant=no_constants)
    except json.JSONDecodeError as e:
        shown = value if len(value) <= 80 else value[:77] + "..."
        raise click.BadParameter(f"not valid JSON ({e.msg} at column {e.colno}): {shown!r}") from e
    except RecursionError:
        raise click.BadParameter(
            f"the spec is nested too deeply (at most {MAX_SPEC_DEPTH} levels)"
        ) from None
    try:
        check_spec(spec)
    except ConfigError as e:
        raise click.BadParameter(str(e)) from e
    return spec


# --- job -------------------------------------------------------------------------------


@click.group()
def job() -> None:
    """Add, remove or show one job."""


def optional_name(kind: str) -> Any:
    """Like ``name_arg`` for an argument that may be left out."""
    check = name_arg(kind)

    def callback(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
        return None if value is None else check(ctx, param, value)

    return callback


#: Bad lines named before ``job add --from-file`` gives up listing them.
MAX_LINE_ERRORS = 20


def read_job_lines(stream: IO[str], name: str, weight: float) -> list[tuple[str, Any, float]]:
    """The jobs of a JSON-lines stream (``{"id": ..., "data": ...}`` per line, optional
    ``"weight"``; ``"spec"`` may stand for ``"data"``; blank lines skipped), every line
    checked as ``job add`` checks one job. Bad lines raise a usage error naming each
    (up to MAX_LINE_ERRORS) with its line number."""
    from .._store.jobs import check_job

    def no_constants(value: str) -> Any:
        raise ValueError(f"{value} is not JSON: only finite numbers are allowed")

    jobs: list[tuple[str, Any, float]] = []
    errors: list[str] = []
    bad = 0
    seen: dict[str, int] = {}
    for n, line in enumerate(stream, 1):
        if not line.strip():
            continue
        try:
            try:
                obj = json.loads(line, parse_constant=no_constants)
            except json.JSONDecodeError as e:
                raise ConfigError(f"not valid JSON ({e.msg} at column {e.colno})") from None
            except RecursionError:
                raise ConfigError(f"nested too deeply (at most {MAX_SPEC_DEPTH} levels)") from None
            except ValueError as e:
                raise ConfigError(str(e)) from None
            if not isinstance(obj, dict):
                raise ConfigError('expected an object like {"id": "job-1", "data": {...}}')
            unknown = sorted(set(obj) - {"id", "data", "spec", "weight"})
            if unknown:
                raise ConfigError(
                    f"unknown field {unknown[0]!r} (fields: id, data or spec, weight)"
                )
            if "data" in obj and "spec" in obj:
                raise ConfigError('give "data" or "spec", not both')
            if "id" not in obj:
                raise ConfigError('no "id"')
            jid, spec = obj["id"], obj.get("data", obj.get("spec"))
            w = obj.get("weight", weight)
            check_job(jid, spec, w)
            if jid in seen:
                raise ConfigError(f"job id {jid!r} is also on line {seen[jid]}")
            seen[jid] = n
            jobs.append((jid, spec, float(w)))
        except ConfigError as e:
            bad += 1
            if len(errors) < MAX_LINE_ERRORS:
                errors.append(f"{name}, line {n}: {e}")
    if bad:
        more = f"\n... and {bad - len(errors)} more bad lines" if bad > len(errors) else ""
        raise CliError(
            "\n".join(errors) + more + f"\nnothing was added ({bad} bad line(s))", EXIT_USAGE
        )
    return jobs


@job.command("add")
@click.argument("role", callback=name_arg("role"))
@click.argument("job_id", metavar="[JOB]", required=False, callback=optional_name("job id"))
@click.option("--spec", callback=parse_spec, metavar="JSON", help="The job's spec, as JSON.")
@click.option(
    "--from-file",
    "from_file",
    type=click.File("r", encoding="utf-8"),
    metavar="FILE",
    help='Add many jobs: one JSON object per line, {"id": "job-1", "data": {...}} '
    '(optional "weight"), "-" for stdin. Every line is checked before anything is '
    "written; the jobs are written many per transaction.",
)
@click.option(
    "--weight",
    type=FiniteFloatRange(min=0, min_open=True, max=1e9),
    default=1.0,
    show_default=True,
    help="A weight stored with the job and given to its handler (job.weight; "
    "FDBWORKERS_JOB_WEIGHT for --exec). Jobs are assigned by partition: it does not "
    "change where the job runs.",
)
@click.option(
    "--partitions",
    type=click.IntRange(min=1, max=1_000_000),
    default=DEFAULT_PARTITIONS,
    show_default=True,
    help="Partitions of the role, used only when this creates the role.",
)
@click.pass_context
def job_add(
    ctx: click.Context,
    role: str,
    job_id: str | None,
    spec: Any,
    from_file: IO[str] | None,
    weight: float,
    partitions: int,
) -> None:
    """Add JOB to ROLE (or update its spec or weight). Idempotent: adding the same job
    again changes nothing. The role is created if it does not exist. With --from-file,
    add every job of a JSON-lines file instead (thousands per second).

    \b
    Examples:
      fdbworkers job add replicator db1-to-db2 --spec '{"source": "db1", "target": "db2"}'
      fdbworkers job add replicator big-one --weight 4
      fdbworkers job add replicator --from-file jobs.jsonl
      generate-jobs | fdbworkers job add replicator --from-file -
    """
    from .._store.jobs import tx_add_job

    s = settings(ctx)
    if from_file is not None:
        if job_id is not None or spec is not None:
            raise click.UsageError("give either JOB (and --spec) or --from-file, not both")
        add_from_file(s, role, from_file, weight, partitions)
        return
    if job_id is None:
        raise click.UsageError("missing JOB (or --from-file FILE)")
    space = s.space(role)

    async def main(db: Database) -> tuple[Any, bool, bool]:
        async def existed(tr: Transaction) -> bool:
            from .._store.jobs import tx_get_job

            return await tx_get_job(tr, space, job_id) is not None

        before = await db.transact(existed)
        rec, changed = await db.transact(tx_add_job, space, job_id, spec, weight, partitions)
        return rec, changed, before

    rec, changed, existed = run(s, main)
    what = "unchanged" if not changed else ("updated" if existed else "added")
    echo(f"{what} job {job_id!r} in role {role!r} (partition {rec.partition})")


@job.command("remove")
@click.argument("role", callback=name_arg("role"))
@click.argument("job_id", metavar="JOB", callback=name_arg("job id"))
@click.option("--missing-ok", is_flag=True, help="Succeed when the job does not exist.")
@click.pass_context
def job_remove(ctx: click.Context, role: str, job_id: str, missing_ok: bool) -> None:
    """Remove JOB from ROLE: its owner stops it (after its grace period) and releases it.

    \b
    Example:
      fdbworkers job remove replicator db1-to-db2
    """
    from .._store.jobs import tx_remove_job

    s = settings(ctx)
    removed = run(s, lambda db: db.transact(tx_remove_job, s.space(role), job_id))
    if removed:
        echo(f"removed job {job_id!r} from role {role!r}")
    elif missing_ok:
        echo(f"no job {job_id!r} in role {role!r} (nothing to do)")
    else:
        raise CliError(f"no job {job_id!r} in role {role!r}")


@job.command("show")
@click.argument("role", callback=name_arg("role"))
@click.argument("job_id", metavar="JOB", callback=name_arg("job id"))
@json_option
@click.pass_context
def job_show(ctx: click.Context, role: str, job_id: str, as_json: bool) -> None:
    """Show JOB: spec, owner, the member the assignment names, fencing token, state.

    \b
    Example:
      fdbworkers job show replicator db1-to-db2 --json
    """
    show_job(settings(ctx), role, job_id, as_json)


def add_from_file(s: Settings, role: str, stream: IO[str], weight: float, partitions: int) -> None:
    """``job add --from-file``: check every line, then write the jobs in batches."""
    from .._errors import FDBError
    from .._runner.admin import add_jobs
    from .._store.bulk import AddJobsResult

    name = "stdin" if stream.name in ("<stdin>", "-") else str(stream.name)
    jobs = read_job_lines(stream, name, weight)
    result = AddJobsResult()

    async def main(db: Database) -> None:
        try:
            await add_jobs(
                db, role, jobs, root=s.layout.prefix, partitions=partitions, result=result
            )
        except (FDBError, trio.TooSlowError, ClusterUnreachableError) as e:
            known = translate(s, e) or CliError(str(e))
            written = (
                f"{result.jobs:,} of {len(jobs):,} jobs were written before the error "
                f"({result.added:,} added, {result.updated:,} updated, {result.unchanged:,} "
                "unchanged; the batch in flight may or may not have been); running the same "
                "command again is safe"
            )
            raise CliError(f"{known.message}\n{written}", known.code, known.hint) from None

    run(s, main, bounded=False)
    rate = result.jobs / result.seconds if result.seconds > 0 else 0.0
    echo(
        f"added {result.added:,} jobs, updated {result.updated:,}, unchanged "
        f"{result.unchanged:,} in role {role!r} ({result.seconds:.1f} s, {rate:,.0f} jobs/s)"
    )


# --- evict -----------------------------------------------------------------------------


async def read_member(db: Database, space: RoleSpace, wid: str) -> tuple[MemberRecord, HealthStamp]:
    await require_role(db, space)

    async def tx(tr: Transaction) -> tuple[bytes | None, bytes | None]:
        return await tr.get(space.member_key(wid)), await tr.get(space.health_key(wid))

    raw, hraw = await db.transact(tx)
    if raw is None:
        raise CliError(f"no member {wid!r} in role {space.role!r}")
    try:
        rec = MemberRecord.decode(wid, space.member_key(wid), raw)
    except CorruptDataError as e:
        raise CliError(f"the member record of {wid!r} is corrupt: {e}") from e
    return rec, HealthStamp.parse(space.health_key(wid), hraw)


def confirm_or_refuse(question: str, yes: bool) -> None:
    if yes:
        return
    if not sys.stdin.isatty():
        raise CliError(
            "refusing to evict without confirmation (stdin is not a terminal)",
            EXIT_USAGE,
            hint="pass --yes",
        )
    if not click.confirm(question, default=False, err=True):
        raise CliError("not evicted", 1)


@click.command()
@click.argument("role", callback=name_arg("role"))
@click.argument("worker", callback=name_arg("worker id"))
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@click.option(
    "--force",
    is_flag=True,
    help="Evict even a worker that is heartbeating (it will find itself evicted, stop its "
    "jobs and rejoin as a new incarnation).",
)
@click.pass_context
def evict(ctx: click.Context, role: str, worker: str, yes: bool, force: bool) -> None:
    """Remove WORKER from ROLE, as its neighbour would: a compare-and-clear that commits
    only if its heartbeat stamp is still the one seen going silent.

    Without --force it first watches WORKER's heartbeat stamp for the worker's timeout
    on this machine's clock and refuses if the stamp changes (the worker is alive: use
    drain to make it leave). A live worker's neighbours evict a dead one by themselves
    within timeout + check interval; this command is for a role left with a single
    member, or for impatient operators.

    \b
    Examples:
      fdbworkers evict replicator host3-77aa           # asks, after watching it
      fdbworkers evict replicator host3-77aa --yes --force
    """
    s = settings(ctx)
    space = s.space(role)
    rec, health = run(s, lambda db: read_member(db, space, worker))
    stamp = health.stamp
    silent = 0.0
    if not force:
        stamp, silent = watch_silence(s, role, worker, rec)
        question = (
            f"{worker} has been silent for {silent:.1f}s (timeout {rec.timeout:g}s). Evict it?"
        )
    else:
        question = f"Evict {worker} (incarnation {rec.incarnation[:8]}) even if it is alive?"
    confirm_or_refuse(question, yes)

    by = operator()
    reason = "forced by an operator" if force else "silent for its timeout, evicted by an operator"

    if run(s, lambda db: evict_member(db, space, worker, rec, stamp, silent, by, reason, force)):
        echo(f"evicted {worker} from role {role!r}")
    else:
        raise CliError(
            f"{worker} was not evicted: its heartbeat stamp changed or it restarted meanwhile"
        )


def watch_silence(
    s: Settings, role: str, worker: str, rec: MemberRecord
) -> tuple[bytes | None, float]:
    """Watch ``worker``'s heartbeat stamp for up to its timeout; refuse (CliError) unless
    it stayed unchanged that long. The stamp seen, and how long it was silent."""
    echo(
        f"watching the heartbeat of {worker} for up to its timeout ({rec.timeout:g}s) ...",
        err=True,
    )

    async def watch_it(db: Database) -> tuple[bytes | None, float, bool]:
        obs = await observe_health(
            db, s.space(role), {worker: rec}, cap=rec.timeout + 0.5, resolve_after=1.0
        )
        o = obs[worker]
        return o.stamp, o.silent_for, o.changed

    stamp, silent, changed = run(s, watch_it, extra=rec.timeout + 0.5)
    if changed:
        raise CliError(
            f"{worker} is heartbeating (its stamp changed while watched): not evicting",
            hint="use 'fdbworkers drain' to make it leave gracefully, or --force",
        )
    if silent < rec.timeout:
        raise CliError(
            f"{worker} was watched for only {silent:.1f}s of its {rec.timeout:g}s "
            "timeout: not evicting"
        )
    return stamp, silent


async def evict_member(
    db: Database,
    space: RoleSpace,
    worker: str,
    rec: MemberRecord,
    stamp: bytes | None,
    silent: float,
    by: str,
    reason: str,
    force: bool,
) -> bool:
    """The compare-and-clear with the stamp seen; with --force, retried with the current
    stamp when a heartbeat raced it (three tries)."""
    current = stamp
    for _ in range(3 if force else 1):
        done = await db.transact(
            tx_evict, space, worker, rec.incarnation, current, by, silent, reason,
            DEFAULT_EVENT_RETENTION, retire=not force,
        )  # fmt: skip
        if done or not force:
            return bool(done)
        _, h = await read_member(db, space, worker)  # a heartbeat raced us
        current = h.stamp
    return False


# --- drain -----------------------------------------------------------------------------


@click.command()
@click.argument("role", callback=name_arg("role"))
@click.argument("worker", callback=name_arg("worker id"))
@click.option("--wait", "wait_s", type=FiniteFloatRange(min=0, max=3600), default=None,
              metavar="SECONDS",
              help="Wait until the worker has left, at most this long.")  # fmt: skip
@click.pass_context
def drain(ctx: click.Context, role: str, worker: str, wait_s: float | None) -> None:
    """Ask WORKER to leave ROLE gracefully: the other members stop assigning it jobs, it
    stops and releases its jobs (each after its grace period), removes its records and
    exits its worker block.

    \b
    Examples:
      fdbworkers drain replicator host1-3f2a
      fdbworkers drain replicator host1-3f2a --wait 60
    """
    s = settings(ctx)
    space = s.space(role)

    async def main(db: Database) -> str:
        await require_role(db, space)
        return str(await db.transact(tx_request_drain, space, worker, operator()))

    outcome = run(s, main)
    if outcome == "missing":
        raise CliError(f"no member {worker!r} in role {role!r}")
    echo(
        f"drain requested for {worker} in role {role!r}"
        if outcome == "requested"
        else f"{worker} is already draining"
    )
    if wait_s is None:
        return

    async def wait_gone(db: Database) -> bool:
        with trio.move_on_after(wait_s):
            while True:

                async def tx(tr: Transaction) -> tuple[bool, Any]:
                    key = space.member_key(worker)
                    present = await tr.get(key) is not None
                    return present, (tr.watch(key) if present else None)

                present, w = await db.transact(tx)
                if not present:
                    return True
                try:
                    await w.wait()
                finally:
                    w.cancel()
        return False

    if run(s, wait_gone, extra=wait_s):
        echo(f"{worker} has left")
    else:
        raise CliError(f"{worker} has not left within {wait_s:g}s")


COMMANDS = [job, evict, drain]
