"""The runner's view of the stored plan (docs/assignment.md, "The plan"): it reads the plan,
writes a new one when the settled membership made it stale and it is this worker's turn,
or when the job counts drifted from it, and builds the plan's partition map (in a thread
when it is large)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

import anyio.to_thread

from .._core.assign import Assignment, assign
from .._core.membership import Membership
from .._core.plan import Plan, PlanMap, view_weights
from .._db import run_transaction
from .._loop import current_time
from .._store.plan import NotCounted, PlanRead, recount, tx_read_plan_since, tx_replan
from .._worker import Worker
from .._worker_options import DEFAULT_PARTITIONS

#: Above this partition count the map is computed in a worker thread (about 0.1 s at
#: 65536 partitions and 60 members), so the event loop is not held for all of it: the
#: computation is big-integer and bytes operations of a fraction of a millisecond each
#: (module fdbworkers._core.direct), or numpy for larger fleets, and the loop takes the
#: GIL between them.
THREADED_ASSIGN_PARTITIONS = 16384


class Planner:
    """The stored plan as this worker last read or wrote it, and the map it reconciles
    against."""

    def __init__(
        self,
        worker: Worker,
        log: Callable[[], Any],
        *,
        plan_grace: float | None,
        assign_in_thread: bool | None,
    ) -> None:
        self.w = worker
        self._log = log
        #: None: a thread above THREADED_ASSIGN_PARTITIONS; False on a virtual clock.
        self.assign_in_thread = assign_in_thread
        #: The stored plan as last read (None: none read yet, or there is none).
        self.plan: Plan | None = None
        self._dirty = True
        #: The map of the last plan reconciled against, and whether the plan was made
        #: for the members of the last view: a reconcile that follows the same plan and
        #: view (claim polls, job changes) computes neither again (O(P) and O(N)).
        self._map: PlanMap | None = None
        self._same_members: tuple[Membership, Plan, bool] | None = None
        #: (epoch of the view that found the plan stale, when it did).
        self._stale_since: tuple[bytes, float] | None = None
        #: The plan is stale and another member writes it first: check again soon.
        self.pending = False
        #: A member other than the first writes a stale plan after this many seconds.
        self.plan_grace = plan_grace if plan_grace is not None else 2.0 * worker.options.op_timeout
        self.last_drift_plan = -math.inf
        self.drift_replan = False
        #: When a rate-limited drift may be planned (the reconcile loop wakes then).
        self.drift_due: float | None = None
        self.jobs_total: int | None = None
        self.plans_written = 0
        #: Reads of the stored plan, by how they went (``tx_read_plan_since``).
        self.plan_reads: dict[PlanRead, int] = dict.fromkeys(("none", "same", "delta", "whole"), 0)
        #: The members and partitions of the map warmed last, and that map: held here,
        #: so that ``assign``'s memo (which keeps the maps someone holds) still has it
        #: when the plan that needs it is made or read.
        self._warmed: tuple[tuple[dict[str, float], int], Assignment] | None = None

    def plan_seq(self) -> int | None:
        """The sequence number of the stored plan as last read (None: none)."""
        return self.plan.seq if self.plan else None

    def mark_dirty(self) -> None:
        self._dirty = True  # another member wrote a plan: plan_map reads it

    @property
    def _partitions(self) -> int:
        cfg = self.w.role_config
        return cfg.partitions if cfg else DEFAULT_PARTITIONS

    async def warm(self, plan: Plan) -> None:
        """Compute the plan's rendezvous map in a thread when it is large (cached: the
        PlanMap built next finds it), so the event loop never stalls on it."""
        in_thread = self.assign_in_thread
        if in_thread is None:
            in_thread = plan.partitions >= THREADED_ASSIGN_PARTITIONS
        if not in_thread or not plan.members:
            return
        key = (dict(plan.members), plan.partitions)
        if self._warmed is not None and key == self._warmed[0]:
            return  # computed already, and held
        got = await anyio.to_thread.run_sync(partial(assign, key[0], plan.partitions, balance=None))
        self._warmed = (key, got)

    async def warm_for(self, weights: Mapping[str, float]) -> None:
        """Compute the base map of a plan for ``weights`` ahead of the plan (see
        :meth:`warm`): ``make_plan`` then finds it, and does not compute it on the event
        loop inside its transaction."""
        await self.warm(Plan(0, b"", weights, self._partitions))

    async def plan_map(self, m: Membership) -> PlanMap:
        """The stored plan's map, after writing a new plan if it is ours to write
        (docs/assignment.md, "The plan"): the plan is stale when our settled view is
        newer than the membership it was made for and has other members. The member
        first by id in the new membership writes it at once, the k-th after k times
        ``plan_grace`` seconds if it is still stale then (the first ones may be paused,
        gone, or run no jobs). Conditional writes: of concurrent planners one wins, the
        others adopt its plan."""
        w = self.w
        if self.plan is None or self._dirty:
            self._dirty = False
            self.plan, how = await w.transact(tx_read_plan_since, w.space, self.plan)
            self.plan_reads[how] += 1
        plan = self.plan
        weights: dict[str, float] | None = None
        if plan is None or plan.partitions != self._partitions:
            stale = True
        elif m.view_key <= plan.epoch:
            stale = False
        elif self._same_members is not None and self._same_members[:2] == (m, plan):
            stale = not self._same_members[2]  # decided for this view and plan (O(N))
        else:
            weights = view_weights(m.members)
            same = plan.same_members(weights)
            self._same_members = (m, plan, same)
            stale = not same
        if stale or self.drift_replan:
            weights = view_weights(m.members) if weights is None else weights
        if stale and weights and w.id in m.members:
            # (A view without us is one we were evicted from: not ours to plan by.)
            # The new plan's base map is the map of these weights: compute it now, in
            # a thread when large. The member that writes the plan then does not
            # compute it on the event loop inside its transaction, and the others have
            # it at hand when the plan arrives: a failover waits for one computation,
            # not two in a row.
            await self.warm_for(weights)
            now = current_time()
            if self._stale_since is None or self._stale_since[0] != m.view_key:
                self._stale_since = (m.view_key, now)
            # The k-th member by id waits k grace periods: the first writes at once,
            # the next only if the first did not (paused, gone, or running no jobs).
            order = sorted(weights)
            rank = order.index(w.id) if w.id in weights else len(order)
            if now - self._stale_since[1] >= self.plan_grace * rank:
                plan = await self.replan(weights, m.view_key)
            else:
                self.pending = True
        elif self.drift_replan and weights is not None:
            self.drift_replan = False
            plan = await self.replan(weights, m.view_key, force=True)
        if plan is None:
            plan = Plan(0, b"", {}, self._partitions)
        if self._same_members is not None and self._same_members[1] is not plan:
            self._same_members = None  # of a plan gone: do not keep it (and its map) alive
        if self._map is not None and self._map.plan is plan:
            return self._map
        await self.warm(plan)
        self._map = plan.map()
        return self._map

    def drifted(self, a: PlanMap, jobs: int) -> bool:
        """After a read of our share: jobs were added or removed since the plan and our
        count (``jobs``, our target's) is more than 1 away from our fair share (at most
        once per settle window). The next reconcile then writes a plan for the same
        members and today's counts."""
        plan = a.plan
        total = self.jobs_total
        self.drift_due = None
        if not plan.members or total is None or total == plan.jobs:
            return False
        if self.w.id not in plan.members:
            return False
        fair = total * plan.members[self.w.id] / sum(plan.members.values())
        if abs(jobs - fair) <= 1.0:
            return False
        now = current_time()
        due = self.last_drift_plan + self.w.options.settle
        if now < due:
            # Rate-limited, not forgotten: nothing else may come to wake us (a remove
            # right after a drift plan left 8/12 against 10/10 until the next change).
            self.drift_due = due
            return False
        self.last_drift_plan = now
        self._log().info("plan_drift", jobs=jobs, fair_share=round(fair, 2))
        return True

    async def replan(
        self, weights: Mapping[str, float], epoch: bytes, *, force: bool = False
    ) -> Plan | None:
        w = self.w
        seen = self.plan.seq if self.plan else None
        for _ in range(2):
            tr = w.db.create_transaction()
            tr.set_timeout(max(w.options.op_timeout, 5.0))
            try:
                plan, wrote = await run_transaction(
                    w.db,
                    tr,
                    tx_replan,
                    w.space,
                    seen,
                    weights,
                    epoch,
                    self._partitions,
                    force=force,
                )
            except NotCounted:
                await recount(w.db, w.space, self._partitions)
                continue
            if wrote and plan is not None:
                self.plans_written += 1
                self._log().info(
                    "plan_written",
                    seq=plan.seq,
                    members=len(plan.members),
                    jobs=plan.jobs,
                    overrides=len(plan.overrides),
                    forced=force,
                )
            self.plan = plan
            return plan
        return self.plan
