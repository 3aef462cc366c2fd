"""Liveness arithmetic (pure): neighbour staleness and the worker's own lease.

G6, clock independence: nothing here compares clocks of two hosts. A checker measures on
its *own* monotonic clock how long a neighbour's heartbeat stamp has stayed the same; a
worker measures on its own clock how long ago its last heartbeat that committed started.

G2 and G3 follow from two inequalities, with ``T`` the watched worker's timeout:

* A checker evicts only after the stamp stayed unchanged for ``T`` on its clock, counted
  from the moment it first saw that stamp, which is after the stamp's commit, which is
  after the heartbeat transaction started. So eviction happens at least ``T`` after the
  start of the worker's last successful heartbeat. A worker that commits a heartbeat at
  least once per ``T`` always changes the stamp in time (G2).
* The worker's lease expires ``T - margin`` after the start of its last successful
  heartbeat, i.e. at least ``margin`` before anyone may evict it. It stops its jobs when
  the lease expires (self-fencing), so a new owner, which starts only after the eviction
  committed, never overlaps it (G3), as long as the clocks' rates differ by less than
  ``margin / T`` and the jobs stop within the margin.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

from .._errors import ConfigError


@dataclass
class _Seen:
    incarnation: str
    stamp: bytes | None
    since: float
    timeout: float | None = None


#: Superseded incarnations one checker keeps waiting for (the oldest are dropped).
MAX_GHOSTS = 1000


@dataclass
class NeighbourTracker:
    """What one checker has seen of its neighbours' heartbeat stamps.

    It also keeps *ghosts*: incarnations it saw replaced by a newer incarnation of the
    same id (a restart) or gone. A ghost's heartbeats stopped committing before the
    replacement or removal committed (its heartbeat reads its own member record
    without snapshot, so it conflicts with either), and that was before this worker
    saw it. So once the ghost's timeout has passed on this worker's clock since then,
    the ghost's lease has run out: the worker may attest that it runs nothing
    (``retire``), and its claims are taken at once. Every member keeps ghosts of every
    id from its membership reads (``_core.membership.replaced_or_gone``), not only the
    id's ring checker: the wait is counted once per observer, however often the id
    restarts meanwhile, and is lost only if every member that saw the ghost restarts
    before its timeout has passed."""

    _seen: dict[str, _Seen] = field(default_factory=dict)
    #: (wid, incarnation) -> (when this checker first saw it superseded, its timeout)
    _ghosts: dict[tuple[str, str], tuple[float, float]] = field(default_factory=dict)

    def observe(
        self,
        wid: str,
        incarnation: str,
        stamp: bytes | None,
        now: float,
        timeout: float | None = None,
    ) -> None:
        """Record the stamp read at ``now`` (None: no health key) of the incarnation the
        membership shows, with its timeout (needed to retire it once superseded)."""
        s = self._seen.get(wid)
        if s is not None and s.incarnation != incarnation and s.timeout is not None:
            self.superseded(wid, s.incarnation, s.timeout, now)
        if s is None or s.incarnation != incarnation or s.stamp != stamp:
            self._seen[wid] = _Seen(incarnation, stamp, now, timeout)
        elif timeout is not None:
            s.timeout = timeout

    def departed(self, wid: str, now: float) -> None:
        """The membership read at or before ``now`` no longer lists ``wid``: the
        incarnation we last saw was removed (evicted, left: already retired, unless an
        operator forced it out) or superseded by one that was removed since (a restart,
        then a leave). Either way no heartbeat of it commits any more, so it is a ghost
        like a superseded one; without this, a successor that came and went between two
        of our reads would leave it to each claimant, counting from zero."""
        s = self._seen.get(wid)
        if s is not None and s.timeout is not None:
            self.superseded(wid, s.incarnation, s.timeout, now)

    def superseded(self, wid: str, incarnation: str, timeout: float, now: float) -> None:
        """``incarnation`` of ``wid`` was seen replaced at ``now`` (kept: first sight)."""
        self._ghosts.setdefault((wid, incarnation), (now, timeout))
        while len(self._ghosts) > MAX_GHOSTS:
            del self._ghosts[min(self._ghosts, key=lambda k: self._ghosts[k][0])]

    def ghosts_due(self, now: float) -> list[tuple[str, str]]:
        """Superseded incarnations whose lease has certainly run out by ``now``."""
        return sorted(k for k, (seen, t) in self._ghosts.items() if now >= seen + t)

    def ghost_retired(self, wid: str, incarnation: str) -> None:
        self._ghosts.pop((wid, incarnation), None)

    def next_ghost_due(self) -> float | None:
        return min((seen + t for seen, t in self._ghosts.values()), default=None)

    def tracked(self) -> list[str]:
        return list(self._seen)

    def forget(self, wid: str) -> None:
        self._seen.pop(wid, None)

    def seen_stamp(self, wid: str) -> bytes | None:
        s = self._seen.get(wid)
        return s.stamp if s else None

    def silent_for(self, wid: str, now: float) -> float:
        """How long the stamp has stayed the same, as far as this checker knows (0 when
        it has never observed ``wid``: a new neighbour is watched for a full timeout)."""
        s = self._seen.get(wid)
        return 0.0 if s is None else max(0.0, now - s.since)

    def stale(self, wid: str, timeout: float, now: float) -> bool:
        return wid in self._seen and self.silent_for(wid, now) >= timeout

    def suspect(self, wid: str, timeout: float, now: float) -> bool:
        """Missed at least one heartbeat (they come every timeout/3)."""
        return wid in self._seen and self.silent_for(wid, now) >= timeout / 2

    def evict_due(self, wid: str, timeout: float) -> float | None:
        """The earliest local time at which ``wid`` may be declared stale."""
        s = self._seen.get(wid)
        return None if s is None else s.since + timeout

    def retain(self, wids: set[str]) -> None:
        """Forget neighbours no longer watched (a returning one is watched afresh)."""
        for wid in list(self._seen):
            if wid not in wids:
                del self._seen[wid]


@dataclass
class Lease:
    """The worker's own right to run jobs, renewed by every heartbeat that commits."""

    timeout: float
    margin: float
    last_ok_start: float | None = None

    def __post_init__(self) -> None:
        if not 0 < self.margin < self.timeout:
            raise ConfigError(
                f"fence margin must be between 0 and the timeout ({self.timeout}), "
                f"got {self.margin}"
            )

    def renewed(self, heartbeat_started: float) -> None:
        if self.last_ok_start is None or heartbeat_started > self.last_ok_start:
            self.last_ok_start = heartbeat_started

    def revoke(self) -> None:
        self.last_ok_start = None

    def age(self, seconds: float) -> None:
        """``seconds`` passed that the clock did not count (a suspend): the lease is
        that much older than the clock says."""
        if self.last_ok_start is not None and seconds > 0:
            self.last_ok_start -= seconds

    @property
    def expires_at(self) -> float:
        if self.last_ok_start is None:
            return float("-inf")
        return self.last_ok_start + self.timeout - self.margin

    @property
    def hard_end(self) -> float:
        """The latest local time at which a job may still run: a fenced stop gives
        handlers at most half the margin, so they end at least ``margin / 2`` before
        anyone may evict this worker. Past it, a handler is cancelled without grace
        (a process resumed after a long freeze wakes up past it)."""
        return self.expires_at + self.margin / 2

    def valid(self, now: float) -> bool:
        return now < self.expires_at

    def remaining(self, now: float) -> float:
        return max(0.0, self.expires_at - now)


def default_check_interval(timeout: float) -> float:
    """How often a checker reads its neighbour's stamp: G1's bound is
    ``timeout + check_interval`` (+ one transaction)."""
    return min(1.0, timeout / 4)


def default_fence_margin(timeout: float) -> float:
    return timeout / 4


def max_fence_margin(timeout: float, heartbeat_interval: float, op_timeout: float) -> float:
    """The largest fence margin that still leaves a lease (``timeout - margin``) of at
    least one heartbeat interval plus one operation timeout: a heartbeat due at the end
    of an interval that then takes its whole timeout to fail must not fence a healthy
    worker. A larger margin fences on ordinary latency and restarts every job."""
    return timeout - heartbeat_interval - op_timeout


#: A difference between the two clocks below this is the jitter of reading them one
#: after the other (tens of microseconds; more when the thread is preempted between
#: the two reads), not a suspend: it is neither counted nor logged.
SUSPEND_JITTER: Final = 0.01


@dataclass
class SuspendMeter:
    """Time the machine spent suspended, from two clocks read side by side: one that
    counts suspended time (Linux CLOCK_BOOTTIME) and one that does not (the event
    loop's CLOCK_MONOTONIC). A laptop sleep, a VM pause or a live migration stops the
    second but not the first: the difference that grows between two readings is time
    this worker did not see pass, while its peers did (and may have evicted it).

    Frozen processes (SIGSTOP) need nothing of this: CLOCK_MONOTONIC keeps running
    for them."""

    boot: float
    mono: float

    def observe(self, boot: float, mono: float) -> float:
        """Seconds of suspension since the last reading: 0 when the difference is below
        :data:`SUSPEND_JITTER` (reading two clocks one after the other, or a little
        drift either way), else the whole difference."""
        suspended = (boot - self.boot) - (mono - self.mono)
        # Follow the clocks every time, so that jitter and drift do not accumulate.
        self.boot, self.mono = boot, mono
        return suspended if suspended >= SUSPEND_JITTER else 0.0
