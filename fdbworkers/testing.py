"""Test and simulation helpers: many workers in one process, a ledger of job runs that
checks "at most one runner" (G3) as it happens, and a seeded fault simulation on the
embedded engine's virtual clock (:class:`Simulation`). Written with anyio: the helpers
run under trio and under asyncio.

Users can test their own handlers with it::

    async def test_my_handler(autojump_clock):
        sim = Simulation(seed=1, workers=5, jobs=100)
        report = await sim.run(duration=300, handler=my_handler)
        report.raise_for_violations()
"""

from __future__ import annotations

from ._fleet import (
    Fleet,
    FleetWorker,
    Handler,
    Run,
    RunLedger,
    Violation,
    idle_handler,
    wait_until,
)
from ._sim_faults import crash_loop_for, partition_for, restart_later, stall_for
from ._simulation import (
    SimConfig,
    SimReport,
    Simulation,
    add_job_for_sim,
    remove_job_for_sim,
)

__all__ = [
    "Fleet",
    "FleetWorker",
    "Handler",
    "Run",
    "RunLedger",
    "SimConfig",
    "SimReport",
    "Simulation",
    "Violation",
    "add_job_for_sim",
    "crash_loop_for",
    "idle_handler",
    "partition_for",
    "remove_job_for_sim",
    "restart_later",
    "stall_for",
    "wait_until",
]
