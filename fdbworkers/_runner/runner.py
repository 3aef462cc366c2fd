"""The job runner: runs a handler for every job this worker owns, with fencing tokens.

The job store it drives (records, claims, releases, handoffs) is ``fdbworkers._store.jobs``.

A job of a role lives in one of the role's partitions (a stable hash of its id, fixed at
role creation), so a worker reads only the partitions it owns. A worker runs a job only
after it committed a *claim* for it; the claim's commit versionstamp is the job's
fencing token, increasing per job. The handoff (G3, at most one runner):

1. every member computes the same owner for the job from the same settled membership;
2. the old owner stops its handler (grace, then cancellation) and only then clears its
   claim, notifying the new owner's inbox key;
3. the new owner commits a claim only if the claim is absent, or its holder is no longer
   a member (evicted: it fenced itself before that could happen, see ``_liveness``), or
   its holder was replaced by a newer incarnation of the same id and the holder's timeout
   has passed since the claimant first saw that;
4. the claim transaction also reads the claimant's own member record, so a claim by a
   worker that was just evicted conflicts and fails.

``Job.fence(tr)`` adds the claim check to the application's own transaction: its writes
commit only while the job's claim still carries the job's token.
"""

from __future__ import annotations

import math
import random
from collections.abc import Awaitable, Callable, Iterable
from collections.abc import Set as AbstractSet
from contextlib import suppress
from typing import Any, TypeVar

import anyio
import anyio.abc
import anyio.to_thread
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from .._core.membership import Membership
from .._core.partset import PartitionSet
from .._core.plan import PlanMap, plan_weights
from .._core.share import PAGE_KEYS, PAGE_REQUESTS
from .._core.states import WorkerState
from .._db import run_transaction
from .._errors import FDBError
from .._loop import (
    checkpoint,
    current_time,
    new_event,
    open_task_group,
)
from .._store.claims import (
    CLAIM_BATCH,
)
from .._store.jobs import (
    JobRecord,
)
from .._store.share import ShareRead, read_share
from .._worker import Worker, install_job_runner
from .._worker_options import DEFAULT_PARTITIONS
from .changes import ChangeFeed
from .claims import Claimer
from .handlers import Handlers
from .job import Handler, OwnershipChange, RunnerStatistics
from .options import check_options
from .planner import Planner

T = TypeVar("T")

#: A claim batch that starts more jobs than this logs one ``jobs_started`` line (info)
#: instead of one ``job_started`` line per job (then at debug level).
QUIET_STARTS = 100


class _MoveBudget:
    """The velocity limit: at most ``max_moves`` of our running jobs stopped to move per
    ``move_interval`` (a live-to-live move; starting a job nobody runs is not limited).
    A window opens at its first move."""

    def __init__(self, max_moves: int | None, move_interval: float) -> None:
        self.max_moves = max_moves
        #: With max_moves: at most max_moves moves in any window of this length.
        self.move_interval = move_interval
        #: The last reconcile step used up its window's moves (set by _reconcile).
        self.limited = False
        self.window_end = -math.inf
        self.left = 0

    def open(self, now: float) -> float:
        """The moves a step may make now."""
        if self.max_moves is None:
            return math.inf
        if now >= self.window_end:
            self.left = self.max_moves  # a new window opens at its first move
        return self.left

    def close(self, now: float, budget: float) -> None:
        """A step that began at ``now`` left ``budget`` moves."""
        if self.max_moves is not None:
            if budget < self.left and now >= self.window_end:
                self.window_end = now + self.move_interval
            self.left = int(budget)
        self.limited = self.max_moves is not None and budget <= 0


class JobRunner:
    """Runs ``handler(job)`` for each job this worker owns; see ``Worker.run_jobs``."""

    def __init__(
        self,
        worker: Worker,
        handler: Handler,
        *,
        grace: float = 5.0,
        max_moves: int | None = None,
        move_interval: float = 1.0,
        restart_backoff: tuple[float, float] = (1.0, 60.0),
        resync_interval: float = 60.0,
        full_resync_interval: float = 3600.0,
        claim_poll: float = 1.0,
        plan_grace: float | None = None,
        rng: random.Random | None = None,
        assign_in_thread: bool | None = None,
        park_after: int | None = None,
        healthy_after: float = 60.0,
    ) -> None:
        check_options(
            handler,
            grace=grace,
            max_moves=max_moves,
            move_interval=move_interval,
            restart_backoff=restart_backoff,
            resync_interval=resync_interval,
            full_resync_interval=full_resync_interval,
            claim_poll=claim_poll,
            park_after=park_after,
            healthy_after=healthy_after,
        )
        self.w = worker
        self.moves = _MoveBudget(max_moves, move_interval)
        self.claim_poll = claim_poll
        self._rng = rng or random.Random()
        self._init_target()
        self._wake = new_event()
        self._subscribers: list[MemoryObjectSendStream[OwnershipChange]] = []
        self._stopped_for_good = False
        self._log_base = worker.log
        self._log = worker.log.bind(component="jobs")
        self._init_handlers(handler, grace, restart_backoff, park_after, healthy_after)
        self._init_parts(plan_grace, assign_in_thread, resync_interval, full_resync_interval)
        worker.on_stop_work(self._stop_all_and_release)
        worker.on_lease_renewed(self.handlers.lease_renewed)

    def _init_parts(
        self,
        plan_grace: float | None,
        assign_in_thread: bool | None,
        resync_interval: float,
        full_resync_interval: float,
    ) -> None:
        """The runner's parts that own their state: the stored plan (``planner``), the
        claims and handoffs (``claims``) and the change log (``changes``)."""
        self.planner = Planner(
            self.w,
            lambda: self.log,
            plan_grace=plan_grace,
            assign_in_thread=assign_in_thread,
        )
        self.claims = Claimer(
            self.w,
            lambda: self.log,
            self._rng,
            self._unreleased,
            lambda: self._density,
            self._transact_long,
        )
        self.changes = ChangeFeed(
            self.w,
            lambda: self.log,
            self._rng,
            resync_interval=resync_interval,
            full_resync_interval=full_resync_interval,
            wake=self.wake,
            plan_seq=self.planner.plan_seq,
            plan_changed=self.planner.mark_dirty,
            inbox_fired=self.claims.inbox_fired,
        )

    def _init_target(self) -> None:
        """The jobs this worker should run (the target: by partition, to claim, lost),
        what its share reads found, and the counts of its reconcile steps."""
        self.target: dict[str, JobRecord] = {}
        self.assignment: PlanMap | None = None
        self._owned_parts: AbstractSet[int] = PartitionSet()
        self._reconciles = self._deferred = 0
        #: The target's jobs by partition, the target's jobs not running here (to
        #: claim), and running jobs no longer in the target (to stop): kept in step by
        #: _replace_target, _start and _not_running, so a step costs O(what changed).
        self._by_part: dict[int, list[str]] = {}
        #: In key order after a full read (a dict: ordered), so claim batches are
        #: neighbours in the key space.
        self._to_claim: dict[str, None] = {}
        self._lost: set[str] = set()
        #: The role's jobs per partition (J / P) at the last read: sizes range reads.
        self._density = 0.0
        #: Page size of the share read (keys, range requests per transaction).
        self._page_keys = PAGE_KEYS
        self._page_requests = PAGE_REQUESTS
        self._share_reads = self._share_keys = 0
        self._share_requests = self._share_transactions = 0
        #: The last share read: (partitions, keys, requests, transactions).
        self.last_read: tuple[int, int, int, int] = (0, 0, 0, 0)

    def _init_handlers(
        self,
        handler: Handler,
        grace: float,
        restart_backoff: tuple[float, float],
        park_after: int | None,
        healthy_after: float,
    ) -> None:
        """The handlers' lifecycle (``_runner.handlers``): their running jobs are
        ``running``, the claims held but not run ``_unreleased`` (the same dicts)."""
        self.handlers = Handlers(
            self.w,
            lambda: self.log,
            self._rng,
            handler,
            grace=grace,
            restart_backoff=restart_backoff,
            park_after=park_after,
            healthy_after=healthy_after,
            not_running=self._not_running,
            now_running=self._now_running,
            wake=self.wake,
            density=lambda: self._density,
            transact_long=self._transact_long,
        )
        self.running = self.handlers.running
        self._unreleased = self.handlers.unreleased

    def statistics(self) -> RunnerStatistics:
        return RunnerStatistics(
            running=len(self.running),
            target=len(self.target),
            pending_claims=len(self._to_claim),
            started=self.handlers.starts,
            stopped=self.handlers.stops,
            handler_crashes=self.handlers.crashes,
            claims_committed=self.claims.committed,
            claims_blocked=self.claims.blocked,
            reconciles=self._reconciles,
            moves_deferred=self._deferred,
            handoffs_adopted=self.claims.adoptions,
            plans_written=self.planner.plans_written,
            plans_read_by_delta=self.planner.plan_reads["delta"],
            plans_read_whole=self.planner.plan_reads["whole"],
            jobs_failing=sum(1 for r in self.running.values() if r.failures and not r.job.parked),
            jobs_parked=sum(1 for r in self.running.values() if r.job.parked),
            job_failures=self.handlers.job_failures,
            share_reads=self._share_reads,
            share_keys_read=self._share_keys,
            share_requests=self._share_requests,
            share_transactions=self._share_transactions,
            change_log_reads=self.changes.reads,
        )

    def subscribe(self, buffer: int = 64) -> MemoryObjectReceiveStream[OwnershipChange]:
        send, recv = anyio.create_memory_object_stream[OwnershipChange](buffer)
        self._subscribers.append(send)
        return recv

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        async with anyio.create_task_group() as nursery:
            self.handlers.nursery = nursery
            nursery.start_soon(self.changes.watch_loop)
            nursery.start_soon(self._reconcile_loop)

    @property
    def log(self) -> Any:
        """The worker's logger (its incarnation and epoch as of now: a rejoin or a new
        view rebinds it) with ``component=jobs``."""
        base = self.w.log
        if base is not self._log_base:
            self._log_base, self._log = base, base.bind(component="jobs")
        return self._log

    # -- reconcile ---------------------------------------------------------------------

    async def _reconcile_loop(self) -> None:
        w = self.w
        while True:
            self._wake = new_event()
            if w.state is WorkerState.FENCED or w.state is WorkerState.REJOINING:
                await self.handlers.stop_all(reason="fenced", release=False)
                # Stopping takes time: the state may have moved on meanwhile.
                if w.state is WorkerState.FENCED or w.state is WorkerState.REJOINING:
                    await w.wait_state_change()
                self.changes.full_resync = True
                continue
            if w.state is not WorkerState.ACTIVE or self._stopped_for_good:
                await w.wait_state_change()
                continue
            m = w.membership
            if m is None:
                await self._wait_any(w.membership_waiter())
                continue
            # A new epoch needs no full re-read: _reconcile reads the partitions it
            # gained (and the change log the partitions whose jobs changed).
            try:
                more = await self._reconcile(m)
            except FDBError as e:
                self.log.warning("reconcile_failed", error=e.name)
                # _reconcile cleared the target and recorded the new partitions before
                # its read failed: read them all again, or the next step would see an
                # empty target and stop every running job until the periodic resync.
                self.changes.full_resync = True
                more = True
            if w.membership is not m or w.state is not WorkerState.ACTIVE:
                continue  # it changed while we reconciled: no wake-up was lost
            now = current_time()
            if self.moves.limited:
                delay: float | None = max(0.0, self.moves.window_end - now)
            else:
                delay = self.claim_poll if more else None
            if self.planner.drift_due is not None:
                due = max(0.0, self.planner.drift_due - now)
                delay = due if delay is None else min(delay, due)
            await self._wait_any(w.membership_waiter(), w.state_waiter(), delay=delay)

    async def _wait_any(
        self, *waits: Callable[[], Awaitable[Any]], delay: float | None = None
    ) -> None:
        async with open_task_group() as n:

            async def one(fn: Callable[[], Awaitable[Any]]) -> None:
                await fn()
                n.cancel_scope.cancel()

            for fn in waits:
                n.start_soon(one, fn)
            n.start_soon(one, self._wake.wait)
            if delay is not None:
                n.cancel_scope.deadline = current_time() + delay

    async def _reconcile(self, m: Membership) -> bool:
        """One step towards the target; True if something is still pending."""
        self._reconciles += 1
        self.moves.limited = False
        w = self.w
        self.planner.pending = False
        a = await self.planner.plan_map(m)
        self.assignment = a
        owned = a.partitions_of(w.id) | await self.claims.adopt(m, a)  # a bitmap
        await self._read_target(owned)
        if self.planner.drifted(a, len(self.target)):
            self.planner.drift_replan = True
            self.planner.pending = True
        await self._settle_kept_claims(a)
        # Stop what we no longer own first, then start what we gained.
        now = current_time()
        budget = self.moves.open(now)
        stopped, budget = await self._stop_moved(a, budget)
        started, pending = await self._claim_all(m)
        if started or stopped:
            self._publish(
                OwnershipChange(
                    frozenset(started), frozenset(stopped), frozenset(self.running), m.epoch
                )
            )
        self.moves.close(now, budget)
        return pending or bool(self._unreleased) or self.moves.limited or self.planner.pending

    async def _read_target(self, owned: AbstractSet[int]) -> None:
        """Read the jobs of the partitions the step must read (all ``owned`` on a full
        resync; else those gained and those the change log dirtied) into the target."""
        # Bitmaps throughout: a share can be all 65,536 partitions, and a set of them
        # (with its int objects) is megabytes, allocated at every step.
        if not isinstance(owned, PartitionSet):
            owned = PartitionSet(owned)
        full = self.changes.full_resync
        if full:
            self.changes.last_full_resync = current_time()
            read_parts: AbstractSet[int] = owned
        else:
            # Only what we gained, and partitions whose jobs changed: O(J/N^2) keys on
            # a membership change instead of a full re-read.
            dirty_owned = PartitionSet(p for p in self.changes.dirty_parts if p in owned)
            read_parts = (owned - self._owned_parts) | dirty_owned
        dirty, self.changes.dirty_parts = self.changes.dirty_parts, set()
        self.changes.full_resync = False
        try:
            share = await self._read_share(read_parts, full)
        except BaseException:
            # Nothing was applied: the next step reads the same partitions again.
            self.changes.dirty_parts |= dirty
            self.changes.full_resync = self.changes.full_resync or full
            raise
        if full:
            self._replace_target(share, None)
        else:
            self._replace_target(share, read_parts | (self._owned_parts - owned))
        self._owned_parts = owned

    async def _stop_moved(self, a: PlanMap, budget: float) -> tuple[set[str], float]:
        """Stop the running jobs no longer in the target, ``budget`` of them at most
        (the velocity limit), each notifying its new owner; returns them and the
        budget left."""
        lost = sorted(j for j in self._lost if j in self.running)
        stopped: set[str] = set()
        # Moved jobs stop concurrently: each may take its grace period to finish.
        stops: list[tuple[str, str | None, bool]] = []
        for jid in lost:
            r = self.running.get(jid)
            if r is None or r.stopped is not None:
                continue  # someone else stops it
            if budget <= 0:
                self._deferred += 1
                continue
            budget -= 1
            stops.append((jid, a.owner(r.job.partition), False))
            stopped.add(jid)
        await self.handlers.stop_jobs(stops, reason="moved", release=True)
        return stopped, budget

    def _publish(self, ch: OwnershipChange) -> None:
        """Log a step's change and send it to every subscriber (dropped if one's buffer
        is full or it is gone)."""
        self.log.info(
            "ownership_changed",
            started=len(ch.started),
            stopped=len(ch.stopped),
            running=len(self.running),
        )
        for s in list(self._subscribers):
            with suppress(anyio.WouldBlock, anyio.BrokenResourceError):
                s.send_nowait(ch)

    def _replace_target(self, share: ShareRead, parts: Iterable[int] | None) -> None:
        """Make the jobs ``share`` read the target's jobs of the partitions ``parts``
        (None: of every partition), keeping the jobs to claim and the running jobs to
        stop in step: O(jobs of those partitions), or for a full read two passes at C
        speed (the read's dicts become the target's)."""
        jobs, running = share.jobs, self.running
        if parts is None:
            self.target, self._by_part = jobs, share.by_part
            self._to_claim = {j: None for j in jobs if j not in running}
            self._lost = {j for j in running if j not in jobs}
            return
        for p in parts:
            for jid in self._by_part.pop(p, ()):
                self.target.pop(jid, None)
                self._to_claim.pop(jid, None)
                if jid in running and jid not in jobs:
                    self._lost.add(jid)
        self._by_part.update(share.by_part)
        for jid, rec in jobs.items():
            self.target[jid] = rec
            if jid in running:
                self._lost.discard(jid)
            else:
                self._to_claim[jid] = None

    def _now_running(self, jid: str) -> None:
        """``jid`` was started here: no longer one to claim."""
        self._to_claim.pop(jid, None)

    def _not_running(self, jid: str) -> None:
        """``jid`` no longer runs here: claim it again if it is still ours."""
        self._lost.discard(jid)
        if jid in self.target:
            self._to_claim[jid] = None

    async def _read_share(self, parts: AbstractSet[int], full: bool) -> ShareRead:
        """The jobs of ``parts``, read in pages (``_store.scan.read_share``). A full read
        moves the change-log cursor back to the version read before its first page, so
        that every change the pages may have missed is read from the log and its
        partition read again (docs/architecture.md, "The paged share read")."""
        w = self.w
        cfg = w.role_config
        share = await read_share(
            self._transact_long,
            w.space,
            parts,
            cfg.partitions if cfg else DEFAULT_PARTITIONS,
            page_keys=self._page_keys,
            page_requests=self._page_requests,
        )
        self._density = share.keys_per_partition
        self.planner.jobs_total = share.job_count
        self._share_reads += 1
        self._share_keys += share.keys
        self._share_requests += share.requests
        self._share_transactions += share.transactions
        self.last_read = (len(parts), share.keys, share.requests, share.transactions)
        if full:
            self.changes.follow_from(share.version)
        return share

    async def _transact_long(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """A transaction of the share read or of a batch: the 5 s of a transaction, not
        the short timeout of the liveness transactions."""
        w = self.w
        tr = w.db.create_transaction()
        tr.set_timeout(max(w.options.op_timeout, 5.0))
        return await run_transaction(w.db, tr, fn, *args)

    async def _claim_all(self, m: Membership) -> tuple[set[str], bool]:
        """Claim the jobs of the target that do not run here, in batches of CLAIM_BATCH
        (one transaction each), in key order; start each job whose claim committed.
        Returns (started, something still pending)."""
        w = self.w
        started: set[str] = set()
        pending = False
        todo = list(self._to_claim)
        for i in range(0, len(todo), CLAIM_BATCH):
            if not w.lease_valid() or w.membership is not m:
                return started, True  # claimed again after the next step
            batch = [
                self.target[j]
                for j in todo[i : i + CLAIM_BATCH]
                if j in self._to_claim and j not in self.running
            ]
            if not batch:
                continue
            batch.sort(key=lambda r: (r.partition, r.id))
            try:
                outcomes = await self.claims.claim(batch)
            except FDBError as e:
                self.log.warning("claim_failed", jobs=len(batch), error=e.name)
                return started, True
            nursery = await self.handlers.job_nursery()
            if not w.lease_valid() or nursery.closed or nursery.ended():
                # The lease ran out while the claims were in flight (a suspend seen
                # meanwhile, or a freeze): no handler may start. The claims are ours:
                # kept, and claimed again (or released) by the next step.
                for rec, outcome in zip(batch, outcomes, strict=True):
                    if outcome.kind == "claimed" and outcome.token is not None:
                        self._keep_claim(rec, outcome.token)
                return started, True
            # A batch of many starts is logged in one line (each job at debug level):
            # a million jobs should not make a million log lines.
            quiet = sum(o.kind == "claimed" for o in outcomes) > QUIET_STARTS
            first: JobRecord | None = None
            count = 0
            for rec, outcome in zip(batch, outcomes, strict=True):
                if outcome.kind == "claimed" and outcome.token is not None:
                    if rec.id in self.running:
                        continue  # cannot happen: only this loop starts jobs
                    if self.target.get(rec.id) is not rec:
                        # A new plan took the job while the claim was in flight.
                        self._keep_claim(rec, outcome.token)
                        pending = True
                        continue
                    self.handlers.start(rec, outcome.token, nursery, quiet=quiet)
                    started.add(rec.id)
                    first = first or rec
                    count += 1
                elif outcome.kind in ("held", "superseded"):
                    pending = True
                elif outcome.kind == "not_member":
                    return started, True
            if quiet and first is not None:
                self.log.info("jobs_started", jobs=count, first=first.id, last=batch[-1].id)
            await checkpoint()
        return started, pending

    def _keep_claim(self, rec: JobRecord, token: bytes) -> None:
        """A claim of ours that starts no handler (the lease ran out, or a new plan took
        the job while the claim was in flight, seed 13,869): kept, and released or
        claimed again by the next step, so that the job's next owner never waits on a
        claim nobody runs."""
        self._unreleased.setdefault(rec.id, (rec.partition, token, None, False))

    async def _settle_kept_claims(self, a: PlanMap) -> None:
        """Claims we hold but do not run (kept through a fenced stop, or of a claim
        whose commit outcome was unknown, or whose release failed): a job still ours is
        simply claimed again below; any other is released now, waking its new owner,
        which otherwise would find it "held" by a live member for as long as we live."""
        release: list[str] = []
        for jid, (partition, token, notify, handoff) in list(self._unreleased.items()):
            if jid in self.running or jid in self.target:
                # Ours: the claim below takes it again, and _start stops tracking it.
                # Not before: if that claim does not happen (no valid lease yet) and
                # the partition then moves, the claim must still be released.
                continue
            if notify is None and 0 <= partition < a.partitions:
                notify = a.owner(partition)
                self._unreleased[jid] = (partition, token, notify, handoff)
            release.append(jid)
        await self.handlers.release_many(release)

    async def _stop_all_and_release(self, reason: str) -> None:
        leaving = reason in ("drained", "left")
        if leaving:
            self._stopped_for_good = True
        m = self.w.membership  # the settled view: a plan made for it is superseded
        notify_map: PlanMap | None = None  # by the plan of any later view
        if m is not None and leaving:
            # Leaving for good: we write the plan without us, so our successors take
            # our jobs as soon as we release them, before their views show us gone.
            others = plan_weights({w: r for w, r in m.members.items() if w != self.w.id})
            if others:
                try:
                    with anyio.fail_after(max(self.w.options.op_timeout, 5.0) * 2):
                        await self.planner.warm_for(others)
                        plan = await self.planner.replan(others, m.view_key, force=True)
                    if plan is not None:
                        await self.planner.warm(plan)
                        notify_map = plan.map()
                except (FDBError, TimeoutError) as e:
                    self.log.warning("leave_plan_failed", error=getattr(e, "name", str(e)))
        stops = [
            (jid, notify_map.owner(r.job.partition) if notify_map else None, leaving)
            for jid, r in self.running.items()
        ]
        await self.handlers.stop_jobs(stops, reason=reason, release=True)
        await self.handlers.release_many(list(self._unreleased))  # earlier ones that did not commit
        self._replace_target(ShareRead(), None)
        self.changes.full_resync = True


async def run_jobs(worker: Worker, handler: Handler, **options: Any) -> None:
    """Run ``handler`` for every job ``worker`` owns until cancelled (see JobRunner)."""
    await JobRunner(worker, handler, **options).run()


install_job_runner(run_jobs)
