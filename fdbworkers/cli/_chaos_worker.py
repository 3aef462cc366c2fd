"""The chaos soak's worker process (``python -m fdbworkers.cli._chaos --child``): one
worker running the library (``open_worker`` + ``run_jobs``) whose handler records every
start and stop (job, token, pid, CLOCK_MONOTONIC, CLOCK_BOOTTIME) to a file of its id,
and which leaves on SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import time
from typing import Any

ROLE = "chaos"
SETTLE = 2.0
GRACE = 0.5


def boottime() -> float:
    clock = getattr(time, "CLOCK_BOOTTIME", None)
    return time.clock_gettime(clock) if clock is not None else time.monotonic()


def child_main(args: argparse.Namespace) -> None:
    """One worker: records every handler start and stop, leaves on SIGTERM."""
    import structlog
    import trio

    from fdbworkers import FencedError, open_database, open_worker

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))
    out = open(args.record, "a", buffering=1)  # noqa: SIM115 - kept for the process's life

    def rec(ev: str, **data: Any) -> None:
        row = {"ev": ev, "pid": os.getpid(), "mono": time.monotonic(), "boot": boottime()}
        out.write(json.dumps({**row, **data}) + "\n")

    async def handler(job: Any) -> None:
        rec("start", job=job.id, token=job.token.hex())
        last_ok = None  # when job.check() last passed: no step may pass after a lease ran out
        how = "cancelled"
        try:
            while True:
                job.check()
                last_ok = time.monotonic()
                await trio.sleep(0.05)
        except FencedError:
            how = "fenced"
        finally:
            rec("stop", job=job.id, token=job.token.hex(), how=how, last_ok=last_ok)

    async def main() -> None:
        db = open_database(f"fdb:{args.cluster_file}")
        async with trio.open_nursery() as outer:

            async def on_term() -> None:
                with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as sigs:
                    async for _ in sigs:
                        outer.cancel_scope.cancel()
                        return

            outer.start_soon(on_term)
            async with open_worker(
                db, ROLE, worker_id=args.id, root=args.root, timeout=args.timeout, settle=SETTLE
            ) as worker:
                rec("registered", id=args.id, timeout=args.timeout, inc=worker.incarnation)
                await worker.run_jobs(handler, grace=GRACE)

    trio.run(main)
