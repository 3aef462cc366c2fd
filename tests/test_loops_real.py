"""A worker running a fenced job on the real cluster, under each loop: asyncio and trio
(the async API) and the blocking façade. FoundationDB's futures are bridged into the
loop that awaits them: this is where ``loop.call_soon_threadsafe`` meets libfdb_c's
network thread."""

from __future__ import annotations

import os
import random
import threading
from functools import partial

import anyio
import pytest
from conftest import clear_real_prefix

from fdbworkers import (
    BlockingJob,
    BlockingTransaction,
    BlockingWorker,
    Database,
    Job,
    Transaction,
    add_job,
    open_worker,
)

#: Wall-clock bound of each wait.
BOUND = 30.0


@pytest.mark.anyio
@pytest.mark.real_fdb
async def test_an_async_worker_runs_a_fenced_job(real_db: Database, prefix: bytes) -> None:
    started = anyio.Event()

    async def handler(job: Job) -> None:
        async def checkpoint(tr: Transaction) -> None:
            await job.fence(tr)
            tr.set(prefix + b"checkpoint", job.token)

        await job.db.transact(checkpoint)
        started.set()
        await anyio.sleep_forever()

    real_db.default_timeout = 10.0
    await add_job(real_db, "r", "j", {"n": 1}, root=prefix)
    async with (
        open_worker(real_db, "r", timeout=3.0, settle=0.2, root=prefix) as worker,
        anyio.create_task_group() as tg,
    ):
        tg.start_soon(partial(worker.run_jobs, handler, grace=1.0))
        with anyio.fail_after(BOUND):
            await started.wait()
        tg.cancel_scope.cancel()

    async def read(tr: Transaction) -> bytes | None:
        return await tr.get(prefix + b"checkpoint")

    stored = await real_db.transact(read)
    assert stored is not None and len(stored) == 10


@pytest.mark.real_fdb
@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_a_blocking_worker_runs_a_fenced_job(backend: str) -> None:
    prefix = b"fdbworkers-test/%016x/" % random.getrandbits(64)
    committed = threading.Event()

    def handler(job: BlockingJob) -> None:
        def checkpoint(tr: BlockingTransaction) -> None:
            job.fence(tr)
            tr.set(prefix + b"checkpoint", job.token)

        job.db.transact(checkpoint)
        committed.set()
        job.stopping.wait(BOUND)

    address = "fdb:" + os.environ["FDB_CLUSTER_FILE"]
    try:
        worker = BlockingWorker(address, "r", timeout=3.0, settle=0.2, root=prefix, backend=backend)
        with worker:
            worker.add_job("j")
            worker.run_jobs(handler, grace=1.0)
            assert committed.wait(BOUND), "no fenced commit on the real cluster"
            stored = worker.db.transact(lambda tr: tr.get(prefix + b"checkpoint"))
            assert stored is not None and len(stored) == 10
        assert not worker.running
    finally:
        anyio.run(clear_real_prefix, prefix)
