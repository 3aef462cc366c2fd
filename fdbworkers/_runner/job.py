"""What a handler sees and what the runner reports: the job handle (:class:`Job`, with its
fencing token and ``fence(tr)``), the handler's type, one reconcile step's
:class:`OwnershipChange`, and :class:`RunnerStatistics`."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from .._core.records import Claim, MemberRecord, stamp_version
from .._db import Database, Transaction
from .._errors import FencedError
from .._loop import Event, new_event
from .._worker import Worker


@dataclass
class Job:
    """What a handler gets: the job and its fencing token.

    ``token`` is the claim's commit versionstamp (10 bytes, increasing per job): pass it
    to external systems that can reject stale writers. ``fence(tr)`` makes the
    application's own FDB transaction commit only while this claim still holds.
    ``check()`` raises :class:`FencedError` once the worker's lease expired, which a
    handler should call before any side effect outside FoundationDB. ``stopping`` is set
    when the job moves away or the worker stops: the running loop's own event (a
    ``trio.Event`` under trio, an ``asyncio.Event`` under asyncio; ``is_set()``,
    ``await stopping.wait()``).
    """

    id: str
    role: str
    partition: int
    spec: Any
    weight: float
    token: bytes
    _worker: Worker = field(repr=False)
    stopping: Event = field(default_factory=new_event, repr=False)
    #: Set once the runner parked the job (``park_after`` failures in a row): it stays
    #: claimed here but is not run again until it moves or this worker restarts.
    parked: bool = field(default=False, repr=False)
    _on_failure: Callable[[str], None] | None = field(default=None, repr=False)

    def report_failure(self, error: str) -> None:
        """Count a failed run that did not raise out of the handler, for a handler that
        restarts its own work (``--exec`` does, for each exit code other than 0): the
        job shows as ``failing`` in ``jobs`` and ``status`` like after a crash, and is
        parked after ``park_after`` failures in a row; check :attr:`parked` after."""
        if self._on_failure is not None:
            self._on_failure(str(error))

    @property
    def db(self) -> Database:
        """The database of the worker running this job."""
        return self._worker.db

    @property
    def token_version(self) -> int:
        return stamp_version(self.token)

    def check(self) -> None:
        if self.stopping.is_set():
            raise FencedError(f"job {self.id!r} is being stopped on this worker")
        if not self._worker.lease_valid():
            raise FencedError(f"worker {self._worker.id!r} lost its lease (fenced)")

    async def fence(self, tr: Transaction) -> None:
        """Add the claim check to ``tr``: reads (with conflict ranges) of the job's claim,
        which must still carry this job's token, and of this worker's member record,
        which must still be this incarnation. If another worker takes the claim, or this
        worker is evicted, before ``tr`` commits, ``tr`` conflicts (1020), and its retry
        raises FencedError: a worker that lost the job, or was evicted while paused in
        the middle of a transaction, never commits a fenced write."""
        w = self._worker
        space = w.space
        ckey = space.claim_key(self.partition, self.id)
        mkey = space.member_key(w.id)
        raw = await tr.get(ckey)
        if raw is None or Claim.decode(ckey, raw).token != self.token:
            raise FencedError(f"job {self.id!r}: the claim with this token is gone")
        mraw = await tr.get(mkey)
        if mraw is None or MemberRecord.decode(w.id, mkey, mraw).incarnation != w.incarnation:
            raise FencedError(f"worker {w.id!r} is no longer a member with this incarnation")
        if not self._worker.lease_valid():
            raise FencedError(f"worker {self._worker.id!r} lost its lease (fenced)")


Handler = Callable[[Job], Awaitable[None]]


@dataclass(frozen=True)
class OwnershipChange:
    """What the runner did in one reconcile step."""

    started: frozenset[str]
    stopped: frozenset[str]
    owned: frozenset[str]
    epoch: bytes


@dataclass(frozen=True)
class RunnerStatistics:
    running: int
    target: int
    pending_claims: int
    started: int
    stopped: int
    handler_crashes: int
    claims_committed: int
    claims_blocked: int
    reconciles: int
    moves_deferred: int
    #: Partitions taken over from a leaving worker before the membership settled.
    handoffs_adopted: int = 0
    #: Plans this worker wrote (docs/assignment.md, "The plan").
    plans_written: int = 0
    #: Reads of the stored plan: the deltas since the plan this worker held, or the
    #: whole plan (docs/assignment.md, "Plan deltas").
    plans_read_by_delta: int = 0
    plans_read_whole: int = 0
    #: Jobs whose runs fail (crash or reported failure) and have not run
    #: ``healthy_after`` seconds since; jobs parked; failed runs in all.
    jobs_failing: int = 0
    jobs_parked: int = 0
    job_failures: int = 0
    #: Paged reads of owned partitions (each rebalance reads what it gained, and what
    #: the change log says changed; see docs/architecture.md): how many, and their
    #: keys, range requests and transactions in all.
    share_reads: int = 0
    share_keys_read: int = 0
    share_requests: int = 0
    share_transactions: int = 0
    #: Reads of the job change log (at most one per ``membership_read_gap`` while only
    #: job changes wake them).
    change_log_reads: int = 0
