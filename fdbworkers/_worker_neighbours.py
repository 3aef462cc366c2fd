"""The worker's neighbour check: watch the heartbeats of its ring neighbours, evict one
silent for longer than its timeout, and retire the incarnations it saw replaced or gone
once their timeout has passed. Functions taking the worker (``WorkerBase``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import anyio

from ._core.membership import Membership, replaced_or_gone
from ._core.records import MemberRecord
from ._core.ring import ring_of, watched_neighbours
from ._core.states import WorkerState
from ._errors import FDBError
from ._loop import current_time, move_on_at, new_event, open_task_group, sleep
from ._store.members import tx_evict, tx_retire, tx_watch_health
from ._worker_base import WorkerBase


async def check_loop(worker: WorkerBase) -> None:
    interval = worker.options.effective_check_interval
    while True:
        m = worker.latest
        now = current_time()
        if m is None or worker.state is not WorkerState.ACTIVE or len(m.members) < 2:
            await sleep(interval)
            continue
        members = m.members

        def suspect(
            w: str, now: float = now, members: Mapping[str, MemberRecord] = members
        ) -> bool:
            rec = members.get(w)
            return rec is not None and worker._tracker.suspect(w, rec.timeout, now)

        if members is not worker._ring_of:
            worker._ring = ring_of(members, worker._ring)
            worker._ring_of = members
        neighbours = watched_neighbours(worker.id, worker._ring, suspect)
        # A neighbour that the ring gave to another checker (a join landed between
        # us) stays observed until its stamp changes: the new checker starts from
        # zero, and a dead one would otherwise wait a full timeout more (G1).
        ghost_due = worker._tracker.next_ghost_due()
        for gone in [w for w in worker._tracker.tracked() if w not in members]:
            worker._tracker.departed(gone, now)  # before retain() forgets it
        former = [w for w in worker._tracker.tracked() if w in members and w not in neighbours]
        neighbours = neighbours + former
        worker._tracker.retain(set(neighbours))
        try:
            stamps, watches = await worker.transact(tx_watch_health, worker.space, neighbours)
        except FDBError as e:
            worker.log.warning("neighbour_read_failed", error=e.name)
            await sleep(interval)
            continue
        now = current_time()
        next_due = now + interval
        for wid in neighbours:
            rec = members.get(wid)
            if rec is None:
                continue
            worker._tracker.observe(wid, rec.incarnation, stamps.get(wid), now, rec.timeout)
            if wid in former and worker._tracker.silent_for(wid, now) == 0.0:
                worker._tracker.forget(wid)  # alive: its new checker has it
                continue
            if worker._tracker.stale(wid, rec.timeout, now):
                await evict(worker, wid, rec, stamps.get(wid), worker._tracker.silent_for(wid, now))
            else:
                due = worker._tracker.evict_due(wid, rec.timeout)
                if due is not None:
                    next_due = min(next_due, due)
        if worker._tracker.next_ghost_due() != ghost_due:
            worker._wake_ghosts.set()  # observe() or departed() found a new one
        # Until the next check is due, or a neighbour's heartbeat commits (its
        # watch fires: we see the new stamp at once, so the eviction deadline is
        # counted from the heartbeat itself, not from our next poll).
        await wait_health(watches, max(next_due, current_time() + interval / 20))


async def wait_health(watches: list[Any], until: float) -> None:
    try:
        with move_on_at(until):
            async with open_task_group() as n:

                async def one(w: Any) -> None:
                    try:
                        await w.wait()
                    except FDBError:
                        # A failed watch (too many: 1032): the timer alone decides.
                        await anyio.sleep_forever()
                    n.cancel_scope.cancel()

                for w in watches:
                    n.start_soon(one, w)
    finally:
        for w in watches:
            w.cancel()


def note_replaced(worker: WorkerBase, old: Membership | None, new: Membership) -> None:
    """Every member (not only the id's ring checker) counts the wait for the lease
    of an incarnation it saw replaced or gone, from the moment it saw that (after
    the read returned, so after the replacement committed). The first one whose
    wait is over retires it (``ghost_loop``). Found by the chaos soak (seed 13): when
    the only member that counted, the ring checker, restarted before the wait was
    over, and the id kept restarting faster than settle + timeout (each new
    incarnation, the claimant, counting from zero after its settle window), nobody
    ever retired the dead incarnation and its jobs had no runner for 44-59 s."""
    now = current_time()
    before = worker._tracker.next_ghost_due()
    for wid, incarnation, timeout in replaced_or_gone(old, new, worker.id):
        worker._tracker.superseded(wid, incarnation, timeout, now)
    if worker._tracker.next_ghost_due() != before:
        worker._wake_ghosts.set()


async def ghost_loop(worker: WorkerBase) -> None:
    """Retire the incarnations this worker saw replaced or gone once their timeout
    has passed since (see ``NeighbourTracker``). Every member that saw it counts the
    same wait: a little jitter (up to half a check interval) spreads their
    retirements, and all but the first find it retired (a read of one key)."""
    interval = worker.options.effective_check_interval
    while True:
        worker._wake_ghosts = new_event()
        due = worker._tracker.next_ghost_due()
        if due is None:
            await worker._wake_ghosts.wait()
            continue
        with move_on_at(due + worker._rng.random() * interval / 2):
            await worker._wake_ghosts.wait()
        if not await retire_ghosts(worker, current_time()):
            await sleep(interval)


async def retire_ghosts(worker: WorkerBase, now: float) -> bool:
    """Attest that incarnations we saw superseded or gone run nothing any more,
    once their timeout has passed since we saw that (see NeighbourTracker): their
    claims are then taken at once, even when their id keeps restarting (a
    crash-looping pod). False if a retirement failed (tried again later)."""
    for wid, incarnation in worker._tracker.ghosts_due(now):
        try:
            await worker.transact(tx_retire, worker.space, wid, incarnation)
        except FDBError as e:
            worker.log.warning("retire_failed", neighbour=wid, error=e.name)
            return False
        worker._tracker.ghost_retired(wid, incarnation)
        worker.log.info("superseded_incarnation_retired", neighbour=wid, old=incarnation)
    return True


async def evict(
    worker: WorkerBase, wid: str, rec: MemberRecord, stamp: bytes | None, silent_for: float
) -> None:
    try:
        done = await worker.transact(
            tx_evict,
            worker.space,
            wid,
            rec.incarnation,
            stamp,
            worker.id,
            silent_for,
            "heartbeat silent for longer than its timeout",
            worker.options.event_retention,
        )
    except FDBError as e:
        worker.log.warning("evict_failed", neighbour=wid, error=e.name)
        return
    if done:
        worker._evictions += 1
        worker.log.warning(
            "neighbour_evicted",
            neighbour=wid,
            silent_for=round(silent_for, 3),
            timeout=rec.timeout,
        )
        worker._wake_reader.set()
    else:
        worker.log.info("eviction_skipped", neighbour=wid, reason="heartbeat changed or gone")
