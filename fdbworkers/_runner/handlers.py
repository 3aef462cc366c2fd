"""The handlers' lifecycle: each job this worker runs has a handler task, started in the
generation of the current lease (cancelled together at its hard end), restarted with
backoff when it crashes, parked after ``park_after`` failures in a row, with its health
published under the job's "jobhealth" key; stopped with a grace period, then cancelled;
and its claim released afterwards (releases of jobs that stop together share
transactions).
"""

from __future__ import annotations

import itertools
import random
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from functools import partial
from typing import Any

import anyio
import anyio.abc

from .._core.records import JobHealth
from .._errors import FDBError, FencedError
from .._loop import (
    CancelScope,
    Event,
    TaskGroup,
    cancel_scope,
    checkpoint,
    current_time,
    move_on_after,
    new_event,
    open_task_group,
)
from .._store.claims import CLAIM_BATCH, ReleaseRequest, tx_release_many
from .._store.jobs import JobRecord, tx_clear_job_health, tx_write_job_health
from .._worker import Worker
from .job import Handler, Job

#: More jobs than this stop together (one grace, batched releases, one log line).
BULK_STOP = 100


@dataclass
class _Generation:
    """Handlers started under one lease: cancelled together at its hard end."""

    scope: CancelScope
    nursery: TaskGroup
    #: Its nursery has closed (the hard end passed, or the runner stops): nothing may
    #: start in it any more.
    closed: bool = False

    def ended(self) -> bool:
        """Its lease's hard end passed. Read from the clock too: trio's scope says
        ``cancel_called`` once its deadline passed, anyio's asyncio scope only once its
        timer ran (a renewal in between must not revive it)."""
        return self.scope.cancel_called or self.scope.deadline <= current_time()


@dataclass(slots=True)
class _Running:
    job: Job
    scope: CancelScope
    done: Event
    restarts: int = 0
    #: Set once the job was stopped, removed and (if asked) released.
    stopped: Event | None = None
    #: Health: failures in a row, the latest error, the first failure's wall time,
    #: a counter of failures (a recovery applies only if none came since), and whether
    #: a health record of ours may be stored.
    failures: int = 0
    last_error: str = ""
    failing_since: float = 0.0
    health_gen: int = 0
    health_written: bool = False
    #: The generation it runs in (its lease's hard end).
    gen: _Generation | None = None


class _Waiter:
    __slots__ = ("event", "result")

    def __init__(self) -> None:
        self.event = new_event()
        self.result: bool | None = None


class _GroupCommit:
    """Work items submitted by many tasks, committed together: the first submitter that
    finds no batch in flight commits batches (``commit(items) -> committed``) until the
    queue is empty; the others wait, each on its own event (a leave submits one item per
    job: a shared event would wake every waiter at every batch). A leader that is
    cancelled puts its batch back and wakes one waiter to lead. No task of its own, so
    it works wherever its callers run (also in a leave, after the runner's nursery
    ended)."""

    def __init__(self, commit: Callable[[list[str]], Awaitable[bool]], size: int) -> None:
        self._commit = commit
        self._size = size
        self._queue: dict[str, list[_Waiter]] = {}
        self._busy = False

    async def submit(self, item: str) -> bool:
        waiter = _Waiter()
        self._queue.setdefault(item, []).append(waiter)
        while waiter.result is None:
            if not self._busy:
                await self._lead()
                continue
            await waiter.event.wait()
            if waiter.result is None:
                waiter.event = new_event()  # woken to lead
        return waiter.result

    async def _lead(self) -> None:
        self._busy = True
        try:
            while self._queue:
                items = list(itertools.islice(self._queue, self._size))
                waiters = [self._queue.pop(k) for k in items]
                try:
                    ok = await self._commit(items)
                except BaseException:
                    for k, ws in zip(items, waiters, strict=True):
                        self._queue.setdefault(k, []).extend(ws)
                    raise
                for ws in waiters:
                    for w in ws:
                        w.result = ok
                        w.event.set()
        finally:
            self._busy = False
            for ws in self._queue.values():  # cancelled with work queued: hand it over
                ws[0].event.set()
                break


class Handlers:
    """The handlers running on this worker (``running``) and the claims it may hold but
    does not run (``unreleased``), with the options of their lifecycle."""

    def __init__(
        self,
        worker: Worker,
        log: Callable[[], Any],
        rng: random.Random,
        handler: Handler,
        *,
        grace: float,
        restart_backoff: tuple[float, float],
        park_after: int | None,
        healthy_after: float,
        not_running: Callable[[str], None],
        now_running: Callable[[str], None],
        wake: Callable[[], None],
        density: Callable[[], float],
        transact_long: Callable[..., Awaitable[Any]],
    ) -> None:
        self.w = worker
        self._log = log
        self._rng = rng
        self.handler = handler
        self.grace = grace
        self.restart_backoff = restart_backoff
        #: Park a job after this many failures in a row (None: restart it for ever).
        self.park_after = park_after
        #: A failing job counts as healthy again after running this long without failing.
        self.healthy_after = healthy_after
        self._not_running = not_running
        self._now_running = now_running
        self.wake = wake
        self._density = density
        self._transact_long = transact_long
        self.running: dict[str, _Running] = {}
        #: Claims we may hold but do not run, to release unless the job is still ours:
        #: stopped jobs whose release has not committed yet (or that a fenced stop
        #: kept), and claims whose commit outcome was unknown (token None: any claim of
        #: this incarnation). job -> (partition, token, new owner to notify, handoff).
        self.unreleased: dict[str, tuple[int, bytes | None, str | None, bool]] = {}
        #: The generation new handlers start in, and the runner's nursery (set by run).
        self._gen: _Generation | None = None
        self.nursery: anyio.abc.TaskGroup | None = None
        self._releases = _GroupCommit(self._commit_releases, CLAIM_BATCH)
        self.starts = self.stops = self.crashes = 0
        self.job_failures = 0

    @property
    def log(self) -> Any:
        return self._log()

    def lease_renewed(self) -> None:
        """A heartbeat committed (or a suspend aged the lease): every running handler
        may run until the new hard end. One deadline for all: the generation's."""
        g = self._gen
        if g is not None and not g.ended():
            g.scope.deadline = self.w.lease.hard_end

    async def job_nursery(self) -> _Generation:
        """The generation new handlers start in: its cancel scope ends at the lease's
        hard end, moved on by every renewal, so one deadline covers every handler (a
        deadline per handler cost a heap update per handler and heartbeat). Once the
        hard end passed, its handlers are cancelled and the next ones start in a new
        generation."""
        g = self._gen
        if g is None or g.ended() or g.closed:
            assert self.nursery is not None
            g = self._gen = await self.nursery.start(self._run_generation)
        return g

    async def _run_generation(
        self, task_status: anyio.abc.TaskStatus[_Generation] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        scope = cancel_scope(deadline=self.w.lease.hard_end)
        with scope:
            async with open_task_group() as nursery:
                gen = _Generation(scope, nursery)
                try:
                    task_status.started(gen)
                    await anyio.sleep_forever()
                finally:
                    gen.closed = True

    def start(self, rec: JobRecord, token: bytes, gen: _Generation, *, quiet: bool = False) -> None:
        job = Job(rec.id, self.w.role, rec.partition, rec.spec, rec.weight, token, self.w)
        # The handler runs in its generation, whose scope ends at the lease's hard end,
        # moved on by every renewal: a process that wakes from a freeze past it cancels
        # the handler before the handler runs again, even before the lease watchdog
        # task has run (G3). Its own scope is for stopping it alone.
        r = _Running(job, cancel_scope(), new_event(), gen=gen)
        job._on_failure = partial(self._job_reported_failure, r)
        self.running[rec.id] = r
        self.unreleased.pop(rec.id, None)  # the claim is the running job's now
        self.starts += 1
        self._now_running(rec.id)
        if quiet:
            self.log.debug("job_started", job=rec.id, token=token.hex())
        else:
            self.log.info("job_started", job=rec.id, token=token.hex())
        gen.nursery.start_soon(self._job_task, r)

    async def _job_task(self, r: _Running) -> None:
        lo, hi = self.restart_backoff
        try:
            with r.scope:
                while True:
                    # A handler runs its first lines before its first await: never call
                    # it past the lease's hard end (this checkpoint raises then: a task
                    # spawned just before a freeze) or without a valid lease.
                    await checkpoint()
                    if not self.w.lease_valid():
                        await anyio.sleep_forever()  # a stop or the hard end ends this
                    try:
                        await self.handler(r.job)
                        if r.job.stopping.is_set():
                            return
                        self.log.info("job_handler_returned", job=r.job.id)
                        await anyio.sleep_forever()  # finished: stays owned until it moves
                    except FencedError as e:
                        if r.job.stopping.is_set():
                            return
                        self.log.warning("job_fenced", job=r.job.id, error=str(e))
                        await anyio.sleep_forever()
                    except Exception as e:
                        self.crashes += 1
                        r.restarts += 1
                        self._job_failed(r, repr(e))
                        if r.job.parked:
                            await anyio.sleep_forever()  # not run again until it moves
                        delay = min(hi, lo * 2 ** (r.restarts - 1)) * (0.5 + self._rng.random() / 2)
                        self.log.error(
                            "job_handler_crashed",
                            job=r.job.id,
                            error=repr(e),
                            restarts=r.restarts,
                            retry_in=round(delay, 3),
                        )
                        await anyio.sleep(delay)
        finally:
            r.done.set()
            if r.health_written and self.nursery is not None:
                self.nursery.start_soon(self._clear_health, r, None)  # it stops here
            lease_ended = r.gen is not None and r.gen.ended()
            if lease_ended and r.stopped is None and self.running.get(r.job.id) is r:
                # The lease's hard end passed (a freeze) without a stop: the handler no
                # longer runs, so it must not count as running; the next reconcile
                # claims the job again (new token) if it is still ours.
                del self.running[r.job.id]
                self._not_running(r.job.id)
                # Its claim is still ours: claimed again if the job stays ours, else
                # released (otherwise its next owner would find it held forever).
                self.unreleased[r.job.id] = (r.job.partition, r.job.token, None, False)
                self.log.warning("job_lease_deadline", job=r.job.id, action="restart if owned")
                self.wake()

    # -- per-job health (the "jobhealth" key, see _core/keys.py) --------------------------

    def _job_reported_failure(self, r: _Running, error: str) -> None:
        r.restarts += 1
        self._job_failed(r, error)

    def _job_failed(self, r: _Running, error: str) -> None:
        """A run of ``r`` failed: count it, publish the job's health, and park the job
        after ``park_after`` failures in a row."""
        if r.stopped is not None or self.nursery is None:
            return
        w = self.w
        now = time.time()
        r.failures += 1
        r.health_gen += 1
        self.job_failures += 1
        if r.failures == 1:
            r.failing_since = now
        r.last_error = error
        event = "job_failing" if r.failures == 1 else None
        if self.park_after is not None and r.failures >= self.park_after and not r.job.parked:
            r.job.parked = True
            event = "job_parked"
            self.log.error(
                "job_parked", job=r.job.id, failures=r.failures, error=error, action="not run here"
            )
        health = JobHealth(
            w.id,
            w.incarnation,
            r.job.token,
            "parked" if r.job.parked else "failing",
            r.failures,
            r.restarts,
            error,
            r.failing_since,
            now,
        )
        self.nursery.start_soon(self._publish_health, r, health, event, r.health_gen)

    async def _publish_health(
        self, r: _Running, health: JobHealth, event: str | None, gen: int
    ) -> None:
        w = self.w
        try:
            await w.transact(
                tx_write_job_health,
                w.space,
                r.job.id,
                health,
                event,
                w.options.event_retention,
            )
            r.health_written = True
        except FDBError as e:
            self.log.warning("job_health_write_failed", job=r.job.id, error=e.name)
        if r.job.parked:
            return
        await anyio.sleep(self.healthy_after)
        if r.health_gen == gen and r.stopped is None and self.running.get(r.job.id) is r:
            r.failures = 0  # ran healthy_after seconds without failing
            self.log.info("job_recovered", job=r.job.id)
            await self._clear_health(r, "job_recovered")

    async def _clear_health(self, r: _Running, event: str | None) -> None:
        if not r.health_written:
            return
        w = self.w
        try:
            await w.transact(
                tx_clear_job_health,
                w.space,
                r.job.id,
                w.id,
                w.incarnation,
                r.job.token,
                event,
                w.options.event_retention,
            )
            r.health_written = False
        except FDBError as e:
            self.log.warning("job_health_clear_failed", job=r.job.id, error=e.name)

    async def _stop_one(
        self,
        jid: str,
        *,
        reason: str,
        release: bool,
        notify: str | None = None,
        handoff: bool = False,
    ) -> None:
        r = self.running.get(jid)
        if r is None:
            return
        if r.stopped is not None:  # someone else is stopping it: wait for them
            await r.stopped.wait()
            return
        r.stopped = new_event()
        try:
            r.job.stopping.set()
            # Never past the lease's hard end: a fenced worker has at most margin / 2
            # left, one resumed from a long freeze (or evicted: lease revoked) none.
            grace = max(0.0, min(self.grace, self.w.lease.hard_end - current_time()))
            with move_on_after(grace):
                await r.done.wait()
            r.scope.cancel()
            await r.done.wait()
            if self.running.get(jid) is r:
                del self.running[jid]  # the handler has finished: it no longer runs
                self._not_running(jid)
            self.stops += 1
            self.log.info("job_stopped", job=jid, reason=reason)
            # Released now, or (a fenced stop, where no commit can be trusted) by the
            # first reconcile after the fence, if the job is no longer ours then.
            self.unreleased[jid] = (r.job.partition, r.job.token, notify, handoff)
            if release:
                await self._release(jid)
        finally:
            if self.running.get(jid) is r:
                del self.running[jid]
                self._not_running(jid)
            r.stopped.set()

    async def stop_jobs(
        self, stops: list[tuple[str, str | None, bool]], *, reason: str, release: bool
    ) -> None:
        """Stop the jobs ``(job, notify, handoff)``: each in its own task (its release
        as soon as its own handler finished) when there are few, all together above
        BULK_STOP (see :meth:`_stop_many`)."""
        if len(stops) > BULK_STOP:
            await self._stop_many(stops, reason=reason, release=release)
            return
        async with open_task_group() as n:
            for jid, notify, handoff in stops:
                n.start_soon(
                    partial(
                        self._stop_one,
                        jid,
                        reason=reason,
                        release=release,
                        notify=notify,
                        handoff=handoff,
                    )
                )

    async def _stop_many(
        self, stops: list[tuple[str, str | None, bool]], *, reason: str, release: bool
    ) -> None:
        """Stop many jobs at once, as :meth:`_stop_one` stops one (stopping set, the
        grace, then cancellation; never past the lease's hard end), without a task per
        job: a move of a large share, or a leave, would otherwise spawn and schedule a
        task, a deadline and a release waiter per job. One grace for all; the releases
        go CLAIM_BATCH per transaction once the handlers finished."""
        mine: list[tuple[str, _Running, str | None, bool]] = []
        others: list[_Running] = []
        for jid, notify, handoff in stops:
            r = self.running.get(jid)
            if r is None:
                continue
            if r.stopped is not None:
                others.append(r)  # someone else stops it: wait for them below
                continue
            r.stopped = new_event()
            r.job.stopping.set()
            mine.append((jid, r, notify, handoff))
        try:
            grace = max(0.0, min(self.grace, self.w.lease.hard_end - current_time()))
            with move_on_after(grace):
                for _, r, _, _ in mine:
                    if not r.done.is_set():
                        await r.done.wait()
            for _, r, _, _ in mine:
                r.scope.cancel()
            for i, (jid, r, notify, handoff) in enumerate(mine):
                if not r.done.is_set():
                    await r.done.wait()
                if self.running.get(jid) is r:
                    del self.running[jid]  # the handler has finished: it no longer runs
                    self._not_running(jid)
                self.stops += 1
                self.log.debug("job_stopped", job=jid, reason=reason)
                self.unreleased[jid] = (r.job.partition, r.job.token, notify, handoff)
                if i % 1000 == 999:
                    await checkpoint()
            if mine:
                self.log.info("jobs_stopped", jobs=len(mine), reason=reason)
            if release:
                await self.release_many([jid for jid, _, _, _ in mine])
        finally:
            for jid, r, _, _ in mine:
                if self.running.get(jid) is r:
                    del self.running[jid]
                    self._not_running(jid)
                assert r.stopped is not None
                r.stopped.set()
        for r in others:
            assert r.stopped is not None
            await r.stopped.wait()

    async def _release(self, jid: str) -> bool:
        """Clear our claim of a stopped job (and wake its new owner). A failure is
        retried by every later reconcile: the new owner waits for this release. The
        releases of jobs that stop at about the same time share transactions."""
        return await self._releases.submit(jid)

    async def release_many(self, jids: Iterable[str]) -> None:
        """Release the claims of ``jids`` in batches of CLAIM_BATCH."""
        todo = list(jids)
        for i in range(0, len(todo), CLAIM_BATCH):
            await self._commit_releases(todo[i : i + CLAIM_BATCH])

    async def _commit_releases(self, jids: list[str]) -> bool:
        """One transaction releasing the claims of ``jids`` (those still tracked in
        ``_unreleased``); True once it committed."""
        w = self.w
        requests = []
        entries = {}
        for jid in jids:
            entry = self.unreleased.get(jid)
            if entry is not None:
                entries[jid] = entry
                partition, token, notify, handoff = entry
                notify = notify if notify != w.id else None
                requests.append(ReleaseRequest(partition, jid, token, notify, handoff))
        if not requests:
            return True
        try:
            await self._transact_long(
                tx_release_many,
                w.space,
                requests,
                w.id,
                w.incarnation,
                self._density(),
            )
        except FDBError as e:
            self.log.warning(
                "job_release_failed",
                job=requests[0].job_id,
                jobs=len(requests),
                error=e.name,
                action="retry later",
            )
            return False
        for jid, entry in entries.items():
            if self.unreleased.get(jid) is entry:  # not replaced meanwhile
                del self.unreleased[jid]
        return True

    async def stop_all(self, *, reason: str, release: bool) -> None:
        if not self.running:
            return
        await self.stop_jobs(
            [(jid, None, False) for jid in self.running], reason=reason, release=release
        )
