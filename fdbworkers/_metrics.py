"""Prometheus metrics of a worker process (the optional ``metrics`` extra).

``fdbworkers worker --metrics-port 9464`` serves ``/metrics``. The numbers come from
what the objects report about themselves: ``worker.statistics()``,
``runner.statistics()``, the exec runner's statistics and the database's retry-loop
counters (``db.stats``), read when Prometheus scrapes. The HTTP endpoint is a small
server in the worker's own event loop (no thread: the statistics are read on the
loop that owns them).

Library users can do the same: ``WorkerMetrics(worker, runner).render()`` returns the
exposition text, or ``await task_group.start(serve_metrics, metrics, host, port)``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from typing import Any, Final

import anyio
import anyio.abc

from ._db import Database
from ._errors import FDB_ERRORS, ConfigError
from ._log import get_logger
from ._worker import Worker

#: Buckets of the heartbeat latency histogram (seconds).
LATENCY_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
MAX_REQUEST: Final = 8192
#: The labels of every metric: the worker's role and id.
LABELS: Final = ("role", "worker")


def require_prometheus() -> Any:
    """The ``prometheus_client`` module, or a clear :class:`ConfigError`."""
    try:
        return importlib.import_module("prometheus_client")
    except ImportError as e:
        raise ConfigError(
            "metrics need the optional 'metrics' extra: pip install 'fdbworkers[metrics]' "
            f"(prometheus-client is not installed: {e})"
        ) from e


class WorkerMetrics:
    """A Prometheus collector over one worker (and optionally its job runner, its exec
    runner and the database), with a sampled heartbeat latency histogram."""

    def __init__(
        self,
        worker: Worker,
        runner: Any | None = None,
        *,
        db: Database | None = None,
        exec_runner: Any | None = None,
    ) -> None:
        prom = require_prometheus()
        from prometheus_client.registry import CollectorRegistry

        self.worker = worker
        self.runner = runner
        self.exec_runner = exec_runner
        self.db = db if db is not None else worker.db
        self.registry = CollectorRegistry(auto_describe=True)
        self._prom = prom
        self._labels = {"role": worker.role, "worker": worker.id}
        self.heartbeat_latency = prom.Histogram(
            "fdbworkers_heartbeat_latency_seconds",
            "Latency of committed heartbeat transactions (sampled once per heartbeat).",
            ["role", "worker"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self._hb_seen = 0
        self.registry.register(_Collector(self))

    def sample(self) -> None:
        """Record the latest heartbeat latency if a new heartbeat committed."""
        st = self.worker.statistics()
        if st.heartbeats_sent > self._hb_seen:
            self._hb_seen = st.heartbeats_sent
            self.heartbeat_latency.labels(**self._labels).observe(st.heartbeat_latency_last)

    async def sampler(self) -> None:
        """Sample each heartbeat's latency (run in the worker's nursery)."""
        interval = self.worker.options.heartbeat_interval / 2
        while True:
            self.sample()
            await anyio.sleep(interval)

    def render(self) -> bytes:
        """The exposition text (Prometheus text format)."""
        self.sample()
        data: bytes = self._prom.generate_latest(self.registry)
        return data

    @property
    def content_type(self) -> str:
        return str(self._prom.CONTENT_TYPE_LATEST)


class _Collector:
    def __init__(self, m: WorkerMetrics) -> None:
        self.m = m

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Iterator[Any]:
        """The metrics by subject: the worker, its job runner and exec runner (when
        there are), the database's retry loop."""
        m = self.m
        yield from self._worker()
        if m.runner is not None:
            rs = m.runner.statistics()
            yield from self._jobs(rs)
            yield from self._claims(rs)
        if m.exec_runner is not None:
            yield from self._exec(m.exec_runner.statistics())
        yield from self._transactions()

    def _values(self) -> list[str]:
        return [self.m.worker.role, self.m.worker.id]

    def _gauge(self, name: str, doc: str, value: float) -> Any:
        from prometheus_client.core import GaugeMetricFamily

        g = GaugeMetricFamily(name, doc, labels=LABELS)
        g.add_metric(self._values(), float(value))
        return g

    def _counter(self, name: str, doc: str, value: float) -> Any:
        from prometheus_client.core import CounterMetricFamily

        c = CounterMetricFamily(name, doc, labels=LABELS)
        c.add_metric(self._values(), float(value))
        return c

    def _worker(self) -> Iterator[Any]:
        """Membership, state, heartbeats and lease, evictions, watches."""
        st = self.m.worker.statistics()
        yield self._gauge("fdbworkers_members", "Members of the role this worker sees.", st.members)
        yield self._state(st.state)
        yield self._gauge(
            "fdbworkers_heartbeat_latency_last_seconds",
            "Latency of the last heartbeat.",
            st.heartbeat_latency_last,
        )
        yield self._gauge(
            "fdbworkers_heartbeat_latency_max_seconds",
            "Largest heartbeat latency seen.",
            st.heartbeat_latency_max,
        )
        yield self._gauge(
            "fdbworkers_lease_remaining_seconds",
            "Time left on this worker's lease.",
            st.lease_remaining,
        )
        yield self._counter("fdbworkers_heartbeats", "Heartbeats committed.", st.heartbeats_sent)
        yield self._counter(
            "fdbworkers_heartbeat_failures",
            "Heartbeat transactions that failed.",
            st.heartbeat_failures,
        )
        yield self._counter(
            "fdbworkers_evictions", "Neighbours this worker evicted.", st.evictions_done
        )
        yield self._counter(
            "fdbworkers_rebalances",
            "Settled membership changes (each rebalances the jobs).",
            st.membership_changes_reported,
        )
        yield self._counter(
            "fdbworkers_watch_fires", "Membership watches that fired.", st.watch_fires
        )
        yield self._counter("fdbworkers_membership_reads", "Membership reads.", st.membership_reads)
        yield self._counter("fdbworkers_fences", "Times this worker fenced itself.", st.fences)
        yield self._counter(
            "fdbworkers_rejoins", "Times this worker found itself evicted and rejoined.", st.rejoins
        )
        yield self._counter(
            "fdbworkers_corrupt_records", "Member records that did not decode.", st.corrupt_records
        )
        yield self._gauge(
            "fdbworkers_polling",
            "1 while watches are unavailable and membership is polled.",
            1 if st.polling else 0,
        )

    def _state(self, current: str) -> Any:
        """One series per WorkerState: 1 for the current one."""
        from prometheus_client.core import GaugeMetricFamily

        state = GaugeMetricFamily(
            "fdbworkers_worker_state",
            "1 for the worker's current state.",
            labels=[*LABELS, "state"],
        )
        from ._core.states import WorkerState

        for s in WorkerState:
            state.add_metric([*self._values(), s.value], 1.0 if s.value == current else 0.0)
        return state

    def _jobs(self, rs: Any) -> Iterator[Any]:
        """The job runner's jobs: owned and targeted, starts and stops, failures."""
        yield self._gauge("fdbworkers_owned_jobs", "Jobs running on this worker.", rs.running)
        yield self._gauge(
            "fdbworkers_target_jobs", "Jobs the assignment gives this worker.", rs.target
        )
        yield self._gauge(
            "fdbworkers_pending_claims",
            "Jobs assigned here, not yet claimed.",
            rs.pending_claims,
        )
        yield self._counter(
            "fdbworkers_job_starts", "Jobs started here (moves in and new jobs).", rs.started
        )
        yield self._counter(
            "fdbworkers_job_stops",
            "Jobs stopped here (moves out, removals, leaving).",
            rs.stopped,
        )
        yield self._counter(
            "fdbworkers_moves",
            "Jobs started or stopped here because ownership changed.",
            rs.started + rs.stopped,
        )
        yield self._counter(
            "fdbworkers_handler_crashes", "Job handlers that raised.", rs.handler_crashes
        )
        yield self._counter(
            "fdbworkers_job_failures",
            "Failed runs of jobs here (handler crashes and reported failures, e.g. an "
            "--exec exit code other than 0).",
            rs.job_failures,
        )
        yield self._gauge(
            "fdbworkers_jobs_failing",
            "Jobs here whose runs fail (not yet healthy_after seconds without failing).",
            rs.jobs_failing,
        )
        yield self._gauge(
            "fdbworkers_jobs_parked",
            "Jobs here parked after park_after failures in a row (not run).",
            rs.jobs_parked,
        )

    def _claims(self, rs: Any) -> Iterator[Any]:
        """The job runner's claims, reconcile steps, handoffs and deferred moves."""
        yield self._counter("fdbworkers_claims", "Claims committed.", rs.claims_committed)
        yield self._counter(
            "fdbworkers_claims_blocked",
            "Claims still held by another live member.",
            rs.claims_blocked,
        )
        yield self._counter(
            "fdbworkers_reconciles", "Reconcile steps of the job runner.", rs.reconciles
        )
        yield self._counter(
            "fdbworkers_handoffs_adopted",
            "Partitions taken over from a leaving worker before the membership settled.",
            rs.handoffs_adopted,
        )
        yield self._counter(
            "fdbworkers_moves_deferred",
            "Moves postponed by the velocity limit (max_moves).",
            rs.moves_deferred,
        )
        yield self._counter(
            "fdbworkers_plans_written", "Plans this worker wrote.", rs.plans_written
        )
        yield self._counter(
            "fdbworkers_plan_reads_delta",
            "Stored plans read as the deltas since the plan held (docs/assignment.md).",
            rs.plans_read_by_delta,
        )
        yield self._counter(
            "fdbworkers_plan_reads_whole", "Stored plans read whole.", rs.plans_read_whole
        )

    def _exec(self, es: Any) -> Iterator[Any]:
        """The --exec runner's job processes."""
        yield self._gauge("fdbworkers_exec_processes", "Job processes running.", es.running)
        yield self._counter("fdbworkers_exec_process_starts", "Job processes started.", es.started)
        yield self._counter(
            "fdbworkers_exec_process_exits",
            "Job processes that exited by themselves.",
            es.exited,
        )
        yield self._counter(
            "fdbworkers_exec_process_kills", "Job processes killed with SIGKILL.", es.killed
        )

    def _transactions(self) -> Iterator[Any]:
        """The database's retry loop: transactions, commits, retries, errors by code."""
        from prometheus_client.core import CounterMetricFamily

        ds = self.m.db.stats
        yield self._counter(
            "fdbworkers_transactions", "Transactions run by the retry loop.", ds.transactions
        )
        yield self._counter("fdbworkers_transaction_commits", "Transactions committed.", ds.commits)
        yield self._counter(
            "fdbworkers_transaction_retries", "Retries of the retry loop.", ds.retries
        )
        yield self._counter(
            "fdbworkers_transaction_conflicts", "Conflicts (1020 not_committed).", ds.conflicts
        )
        yield self._counter(
            "fdbworkers_transaction_unknown_results",
            "Commits with an unknown result (1021).",
            ds.unknown_results,
        )
        errors = CounterMetricFamily(
            "fdbworkers_transaction_errors",
            "Transaction errors by FDB code.",
            labels=[*LABELS, "code", "name"],
        )
        for code, n in sorted(ds.errors_by_code.items()):
            errors.add_metric(
                [*self._values(), str(code), FDB_ERRORS.get(code, (f"error_{code}", ""))[0]],
                float(n),
            )
        yield errors


# --- a tiny HTTP endpoint in the event loop ---------------------------------------------


async def _handle(stream: anyio.abc.ByteStream, render: Callable[[], tuple[bytes, str]]) -> None:
    try:
        with anyio.move_on_after(10):
            data = b""
            while b"\r\n\r\n" not in data and b"\n\n" not in data and len(data) < MAX_REQUEST:
                try:
                    chunk = await stream.receive(4096)
                except anyio.EndOfStream:
                    break
                data += chunk
            line = data.split(b"\n", 1)[0].decode("latin-1").strip()
            parts = line.split()
            path = parts[1].split("?", 1)[0] if len(parts) >= 2 else ""
            if len(parts) < 2 or parts[0] not in ("GET", "HEAD"):
                status, body, ctype = "405 Method Not Allowed", b"only GET\n", "text/plain"
            elif path in ("/metrics", "/"):
                body, ctype = render()
                status = "200 OK"
            elif path == "/healthz":
                status, body, ctype = "200 OK", b"ok\n", "text/plain"
            else:
                status, body, ctype = "404 Not Found", b"try /metrics\n", "text/plain"
            head = (
                f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n"
            ).encode("latin-1")
            await stream.send(head + (b"" if parts and parts[0] == "HEAD" else body))
    except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
        pass
    finally:
        await stream.aclose()


async def serve_metrics(
    metrics: WorkerMetrics,
    host: str,
    port: int,
    *,
    task_status: anyio.abc.TaskStatus[int] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``/metrics`` on ``host:port`` (0: any free port) until cancelled; reports
    the bound port through ``task_status``."""
    log = get_logger("fdbworkers").bind(component="metrics")

    def render() -> tuple[bytes, str]:
        return metrics.render(), metrics.content_type

    try:
        listener = await anyio.create_tcp_listener(local_host=host, local_port=port)
    except OSError as e:
        raise ConfigError(f"cannot serve metrics on {host}:{port}: {e}") from e
    bound = listener.extra(anyio.abc.SocketAttribute.local_port)
    log.info("metrics_serving", host=host, port=bound)
    async with anyio.create_task_group() as nursery:
        nursery.start_soon(metrics.sampler)
        task_status.started(bound)

        async def handler(stream: anyio.abc.SocketStream) -> None:
            await _handle(stream, render)

        async with listener:
            await listener.serve(handler, task_group=nursery)
