"""The worker: registration, heartbeat, neighbour check, membership watch, settle,
self-fencing, rejoin and graceful leave. A thin async shell (anyio: asyncio or trio)
around the pure core (``_core.keys``, ``ring``, ``liveness``, ``settle``, ``membership``,
``states``) and the member transactions of ``_store.members``; it knows nothing of jobs
(the runner hooks in).

This module holds ``Worker`` (the public surface, leave and drain, and the task group
running the loops) and ``open_worker``; the loops are in ``_worker_lease``,
``_worker_membership`` and ``_worker_neighbours``, the state they share in
``_worker_base``, the options in ``_worker_options``.

Every transaction is a function taking the transaction as its first argument, run by the
shared retry loop (``Worker.transact``) with a timeout, so nothing hangs forever.
"""

from __future__ import annotations

import os
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.abc
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ._core.membership import Membership, MembershipChange, diff
from ._core.states import WorkerState
from ._db import Database
from ._errors import ConfigError, FDBError
from ._loop import current_time, new_event
from ._store.members import tx_leave, tx_park
from ._worker_base import WorkerBase
from ._worker_lease import heartbeat_loop, lease_watchdog, register, suspend_watch
from ._worker_membership import membership_loop, settle_loop
from ._worker_neighbours import check_loop, ghost_loop
from ._worker_options import WorkerOptions, make_options, resolve_worker_id

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
                        self.space,
                        self.id,
                        self.incarnation,
                        self.options.event_retention,
                    )
                else:
                    await self.transact(
                        tx_leave,
                        self.space,
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
        await register(self)
        async with anyio.create_task_group() as nursery:
            nursery.start_soon(heartbeat_loop, self)
            nursery.start_soon(lease_watchdog, self)
            nursery.start_soon(suspend_watch, self)
            nursery.start_soon(membership_loop, self)
            nursery.start_soon(settle_loop, self)
            nursery.start_soon(check_loop, self)
            nursery.start_soon(ghost_loop, self)
            nursery.start_soon(self._drain_watcher)
            task_status.started()


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
