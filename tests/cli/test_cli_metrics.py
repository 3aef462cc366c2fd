"""Prometheus metrics of a worker: the collector over a worker, its job runner and the
database counters (on the embedded engine), the HTTP endpoint, the missing-extra error."""

from __future__ import annotations

import random
from typing import Any

import pytest
import trio

from fdbworkers import JobRunner, WorkerOptions, add_job, open_worker
from fdbworkers._backends.engine import Engine
from fdbworkers._errors import ConfigError
from fdbworkers._metrics import WorkerMetrics, require_prometheus, serve_metrics

OPTS = WorkerOptions(timeout=3.0, settle=0.2, partitions=16)


async def idle(job: Any) -> None:
    await trio.sleep_forever()


def sample(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in the exposition")


async def test_metrics_report_the_worker_the_runner_and_the_database(engine: Engine) -> None:
    db = engine.open_database("w")
    for i in range(3):
        await add_job(db, "m", f"j{i}", root="mt", partitions=16)
    async with open_worker(
        db, "m", worker_id="w1", root="mt", options=OPTS, rng=random.Random(1)
    ) as w:
        runner = JobRunner(w, idle, grace=0.1)
        metrics = WorkerMetrics(w, runner)
        async with trio.open_nursery() as n:
            n.start_soon(runner.run)
            with trio.fail_after(30):
                while len(runner.running) < 3:  # noqa: ASYNC110
                    await trio.sleep(0.1)
            await trio.sleep(3)  # a few heartbeats
            text = metrics.render().decode()
            n.cancel_scope.cancel()
    assert sample(text, "fdbworkers_members") == 1
    assert sample(text, "fdbworkers_owned_jobs") == 3
    assert sample(text, "fdbworkers_job_starts_total") == 3
    assert sample(text, "fdbworkers_heartbeats_total") >= 2
    assert sample(text, "fdbworkers_transactions_total") > 0
    assert sample(text, "fdbworkers_transaction_conflicts_total") >= 0
    assert sample(text, "fdbworkers_heartbeat_latency_seconds_count") >= 1
    assert 'fdbworkers_worker_state{role="m",state="active",worker="w1"} 1.0' in text
    for name in (
        "fdbworkers_evictions_total",
        "fdbworkers_rebalances_total",
        "fdbworkers_moves_total",
        "fdbworkers_transaction_retries_total",
        "fdbworkers_lease_remaining_seconds",
    ):
        sample(text, name)


async def test_metrics_endpoint_serves_over_http() -> None:
    engine = Engine()
    db = engine.open_database("w")
    async with open_worker(db, "m", worker_id="w1", root="mt", options=OPTS) as w:
        metrics = WorkerMetrics(w)
        async with trio.open_nursery() as n:
            port = await n.start(serve_metrics, metrics, "127.0.0.1", 0)

            async def get(path: str) -> bytes:
                stream = await trio.open_tcp_stream("127.0.0.1", port)
                async with stream:
                    await stream.send_all(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
                    data = b""
                    while chunk := await stream.receive_some(65536):
                        data += chunk
                return data

            with trio.fail_after(10):
                ok = await get("/metrics")
                missing = await get("/nope")
            n.cancel_scope.cancel()
    assert ok.startswith(b"HTTP/1.1 200 OK") and b"fdbworkers_members" in ok
    assert missing.startswith(b"HTTP/1.1 404")


def test_a_missing_extra_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib

    real = importlib.import_module

    def fake(name: str, *a: Any) -> Any:
        if name == "prometheus_client":
            raise ImportError("No module named 'prometheus_client'")
        return real(name, *a)

    monkeypatch.setattr(importlib, "import_module", fake)
    with pytest.raises(ConfigError, match=r"fdbworkers\[metrics\]"):
        require_prometheus()
