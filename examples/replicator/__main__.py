"""The replicator's command line: ``python -m examples.replicator COMMAND`` from the
repository root. See README.md next to this file."""

from __future__ import annotations

import json
import logging
import random
import signal
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import click
import structlog
import trio

from fdbworkers import Database, Job, open_database, open_worker
from fdbworkers._core.keys import Layout
from fdbworkers._store.jobs import tx_list_jobs

from .replicator import (
    BATCH_SIZE,
    DATA_ROOT,
    ROLE,
    BatchResult,
    ReplicationSpec,
    Store,
    add_replication,
    in_sync,
    make_handler,
    remove_replication,
)

T = TypeVar("T")


@dataclass(frozen=True)
class Opts:
    cluster: str
    root: str
    data_root: str

    @property
    def store(self) -> Store:
        return Store.at(self.data_root)


def run(opts: Opts, fn: Callable[[Database], Awaitable[T]]) -> T:
    async def main() -> T:
        db = open_database(opts.cluster)
        db.default_timeout = 10.0
        try:
            return await fn(db)
        finally:
            await db.aclose()

    try:
        return trio.run(main)
    except KeyboardInterrupt:
        sys.exit(130)


@click.group()
@click.option(
    "--cluster",
    envvar="FDBWORKERS_CLUSTER",
    required=True,
    metavar="ADDRESS",
    help="sim://HOST:PORT (a dev server), fdb:PATH or a cluster file. [env: FDBWORKERS_CLUSTER]",
)
@click.option("--root", default="fdbworkers", show_default=True, help="fdbworkers' key space.")
@click.option(
    "--data-root", default=DATA_ROOT, show_default=True, help="The databases and checkpoints."
)
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default="warning",
    show_default=True,
)
@click.pass_context
def cli(ctx: click.Context, cluster: str, root: str, data_root: str, log_level: str) -> None:
    """A replication job runner on fdbworkers (CouchDB's replicator in miniature)."""
    # The application configures logging (the library never does).
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, log_level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
    )
    ctx.obj = Opts(cluster, root, data_root)


@cli.command()
@click.option("--id", "worker_id", default=None, help="Worker id [default: HOST-RANDOM].")
@click.option("--timeout", type=float, default=10.0, show_default=True, help="Liveness timeout.")
@click.option("--batch-size", type=click.IntRange(min=1), default=BATCH_SIZE, show_default=True)
@click.option("--grace", type=float, default=5.0, show_default=True)
@click.pass_obj
def worker(
    opts: Opts, worker_id: str | None, timeout: float, batch_size: int, grace: float
) -> None:
    """Run a replicator worker: it replicates the jobs fdbworkers assigns it, until
    Ctrl-C or SIGTERM (it then stops its replications and hands them over)."""

    async def report(job: Job, r: BatchResult) -> None:
        if r.changes:
            click.echo(
                f"{job.id}: {r.changes} changes, {r.written} written, checkpoint "
                f"{r.checkpoint.seq.hex()} (token {job.token.hex()})"
            )

    async def main(db: Database) -> None:
        handler = make_handler(opts.store, batch_size=batch_size, on_batch=report)
        async with trio.open_nursery() as nursery:

            async def leave_on_sigterm() -> None:
                # SIGTERM (a service manager, a container stop) ends the worker like
                # Ctrl-C: open_worker's exit stops the jobs, hands them over and removes
                # the member record, so no stale member is left behind.
                with trio.open_signal_receiver(signal.SIGTERM) as signals:
                    async for _ in signals:
                        click.echo("SIGTERM: leaving", err=True)
                        nursery.cancel_scope.cancel()
                        return

            nursery.start_soon(leave_on_sigterm)
            async with open_worker(
                db, ROLE, worker_id=worker_id, root=opts.root, timeout=timeout, settle=1.0
            ) as w:
                click.echo(f"worker {w.id} joined role {ROLE!r}")
                await w.run_jobs(handler, grace=grace)

    run(opts, main)


def parse_filter(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
    if value is None:
        return None
    try:
        obj = json.loads(value)
    except json.JSONDecodeError as e:
        raise click.BadParameter(f"not JSON: {e}") from e
    if not isinstance(obj, dict):
        raise click.BadParameter('a filter is a JSON object, e.g. {"type": "order"}')
    return obj


@cli.command()
@click.argument("job_id", metavar="JOB")
@click.option("--source", required=True)
@click.option("--target", required=True)
@click.option("--filter", "flt", callback=parse_filter, metavar="JSON")
@click.pass_obj
def add(opts: Opts, job_id: str, source: str, target: str, flt: Any) -> None:
    """Add the replication JOB from SOURCE to TARGET."""
    changed = run(opts, lambda db: add_replication(db, job_id, source, target, flt, root=opts.root))
    click.echo(f"replication {job_id} {'added' if changed else 'unchanged'}")


@cli.command()
@click.argument("job_id", metavar="JOB")
@click.pass_obj
def remove(opts: Opts, job_id: str) -> None:
    """Remove the replication JOB (its owner stops it)."""
    gone = run(opts, lambda db: remove_replication(db, job_id, root=opts.root))
    click.echo(f"replication {job_id} {'removed' if gone else 'did not exist'}")


@cli.command()
@click.argument("database")
@click.option("--docs", type=click.IntRange(min=1), default=1000, show_default=True)
@click.option("--type", "doc_type", default="order", show_default=True)
@click.option(
    "--updates-per-second",
    type=click.FloatRange(min=0),
    default=0.0,
    help="Then keep updating random documents at this rate until Ctrl-C.",
)
@click.pass_obj
def write(opts: Opts, database: str, docs: int, doc_type: str, updates_per_second: float) -> None:
    """Write documents doc-00001... into DATABASE (the application's writes)."""
    store = opts.store

    async def main(db: Database) -> None:
        for i in range(1, docs + 1):
            await store.put_doc(db, database, f"doc-{i:05}", {"n": i, "type": doc_type, "rev": 1})
        click.echo(f"wrote {docs} documents into {database}")
        rng = random.Random()
        rev = 1
        while updates_per_second > 0:
            rev += 1
            i = rng.randint(1, docs)
            await store.put_doc(db, database, f"doc-{i:05}", {"n": i, "type": doc_type, "rev": rev})
            await trio.sleep(1 / updates_per_second)

    run(opts, main)


@cli.command()
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def status(opts: Opts, as_json: bool) -> None:
    """Each replication: its checkpoint, documents written, and whether its target
    equals its (filtered) source right now."""
    store = opts.store
    layout = Layout.for_root(opts.root)

    async def main(db: Database) -> list[dict[str, Any]]:
        jobs, claims = await db.transact(tx_list_jobs, layout.role(ROLE))
        out = []
        for j in jobs:
            spec = ReplicationSpec.parse(j.spec)
            ck = await store.read_checkpoint(db, j.id)
            src = await store.read_docs(db, spec.source)
            tgt = await store.read_docs(db, spec.target)
            c = claims.get(j.id)
            out.append(
                {
                    "job": j.id,
                    "source": spec.source,
                    "target": spec.target,
                    "filter": spec.filter,
                    "owner": c.wid if c else None,
                    "checkpoint": ck.seq.hex(),
                    "docs_written": ck.docs_written,
                    "batches": ck.batches,
                    "source_docs": sum(1 for v in src.values() if spec.accepts(v)),
                    "target_docs": len(tgt),
                    "in_sync": in_sync(src, tgt, spec),
                }
            )
        return out

    rows = run(opts, main)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("no replications (add one: python -m examples.replicator add ...)")
    for r in rows:
        click.echo(
            f"{r['job']}: {r['source']} -> {r['target']}  owner {r['owner'] or '-'}  "
            f"checkpoint {r['checkpoint']}  written {r['docs_written']} in {r['batches']} "
            f"batches  docs {r['source_docs']}/{r['target_docs']}  "
            f"{'in sync' if r['in_sync'] else 'behind'}"
        )


def main() -> None:
    cli(prog_name="python -m examples.replicator")


if __name__ == "__main__":
    main()
