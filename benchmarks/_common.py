"""Helpers shared by the scale, peer-comparison and real-cluster benchmarks: tables,
percentiles, bulk job loading, and per-handle engine counters."""

from __future__ import annotations

import logging
import math
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable, MutableMapping, Sequence
from pathlib import Path
from typing import Any

import anyio.lowlevel
import structlog

from fdbworkers._core.assign import job_partition
from fdbworkers._core.keys import Layout
from fdbworkers._db import Database, Transaction
from fdbworkers._store.jobs import JobRecord
from fdbworkers._store.members import tx_ensure_role
from fdbworkers._store.plan import tx_count_job

ROOT = "fdbworkers-bench"
ROLE = "bench"


def quiet_logs(level: int = logging.ERROR) -> None:
    """Benchmarks print tables, not the library's per-job log lines."""
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            # The records' clock (CLOCK_MONOTONIC), so a kept log lines up with them.
            _monotonic_stamp,
            structlog.dev.ConsoleRenderer(colors=False),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
    )


def _monotonic_stamp(
    _logger: Any, _name: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    event["t"] = round(time.monotonic(), 4)
    return event


def pct(samples: Sequence[float], p: float) -> float:
    """The p-quantile (nearest rank) of ``samples``; nan when empty."""
    if not samples:
        return math.nan
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(p * len(ordered)) - 1))]


def median(samples: Sequence[float]) -> float:
    return statistics.median(samples) if samples else math.nan


def fmt(x: Any) -> str:
    if isinstance(x, float):
        if math.isnan(x):
            return "-"
        if x == 0:
            return "0"
        if abs(x) >= 1000:
            return f"{x:,.0f}"
        if abs(x) >= 10:
            return f"{x:.1f}"
        if abs(x) >= 0.01:
            return f"{x:.3f}".rstrip("0").rstrip(".")
        return f"{x:.2e}"
    if isinstance(x, int) and not isinstance(x, bool):
        return f"{x:,}"
    return str(x)


def three(xs: Sequence[float]) -> str:
    """min / median / max, each as :func:`fmt` writes it."""
    return " / ".join(fmt(float(x)) for x in (min(xs), statistics.median(xs), max(xs)))


def table(title: str, headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A GitHub markdown table, printed and returned."""
    lines = [f"\n### {title}\n", "| " + " | ".join(headers) + " |"]
    lines.append("|" + "|".join("---" for _ in headers) + "|")
    for r in rows:
        lines.append("| " + " | ".join(fmt(c) for c in r) + " |")
    text = "\n".join(lines)
    print(text, flush=True)
    return text


def note(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def job_ids(n: int, seed: int = 0) -> list[str]:
    return [f"job-{seed}-{i:07d}" for i in range(n)]


async def load_jobs(
    db: Database,
    ids: Sequence[str],
    partitions: int,
    *,
    root: str = ROOT,
    role: str = ROLE,
    count: int | None = None,
    batch: int = 2000,
) -> None:
    """Write jobs straight into their partitions (what ``add_job`` stores, without the
    change log, which only matters to running workers), and set the role's job counter
    to ``count`` (default ``len(ids)``)."""
    space = Layout.for_root(root).role(role)

    async def ensure(tr: Transaction) -> None:
        await tx_ensure_role(tr, space, partitions)
        tr.set(
            space.job_count_key,
            (len(ids) if count is None else count).to_bytes(8, "little", signed=True),
        )

    await db.transact(ensure)
    for i in range(0, len(ids), batch):
        chunk = ids[i : i + batch]

        async def write(tr: Transaction, chunk: Sequence[str] = chunk) -> None:
            for jid in chunk:
                p = job_partition(jid, partitions)
                tr.set(space.job_key(p, jid), JobRecord(jid, p, None).encode())
                tx_count_job(tr, space, p, 1)  # what the stored plan balances

        await db.transact(write)
        await anyio.lowlevel.checkpoint()  # (load_jobs runs under trio or asyncio)


def start_devserver(tmp: Path, log: Path | None = None) -> tuple[subprocess.Popen[bytes], str]:
    """Start ``fdbworkers devserver`` on a free loopback port; returns the process and
    its ``sim://`` address (killed and raised if it is not up within 30 s)."""
    ready = tmp / "ready"
    err = open(log, "w") if log is not None else subprocess.DEVNULL  # noqa: SIM115
    argv = [sys.executable, "-m", "fdbworkers", "devserver", "--port", "0"]
    p = subprocess.Popen(
        [*argv, "--ready-file", str(ready), "--log-level", "warning"],
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.DEVNULL,
        stderr=err,
    )
    deadline = time.monotonic() + 30
    while not ready.exists() or not ready.read_text().strip():
        if time.monotonic() > deadline or p.poll() is not None:
            p.kill()
            p.wait()
            raise RuntimeError(f"the dev server did not start (log: {log or 'not kept'})")
        time.sleep(0.05)
    return p, ready.read_text().strip()
