"""Long-running commands: worker, devserver, demo."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from .._errors import ConfigError, FdbworkersError
from .._worker_options import DEFAULT_PARTITIONS
from ._common import (
    EXIT_USAGE,
    CliError,
    FiniteFloatRange,
    Settings,
    configure_logging,
    name_arg,
    resolve_cluster,
    settings,
    unwrap,
)
from ._worker_process import run_worker_process


def parse_meta(
    ctx: click.Context, param: click.Parameter, values: tuple[str, ...]
) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"expected KEY=VALUE, got {item!r}")
        out[key] = value
    return out


#: ``--log-level`` of the long-running commands (worker, devserver).
log_level_option = click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default="info",
    show_default=True,
    help="The least severe log lines written to stderr.",
)


WORKER_EPILOG = """\b
Examples:
  fdbworkers worker --role replicator --exec './replicate.sh'
  fdbworkers worker --role replicator --exec 'python -m myapp.job' --id-file /var/lib/myapp/id \\
      --timeout 10 --grace 30 --metrics-port 9464
  fdbworkers worker --role demo --demo-handler --id w1

\b
The command of --exec gets, in its environment: FDBWORKERS_JOB_ID, FDBWORKERS_JOB_SPEC
(JSON), FDBWORKERS_FENCING_TOKEN (hex; increases with each new owner of the job),
FDBWORKERS_TOKEN_VERSION, FDBWORKERS_ROLE, FDBWORKERS_WORKER_ID, FDBWORKERS_INCARNATION,
FDBWORKERS_JOB_PARTITION, FDBWORKERS_JOB_WEIGHT, FDBWORKERS_ATTEMPT.
"""


@click.command(epilog=WORKER_EPILOG)
@click.option("--role", required=True, callback=name_arg("role"), help="The role to join.")
@click.option(
    "--exec",
    "exec_cmd",
    metavar="CMD",
    help="Run CMD (split like a shell would) for each owned job.",
)
@click.option("--demo-handler", is_flag=True, help="Run the demo's job handler (records its runs).")
@click.option(
    "--id",
    "worker_id",
    callback=name_arg("worker id"),
    help="This worker's id [default: HOST-RANDOM].",
)
@click.option(
    "--id-file",
    type=click.Path(dir_okay=False),
    help="Keep the worker id in this file, so a restart keeps it (and takes over its jobs).",
)
@click.option(
    "--timeout",
    "liveness_timeout",
    type=FiniteFloatRange(min=0.3, max=3600),
    default=10.0,
    show_default=True,
    metavar="SECONDS",
    help="Liveness timeout: silent this long, the worker is evicted (heartbeats every timeout/3).",
)
@click.option(
    "--weight",
    type=FiniteFloatRange(min=0, min_open=True, max=1e6),
    default=1.0,
    show_default=True,
    help="This worker's share of the jobs, relative to the other members' weights.",
)
@click.option(
    "--settle",
    type=FiniteFloatRange(min=0, max=3600),
    default=1.0,
    show_default=True,
    metavar="SECONDS",
    help="Quiet period before a membership change rebalances jobs.",
)
@click.option(
    "--grace",
    type=FiniteFloatRange(min=0, max=3600),
    default=10.0,
    show_default=True,
    metavar="SECONDS",
    help="How long a job may take to stop (SIGTERM, then SIGKILL for --exec).",
)
@click.option(
    "--park-after",
    type=click.IntRange(min=1),
    default=None,
    metavar="N",
    help="Park a job after N failures in a row (crashes, --exec exits other than 0): it "
    "stays claimed here but is not run again until it moves [default: restart for ever].",
)
@click.option(
    "--give-up-after",
    type=FiniteFloatRange(min=1, max=30 * 86400),
    default=None,
    metavar="SECONDS",
    help="Exit (code 3) once the cluster has not answered for this long "
    "[default: keep trying; the log says since when it is unreachable].",
)
@click.option(
    "--restart",
    type=click.Choice(["always", "on-failure"]),
    default="always",
    show_default=True,
    help="--exec: restart the command whenever it exits, or only when it fails.",
)
@click.option(
    "--partitions",
    type=click.IntRange(min=1, max=1_000_000),
    default=DEFAULT_PARTITIONS,
    show_default=True,
    help="Partitions of the role, used only when this creates the role.",
)
@click.option(
    "--meta",
    multiple=True,
    callback=parse_meta,
    metavar="KEY=VALUE",
    help="Published in the member record.",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(min=0, max=65535),
    help="Serve Prometheus metrics on this port.",
)
@click.option(
    "--metrics-host",
    default="127.0.0.1",
    show_default=True,
    help="Address of the metrics endpoint.",
)
@click.option(
    "--log-format",
    type=click.Choice(["auto", "console", "json"]),
    default="auto",
    show_default=True,
    help="Logs on stderr: JSON lines, or console lines (auto: JSON unless stderr is a "
    "terminal). Timestamps in UTC.",
)
@log_level_option
@click.option("--demo-log", type=click.Path(file_okay=False), hidden=True)
@click.option("--demo-work-interval", type=FiniteFloatRange(min=0.001), default=1.0, hidden=True)
@click.pass_context
def worker(
    ctx: click.Context,
    role: str,
    exec_cmd: str | None,
    demo_handler: bool,
    worker_id: str | None,
    id_file: str | None,
    liveness_timeout: float,
    weight: float,
    settle: float,
    grace: float,
    park_after: int | None,
    give_up_after: float | None,
    restart: str,
    partitions: int,
    meta: dict[str, str],
    metrics_port: int | None,
    metrics_host: str,
    log_format: str,
    log_level: str,
    demo_log: str | None,
    demo_work_interval: float,
) -> None:
    """Run a worker in a role: register, heartbeat, watch the membership, evict a silent
    neighbour, and run the jobs this worker owns, with --exec CMD (any program, one
    process per job) or the demo's handler. SIGTERM or Ctrl-C leaves gracefully (jobs
    stopped and released, records removed, the others take the jobs at once); a second
    one exits at once. SIGHUP leaves to restart in place: jobs stopped and released,
    but the worker stays a member, so nothing moves if a process with the same --id
    (or --id-file) starts within --timeout; otherwise it is evicted and its jobs move."""
    s = settings(ctx)
    demo_log = check_worker_args(exec_cmd, demo_handler, worker_id, id_file, demo_log)
    options, exec_runner = worker_options(
        liveness_timeout=liveness_timeout,
        weight=weight,
        settle=settle,
        partitions=partitions,
        meta=meta,
        grace=grace,
        give_up_after=give_up_after,
        exec_cmd=exec_cmd,
        restart=restart,
        metrics=metrics_port is not None,
    )
    configure_logging(log_level, log_format)
    code = run_worker_process(
        s,
        role,
        options,
        worker_id=worker_id,
        id_file=id_file,
        exec_runner=exec_runner,
        demo_log=demo_log,
        demo_work_interval=demo_work_interval,
        grace=grace,
        park_after=park_after,
        metrics=(metrics_host, metrics_port) if metrics_port is not None else None,
    )
    ctx.exit(code)


def check_worker_args(
    exec_cmd: str | None,
    demo_handler: bool,
    worker_id: str | None,
    id_file: str | None,
    demo_log: str | None,
) -> str | None:
    """The usage errors of ``worker`` that its options cannot express one by one; the
    demo handler's log folder (None when not given)."""
    if bool(exec_cmd) == demo_handler:
        raise click.UsageError("give exactly one of --exec CMD or --demo-handler")
    if worker_id is not None and id_file is not None:
        raise click.UsageError("give either --id or --id-file, not both")
    if demo_handler and not demo_log:
        demo_log = None
    return demo_log


def worker_options(
    *,
    liveness_timeout: float,
    weight: float,
    settle: float,
    partitions: int,
    meta: dict[str, str],
    grace: float,
    give_up_after: float | None,
    exec_cmd: str | None,
    restart: str,
    metrics: bool,
) -> tuple[Any, Any]:
    """The worker's options and its --exec runner (None without --exec); a value they
    refuse is a usage error."""
    from .._worker_options import WorkerOptions
    from ._exec import ExecOptions, ExecRunner, split_command

    exec_runner = None
    try:
        options = WorkerOptions(
            timeout=liveness_timeout,
            weight=weight,
            settle=settle,
            partitions=partitions,
            meta=meta,
            leave_timeout=grace + max(liveness_timeout, 5.0),
            give_up_after=give_up_after,
        )
        if exec_cmd:
            exec_runner = ExecRunner(
                ExecOptions(split_command(exec_cmd), stop_grace=grace, restart=restart)
            )
        if metrics:
            from .._metrics import require_prometheus

            require_prometheus()
    except ConfigError as e:
        raise click.UsageError(str(e)) from e
    return options, exec_runner


# --- devserver -------------------------------------------------------------------------


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(min=0, max=65535), default=4690, show_default=True,
              help="Port (0: any free port; see --ready-file).")  # fmt: skip
@click.option(
    "--data",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Persist the database to this file (loaded at start, saved every second and at exit).",
)
@click.option(
    "--ready-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the address (sim://HOST:PORT) here once listening.",
)
@click.option(
    "--allow-remote",
    is_flag=True,
    help="Listen on a non-loopback address (there is no authentication: anyone who "
    "reaches it can read and write everything).",
)
@log_level_option
def devserver(
    host: str,
    port: int,
    data: Path | None,
    ready_file: Path | None,
    allow_remote: bool,
    log_level: str,
) -> None:
    """Serve the embedded engine to other processes, for development: workers and the CLI
    on one laptop share one database with --cluster sim://HOST:PORT (or
    FDBWORKERS_CLUSTER). Same transaction API and semantics as in-process, watches
    included. Stops on Ctrl-C or SIGTERM (saving --data first). A development tool:
    production uses FoundationDB.

    \b
    Examples:
      fdbworkers devserver --port 4690 --data /tmp/fdbworkers.db
      export FDBWORKERS_CLUSTER=sim://127.0.0.1:4690
    """
    configure_logging(log_level)
    from .._backends.devserver import run_devserver

    try:
        run_devserver(host, port, data, ready_file=ready_file, allow_remote=allow_remote)
    except BaseException as outer:
        e = unwrap(outer)
        if isinstance(e, KeyboardInterrupt):
            return
        if isinstance(e, ConfigError):
            raise CliError(str(e), EXIT_USAGE) from None
        if isinstance(e, OSError):
            raise CliError(f"cannot serve on {host}:{port}: {e}") from None
        if isinstance(e, FdbworkersError):
            raise CliError(str(e)) from None
        raise


# --- demo ------------------------------------------------------------------------------


@click.command()
@click.option("--duration", type=FiniteFloatRange(min=10, max=3600), default=45.0,
              show_default=True, metavar="SECONDS", help="Length of the timeline.")  # fmt: skip
@click.option("--workers", type=click.IntRange(min=2, max=32), default=4, show_default=True,
              help="Worker processes at the start.")  # fmt: skip
@click.option(
    "--jobs",
    "n_jobs",
    type=click.IntRange(min=1, max=10_000),
    default=40,
    show_default=True,
    help="Jobs at the start (a quarter more are added, then a quarter removed).",
)
@click.option("--worker-timeout", type=FiniteFloatRange(min=1, max=60), default=3.0,
              show_default=True, metavar="SECONDS",
              help="The workers' liveness timeout.")  # fmt: skip
@click.option("--keep", is_flag=True, help="Keep the demo's folder (logs, job run records).")
@click.option("--plain", is_flag=True, help="Plain line output even in a terminal.")
@click.option(
    "--cluster-file",
    "demo_cluster_file",
    metavar="PATH",
    help="Run on this FoundationDB cluster (the same as the global option).",
)
@click.option(
    "--cluster",
    "demo_cluster",
    metavar="ADDRESS",
    help="Run on this cluster (fdb:PATH, or sim://HOST:PORT for a running dev server).",
)
@click.pass_context
def demo(
    ctx: click.Context,
    duration: float,
    workers: int,
    n_jobs: int,
    worker_timeout: float,
    keep: bool,
    plain: bool,
    demo_cluster_file: str | None,
    demo_cluster: str | None,
) -> None:
    """The whole system in one command: a dev server (or FoundationDB with
    --cluster-file), worker processes running a demo job handler, jobs, and a live view.
    On a timeline it kills a worker with SIGKILL and lets its neighbour evict it, adds a
    worker, drains one, adds and removes jobs, then prints a summary: detection time of
    the crash against the bound, jobs moved against the optimum, and whether any job
    ever ran on two workers at once. Exit code 0 when every check passes.

    \b
    Examples:
      fdbworkers demo
      fdbworkers demo --duration 20 --workers 3 --jobs 30
      fdbworkers --cluster-file "$FDB_CLUSTER_FILE" demo     # on FoundationDB
    """
    from ._demo import DemoOptions, run_demo

    s = settings(ctx)
    if demo_cluster or demo_cluster_file:  # after the command: ./scripts/demo --cluster-file P
        address, source = resolve_cluster(
            demo_cluster, demo_cluster_file, demo_cluster is not None, demo_cluster_file is not None
        )
        s = Settings(address, source, s.root, s.timeout, s.verbose)
    # A cluster named on the command line or by FDB_CLUSTER_FILE is used (under a fresh
    # root, cleared at the end); FDBWORKERS_CLUSTER only when it names FoundationDB (a
    # dev server left in the environment by the quick start is not reused).
    cluster = None
    if s.cluster_source in ("--cluster", "--cluster-file", "FDB_CLUSTER_FILE"):
        cluster = s.cluster
    elif s.cluster_source == "FDBWORKERS_CLUSTER" and s.cluster:
        is_engine = s.cluster.strip().lower().startswith(("sim:", "memory"))
        cluster = None if is_engine else s.cluster
    if cluster is not None and cluster.strip().lower().startswith("memory"):
        raise click.UsageError(
            "the demo's workers are separate processes and cannot share a 'memory' engine; "
            "omit --cluster to start a dev server"
        )
    opts = DemoOptions(
        duration=duration,
        workers=workers,
        jobs=n_jobs,
        worker_timeout=worker_timeout,
        cluster=cluster,
        keep=keep,
        live=sys.stdout.isatty() and not plain,
        op_timeout=s.timeout,
    )
    ctx.exit(run_demo(opts))


COMMANDS = [worker, devserver, demo]
