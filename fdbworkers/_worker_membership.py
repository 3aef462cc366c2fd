"""The worker's membership view: read it (only the changed records after the first
read), wait for its watches (or poll when watches fail or are lost), and report settled
changes to the subscribers after the settle window (departures at once). Functions
taking the worker (``WorkerBase``).
"""

from __future__ import annotations

import math
from typing import Any

import anyio

from ._core.membership import Membership, diff, shared_view, without_departed
from ._core.states import WorkerState
from ._errors import FDBError
from ._loop import current_time, move_on_after, move_on_at, new_event, open_task_group, sleep
from ._store.members import tx_check_epoch, tx_read_membership_since
from ._worker_base import WorkerBase
from ._worker_neighbours import note_replaced


async def membership_loop(worker: WorkerBase) -> None:
    arm = True
    last_read = -math.inf
    while True:
        wait = last_read + worker.options.membership_read_gap - current_time()
        if wait > 0:
            await sleep(wait)  # coalesce a burst of changes into one read
        last_read = current_time()
        worker._wake_reader = new_event()
        try:
            m, corrupt, _rv, watches, full = await worker.transact(
                tx_read_membership_since,
                worker.space,
                worker.id if arm else None,
                worker.latest,
            )
        except FDBError as e:
            worker.log.warning("membership_read_failed", error=e.name, code=e.code)
            await sleep(min(1.0, worker.options.heartbeat_interval))
            continue
        m = shared_view(worker._members_scope, m)
        worker._membership_reads += 1
        worker._membership_full_reads += int(full)
        note_replaced(worker, worker.latest, m)
        if corrupt:
            worker._corrupt += len(corrupt)
            worker.log.error("corrupt_member_records", keys=[k.hex() for k in corrupt])
        old = worker.latest
        worker.latest = m
        if old is None or old.epoch != m.epoch or dict(old.members) != dict(m.members):
            worker._settler.changed(current_time())
            worker._wake_settle.set()
            # A departure (eviction, leave) is not churn: its jobs have no runner.
            # Report the settled view less the departed at once; joins and
            # restarts still wait for the settle window.
            interim = without_departed(worker._reported, m)
            if interim is not None:
                report(worker, interim)
        mine = m.members.get(worker.id)
        if (mine is None or mine.incarnation != worker.incarnation) and worker.state in (
            WorkerState.ACTIVE,
            WorkerState.FENCED,
        ):
            worker._wake_heartbeat.set()  # it finds out and rejoins (or stops)
        if (
            mine is not None
            and mine.incarnation == worker.incarnation
            and mine.drain
            and worker.state in (WorkerState.ACTIVE, WorkerState.FENCED)
        ):
            worker._drain_requested()
        if watches:
            arm = await wait_membership_watches(worker, m, watches)
        else:
            with move_on_after(worker.options.poll_interval):
                await worker._wake_reader.wait()
            arm = True


async def wait_membership_watches(worker: WorkerBase, m: Membership, watches: list[Any]) -> bool:
    """Wait for a membership watch to fire. A watch may never fire (lost): after a
    timeout without a fire, read the epoch alone (one key, O(1) at rest) with fresh
    watches; a changed epoch means a change was missed: read it all now. Without
    this, a worker whose watch was lost kept a view without later joiners, and a
    joiner its ring gave it to check went unchecked: a crash of it was not evicted
    until the watch came back (found by the simulation's lost-watch fault)."""
    while True:
        arm = await wait_watches(worker, watches, worker.options.timeout)
        if arm is not None:
            return arm
        try:
            epoch, watches = await worker.transact(tx_check_epoch, worker.space, worker.id)
        except FDBError as e:
            worker.log.info("epoch_check_failed", error=e.name)
            return True
        if epoch != m.epoch:
            for w in watches:
                w.cancel()
            worker.log.info("membership_watch_missed", action="read membership")
            return True


async def wait_watches(
    worker: WorkerBase, watches: list[Any], limit: float | None = None
) -> bool | None:
    """Wait for either watch; returns whether to arm watches next time, or None when
    none fired within ``limit`` seconds (the watches are cancelled then)."""
    fired: list[BaseException | None] = []
    with move_on_after(math.inf if limit is None else limit) as timer:
        await wait_any_watch(watches, fired)
    if timer.cancelled_caught:
        for w in watches:
            w.cancel()
        return None
    return await after_watch(worker, watches, fired)


async def wait_any_watch(watches: list[Any], fired: list[BaseException | None]) -> None:
    async with open_task_group() as nursery:

        async def one(w: Any) -> None:
            try:
                await w.wait()
                fired.append(None)
            except FDBError as e:
                fired.append(e)
            nursery.cancel_scope.cancel()

        for w in watches:
            nursery.start_soon(one, w)


async def after_watch(
    worker: WorkerBase, watches: list[Any], fired: list[BaseException | None]
) -> bool:
    for w in watches:
        w.cancel()
    errors = [e for e in fired if isinstance(e, FDBError)]
    if errors and any(e.code == 1032 for e in errors):
        if not worker._polling:
            worker.log.warning(
                "watch_limit_reached",
                action=f"polling membership every {worker.options.poll_interval}s",
            )
        worker._polling = True
        await sleep(worker.options.poll_interval)
        return True
    if errors:
        worker.log.info("watch_failed", error=str(errors[0]))
        await sleep(0.05 + worker._rng.random() * 0.1)
    else:
        worker._watch_fires += 1
        if worker._polling:
            worker.log.info("watches_restored")
        worker._polling = False
    return True


async def settle_loop(worker: WorkerBase) -> None:
    while True:
        worker._wake_settle = new_event()
        deadline = worker._settler.deadline()
        if deadline is None or worker.latest is None:
            await worker._wake_settle.wait()
            continue
        with move_on_at(deadline):
            await worker._wake_settle.wait()
        if not worker._settler.due(current_time()) or worker.latest is None:
            continue
        worker._settler.reported()
        report(worker, worker.latest)


def report(worker: WorkerBase, m: Membership) -> None:
    change = diff(worker._reported, m)
    worker._reported = m
    worker.membership = m
    if change.empty and worker._changes_reported > 0:
        return
    worker._changes_reported += 1
    worker.log = worker.log.bind(epoch=m.epoch.hex())
    worker.log.info(
        "membership_changed",
        added=sorted(change.added),
        removed=sorted(change.removed),
        restarted=sorted(change.restarted),
        members=len(m.members),
    )
    for ch in list(worker._subscribers):
        try:
            ch.send_nowait(change)
        except anyio.WouldBlock:
            worker.log.warning("membership_subscriber_lagging")
        except anyio.BrokenResourceError:
            pass
    ev, worker._membership_event = worker._membership_event, new_event()
    ev.set()
