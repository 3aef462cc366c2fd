"""The process ``fdbworkers worker`` runs: the worker and its job runner (with the
--exec runner or the demo's handler), the metrics endpoint if asked, the signals
(SIGTERM/SIGINT leave, SIGHUP leaves to restart in place, a second one exits at once),
and what ended it as the CLI's error and exit code. The command and its options are in
``_run``.
"""

from __future__ import annotations

import os
import signal
from typing import Any

import trio

from .._errors import ClusterUnreachableError, ConfigError, FdbworkersError
from .._log import get_logger
from .._worker_lease import WorkerSupersededError
from ._common import (
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    CliError,
    Settings,
    open_db,
    translate,
    unwrap,
)


def run_worker_process(
    s: Settings,
    role: str,
    options: Any,
    *,
    worker_id: str | None,
    id_file: str | None,
    exec_runner: Any,
    demo_log: str | None,
    demo_work_interval: float,
    grace: float,
    metrics: tuple[str, int] | None,
    park_after: int | None = None,
) -> int:
    from .._worker import open_worker

    log = get_logger("fdbworkers").bind(component="cli", role=role)

    async def main() -> int:
        db = open_db(s)
        handler: Any
        if exec_runner is not None:
            handler = exec_runner
            runner_grace = grace + 1.0  # the exec runner's own SIGTERM -> SIGKILL comes first
        else:
            from ._demo_handler import DemoHandler

            handler = DemoHandler(demo_log, work_interval=demo_work_interval)
            runner_grace = grace
        try:
            async with trio.open_nursery() as outer:
                signals = _Signals(outer, trio.CancelScope(), exec_runner, log)
                outer.start_soon(signals.receive)
                with signals.body:
                    async with open_worker(
                        db, role, worker_id=worker_id, id_file=id_file, root=s.root, options=options
                    ) as w:
                        signals.worker_box.append(w)
                        await serve_jobs(
                            w, db, s, handler, runner_grace, park_after, exec_runner, metrics, log
                        )
                outer.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(2):
                await db.aclose()
        log.info("worker_exited")
        return 0

    try:
        return trio.run(main, strict_exception_groups=True)
    except BaseException as e:
        inner = unwrap(e)
        if isinstance(inner, KeyboardInterrupt):
            return EXIT_INTERRUPTED
        error = worker_error(s, inner)
        if error is not None:
            raise error from None
        raise


class _Signals:
    """The worker process's signals: the first SIGTERM or SIGINT leaves gracefully, a
    SIGHUP leaves to restart in place (before the worker is up, the first signal just
    ends the process), a second signal exits at once."""

    def __init__(
        self, outer: trio.Nursery, body: trio.CancelScope, exec_runner: Any, log: Any
    ) -> None:
        self.outer = outer
        self.body = body
        self.exec_runner = exec_runner
        self.log = log
        self.count = 0
        self.worker_box: list[Any] = []

    async def receive(self) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as received:
            async for signum in received:
                self.count += 1
                if self.count == 1 and self.worker_box and signum == signal.SIGHUP:
                    # Restart in place: release the jobs but stay a member;
                    # the next process with this id takes them back.
                    self.log.info("leaving_for_restart", signal="SIGHUP")
                    self.outer.start_soon(self.worker_box[0].leave_for_restart)
                elif self.count == 1 and self.worker_box:
                    self.log.info("leaving", signal=signal.Signals(signum).name)
                    # Leave (event "left"): stop and release the jobs
                    # gracefully first; the worker block then ends.
                    self.outer.start_soon(self.worker_box[0]._leave, "left")
                elif self.count == 1:
                    self.body.cancel()
                else:
                    self.log.warning("exiting_now", signal=signal.Signals(signum).name)
                    if self.exec_runner is not None:
                        self.exec_runner.kill_all()
                    os._exit(EXIT_INTERRUPTED)


async def serve_jobs(
    w: Any,
    db: Any,
    s: Settings,
    handler: Any,
    runner_grace: float,
    park_after: int | None,
    exec_runner: Any,
    metrics: tuple[str, int] | None,
    log: Any,
) -> None:
    """Run the worker's jobs (and the metrics endpoint, if asked) until cancelled."""
    from .._runner.runner import JobRunner

    runner = JobRunner(w, handler, grace=runner_grace, park_after=park_after)
    if hasattr(handler, "bind"):
        handler.bind(w)
    async with trio.open_nursery() as n:
        if metrics is not None:
            from .._metrics import WorkerMetrics, serve_metrics

            m = WorkerMetrics(w, runner, db=db, exec_runner=exec_runner)
            port = await n.start(serve_metrics, m, metrics[0], metrics[1])
            log.info("metrics_endpoint", url=f"http://{metrics[0]}:{port}/metrics")
        if exec_runner is not None:
            # One task copies every job process's output (it outlives the jobs'
            # graceful stop: the worker's leave stops them before this ends).
            await n.start(exec_runner.run_output)
        n.start_soon(runner.run)
        log.info(
            "worker_running",
            worker=w.id,
            incarnation=w.incarnation,
            cluster=s.cluster,
        )
        await trio.sleep_forever()


def worker_error(s: Settings, inner: BaseException) -> CliError | None:
    """The CLI's error for what ended the worker process; None: not one it knows."""
    if isinstance(inner, ClusterUnreachableError):
        return CliError(
            f"{inner} ({s.describe()})",
            EXIT_UNREACHABLE,
            hint="is it running? (a dev server: fdbworkers devserver; FoundationDB: "
            "check the cluster file)",
        )
    if isinstance(inner, WorkerSupersededError):
        return CliError(str(inner), EXIT_FAILURE)
    if isinstance(inner, ConfigError):
        return CliError(str(inner), EXIT_USAGE)
    known = translate(s, inner)
    if known is not None:
        return known
    if isinstance(inner, FdbworkersError):
        return CliError(str(inner))
    return None
