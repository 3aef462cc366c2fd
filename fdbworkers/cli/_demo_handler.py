"""The demo's job handler, run inside each worker process (``fdbworkers worker
--demo-handler``): each job does a fenced write every ``work_interval`` seconds and
records its start and stop, with the fencing token and this host's monotonic clock, to
a file of the demo's folder (``cli/_demo.py`` describes the demo).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import IO, Any

import trio

from .._db import Transaction
from .._errors import FDBError, FencedError
from .._log import get_logger
from .._runner.job import Job


class DemoHandler:
    """The demo's job handler (see the module doc)."""

    def __init__(
        self, log_dir: str | os.PathLike[str] | None, *, work_interval: float = 1.0
    ) -> None:
        self.log_dir = Path(log_dir) if log_dir else None
        self.work_interval = work_interval
        self._file: IO[str] | None = None
        self._worker: Any = None
        self.fenced_writes = 0
        self.fence_rejections = 0
        self.log = get_logger("fdbworkers").bind(component="demo_handler")

    def bind(self, worker: Any) -> None:
        self._worker = worker
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            path = self.log_dir / f"{worker.id}-{os.getpid()}.jsonl"
            self._file = open(path, "a", buffering=1, encoding="utf-8")  # noqa: SIM115

    def _record(self, job: Job, event: str, **extra: Any) -> None:
        if self._file is None:
            return
        w = job._worker
        line = {
            "event": event,
            "job": job.id,
            "worker": w.id,
            "incarnation": w.incarnation,
            "token": job.token.hex(),
            "t": time.monotonic(),
            "pid": os.getpid(),
            **extra,
        }
        self._file.write(json.dumps(line) + "\n")

    async def __call__(self, job: Job) -> None:
        self._record(job, "start")
        reason = "stopped"
        key = job._worker.layout.key("demo", "progress", job.id)
        try:
            while not job.stopping.is_set():
                job.check()

                async def work(tr: Transaction) -> None:
                    await job.fence(tr)
                    tr.add(key, (1).to_bytes(8, "little"))

                try:
                    await job.db.transact(work)
                    self.fenced_writes += 1
                except FDBError as e:
                    self.log.info("demo_write_failed", job=job.id, error=e.name)
                with trio.move_on_after(self.work_interval):
                    await job.stopping.wait()
        except FencedError as e:
            self.fence_rejections += 1
            reason = f"fenced: {e}"
            raise
        except BaseException:
            reason = "cancelled"
            raise
        finally:
            self._record(job, "stop", reason=reason)
