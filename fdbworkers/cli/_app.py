"""The ``fdbworkers`` command group and its global options."""

from __future__ import annotations

import importlib
import sys
from typing import Any

import click
from click.core import ParameterSource

from .._core.keys import parse_root
from .._errors import ConfigError
from ._common import (
    DEFAULT_TIMEOUT,
    EXIT_INTERRUPTED,
    CliError,
    FiniteFloatRange,
    Settings,
    configure_logging,
    report_error,
    resolve_cluster,
)

CONTEXT_SETTINGS: dict[str, Any] = {
    "help_option_names": ["-h", "--help"],
    "max_content_width": 100,
}

EPILOG = """\b
Examples:
  fdbworkers devserver --port 4690                  # a dev server for a laptop
  export FDBWORKERS_CLUSTER=sim://127.0.0.1:4690
  fdbworkers worker --role demo --demo-handler      # a worker (Ctrl-C leaves gracefully)
  fdbworkers job add demo job-1 --spec '{"src": "a"}'
  fdbworkers members demo
  fdbworkers jobs demo --owner host1-3f2a
  fdbworkers watch demo                             # live view
  fdbworkers status --json                          # exit code 0 when healthy
  fdbworkers --cluster-file /etc/foundationdb/fdb.cluster roles

\b
Exit codes: 0 success (status: healthy), 1 failure (status: unhealthy),
2 bad usage, 3 cluster unreachable or too slow, 130 interrupted.
See docs/cli.md for the --json schemas.
"""


def _check_root(ctx: click.Context, param: click.Parameter, value: str) -> str:
    try:
        parse_root(value)
    except ConfigError as e:
        raise click.BadParameter(str(e)) from e
    return value


#: Command name -> the module that defines it (in its ``COMMANDS``). A command's module is
#: imported when the command runs (or help lists it): ``fdbworkers worker`` does not
#: load the read, write, health and insight commands (memory: docs/benchmarks.md).
LAZY_COMMANDS: dict[str, str] = {
    **dict.fromkeys(("roles", "members", "jobs", "events", "watch"), "_read"),
    **dict.fromkeys(("status", "doctor"), "_health"),
    **dict.fromkeys(("job", "evict", "drain"), "_write"),
    **dict.fromkeys(("worker", "devserver", "demo"), "_run"),
    **dict.fromkeys(("explain", "plan"), "_insight"),
}


class LazyGroup(click.Group):
    """A group whose commands (:data:`LAZY_COMMANDS`) are imported when first looked up."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*LAZY_COMMANDS, *self.commands})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        module = LAZY_COMMANDS.get(cmd_name)
        if module is not None and cmd_name not in self.commands:
            for command in importlib.import_module(f"{__package__}.{module}").COMMANDS:
                self.add_command(command)
        return self.commands.get(cmd_name)


@click.group(cls=LazyGroup, context_settings=CONTEXT_SETTINGS, epilog=EPILOG)
@click.option(
    "--cluster",
    envvar="FDBWORKERS_CLUSTER",
    metavar="ADDRESS",
    help="Cluster address: sim://HOST:PORT (a dev server), fdb:PATH or a cluster file "
    "path (FoundationDB). [env: FDBWORKERS_CLUSTER]",
)
@click.option(
    "--cluster-file",
    envvar="FDB_CLUSTER_FILE",
    metavar="PATH",
    help="A FoundationDB cluster file. [env: FDB_CLUSTER_FILE]",
)
@click.option(
    "--root",
    envvar="FDBWORKERS_ROOT",
    default="fdbworkers",
    show_default=True,
    metavar="PATH",
    callback=_check_root,
    help="Key space: a '/'-separated tuple path. [env: FDBWORKERS_ROOT]",
)
@click.option(
    "--timeout",
    envvar="FDBWORKERS_TIMEOUT",
    type=FiniteFloatRange(min=0.1, max=3600),
    default=DEFAULT_TIMEOUT,
    show_default=True,
    metavar="SECONDS",
    help="Deadline of every database operation. [env: FDBWORKERS_TIMEOUT]",
)
@click.option("-v", "--verbose", count=True, help="Log more (-v info, -vv debug) to stderr.")
@click.version_option(package_name="fdbworkers", prog_name="fdbworkers")
@click.pass_context
def cli(
    ctx: click.Context,
    cluster: str | None,
    cluster_file: str | None,
    root: str,
    timeout: float,
    verbose: int,
) -> None:
    """Operate fdbworkers: workers that share jobs through FoundationDB.

    Read commands (roles, members, jobs, job show, events, status, doctor) take --json
    and print a documented, stable schema. Output is plain text when stdout is not a
    terminal.
    """
    address, source = resolve_cluster(
        cluster or None,
        cluster_file or None,
        ctx.get_parameter_source("cluster") == ParameterSource.COMMANDLINE,
        ctx.get_parameter_source("cluster_file") == ParameterSource.COMMANDLINE,
    )
    ctx.obj = Settings(address, source, root, timeout, verbose)
    configure_logging({0: "warning", 1: "info"}.get(verbose, "debug"))


def main(argv: list[str] | None = None) -> None:
    """The console script: exits with the command's code."""
    try:
        rv = cli.main(args=argv, prog_name="fdbworkers", standalone_mode=False)
    except click.Abort:
        click.echo("interrupted", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except CliError as e:
        report_error(e)
        sys.exit(e.code)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except BrokenPipeError:
        sys.exit(1)
    sys.exit(rv if isinstance(rv, int) else 0)
