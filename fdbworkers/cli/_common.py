"""The CLI's plumbing: choosing the cluster, running an async command with deadlines,
turning errors into messages and exit codes, and printing (rich in a terminal, plain
columns in a pipe, JSON on request)."""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Final, NoReturn, TypeVar

import click
import trio

from .._core.keys import Layout, RoleSpace, validate_name
from .._db import Database
from .._errors import (
    BackendUnavailableError,
    ClusterUnreachableError,
    ConfigError,
    CorruptDataError,
    FDBError,
    FdbworkersError,
    LayoutError,
)

T = TypeVar("T")

#: Exit codes (docs/cli.md).
EXIT_OK: Final = 0
EXIT_FAILURE: Final = 1
EXIT_USAGE: Final = 2
EXIT_UNREACHABLE: Final = 3
EXIT_INTERRUPTED: Final = 130

DEFAULT_TIMEOUT: Final = 5.0


class FiniteFloatRange(click.FloatRange):
    """click's FloatRange without NaN and the infinities (FloatRange lets NaN through:
    every comparison with it is false)."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = 0.0  # not a number at all: FloatRange says so
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return super().convert(value, param, ctx)


class CliError(Exception):
    """An error reported as ``error: message`` with an exit code."""

    def __init__(self, message: str, code: int = EXIT_FAILURE, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.hint = hint


@dataclass
class Settings:
    """The global options, resolved."""

    cluster: str | None
    cluster_source: str
    root: str | None
    timeout: float
    verbose: int = 0

    @property
    def layout(self) -> Layout:
        try:
            return Layout.for_root(self.root)
        except ConfigError as e:
            raise click.BadParameter(str(e), param_hint="'--root'") from e

    def space(self, role: str) -> RoleSpace:
        """The keys of ``role`` under the root (``--root``)."""
        return self.layout.role(role)

    def address(self) -> str:
        if self.cluster is None:
            raise click.UsageError(
                "no cluster given: pass --cluster sim://HOST:PORT (a dev server) or "
                "--cluster-file PATH (FoundationDB), or set FDBWORKERS_CLUSTER or "
                "FDB_CLUSTER_FILE"
            )
        return self.cluster

    def describe(self) -> str:
        return f"{self.cluster} ({self.cluster_source})"


def resolve_cluster(
    cluster: str | None,
    cluster_file: str | None,
    cluster_from_cli: bool,
    file_from_cli: bool,
) -> tuple[str | None, str]:
    """The cluster address and where it came from: an option given on the command line
    wins over the environment; ``--cluster`` (FDBWORKERS_CLUSTER) wins over
    ``--cluster-file`` (FDB_CLUSTER_FILE) at the same level; both on the command line is
    an error."""
    if cluster_from_cli and file_from_cli:
        raise click.UsageError("give either --cluster or --cluster-file, not both")
    file_address = None
    if cluster_file:
        if os.path.isdir(cluster_file):
            raise click.BadParameter(
                f"{cluster_file!r} is a folder, not a cluster file", param_hint="'--cluster-file'"
            )
        if not os.path.exists(cluster_file):
            where = "--cluster-file" if file_from_cli else "FDB_CLUSTER_FILE"
            raise click.BadParameter(
                f"cluster file {cluster_file!r} does not exist", param_hint=f"'{where}'"
            )
        file_address = f"fdb:{cluster_file}"
    if cluster_from_cli:
        return cluster, "--cluster"
    if file_from_cli:
        return file_address, "--cluster-file"
    if cluster:
        return cluster, "FDBWORKERS_CLUSTER"
    if file_address:
        return file_address, "FDB_CLUSTER_FILE"
    return None, "none"


def settings(ctx: click.Context) -> Settings:
    obj = ctx.find_object(Settings)
    assert obj is not None, "global options not parsed"
    return obj


# --- running -------------------------------------------------------------------------


def open_db(s: Settings) -> Database:
    from .._backends.connect import open_database

    address = s.address()
    try:
        db = open_database(address)
    except ConfigError as e:
        hint = {"FDB_CLUSTER_FILE": "--cluster-file", "FDBWORKERS_CLUSTER": "--cluster"}.get(
            s.cluster_source, s.cluster_source
        )
        raise click.BadParameter(str(e), param_hint=f"'{hint}'") from e
    db.default_timeout = s.timeout
    return db


def unreachable(s: Settings, what: str = "") -> CliError:
    return CliError(
        f"the cluster {s.cluster} did not answer within {s.timeout:g}s{what}",
        EXIT_UNREACHABLE,
        hint=(
            "is it running? (a dev server: fdbworkers devserver; FoundationDB: check the "
            "cluster file) Raise --timeout for a slow cluster."
        ),
    )


def translate(s: Settings, e: BaseException) -> CliError | None:
    """Known errors as CliError; None for anything else."""
    if isinstance(e, CliError):
        return e
    if isinstance(e, trio.TooSlowError | ClusterUnreachableError):
        return unreachable(s)
    if isinstance(e, FDBError):
        if e.code in (1004, 1031):
            return unreachable(s)
        if e.code == 1026:
            return CliError(
                f"cannot connect to the cluster {s.cluster}: {e.description}",
                EXIT_UNREACHABLE,
                # The dev server's client already asks whether it is running: once is enough.
                hint=None
                if "devserver" in e.description
                else "is it running? (a dev server: fdbworkers devserver)",
            )
        if e.code == 2104:
            return CliError(
                f"the cluster file of {s.cluster} does not hold a valid connection string "
                "(DESCRIPTION:ID@HOST:PORT,...)",
                EXIT_USAGE,
            )
        return CliError(f"database error: {e}")
    if isinstance(e, LayoutError):
        return CliError(str(e))
    if isinstance(e, CorruptDataError):
        return CliError(f"corrupt data: {e}")
    if isinstance(e, BackendUnavailableError):
        return CliError(str(e))
    if isinstance(e, ConnectionError | OSError) and not isinstance(e, FileNotFoundError):
        return CliError(f"cannot reach the cluster {s.cluster}: {e}", EXIT_UNREACHABLE)
    if isinstance(e, LookupError):
        return CliError(str(e.args[0]) if e.args else str(e))
    if isinstance(e, ConfigError):
        return CliError(str(e), EXIT_USAGE)
    if isinstance(e, FdbworkersError):
        return CliError(str(e))
    return None


def unwrap(e: BaseException) -> BaseException:
    """The one exception inside (nested) single-exception groups."""
    while isinstance(e, BaseExceptionGroup) and len(e.exceptions) == 1:
        e = e.exceptions[0]
    return e


@asynccontextmanager
async def sigint_cancels() -> AsyncIterator[trio.CancelScope]:
    """Ctrl-C as a message, not an exception: SIGINT cancels the body (the caller
    checks ``cancelled_caught`` on the scope it gets and reports the interrupt).

    Trio's own handler raises ``KeyboardInterrupt`` in whatever frame runs when the
    signal arrives; in a weakref callback, a ``__del__`` or an import lock's callback
    that exception is printed as "Exception ignored" and dropped, and ``events
    --follow`` or ``watch`` went on forever (tests/cli/test_cli_interrupt.py). A
    received signal cannot be lost. Off the main thread (no signal handlers there) the
    body runs as it is."""
    scope = trio.CancelScope()
    if threading.current_thread() is not threading.main_thread():
        with scope:
            yield scope
        return
    with trio.open_signal_receiver(signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:

            async def cancel_on_sigint() -> None:
                async for _ in signals:
                    scope.cancel()
                    return

            nursery.start_soon(cancel_on_sigint)
            with scope:
                yield scope
            nursery.cancel_scope.cancel()


async def interruptible(fn: Callable[[], Awaitable[T]]) -> T:
    """``await fn()``; Ctrl-C cancels it and raises ``KeyboardInterrupt`` once it has
    unwound (see :func:`sigint_cancels`)."""
    async with sigint_cancels():
        return await fn()
    raise KeyboardInterrupt


def run(
    s: Settings, fn: Callable[[Database], Awaitable[T]], *, bounded: bool = True, extra: float = 0.0
) -> T:
    """Open the database, run ``await fn(db)`` under trio and close. With ``bounded``
    the whole command must finish within a deadline derived from ``--timeout`` (plus
    ``extra`` seconds for commands that observe); unbounded commands (follow, watch)
    guard each operation themselves."""

    async def main() -> T:
        async with sigint_cancels() as interrupted:
            db = open_db(s)
            try:
                if bounded:
                    with trio.fail_after(s.timeout * 3 + 2 + extra):
                        return await fn(db)
                return await fn(db)
            finally:
                with trio.move_on_after(2) as scope:
                    scope.shield = True
                    await db.aclose()
        assert interrupted.cancelled_caught
        raise KeyboardInterrupt

    try:
        return trio.run(main, strict_exception_groups=True)
    except KeyboardInterrupt:
        raise CliError("interrupted", EXIT_INTERRUPTED) from None
    except BaseException as e:
        inner = unwrap(e)
        if isinstance(inner, KeyboardInterrupt):
            raise CliError("interrupted", EXIT_INTERRUPTED) from None
        if isinstance(inner, click.ClickException | click.exceptions.Exit):
            raise inner from None
        known = translate(s, inner)
        if known is not None:
            raise known from None
        raise


async def guarded(s: Settings, aw: Awaitable[T]) -> T:
    """One operation under the CLI's deadline (for commands that run unbounded)."""
    with trio.fail_after(s.timeout * 2 + 1):
        return await aw


def fail(message: str, code: int = EXIT_FAILURE, hint: str | None = None) -> NoReturn:
    raise CliError(message, code, hint)


def report_error(e: CliError) -> None:
    err = sys.stderr
    color = err.isatty() and "NO_COLOR" not in os.environ
    click.secho(f"error: {e.message}", file=err, fg="red" if color else None, bold=color)
    if e.hint:
        click.echo(f"hint: {e.hint}", file=err)


# --- output --------------------------------------------------------------------------


def stdout_is_terminal() -> bool:
    return sys.stdout.isatty()


def print_json(obj: Any) -> None:
    click.echo(json.dumps(obj, indent=2, sort_keys=False, ensure_ascii=False))


def print_json_line(obj: Any) -> None:
    click.echo(json.dumps(obj, separators=(",", ":"), ensure_ascii=False))


def plain_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Columns aligned with two spaces, no truncation, no colours (pure)."""
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    lines = []
    for row in [list(headers), *[list(r) for r in rows]]:
        cells = [c.ljust(widths[i]) for i, c in enumerate(row)]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def print_table(
    headers: Sequence[str],
    rows: Sequence[Sequence[str]],
    *,
    styles: Sequence[Sequence[str | None]] | None = None,
    title: str | None = None,
) -> None:
    """A rich table in a terminal, plain aligned columns otherwise."""
    if not stdout_is_terminal():
        if title:
            click.echo(title)
        click.echo(plain_table(headers, rows))
        return
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(title=title, title_justify="left", header_style="bold", box=None, pad_edge=False)
    for h in headers:
        table.add_column(h, no_wrap=True)
    for i, row in enumerate(rows):
        if styles is None:
            table.add_row(*row)
        else:
            table.add_row(*[Text(c, style=st or "") for c, st in zip(row, styles[i], strict=True)])
    Console(highlight=False).print(table)


def echo(text: str = "", *, style: str | None = None, err: bool = False) -> None:
    stream = sys.stderr if err else sys.stdout
    if style and stream.isatty() and "NO_COLOR" not in os.environ:
        click.secho(text, fg=style, file=stream)
    else:
        click.echo(text, file=stream)


def _import_structlog() -> Any:
    """structlog, without letting it import ``rich``: ``structlog.dev`` imports rich
    (and, through rich's tracebacks, pygments) when installed, for exception formatting
    the CLI does not use (its console renderer is given plain tracebacks), and that is
    about 5 MB more in every worker process. Tables import rich themselves, when they
    print to a terminal."""
    if "structlog" in sys.modules or "rich" in sys.modules:
        import structlog

        return structlog
    sys.modules["rich"] = None  # type: ignore[assignment]  # import rich: ImportError
    try:
        import structlog
    finally:
        if sys.modules.get("rich", 0) is None:
            del sys.modules["rich"]
    return structlog


def configure_logging(level: str = "warning", fmt: str = "auto") -> None:
    """structlog to stderr (the CLI is the application: it alone configures logging)."""
    import logging

    structlog = _import_structlog()

    levels = {
        "debug": logging.DEBUG,
        "info": logging.INFO,
        "warning": logging.WARNING,
        "error": logging.ERROR,
    }
    renderer: Any
    if fmt == "json" or (fmt == "auto" and not sys.stderr.isatty()):
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer(
            colors=sys.stderr.isatty() and "NO_COLOR" not in os.environ,
            exception_formatter=structlog.dev.plain_traceback,
        )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.dict_tracebacks
            if fmt == "json"
            else structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(levels[level]),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )


def name_arg(kind: str) -> Any:
    """A click callback that checks a role or job name (``kind``) argument."""

    def check(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        if value is None:
            return None
        try:
            return validate_name(kind, value)
        except ConfigError as e:
            raise click.BadParameter(str(e)) from e

    return check
