"""The simulation's faults as they play out: the part of a fault that runs in the
background of a :class:`~fdbworkers._simulation.Simulation` run while it lasts (a
partition, a stall or a suspend, a handler crash loop) and the delayed restart after a
crash, each ending with an event on the simulation's timeline.
Public through :mod:`fdbworkers.testing`.
"""

from __future__ import annotations

from typing import Any, Protocol

from ._fleet import Fleet, FleetWorker
from ._loop import sleep
from ._worker_options import WorkerOptions

__all__ = ["crash_loop_for", "partition_for", "restart_later", "stall_for"]


class _Timeline(Protocol):
    """What a fault needs of its simulation (:class:`~fdbworkers._simulation.Simulation`)."""

    def _event(self, text: str) -> None: ...


async def restart_later(
    fleet: Fleet, wid: str, delay: float, sim: _Timeline, options: WorkerOptions | None = None
) -> None:
    await sleep(delay)
    fw = await fleet.start(wid, options)
    sim._event(f"restart {wid} ({fw.worker.incarnation[:6] if fw.worker else '?'})")


async def stall_for(
    fw: FleetWorker, duration: float, suspend: bool, unseen: float, sim: _Timeline
) -> None:
    """Commits stall while reads work (a stall), or nothing gets through and part of the
    time goes unseen by the loop clock (a suspend: the boot clock jumps at resume)."""
    db: Any = fw.db
    if suspend:
        db.partitioned = True
    else:
        db.commits_stalled = True
    await sleep(duration)
    db.partitioned = False
    db.commits_stalled = False
    if suspend:
        fw.suspend(unseen * duration)
    sim._event(f"heal {fw.id}")


async def crash_loop_for(
    crashing: set[str], jobs: set[str], duration: float, sim: _Timeline
) -> None:
    crashing |= jobs
    await sleep(duration)
    crashing -= jobs
    sim._event(f"crash loop of {sorted(jobs)} ends")


async def partition_for(
    fw: FleetWorker, duration: float, excused: set[tuple[str, str]], sim: _Timeline
) -> None:
    w = fw.worker
    if w is None:
        return
    excused.add((w.id, w.incarnation))
    fw.db.partitioned = True  # type: ignore[attr-defined]
    await sleep(duration)
    fw.db.partitioned = False  # type: ignore[attr-defined]
    if fw.worker is not None:
        # A rejoin after the partition is a new incarnation: excuse the old one only.
        sim._event(f"heal {w.id}")
