"""The worker: registration, heartbeat, neighbour check, membership watch, settle,
self-fencing, rejoin and graceful leave. A thin async shell (anyio: asyncio or trio)
around the pure core (``_core.keys``, ``ring``, ``liveness``, ``settle``, ``membership``,
``states``) and the member transactions of ``_store.members``; it knows nothing of jobs
(the runner hooks in).

Every transaction is a function taking the transaction as its first argument, run by the
shared retry loop (``Worker.transact``) with a timeout, so nothing hangs forever.
"""

from __future__ import annotations

import math
import os
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.abc
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ._core.keys import (
    MemberRecord,
)
from ._core.membership import (
    Membership,
    MembershipChange,
    diff,
)
from ._core.states import WorkerState
from ._db import Database
from ._errors import (
    ClusterUnreachableError,
    ConfigError,
    CorruptDataError,
    FDBError,
    FdbworkersError,
)
from ._loop import (
    current_time,
    move_on_after,
    move_on_at,
    new_event,
    sleep,
)
from ._store.events import tx_event
from ._store.members import (
    tx_ensure_role,
    tx_heartbeat,
    tx_leave,
    tx_park,
    tx_register,
)
from ._worker_base import WorkerBase
from ._worker_membership import membership_loop, settle_loop
from ._worker_neighbours import check_loop, ghost_loop
from ._worker_options import WorkerOptions, make_options, resolve_worker_id

#: A heartbeat comes up to this fraction of its interval early (random), so that the
#: heartbeats of workers started together spread over the interval.
HEARTBEAT_JITTER = 0.1


#: How ``Worker.run_jobs`` runs jobs: installed by the job runner (a layer above).
JobRunnerHook = Callable[..., Awaitable[None]]
_job_runner: JobRunnerHook | None = None


#: The sending side of a subscriber's stream of settled changes.
ChangeSender = MemoryObjectSendStream[MembershipChange]


def install_job_runner(run: JobRunnerHook) -> None:
    """Called once by ``fdbworkers._runner`` on import: ``run(worker, handler, **options)``
    is what ``Worker.run_jobs`` calls. This keeps the import arrow one way (the runner
    knows the worker; the worker does not know the runner)."""
    global _job_runner
    _job_runner = run


class WorkerSupersededError(FdbworkersError):
    """Another process registered with this worker id; this one stopped its work."""


@dataclass(frozen=True)
class WorkerStatistics:
    """What operators ask about a worker (``worker.statistics()``)."""

    role: str
    worker_id: str
    incarnation: str
    state: str
    epoch: str
    members: int
    heartbeats_sent: int
    heartbeat_failures: int
    heartbeat_latency_last: float
    heartbeat_latency_max: float
    lease_remaining: float
    evictions_done: int
    watch_fires: int
    membership_reads: int
    membership_changes_reported: int
    polling: bool
    fences: int
    rejoins: int
    corrupt_records: int
    #: Of ``membership_reads``, those that read every record (the first, and after a
    #: gap in the membership change log); the others read only the changed records.
    membership_full_reads: int = 0


class Worker(WorkerBase):
    """One worker in one role. Create it with :func:`open_worker` or :func:`run_worker`.

    The worker registers, heartbeats every ``timeout/3``, checks its ring neighbours,
    watches the membership and reports settled :class:`MembershipChange` s. It fences
    itself (``state == FENCED``) when it cannot commit a heartbeat for ``timeout -
    fence_margin``, rejoins as a new incarnation when it finds itself evicted, and
    leaves gracefully when drained or closed.
    """

    def __repr__(self) -> str:
        return (
            f"<Worker {self.id!r} role={self.role!r} state={self.state.value} "
            f"incarnation={self.incarnation[:8]} "
            f"members={len(self.latest.members) if self.latest else 0}>"
        )

    # -- public surface ----------------------------------------------------------------

    @property
    def fenced(self) -> bool:
        return self.state is not WorkerState.ACTIVE

    def lease_valid(self) -> bool:
        """True while this worker may run jobs (checked synchronously: a worker resumed
        after a long pause, or a suspend of its machine, sees its lease expired before
        anything else runs)."""
        self._account_suspend()
        return self.state is WorkerState.ACTIVE and self.lease.valid(current_time())

    def membership_waiter(self) -> Callable[[], Awaitable[Any]]:
        """A wait for the next membership report *after now*: the event is taken at
        this call, so a report between it and the wait's start is not lost (a task
        started later would otherwise wait for the report after that one)."""
        return self._membership_event.wait

    def state_waiter(self) -> Callable[[], Awaitable[Any]]:
        """As :meth:`membership_waiter`, for the next state change."""
        return self._state_event.wait

    async def wait_membership(self) -> Membership:
        """Wait for the next settled membership report."""
        await self._membership_event.wait()
        assert self.membership is not None
        return self.membership

    @asynccontextmanager
    async def changes(
        self, buffer: int = 64
    ) -> AsyncIterator[MemoryObjectReceiveStream[MembershipChange]]:
        """``async with worker.changes() as stream: async for change in stream: ...``

        Every settled change is delivered in order; a consumer that falls ``buffer``
        changes behind loses the oldest ones (the latest membership is always current
        in ``worker.membership``)."""
        send, recv = self._subscribe(buffer)
        try:
            async with recv:
                yield recv
        finally:
            self._unsubscribe(send)

    def _subscribe(
        self, buffer: int
    ) -> tuple[
        MemoryObjectSendStream[MembershipChange], MemoryObjectReceiveStream[MembershipChange]
    ]:
        """A new subscriber of the settled changes (``changes`` and the blocking
        façade); the current membership, if any, is its first change."""
        send, recv = anyio.create_memory_object_stream[MembershipChange](buffer)
        self._subscribers.append(send)
        if self.membership is not None:
            send.send_nowait(diff(None, self.membership))
        return send, recv

    def _unsubscribe(self, send: ChangeSender) -> None:
        if send in self._subscribers:
            self._subscribers.remove(send)
        send.close()

    def on_stop_work(self, fn: Callable[[str], Awaitable[None]]) -> None:
        """Register ``await fn(reason)``, called to stop all work before the worker leaves
        (reason "drain"/"leave") and when it rejoins; on fencing, work must stop by
        itself by watching ``state`` (no transaction can be trusted then)."""
        self._work_stoppers.append(fn)

    def on_lease_renewed(self, fn: Callable[[], None]) -> None:
        """Register ``fn()``, called synchronously each time a committed heartbeat (or
        registration) renews the lease: the runner moves its jobs' hard deadline."""
        self._lease_listeners.append(fn)

    def statistics(self) -> WorkerStatistics:
        now = current_time()
        return WorkerStatistics(
            role=self.role,
            worker_id=self.id,
            incarnation=self.incarnation,
            state=self.state.value,
            epoch=(self.membership.epoch.hex() if self.membership else ""),
            members=len(self.latest.members) if self.latest else 0,
            heartbeats_sent=self._hb_sent,
            heartbeat_failures=self._hb_failures,
            heartbeat_latency_last=self._hb_latency_last,
            heartbeat_latency_max=self._hb_latency_max,
            lease_remaining=self.lease.remaining(now),
            evictions_done=self._evictions,
            watch_fires=self._watch_fires,
            membership_reads=self._membership_reads,
            membership_full_reads=self._membership_full_reads,
            membership_changes_reported=self._changes_reported,
            polling=self._polling,
            fences=self._fences,
            rejoins=self._rejoins,
            corrupt_records=self._corrupt,
        )

    async def drain(self) -> None:
        """Leave gracefully now: stop work, release it, remove the records."""
        await self._leave("drained")

    async def run_jobs(self, handler: Callable[[Any], Awaitable[None]], **options: Any) -> None:
        """Run ``await handler(job)`` in its own task for every job this worker owns,
        until cancelled. See :class:`fdbworkers.JobRunner` for the handler's argument and
        the options (grace, max_moves, move_interval, restart_backoff, ...).

        The worker knows nothing of jobs: the job runner (``fdbworkers._runner``, a layer
        above this one) installs itself with :func:`install_job_runner` when the package
        is imported, and this method hands over to it."""
        if _job_runner is None:
            raise RuntimeError("no job runner is installed: import fdbworkers first")
        await _job_runner(self, handler, **options)

    # -- internals ---------------------------------------------------------------------

    async def _register(self) -> None:
        deadline_log = 0.0
        while True:
            try:
                self.role_config = await self.transact(
                    tx_ensure_role, self.layout, self.role, self.options.partitions
                )
                started = current_time()
                rec = await self.transact(
                    tx_register,
                    self.layout,
                    self.role,
                    self._record(),
                    self.options.event_retention,
                )
                break
            except FDBError as e:
                if current_time() >= deadline_log:
                    self.log.warning("register_failed", error=str(e), code=e.code)
                    deadline_log = current_time() + 10
                self._cluster_failed(e)
                await sleep(min(1.0, self.options.heartbeat_interval))
        self._cluster_answered()
        self._renew_lease(started)
        if rec.replaced:
            # A previous incarnation with our id may still be running somewhere: its jobs
            # are taken over only once its lease must have expired (see _jobs). It can
            # commit no heartbeat after our registration did: we count that wait too,
            # from now, not from our first claim after the settle window.
            self._replaced_seen_at = current_time()
            self.log.info("replaced_incarnation", old=rec.replaced)
            if rec.replaced_timeout:
                self._tracker.superseded(
                    self.id, rec.replaced, rec.replaced_timeout, self._replaced_seen_at
                )
                self._wake_ghosts.set()
        self._settler.changed(current_time())
        self._set_state(WorkerState.ACTIVE)
        self.log.info("registered", timeout=self.options.timeout, weight=self.options.weight)
        self._wake_reader.set()

    def _cluster_failed(self, e: FDBError) -> None:
        """A registration or heartbeat failed: say plainly how long the cluster has not
        answered (every 10 s), and give up after ``give_up_after`` if set."""
        now = current_time()
        if self._unreachable_since is None:
            self._unreachable_since = (now, time.time())
        silent = now - self._unreachable_since[0]
        since = utc_iso(self._unreachable_since[1])
        limit = self.options.give_up_after
        if silent >= self.options.op_timeout and now - self._unreachable_logged >= 10.0:
            self._unreachable_logged = now
            self.log.error(
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

    def _cluster_answered(self) -> None:
        if self._unreachable_since is not None:
            silent = current_time() - self._unreachable_since[0]
            if self._unreachable_logged > -math.inf:
                self.log.warning("cluster_reachable_again", after=round(silent, 1))
            self._unreachable_since = None
            self._unreachable_logged = -math.inf

    async def _heartbeat_loop(self) -> None:
        interval = self.options.heartbeat_interval
        while True:
            start = current_time()
            self.heartbeat_in_flight = True
            try:
                rec = await self.transact(
                    tx_heartbeat, self.layout, self.role, self.id, self.incarnation
                )
            except CorruptDataError as e:
                self.heartbeat_in_flight = False
                await self._own_record_corrupt(str(e))
                continue
            except FDBError as e:
                self.heartbeat_in_flight = False
                self._hb_failures += 1
                self.log.warning("heartbeat_failed", error=e.name, code=e.code)
                self._cluster_failed(e)
                # Try again soon (the lease keeps running from the last success).
                await sleep(min(interval / 4, 0.05 + self._rng.random() * 0.1))
                continue
            self.heartbeat_in_flight = False
            latency = current_time() - start
            self._hb_latency_last = latency
            self._hb_latency_max = max(self._hb_latency_max, latency)
            if rec is None or rec.incarnation != self.incarnation:
                if self.state in (WorkerState.DRAINING, WorkerState.LEFT):
                    return  # our leave removed the record: nothing more to renew
                await self._lost_record(rec)
                continue
            self._cluster_answered()
            self._hb_sent += 1
            self.last_heartbeat_committed = current_time()
            self._renew_lease(start)
            if self.state is WorkerState.FENCED and self.lease.valid(current_time()):
                self.log.info("unfenced")
                self._set_state(WorkerState.ACTIVE)
            if rec.drain and self.state is WorkerState.ACTIVE:
                self._drain_requested()
            self._wake_heartbeat = new_event()
            # Up to HEARTBEAT_JITTER earlier (never later: the lease only gains): workers
            # started together would otherwise commit together every interval for as
            # long as they live, N commits in the same instant.
            with move_on_at(start + interval * (1.0 - HEARTBEAT_JITTER * self._rng.random())):
                await self._wake_heartbeat.wait()

    async def _lease_watchdog(self) -> None:
        while True:
            self._account_suspend()
            now = current_time()
            if self.state is WorkerState.ACTIVE and not self.lease.valid(now):
                self._fences += 1
                self.log.warning(
                    "self_fenced",
                    reason="no heartbeat committed within timeout - margin",
                    margin=self.lease.margin,
                )
                self._set_state(WorkerState.FENCED)
                await self._emit_fence_event()
            if self.state is WorkerState.ACTIVE:
                self._lease_changed = new_event()
                with move_on_at(self.lease.expires_at):
                    await self._lease_changed.wait()
            else:
                await self.wait_state_change()

    async def _suspend_watch(self) -> None:
        """Notice a suspend of the machine within a fraction of the margin, even when
        nothing asks for the lease: it then fences and stops the jobs without grace."""
        while True:
            await sleep(min(0.25, self.lease.margin / 4))
            self._account_suspend()

    async def _emit_fence_event(self) -> None:
        # Best effort: the cluster may be unreachable, which is why we fenced.
        with move_on_after(self.options.op_timeout), suppress(FDBError):
            await self.transact(
                tx_event,
                self.layout,
                "self_fenced",
                self.role,
                self.options.event_retention,
                worker=self.id,
                incarnation=self.incarnation,
            )

    async def _lost_record(self, rec: MemberRecord | None) -> None:
        if rec is not None and rec.incarnation != self.incarnation:
            self.log.error(
                "worker_superseded",
                by_incarnation=rec.incarnation,
                hint="another process registered with this worker id",
            )
            self._set_state(WorkerState.SUPERSEDED)
            # The new incarnation waits out our lease before it takes our jobs (G3).
            # Stop the handlers (within our lease) and clear our own claims (a release
            # needs no membership): it then takes them at once, not up to a timeout
            # later (a frozen process resumed after its id was started elsewhere).
            with move_on_after(max(self.options.timeout, 5.0)):
                await self._stop_work("superseded")
            raise WorkerSupersededError(
                f"worker id {self.id!r} in role {self.role!r} was taken over by incarnation "
                f"{rec.incarnation}; stopping this one ({self.incarnation})"
            )
        if self.state in (WorkerState.DRAINING, WorkerState.LEFT):
            return
        self.log.warning("found_self_evicted", action="stop work and rejoin")
        self.lease.revoke()
        self._set_state(WorkerState.REJOINING)
        await self._stop_work("rejoin")
        self._rejoins += 1
        self.incarnation = self._new_incarnation()
        self.log = self.log.bind(incarnation=self.incarnation)
        await self._register()

    async def _own_record_corrupt(self, error: str) -> None:
        """Our own member record holds garbage (a bad write under the prefix): we can no
        longer prove membership by heartbeats. Others see the record as held but do not
        trust it, so our claims stay ours and our lease runs out normally: stop the jobs
        gracefully (within the lease), then register again as a new incarnation, which
        overwrites the garbage."""
        self._corrupt += 1
        self.log.error(
            "own_record_corrupt", error=error, action="stop jobs gracefully and re-register"
        )
        if self.state in (WorkerState.DRAINING, WorkerState.LEFT):
            return
        with move_on_after(self.options.op_timeout), suppress(FDBError):
            await self.transact(
                tx_event,
                self.layout,
                "own_record_corrupt",
                self.role,
                self.options.event_retention,
                worker=self.id,
                incarnation=self.incarnation,
                error=error,
            )
        self._set_state(WorkerState.REJOINING)
        await self._stop_work("corrupt_record")
        self.lease.revoke()
        self._rejoins += 1
        self.incarnation = self._new_incarnation()
        self.log = self.log.bind(incarnation=self.incarnation)
        await self._register()

    async def leave_for_restart(self) -> None:
        """Leave now to come back as the same id (restart in place, e.g. a deploy):
        stop every job and release its claim, but keep the member record, so the
        membership and the plan do not change. The next incarnation of this id (started
        with the same ``worker_id`` or ``id_file``) owns the same partitions and claims
        the same jobs at once: nothing moves. If it does not heartbeat within
        ``timeout``, the neighbour evicts this id and its jobs are handed off as after a
        crash. The ``async with open_worker(...)`` block is left afterwards as usual."""
        await self._leave("restarting")
        if self._body_scope is not None:
            self._body_scope.cancel()

    async def _drain_watcher(self) -> None:
        while self.state is not WorkerState.DRAINING:
            await self.wait_state_change()
        await self._leave("drained")
        if self._body_scope is not None:
            self._body_scope.cancel()

    async def _leave(self, kind: str) -> None:
        if self.state in (WorkerState.LEFT, WorkerState.SUPERSEDED):
            return
        if self._leaving is not None:
            # Another task is leaving (drain() wakes _drain_watcher): wait for it
            # (bounded by its own deadline) instead of stopping the work twice.
            with anyio.CancelScope(shield=True):
                await self._leaving.wait()
            return
        self._leaving = new_event()
        try:
            await self._leave_once(kind)
        finally:
            self._leaving.set()

    async def _leave_once(self, kind: str) -> None:
        self._set_state(WorkerState.DRAINING)
        with anyio.CancelScope(shield=True) as scope:
            scope.deadline = current_time() + (
                self.options.leave_timeout or max(self.options.timeout, 5.0)
            )
            await self._stop_work(kind)
            try:
                if kind == "restarting":
                    await self.transact(
                        tx_park,
                        self.layout,
                        self.role,
                        self.id,
                        self.incarnation,
                        self.options.event_retention,
                    )
                else:
                    await self.transact(
                        tx_leave,
                        self.layout,
                        self.role,
                        self.id,
                        self.incarnation,
                        kind,
                        self.options.event_retention,
                    )
            except FDBError as e:
                self.log.warning("leave_failed", error=e.name, hint="neighbours will evict us")
        if scope.cancelled_caught:
            self.log.warning("leave_timed_out", hint="neighbours will evict us")
        self._set_state(WorkerState.LEFT)
        self.log.info("left", kind=kind)

    async def _run(
        self, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        await self._register()
        async with anyio.create_task_group() as nursery:
            nursery.start_soon(self._heartbeat_loop)
            nursery.start_soon(self._lease_watchdog)
            nursery.start_soon(self._suspend_watch)
            nursery.start_soon(membership_loop, self)
            nursery.start_soon(settle_loop, self)
            nursery.start_soon(check_loop, self)
            nursery.start_soon(ghost_loop, self)
            nursery.start_soon(self._drain_watcher)
            task_status.started()


def utc_iso(wall: float) -> str:
    """A wall-clock time as UTC ISO-8601 with the zone (``2026-01-02T03:04:05Z``)."""
    import datetime

    t = datetime.datetime.fromtimestamp(wall, datetime.UTC).replace(microsecond=0)
    return t.isoformat().replace("+00:00", "Z")


def check_database(db: Any, what: str = "db") -> None:
    """ConfigError naming ``what`` unless ``db`` is a Database."""
    if not isinstance(db, Database):
        raise ConfigError(f"{what} must be a Database (from fdbworkers.open_database), got {db!r}")


@asynccontextmanager
async def open_worker(
    db: Database,
    role: str,
    *,
    worker_id: str | None = None,
    id_file: str | os.PathLike[str] | None = None,
    root: str | bytes | tuple[str, ...] | None = None,
    options: WorkerOptions | None = None,
    rng: random.Random | None = None,
    clocks: tuple[Callable[[], float], Callable[[], float]] | None = None,
    **option_overrides: Any,
) -> AsyncIterator[Worker]:
    """Register a worker in ``role`` for the duration of the block::

        async with open_worker(db, "replicator", timeout=10) as worker:
            async with worker.changes() as changes:
                async for change in changes:
                    print(change.members)

    On exit (normal, exception or cancellation) the worker leaves gracefully. When an
    operator drains it, it leaves and the block is cancelled (the ``async with`` then
    exits normally). Options: see :class:`WorkerOptions`.
    """
    check_database(db)
    opts = make_options(options, option_overrides)
    wid = resolve_worker_id(worker_id, id_file)
    worker = Worker(db, role, wid, opts, root=root, rng=rng, clocks=clocks)
    async with anyio.create_task_group() as nursery:
        await nursery.start(worker._run)
        try:
            with anyio.CancelScope() as body:
                worker._body_scope = body
                yield worker
        finally:
            worker._body_scope = None
            await worker._leave("left")
            nursery.cancel_scope.cancel()


async def run_worker(
    db: Database,
    role: str,
    *,
    task_status: anyio.abc.TaskStatus[Worker] = anyio.TASK_STATUS_IGNORED,
    **kwargs: Any,
) -> None:
    """The nursery form: ``worker = await nursery.start(run_worker, db, role)``; runs
    until cancelled or drained, then leaves gracefully."""
    async with open_worker(db, role, **kwargs) as worker:
        task_status.started(worker)
        await anyio.sleep_forever()
