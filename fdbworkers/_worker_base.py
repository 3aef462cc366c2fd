"""What the worker's loops share: ``WorkerBase`` holds one worker's identity, options,
lease, membership view, wake-up events and counters, and the few steps every loop takes
(run a transaction, change state, age or renew the lease, stop the work). The loops are
functions taking the worker, by subject: ``_worker_lease`` (register, heartbeat, fence,
rejoin), ``_worker_membership`` (read, watch, settle, report) and ``_worker_neighbours``
(check, evict, retire); ``_worker.Worker`` adds the public surface and runs them.
"""

from __future__ import annotations

import math
import os
import random
import socket
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Concatenate, ParamSpec, TypeVar

import anyio
from anyio.streams.memory import MemoryObjectSendStream

from ._core.keys import Layout, validate_name
from ._core.liveness import Lease, NeighbourTracker, SuspendMeter
from ._core.membership import Membership, MembershipChange
from ._core.records import MemberRecord, RoleConfig
from ._core.ring import Ring
from ._core.settle import Settler
from ._core.states import WorkerState, allowed
from ._db import Database, Transaction, run_transaction
from ._log import get_logger
from ._loop import Event, current_time, new_event
from ._worker_options import WorkerOptions

P = ParamSpec("P")
T = TypeVar("T")


class WorkerBase:
    """The state of one worker in one role, shared by its loops (see the module
    docstring); :class:`fdbworkers.Worker` is the one to use."""

    def __init__(
        self,
        db: Database,
        role: str,
        worker_id: str,
        options: WorkerOptions,
        *,
        root: str | bytes | tuple[str, ...] | None = None,
        rng: random.Random | None = None,
        clocks: tuple[Callable[[], float], Callable[[], float]] | None = None,
    ) -> None:
        self.db = db
        role = validate_name("role", role)
        self.id = validate_name("worker id", worker_id)
        self.options = options
        #: Every key of this worker's role (the root's keys are on ``space.layout``).
        self.space = Layout.for_root(root).role(role)
        self._members_scope = self.space.members_range()[0]
        self._rng = rng or random.Random()
        self.incarnation = self._new_incarnation()
        self.state = WorkerState.STARTING
        self.role_config: RoleConfig | None = None
        self.lease = Lease(options.timeout, options.effective_fence_margin)
        #: (boot clock, monotonic clock): the lease ages by the time the machine spent
        #: suspended, which the event loop's clock does not count (see SuspendMeter).
        self._clocks = clocks or default_clocks()
        self._suspend = SuspendMeter(self._clocks[0](), self._clocks[1]())
        self._tracker = NeighbourTracker()
        #: The ring of the members the check loop last saw (updated per change, not
        #: re-sorted per check: the cost at rest stays O(1) per worker).
        self._ring = Ring()
        self._ring_of: Mapping[str, MemberRecord] | None = None
        self._settler = Settler(
            options.settle, options.effective_settle_max, leading=options.settle_leading
        )
        #: The latest membership read (unsettled): used for liveness.
        self.latest: Membership | None = None
        #: The last settled membership reported to the application.
        self.membership: Membership | None = None
        self._reported: Membership | None = None
        self._body_scope: anyio.CancelScope | None = None
        self._replaced_seen_at: float | None = None
        #: When the last heartbeat's commit returned (this process's clock).
        self.last_heartbeat_committed: float | None = None
        #: True while a heartbeat transaction runs (it may commit at any moment).
        self.heartbeat_in_flight = False
        self._leaving: Event | None = None
        #: (this process's clock, wall time) of the first failure since the cluster
        #: last answered a registration or heartbeat; None while it answers.
        self._unreachable_since: tuple[float, float] | None = None
        self._unreachable_logged = -math.inf
        self.log = get_logger("fdbworkers").bind(
            role=self.role, worker=self.id, incarnation=self.incarnation
        )
        self._init_signals()
        self._init_statistics()

    def _init_signals(self) -> None:
        """The events that wake the loops and the lists of who listens to what."""
        self._lease_changed = new_event()
        self._state_event = new_event()
        self._membership_event = new_event()
        self._wake_reader = new_event()
        self._wake_settle = new_event()
        self._wake_heartbeat = new_event()
        self._wake_ghosts = new_event()
        self._subscribers: list[MemoryObjectSendStream[MembershipChange]] = []
        self._work_stoppers: list[Callable[[str], Awaitable[None]]] = []
        self._lease_listeners: list[Callable[[], None]] = []

    def _init_statistics(self) -> None:
        """The counters behind ``statistics()``."""
        self._hb_sent = 0
        self._hb_failures = 0
        self._hb_latency_last = 0.0
        self._hb_latency_max = 0.0
        self._evictions = 0
        self._watch_fires = 0
        self._membership_reads = 0
        self._membership_full_reads = 0
        self._changes_reported = 0
        self._polling = False
        self._fences = 0
        self._rejoins = 0
        self._corrupt = 0

    def _account_suspend(self) -> None:
        """Age the lease by any suspension since the last look (two clock reads)."""
        slept = self._suspend.observe(self._clocks[0](), self._clocks[1]())
        if slept > 0:
            self.lease.age(slept)
            self.log.warning("suspended", seconds=round(slept, 3), action="lease aged")
            for fn in list(self._lease_listeners):
                fn()
            self._lease_changed.set()

    async def wait_state_change(self) -> WorkerState:
        await self._state_event.wait()
        return self.state

    def _renew_lease(self, started: float) -> None:
        self.lease.renewed(started)
        for fn in list(self._lease_listeners):
            fn()

    async def transact(
        self,
        fn: Callable[Concatenate[Transaction, P], Awaitable[T]],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> T:
        """Run ``fn(tr, *args, **kwargs)`` in the shared retry loop, with this worker's
        operation timeout on the transaction, so that it never hangs forever."""
        tr = self.db.create_transaction()
        tr.set_timeout(self.options.op_timeout)
        return await run_transaction(self.db, tr, fn, *args, **kwargs)

    def _new_incarnation(self) -> str:
        return f"{self._rng.getrandbits(64):016x}"

    def _set_state(self, state: WorkerState) -> None:
        if state is self.state:
            return
        if not allowed(self.state, state):  # a bug: the table in _core/states.py says why
            self.log.error("worker_state_unexpected", old=self.state.value, new=state.value)
        self.log.info("worker_state", old=self.state.value, new=state.value)
        self.state = state
        ev, self._state_event = self._state_event, new_event()
        ev.set()

    def _record(self) -> MemberRecord:
        meta = dict(self.options.meta)
        return MemberRecord(
            wid=self.id,
            incarnation=self.incarnation,
            timeout=self.options.timeout,
            weight=float(self.options.weight),
            host=str(meta.pop("host", socket.gethostname())),
            pid=int(meta.pop("pid", os.getpid())),
            joined_at=time.time(),
            meta=meta,
        )

    @property
    def role(self) -> str:
        """The role this worker is a member of."""
        return self.space.role

    @property
    def layout(self) -> Layout:
        """The keys of the root (``space.layout``)."""
        return self.space.layout

    @property
    def unreachable_for(self) -> float:
        """Seconds since the cluster last answered (0 while it answers)."""
        if self._unreachable_since is None:
            return 0.0
        return current_time() - self._unreachable_since[0]

    async def _stop_work(self, reason: str) -> None:
        for fn in list(self._work_stoppers):
            await fn(reason)

    def _drain_requested(self) -> None:
        self.log.info("drain_requested")
        self._set_state(WorkerState.DRAINING)


def default_clocks() -> tuple[Callable[[], float], Callable[[], float]]:
    """(a clock that counts suspended time, one that does not): CLOCK_BOOTTIME and
    CLOCK_MONOTONIC on Linux. Where there is no boot clock both are the monotonic
    clock, and suspends go unnoticed (documented in docs/architecture.md)."""
    boot_id = getattr(time, "CLOCK_BOOTTIME", None)
    if boot_id is None:
        return time.monotonic, time.monotonic
    return (lambda: time.clock_gettime(boot_id)), time.monotonic
