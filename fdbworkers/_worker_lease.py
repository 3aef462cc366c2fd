"""The worker's lease: register (and register again as a new incarnation after an
eviction or a corrupt own record), heartbeat every ``timeout/3``, fence itself when no
heartbeat committed within ``timeout - fence_margin`` (or the machine was suspended), and
stop when another process took over its id. Functions taking the worker (``WorkerBase``).
"""

from __future__ import annotations

import math
import time
from contextlib import suppress

from ._core.records import MemberRecord
from ._core.states import WorkerState
from ._errors import ClusterUnreachableError, CorruptDataError, FDBError, FdbworkersError
from ._loop import current_time, move_on_after, move_on_at, new_event, sleep
from ._store.events import tx_event
from ._store.members import tx_ensure_role, tx_heartbeat, tx_register
from ._worker_base import WorkerBase

#: A heartbeat comes up to this fraction of its interval early (random), so that the
#: heartbeats of workers started together spread over the interval.
HEARTBEAT_JITTER = 0.1


class WorkerSupersededError(FdbworkersError):
    """Another process registered with this worker id; this one stopped its work."""


def utc_iso(wall: float) -> str:
    """A wall-clock time as UTC ISO-8601 with the zone (``2026-01-02T03:04:05Z``)."""
    import datetime

    t = datetime.datetime.fromtimestamp(wall, datetime.UTC).replace(microsecond=0)
    return t.isoformat().replace("+00:00", "Z")


async def register(worker: WorkerBase) -> None:
    deadline_log = 0.0
    while True:
        try:
            worker.role_config = await worker.transact(
                tx_ensure_role, worker.space, worker.options.partitions
            )
            started = current_time()
            rec = await worker.transact(
                tx_register,
                worker.space,
                worker._record(),
                worker.options.event_retention,
            )
            break
        except FDBError as e:
            if current_time() >= deadline_log:
                worker.log.warning("register_failed", error=str(e), code=e.code)
                deadline_log = current_time() + 10
            cluster_failed(worker, e)
            await sleep(min(1.0, worker.options.heartbeat_interval))
    cluster_answered(worker)
    worker._renew_lease(started)
    if rec.replaced:
        # A previous incarnation with our id may still be running somewhere: its jobs
        # are taken over only once its lease must have expired (_core/claims.py). It can
        # commit no heartbeat after our registration did: we count that wait too,
        # from now, not from our first claim after the settle window.
        worker._replaced_seen_at = current_time()
        worker.log.info("replaced_incarnation", old=rec.replaced)
        if rec.replaced_timeout:
            worker._tracker.superseded(
                worker.id, rec.replaced, rec.replaced_timeout, worker._replaced_seen_at
            )
            worker._wake_ghosts.set()
    # A new incarnation settles like a first start: its first view with itself is
    # reported at once (the peers saw a lone join; the first member by id writes the
    # plan, which may be us). Before, a rejoin waited a whole settle window because
    # it had just read the view it was evicted from.
    worker._settler.restart()
    worker._settler.changed(current_time())
    worker._set_state(WorkerState.ACTIVE)
    worker.log.info("registered", timeout=worker.options.timeout, weight=worker.options.weight)
    worker._wake_reader.set()


def cluster_failed(worker: WorkerBase, e: FDBError) -> None:
    """A registration or heartbeat failed: say plainly how long the cluster has not
    answered (every 10 s), and give up after ``give_up_after`` if set."""
    now = current_time()
    if worker._unreachable_since is None:
        worker._unreachable_since = (now, time.time())
    silent = now - worker._unreachable_since[0]
    since = utc_iso(worker._unreachable_since[1])
    limit = worker.options.give_up_after
    if silent >= worker.options.op_timeout and now - worker._unreachable_logged >= 10.0:
        worker._unreachable_logged = now
        worker.log.error(
            "cluster_unreachable",
            since=since,
            seconds=round(silent, 1),
            last_error=f"{e.name} ({e.code})",
            give_up_in=None if limit is None else round(max(0.0, limit - silent), 1),
        )
    if limit is not None and silent >= limit:
        raise ClusterUnreachableError(
            f"the cluster has not answered for {silent:.0f} s (since {since}; last "
            f"error: {e.name} ({e.code})): giving up after {limit:g} s"
        )


def cluster_answered(worker: WorkerBase) -> None:
    if worker._unreachable_since is not None:
        silent = current_time() - worker._unreachable_since[0]
        if worker._unreachable_logged > -math.inf:
            worker.log.warning("cluster_reachable_again", after=round(silent, 1))
        worker._unreachable_since = None
        worker._unreachable_logged = -math.inf


async def heartbeat_loop(worker: WorkerBase) -> None:
    interval = worker.options.heartbeat_interval
    while True:
        start = current_time()
        worker.heartbeat_in_flight = True
        try:
            rec = await worker.transact(tx_heartbeat, worker.space, worker.id, worker.incarnation)
        except CorruptDataError as e:
            worker.heartbeat_in_flight = False
            await own_record_corrupt(worker, str(e))
            continue
        except FDBError as e:
            worker.heartbeat_in_flight = False
            worker._hb_failures += 1
            worker.log.warning("heartbeat_failed", error=e.name, code=e.code)
            cluster_failed(worker, e)
            # Try again soon (the lease keeps running from the last success).
            await sleep(min(interval / 4, 0.05 + worker._rng.random() * 0.1))
            continue
        worker.heartbeat_in_flight = False
        latency = current_time() - start
        worker._hb_latency_last = latency
        worker._hb_latency_max = max(worker._hb_latency_max, latency)
        if rec is None or rec.incarnation != worker.incarnation:
            if worker.state in (WorkerState.DRAINING, WorkerState.LEFT):
                return  # our leave removed the record: nothing more to renew
            await lost_record(worker, rec)
            continue
        cluster_answered(worker)
        worker._hb_sent += 1
        worker.last_heartbeat_committed = current_time()
        worker._renew_lease(start)
        if worker.state is WorkerState.FENCED and worker.lease.valid(current_time()):
            worker.log.info("unfenced")
            worker._set_state(WorkerState.ACTIVE)
        if rec.drain and worker.state is WorkerState.ACTIVE:
            worker._drain_requested()
        worker._wake_heartbeat = new_event()
        # Up to HEARTBEAT_JITTER earlier (never later: the lease only gains): workers
        # started together would otherwise commit together every interval for as
        # long as they live, N commits in the same instant.
        with move_on_at(start + interval * (1.0 - HEARTBEAT_JITTER * worker._rng.random())):
            await worker._wake_heartbeat.wait()


async def lease_watchdog(worker: WorkerBase) -> None:
    while True:
        worker._account_suspend()
        now = current_time()
        if worker.state is WorkerState.ACTIVE and not worker.lease.valid(now):
            worker._fences += 1
            worker.log.warning(
                "self_fenced",
                reason="no heartbeat committed within timeout - margin",
                margin=worker.lease.margin,
            )
            worker._set_state(WorkerState.FENCED)
            await emit_fence_event(worker)
        if worker.state is WorkerState.ACTIVE:
            worker._lease_changed = new_event()
            with move_on_at(worker.lease.expires_at):
                await worker._lease_changed.wait()
        else:
            await worker.wait_state_change()


async def suspend_watch(worker: WorkerBase) -> None:
    """Notice a suspend of the machine within a fraction of the margin, even when
    nothing asks for the lease: it then fences and stops the jobs without grace."""
    while True:
        await sleep(min(0.25, worker.lease.margin / 4))
        worker._account_suspend()


async def emit_fence_event(worker: WorkerBase) -> None:
    # Best effort: the cluster may be unreachable, which is why we fenced.
    with move_on_after(worker.options.op_timeout), suppress(FDBError):
        await worker.transact(
            tx_event,
            worker.space,
            "self_fenced",
            worker.options.event_retention,
            worker=worker.id,
            incarnation=worker.incarnation,
        )


async def lost_record(worker: WorkerBase, rec: MemberRecord | None) -> None:
    if rec is not None and rec.incarnation != worker.incarnation:
        worker.log.error(
            "worker_superseded",
            by_incarnation=rec.incarnation,
            hint="another process registered with this worker id",
        )
        worker._set_state(WorkerState.SUPERSEDED)
        # The new incarnation waits out our lease before it takes our jobs (G3).
        # Stop the handlers (within our lease) and clear our own claims (a release
        # needs no membership): it then takes them at once, not up to a timeout
        # later (a frozen process resumed after its id was started elsewhere).
        with move_on_after(max(worker.options.timeout, 5.0)):
            await worker._stop_work("superseded")
        raise WorkerSupersededError(
            f"worker id {worker.id!r} in role {worker.role!r} was taken over by incarnation "
            f"{rec.incarnation}; stopping this one ({worker.incarnation})"
        )
    if worker.state in (WorkerState.DRAINING, WorkerState.LEFT):
        return
    worker.log.warning("found_self_evicted", action="stop work and rejoin")
    worker.lease.revoke()
    worker._set_state(WorkerState.REJOINING)
    await worker._stop_work("rejoin")
    worker._rejoins += 1
    worker.incarnation = worker._new_incarnation()
    worker.log = worker.log.bind(incarnation=worker.incarnation)
    await register(worker)


async def own_record_corrupt(worker: WorkerBase, error: str) -> None:
    """Our own member record holds garbage (a bad write under the prefix): we can no
    longer prove membership by heartbeats. Others see the record as held but do not
    trust it, so our claims stay ours and our lease runs out normally: stop the jobs
    gracefully (within the lease), then register again as a new incarnation, which
    overwrites the garbage."""
    worker._corrupt += 1
    worker.log.error(
        "own_record_corrupt", error=error, action="stop jobs gracefully and re-register"
    )
    if worker.state in (WorkerState.DRAINING, WorkerState.LEFT):
        return
    with move_on_after(worker.options.op_timeout), suppress(FDBError):
        await worker.transact(
            tx_event,
            worker.space,
            "own_record_corrupt",
            worker.options.event_retention,
            worker=worker.id,
            incarnation=worker.incarnation,
            error=error,
        )
    worker._set_state(WorkerState.REJOINING)
    await worker._stop_work("corrupt_record")
    worker.lease.revoke()
    worker._rejoins += 1
    worker.incarnation = worker._new_incarnation()
    worker.log = worker.log.bind(incarnation=worker.incarnation)
    await register(worker)
