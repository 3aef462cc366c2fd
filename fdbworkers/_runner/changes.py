"""The job change log, as the runner follows it: a cursor into the role's change log, the
partitions whose jobs changed since the last read, and the watches that wake the runner
(job changes, the worker's inbox, the stored plan).

A read changes nothing outside its transaction (:meth:`ChangeFeed.tx_read_changes`); its
result is applied once it committed (:meth:`ChangeFeed.apply_changes`). A full read of
the runner's share moves the cursor back to the version it read at
(:meth:`ChangeFeed.follow_from`), so that no change the paged read missed is skipped
(docs/architecture.md, "The paged share read").
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import anyio

from .._core.records import VERSIONS_PER_SECOND, decode, stamp_version
from .._db import Transaction
from .._errors import CorruptDataError, FDBError
from .._loop import (
    Event,
    TaskGroup,
    current_time,
    move_on_after,
    new_event,
    open_task_group,
    sleep,
)
from .._store.jobs import JOBCHANGE_RETENTION
from .._store.plan import tx_read_plan_seq
from .._worker import Worker


@dataclass
class _ChangeRead:
    """What one read of the job change log found (applied only after it committed)."""

    #: The cursor the read started after (None: no full read yet, nothing to apply).
    since: bytes | None
    #: The cursor after the last entry read.
    cursor: bytes | None = None
    full_resync: bool = False
    changed: bool = False
    partitions: set[int] = field(default_factory=set)
    #: The stored plan's sequence number at the read (-2: not read).
    plan_seq: int | None = -2


class ChangeFeed:
    """The runner's cursor into the job change log and what it found since the last
    reconcile step: the partitions to read again (``dirty_parts``) and whether to read
    them all (``full_resync``)."""

    def __init__(
        self,
        worker: Worker,
        log: Callable[[], Any],
        rng: random.Random,
        *,
        resync_interval: float,
        full_resync_interval: float,
        wake: Callable[[], None],
        plan_seq: Callable[[], int | None],
        plan_changed: Callable[[], None],
        inbox_fired: Callable[[], None],
    ) -> None:
        self.w = worker
        self._log = log
        self._rng = rng
        #: The change log and the watches are re-armed this often (a safety net: O(1)).
        self.resync_interval = resync_interval
        #: All owned partitions are re-read this often even when nothing says so
        #: (O(J/N) keys, O(P/N) requests): rare, so the cost at rest stays O(1).
        self.full_resync_interval = full_resync_interval
        self.last_full_resync = -math.inf
        self._wake = wake
        self._plan_seq = plan_seq
        self._plan_changed = plan_changed
        self._inbox_fired = inbox_fired
        self.full_resync = True
        self.dirty_parts: set[int] = set()
        self.last_change: bytes | None = None
        #: Bumped (and the event set) whenever a full read moves the cursor.
        self._cursor_moves = 0
        self._cursor_moved = new_event()
        #: Reads of the change log (``RunnerStatistics.change_log_reads``).
        self.reads = 0

    async def watch_loop(self) -> None:
        """Wakes the reconciler on job changes and on our inbox (claims released for
        us). Two watches, armed in the transaction that read the change log."""
        w = self.w
        last_read = -math.inf
        gated = False
        while True:
            if gated:
                # Only jobs_epoch fired: at most one change-log read per gap, so that a
                # steady stream of job adds and removes costs each worker a bounded rate
                # of reads (every change bumps jobs_epoch, which all N workers watch),
                # not one per change. Inbox and plan fires are read at once.
                wait = last_read + w.options.membership_read_gap - current_time()
                if wait > 0:
                    await sleep(wait)
            last_read = current_time()
            gated = False
            moves = self._cursor_moves
            try:
                read, watches = await self.w.transact(self.tx_read_changes)
                self.reads += 1
            except FDBError as e:
                self._log().warning("job_changes_read_failed", error=e.name)
                await anyio.sleep(1.0)
                continue
            if self.apply_changes(read):
                self._wake()
            if self._cursor_moves != moves:
                # A full read set the cursor back meanwhile (or for the first time):
                # read the log from there at once, not at the next change.
                for watch in watches:
                    watch.cancel()
                continue
            try:
                gated = await self._wait_for_watches(watches) == [0]
            finally:
                for watch in watches:
                    watch.cancel()
            self._wake()

    async def _wait_for_watches(self, watches: list[Any]) -> list[int]:
        """Wait until a watch fires, a full read moves the cursor, or the resync interval
        (jittered) passes; returns the indexes of the watches that fired."""
        w = self.w
        async with open_task_group() as n:
            fired: list[int] = []

            async def one(watch: Any, i: int, n: TaskGroup = n, fired: list[int] = fired) -> None:
                try:
                    await watch.wait()
                except FDBError as e:
                    if e.code == 1032:
                        await sleep(w.options.poll_interval)
                if i == 1:
                    self._inbox_fired()
                elif i == 2:
                    # Another member wrote a plan: the runner reads it at its next
                    # step (woken below), not only after the change-log read that
                    # follows this wait (a round trip later, on the failover path).
                    self._plan_changed()
                fired.append(i)
                n.cancel_scope.cancel()

            # watches = [jobs_epoch, inbox, plan] (tx_read_changes): an
            # inbox fire may bring handoffs from a leaving worker.
            for i, watch in enumerate(watches):
                n.start_soon(one, watch, i)

            async def cursor_moved(ev: Event, n: TaskGroup = n) -> None:
                await ev.wait()
                n.cancel_scope.cancel()

            n.start_soon(cursor_moved, self._cursor_moved)
            with move_on_after(self.resync_interval * (0.5 + self._rng.random())):
                await anyio.sleep_forever()
            if current_time() - self.last_full_resync >= self.full_resync_interval:
                self.full_resync = True
            n.cancel_scope.cancel()
        return fired

    async def tx_read_changes(self, tr: Transaction) -> tuple[_ChangeRead, list[Any]]:
        """Read the job change log after our cursor and arm the two watches. Changes
        nothing outside the transaction (the retry loop may run it again, or its
        commit may fail): the caller applies the result once it committed."""
        space = self.w.space
        begin, end = space.jobchange_range()
        cursor = self.last_change
        if cursor is not None:
            begin = space.jobchange_after(cursor)
        kvs = await tr.get_range(begin, end, limit=1001)
        plan_seq = await tx_read_plan_seq(tr, space)
        watches = [
            tr.watch(space.jobs_epoch_key),
            tr.watch(space.inbox_key(self.w.id)),
            tr.watch(space.plan_key),
        ]
        if cursor is None:
            # No full read yet: it sets the cursor to its own read version, so that no
            # change committed after it is skipped (see JobRunner._reconcile).
            return _ChangeRead(cursor, plan_seq=plan_seq), watches
        if len(kvs) > 1000:
            last = await tr.get_range(begin, end, limit=1, reverse=True)
            stamp = space.jobchange_stamp(last[0].key)
            return _ChangeRead(cursor, stamp, True, plan_seq=plan_seq), watches
        rv = await tr.get_read_version()
        read = _ChangeRead(cursor, cursor, plan_seq=plan_seq)
        # Trimmed entries may be missing past a cursor this old.
        read.full_resync = stamp_version(cursor) < rv - int(
            JOBCHANGE_RETENTION / 2 * VERSIONS_PER_SECOND
        )
        for kv in kvs:
            try:
                obj = decode(kv.key, kv.value)
                if "partitions" in obj:  # a bulk add: one entry per transaction
                    read.partitions.update(int(p) for p in obj["partitions"])
                else:
                    read.partitions.add(int(obj["partition"]))
            except (CorruptDataError, KeyError, ValueError, TypeError):
                read.full_resync = True
            read.cursor = space.jobchange_stamp(kv.key)
        read.changed = bool(kvs)
        return read, watches

    def apply_changes(self, read: _ChangeRead) -> bool:
        """Apply a committed change-log read; True if anything changed."""
        plan_changed = read.plan_seq != -2 and read.plan_seq != self._plan_seq()
        if plan_changed:
            self._plan_changed()  # another member wrote a plan: the planner reads it
        # The job changes of the same read are applied too: the watches are re-armed
        # from this read, so entries skipped here would wait for the periodic resync.
        if read.cursor is None or self.last_change != read.since:
            return plan_changed  # no full read yet, or a full read moved the cursor meanwhile
        self.dirty_parts |= read.partitions
        self.full_resync = self.full_resync or read.full_resync
        self.last_change = read.cursor
        return read.changed or read.full_resync or plan_changed

    def follow_from(self, version: int) -> None:
        """A full read of our share read at ``version``: changes up to it are in what we
        read, so the change log is followed from there (re-reading a few entries is
        harmless; skipping one would lose a job until the next full read)."""
        cursor = version.to_bytes(8, "big") + b"\0\0"
        if self.last_change is None or cursor < self.last_change:
            self.last_change = cursor
            self._cursor_moves += 1
            ev, self._cursor_moved = self._cursor_moved, new_event()
            ev.set()
