"""The claim and lease rules in motion: a Hypothesis state machine (issue 15).

The simulation (``fdbworkers.testing``) runs the real worker on a virtual clock, with
seeded faults; a seed reaches a rare interleaving only by luck. This machine runs the
*pure* rules instead, and Hypothesis chooses every step, so it explores (and shrinks)
the interleavings of the few steps that decide who may run a job:

* the database is a dict, and each transaction one step at one model instant (its
  serialisation point); the two transactions whose start matters are split in two:
  a heartbeat (the lease counts from its start, it commits only if its own member
  record did not change since its read) and a claim (the claimant's clock at the
  start and at the end of the transaction may both be used);
* worker ids, each started any number of times (a new incarnation) on a new host with
  its own timeout (shorter or longer than before), fence margin and clock rate (within
  1 % of model time: G6 compares no clocks, it assumes rates agree well within the
  margin). Each host has the two clocks of ``SuspendMeter``: the event loop's
  (monotonic: stops while the machine is suspended) and the boot clock;
* every rule of the library that decides is the library's own code: the claim rule
  (``_core/claims.py``: ``decide_claim``, ``SupersededWaits``), the lease
  (``Lease``: expiry, hard end, ageing), the suspend meter, the neighbour tracker
  (staleness, ghosts of superseded and departed incarnations), ``replaced_or_gone``,
  ``retire``; the model only reads and writes the dict as the transactions do;
* faults: crash (kill -9), freeze (SIGSTOP: the clocks run, the process takes no step),
  suspend (the monotonic clock stops too), resume, heartbeats that fail, slow claims
  (others go on meanwhile), claims whose commit outcome is unknown (written, but the
  claimant does not run the job), handler stops that release or keep their claim,
  leave, park (restart in place), eviction by any member that watched a stamp stay the
  same for the timeout, and the retirement of incarnations seen replaced or gone;
  besides single steps, rounds of healthy workers let time pass with work going on.
  Hypothesis is steered (``target``) toward takeovers close to a lease's end.

Checked after every step, **G3**: no two incarnations believe at the same model instant
that they run the same job, where an incarnation believes only until the hard end of its
lease by its own clock (its monotonic clock plus any suspension its meter will count
when it wakes; a crashed process believes nothing).

Checked at the end of every run, **liveness**: after the last fault (crashed, frozen and
suspended hosts stay so), with one new worker joining and everyone that can still run
heartbeating, watching, retiring and claiming, every job runs on exactly one live
incarnation, which holds its claim, within ``max timeout / slowest rate + 1 s`` of model
time: a claim whose holder is gone becomes takeable after a bounded wait.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

from hypothesis import settings, target
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from fdbworkers._core.claims import StoredClaim, SupersededWaits, decide_claim
from fdbworkers._core.liveness import SUSPEND_JITTER, Lease, NeighbourTracker, SuspendMeter
from fdbworkers._core.membership import Membership, replaced_or_gone
from fdbworkers._core.records import MemberRecord, retire

ROLE = "r"
JOBS = ("j0", "j1", "j2")
WIDS = ("w0", "w1", "w2")
TIMEOUTS = (2.0, 3.0, 8.0)
#: Fence margins as fractions of the timeout (the default is 1/4; at most the lease must
#: leave one heartbeat interval plus an operation timeout).
MARGINS = (0.125, 0.25, 0.5)
RATES = (0.99, 1.0, 1.01)
MAX_HOSTS = 8


@dataclass
class Host:
    rate: float
    mono: float = 0.0  # the event loop's clock: stops while the machine is suspended
    boot: float = 0.0  # counts suspended time (CLOCK_BOOTTIME)
    alive: bool = True  # False: crashed
    frozen: bool = False  # SIGSTOP: no step, clocks run
    suspended: bool = False  # machine asleep: no step, mono stops

    @property
    def steps(self) -> bool:
        return self.alive and not self.frozen and not self.suspended


@dataclass
class Proc:
    """One worker process (its incarnation changes when it rejoins after an eviction)."""

    host: Host
    wid: str
    inc: str
    timeout: float
    lease: Lease
    meter: SuspendMeter
    state: str = "active"  # active, fenced, stopped (superseded, left, parked)
    running: dict[str, int] = field(default_factory=dict)  # job -> token
    kept: set[str] = field(default_factory=set)  # claims it may hold but does not run
    #: job -> when its handler ended at the lease's hard end (own clock)
    ended: dict[str, float] = field(default_factory=dict)
    waits: SupersededWaits = field(default_factory=SupersededWaits)
    tracker: NeighbourTracker = field(default_factory=NeighbourTracker)
    view: Membership | None = None
    hb: tuple[float, int] | None = None  # a heartbeat in flight: (start, record version)
    #: A claim transaction in flight: (job, start, take_superseded, nonce = the model's
    #: version at its start)
    claim: tuple[str, float, frozenset[str], int] | None = None

    @property
    def now(self) -> float:
        return self.host.mono

    def unmetered(self) -> float:
        """Suspended time the meter will count at its next reading."""
        h, m = self.host, self.meter
        slept = (h.boot - m.boot) - (h.mono - m.mono)
        return slept if slept >= SUSPEND_JITTER else 0.0

    def believes(self, job: str) -> bool:
        return (
            self.host.alive
            and job in self.running
            and self.now + self.unmetered() < self.lease.hard_end
        )

    def end(self, job: str, expired: bool = False) -> int:
        """The job's handler ends (the token it ran with); ``expired``: at the lease's
        hard end."""
        if expired:
            self.ended[job] = self.lease.hard_end
        return self.running.pop(job)

    def account_suspend(self) -> None:
        """``Worker._account_suspend``: age the lease by the suspension the two clocks
        show, and cancel the handlers past the hard end it moved."""
        slept = self.meter.observe(self.host.boot, self.host.mono)
        self.lease.age(slept)
        for job in list(self.running):
            if not self.believes(job):
                self.end(job, expired=True)
                self.kept.add(job)

    def lease_valid(self) -> bool:
        self.account_suspend()
        return self.state == "active" and self.lease.valid(self.now)


@dataclass
class World:
    """The database (a dict per key kind) and the processes."""

    members: dict[str, MemberRecord] = field(default_factory=dict)
    mversion: dict[str, int] = field(default_factory=dict)  # writes to each member key
    #: The model version of the last write to each member key.
    changed_at: dict[str, int] = field(default_factory=dict)
    stamps: dict[str, bytes] = field(default_factory=dict)  # health stamps
    claims: dict[str, tuple[StoredClaim, int]] = field(default_factory=dict)
    retired: dict[str, dict[str, int]] = field(default_factory=dict)
    version: int = 0
    procs: list[Proc] = field(default_factory=list)
    hosts: list[Host] = field(default_factory=list)
    incarnations: int = 0
    #: Every timeout any incarnation ever had (the liveness bound).
    timeouts: set[float] = field(default_factory=set)
    #: The least time between the end of a holder's belief and a takeover of its claim.
    closest: float = 100.0
    #: The longest claim transaction during which its holder was superseded.
    longest_race: float = 0.0
    #: The claimant counts its wait for a superseded holder from the start of its claim
    #: transaction (the runner before the fix) instead of from its end.
    seen_at_start: bool = False

    def next_version(self) -> int:
        self.version += 1
        return self.version

    def _write_member(self, wid: str, rec: MemberRecord | None) -> None:
        if rec is None:
            self.members.pop(wid, None)
            self.stamps.pop(wid, None)
        else:
            self.members[wid] = rec
            self.stamps[wid] = self.next_version().to_bytes(10, "big")
        self.mversion[wid] = self.mversion.get(wid, 0) + 1
        self.changed_at[wid] = self.next_version()

    def _retire(self, wid: str, inc: str) -> None:
        entries = self.retired.get(wid, {})
        if inc not in entries:
            self.retired[wid] = retire(entries, inc, self.next_version())

    # -- processes ---------------------------------------------------------------------

    def new_inc(self, wid: str) -> str:
        self.incarnations += 1
        return f"{wid}-{self.incarnations}"

    def start(self, wid: str, timeout: float, margin: float, rate: float) -> Proc:
        host = Host(rate)
        self.hosts.append(host)
        p = Proc(
            host,
            wid,
            "",
            timeout,
            Lease(timeout, timeout * margin),
            SuspendMeter(host.boot, host.mono),
        )
        self.procs.append(p)
        self.register(p)
        return p

    def register(self, p: Proc) -> None:
        """tx_register, then what _register does with its result."""
        p.inc = self.new_inc(p.wid)
        self.timeouts.add(p.timeout)
        old = self.members.get(p.wid)
        rec = MemberRecord(
            p.wid,
            p.inc,
            p.timeout,
            replaced=old.incarnation if old else None,
            replaced_timeout=old.timeout if old else None,
        )
        self._write_member(p.wid, rec)
        p.lease.renewed(p.now)
        p.state = "active"
        if rec.replaced and rec.replaced_timeout:
            p.tracker.superseded(p.wid, rec.replaced, rec.replaced_timeout, p.now)

    def stop_jobs(self, p: Proc, release: bool) -> None:
        """The handlers stop; their claims are released (cleared if still ours) or kept."""
        for job in list(p.running):
            token = p.end(job)
            if release:
                self.release(p, job, token)
            else:
                p.kept.add(job)

    def release(self, p: Proc, job: str, token: int | None = None) -> None:
        held = self.claims.get(job)
        if held is not None:
            c, t = held
            if (c.wid, c.incarnation) == (p.wid, p.inc) and token in (None, t):
                del self.claims[job]
        p.kept.discard(job)

    def expire(self) -> None:
        """Handlers past their hard end are cancelled (before they run again, for a
        process that was frozen); their claims stay."""
        for p in self.procs:
            for job in list(p.running):
                if not p.believes(job):
                    p.end(job, expired=True)
                    p.kept.add(job)

    # -- transactions ------------------------------------------------------------------

    def heartbeat_start(self, p: Proc) -> None:
        p.account_suspend()
        p.hb = (p.now, self.mversion.get(p.wid, 0))

    def heartbeat_commit(self, p: Proc, release: bool) -> None:
        """tx_heartbeat at its commit: it reads its record without snapshot, so it
        commits only if nothing wrote the record since its read."""
        assert p.hb is not None
        start, read_version = p.hb
        p.hb = None
        p.account_suspend()
        rec = self.members.get(p.wid)
        if rec is not None and rec.incarnation == p.inc:
            if self.mversion.get(p.wid, 0) != read_version:
                return  # conflict: retried later
            self.stamps[p.wid] = self.next_version().to_bytes(10, "big")
            p.lease.renewed(start)
            if p.state == "fenced" and p.lease.valid(p.now):
                p.state = "active"
            return
        if rec is not None:
            # Superseded: stop the handlers, clear our claims, exit.
            self.stop_jobs(p, release)
            if release:
                for job in list(p.kept):
                    self.release(p, job)
            p.state = "stopped"
            return
        # Evicted: stop, rejoin as a new incarnation.
        p.lease.revoke()
        self.stop_jobs(p, release)
        self.register(p)

    def fence(self, p: Proc, release: bool) -> None:
        """The lease watchdog: past the expiry, stop every job (a fenced stop may keep
        the claims: release=False)."""
        p.account_suspend()
        if p.state == "active" and not p.lease.valid(p.now):
            p.state = "fenced"
            self.stop_jobs(p, release)

    def read_membership(self, p: Proc) -> None:
        new = Membership(ROLE, self.version.to_bytes(10, "big"), dict(self.members))
        for wid, inc, timeout in replaced_or_gone(p.view, new, p.wid):
            p.tracker.superseded(wid, inc, timeout, p.now)
        p.view = new

    def check(self, p: Proc, pick: int) -> None:
        """One pass of the check loop, watching one neighbour of the view."""
        if p.view is None:
            return
        now = p.now
        for gone in [w for w in p.tracker.tracked() if w not in p.view.members]:
            p.tracker.departed(gone, now)
            p.tracker.forget(gone)
        others = sorted(w for w in p.view.members if w != p.wid)
        if not others:
            return
        wid = others[pick % len(others)]
        rec = p.view.members[wid]
        stamp = self.stamps.get(wid)
        p.tracker.observe(wid, rec.incarnation, stamp, now, rec.timeout)
        if p.tracker.stale(wid, rec.timeout, now):
            self.evict(wid, rec.incarnation, p.tracker.seen_stamp(wid))

    def evict(self, wid: str, inc: str, stamp: bytes | None) -> None:
        """tx_evict: compare-and-clear, then retire the incarnation."""
        rec = self.members.get(wid)
        if rec is None or rec.incarnation != inc or self.stamps.get(wid) != stamp:
            return
        self._write_member(wid, None)
        self._retire(wid, inc)

    def retire_ghosts(self, p: Proc) -> None:
        for wid, inc in p.tracker.ghosts_due(p.now):
            self._retire(wid, inc)
            p.tracker.ghost_retired(wid, inc)

    def claim_start(self, p: Proc, job: str) -> None:
        p.claim = (job, p.now, p.waits.take(job, p.now), self.next_version())

    def claim_commit(self, p: Proc, unknown: bool = False) -> None:
        """tx_claim_many for one job, at its serialisation point, then what the runner
        does with the outcome. ``unknown``: the commit's outcome is unknown to the
        claimant (1021 that committed): the claim is written, the job does not run."""
        assert p.claim is not None
        job, started, take, nonce = p.claim
        p.claim = None
        me = self.members.get(p.wid)
        if me is None or me.incarnation != p.inc:
            return  # not_member
        held = self.claims.get(job)
        stored = held[0] if held else None
        member = self.members.get(stored.wid) if stored else None
        retired = self.retired.get(stored.wid, {}) if stored else {}
        d = decide_claim(p.wid, p.inc, nonce, stored, member, retired, take)
        if d.kind == "take" and stored is not None and stored.wid != "probe":
            # How long before this takeover the previous holder's belief ended (its own
            # clock): the search is steered toward takeovers at the edge of a lease.
            for q in self.procs:
                if q.inc == stored.incarnation and q.host.alive and job in q.ended:
                    self.closest = min(self.closest, q.now + q.unmetered() - q.ended[job])
        if d.kind in ("take", "ours"):
            token = self.next_version()
            self.claims[job] = (StoredClaim(p.wid, p.inc, p.timeout, nonce), token)
            if unknown:
                p.kept.add(job)
                return
            p.waits.claimed(job)
            p.kept.discard(job)
            p.running[job] = token
        elif d.kind == "superseded":
            assert stored is not None
            # The runner counts the wait from when the transaction returned: after
            # the read that saw the holder superseded.
            seen = started if self.seen_at_start else p.now
            if self.changed_at.get(stored.wid, 0) > nonce:
                # The holder was superseded while this claim was in flight.
                self.longest_race = max(self.longest_race, p.now - started)
            p.waits.superseded(job, stored.incarnation, d.wait, seen)
        self.expire()

    def leave(self, p: Proc, park: bool, released: frozenset[str]) -> None:
        """A graceful leave (or a park: restart in place): the handlers stop, the
        releases in ``released`` commit, then the record is cleared (park: kept) and the
        incarnation retired."""
        for job in list(p.running):
            token = p.end(job)
            if job in released:
                self.release(p, job, token)
        for job in list(p.kept):
            if job in released:
                self.release(p, job)
        rec = self.members.get(p.wid)
        if park:
            self._retire(p.wid, p.inc)
        elif rec is not None and rec.incarnation == p.inc:
            self._write_member(p.wid, None)
            self._retire(p.wid, p.inc)
        p.state = "stopped"

    def round(self, p: Proc) -> None:
        """One pass of a healthy worker, each transaction at once: heartbeat, lease
        check, membership read, every neighbour checked, ghosts retired, kept claims
        released, every job claimed that it does not run."""
        self.heartbeat_start(p)
        self.heartbeat_commit(p, release=True)
        if p.state == "stopped":
            return
        self.fence(p, release=True)
        self.read_membership(p)
        if p.state == "active":
            for i in range(len(WIDS) + 1):
                self.check(p, i)
        self.retire_ghosts(p)
        for job in list(p.kept):
            self.release(p, job)
        if p.claim is None:
            for job in JOBS:
                if job not in p.running and p.lease_valid():
                    self.claim_start(p, job)
                    self.claim_commit(p)

    def tick(self, dt: float) -> None:
        for h in self.hosts:
            if h.alive:
                h.boot += dt * h.rate
                if not h.suspended:
                    h.mono += dt * h.rate
        self.expire()

    # -- the checks --------------------------------------------------------------------

    def believers(self, job: str) -> list[str]:
        return [p.inc for p in self.procs if p.believes(job)]

    def settle(self) -> float:
        """Liveness: no more faults; a new worker joins, and everyone that still runs
        heartbeats, reads, watches, retires, releases and claims every 0.1 s. Returns the
        model time it took until every job runs on one live incarnation that holds its
        claim (asserts it happens within the bound)."""
        live_before = [p for p in self.procs if p.host.steps and p.state != "stopped"]
        self.start("probe", 3.0, 0.25, 1.0)
        slowest = min([h.rate for h in self.hosts if h.alive] + [1.0])
        bound = max(self.timeouts) / slowest + 1.0
        dt, t = 0.1, 0.0
        while True:
            for p in [q for q in self.procs if q.host.steps and q.state != "stopped"]:
                self.round(p)
            if self.live_and_settled():
                return t
            assert t <= bound, (
                f"after {t:.1f} s (bound {bound:.1f} s) jobs still without a runner: "
                f"{self.describe()}; live before: {[p.inc for p in live_before]}"
            )
            self.tick(dt)
            t += dt

    def live_and_settled(self) -> bool:
        for job in JOBS:
            runners = [p for p in self.procs if p.host.steps and p.believes(job)]
            held = self.claims.get(job)
            if len(runners) != 1 or held is None:
                return False
            c, token = held
            if (c.wid, c.incarnation) != (runners[0].wid, runners[0].inc):
                return False
            if runners[0].running[job] != token:
                return False
        return True

    def describe(self) -> str:
        claims = {j: (c.wid, c.incarnation, c.timeout) for j, (c, _) in self.claims.items()}
        members = {w: (r.incarnation, r.timeout) for w, r in self.members.items()}
        procs = [
            (p.inc, p.state, sorted(p.running), p.host.alive, p.host.frozen, p.host.suspended)
            for p in self.procs
        ]
        return f"claims={claims} members={members} retired={self.retired} procs={procs}"


class ClaimModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.w = World()

    def _proc(self, i: int) -> Proc | None:
        ps = [p for p in self.w.procs if p.host.steps and p.state != "stopped"]
        return ps[i % len(ps)] if ps else None

    def _host(self, i: int) -> Host | None:
        hs = [h for h in self.w.hosts if h.alive]
        return hs[i % len(hs)] if hs else None

    # -- starts and time ---------------------------------------------------------------

    @precondition(lambda self: len(self.w.hosts) < MAX_HOSTS)
    @rule(
        wid=st.sampled_from(WIDS),
        timeout=st.sampled_from(TIMEOUTS),
        margin=st.sampled_from(MARGINS),
        rate=st.sampled_from(RATES),
    )
    def start(self, wid: str, timeout: float, margin: float, rate: float) -> None:
        """A worker starts: a new id, or a restart of an id (elsewhere: the old process
        may still run, frozen or cut off) with another timeout."""
        self.w.start(wid, timeout, margin, rate)

    @rule(dt=st.sampled_from([0.01, 0.1, 0.3, 0.7, 1.5, 3.0, 8.0]))
    def tick(self, dt: float) -> None:
        self.w.tick(dt)

    @rule(dt=st.sampled_from([0.1, 0.3, 0.5, 2.0, 5.0]))
    def healthy_tick(self, dt: float) -> None:
        """Time passes, and every worker that can run does a round every 0.5 s."""
        for step in [0.5] * int(dt / 0.5) or [dt]:
            self.w.tick(step)
            for p in [q for q in self.w.procs if q.host.steps and q.state != "stopped"]:
                self.w.round(p)

    @rule(i=st.integers(0, 7))
    def one_round(self, i: int) -> None:
        p = self._proc(i)
        if p is not None:
            self.w.round(p)

    # -- faults ------------------------------------------------------------------------

    @rule(i=st.integers(0, 7))
    def crash(self, i: int) -> None:
        h = self._host(i)
        if h is not None:
            h.alive = False

    @rule(i=st.integers(0, 7), suspend=st.booleans())
    def freeze(self, i: int, suspend: bool) -> None:
        h = self._host(i)
        if h is not None:
            if suspend:
                h.suspended = True
            else:
                h.frozen = True

    @rule(i=st.integers(0, 7))
    def resume(self, i: int) -> None:
        h = self._host(i)
        if h is not None:
            h.frozen = h.suspended = False
            self.w.expire()

    # -- a worker's steps --------------------------------------------------------------

    @rule(i=st.integers(0, 7))
    def heartbeat_start(self, i: int) -> None:
        p = self._proc(i)
        if p is not None and p.hb is None:
            self.w.heartbeat_start(p)

    @rule(i=st.integers(0, 7), ok=st.booleans(), release=st.booleans())
    def heartbeat_commit(self, i: int, ok: bool, release: bool) -> None:
        p = self._proc(i)
        if p is not None and p.hb is not None:
            if ok:
                self.w.heartbeat_commit(p, release)
            else:
                p.hb = None  # failed: the lease keeps running from the last success

    @rule(i=st.integers(0, 7), release=st.booleans())
    def lease_watchdog(self, i: int, release: bool) -> None:
        p = self._proc(i)
        if p is not None:
            self.w.fence(p, release)

    @rule(i=st.integers(0, 7))
    def read_membership(self, i: int) -> None:
        p = self._proc(i)
        if p is not None:
            self.w.read_membership(p)

    @rule(i=st.integers(0, 7), pick=st.integers(0, 3))
    def check_neighbour(self, i: int, pick: int) -> None:
        p = self._proc(i)
        if p is not None and p.state == "active":
            self.w.check(p, pick)

    @rule(i=st.integers(0, 7))
    def retire_ghosts(self, i: int) -> None:
        p = self._proc(i)
        if p is not None:
            self.w.retire_ghosts(p)

    @rule(i=st.integers(0, 7), job=st.sampled_from(JOBS))
    def claim_start(self, i: int, job: str) -> None:
        p = self._proc(i)
        if p is not None and p.claim is None and job not in p.running and p.lease_valid():
            self.w.claim_start(p, job)

    @rule(i=st.integers(0, 7), job=st.sampled_from(JOBS), dt=st.sampled_from([1.0, 2.5, 5.0]))
    def slow_claim(self, i: int, job: str, dt: float) -> None:
        """A claim transaction that takes ``dt`` (retries, a slow cluster) while every
        other worker goes on as usual: it commits in a later step (``claim_commit``)."""
        p = self._proc(i)
        if p is None or p.claim is not None or job in p.running or not p.lease_valid():
            return
        self.w.claim_start(p, job)
        for _ in range(int(dt / 0.5)):
            self.w.tick(0.5)
            for q in [q for q in self.w.procs if q.host.steps and q.state != "stopped"]:
                self.w.round(q)

    @rule(i=st.integers(0, 7), outcome=st.sampled_from(["known", "known", "unknown", "failed"]))
    def claim_commit(self, i: int, outcome: str) -> None:
        p = self._proc(i)
        if p is not None and p.claim is not None:
            if outcome == "failed":
                p.claim = None
            else:
                self.w.claim_commit(p, unknown=outcome == "unknown")

    @rule(i=st.integers(0, 7), job=st.sampled_from(JOBS), release=st.booleans())
    def stop_job(self, i: int, job: str, release: bool) -> None:
        """A handler stops (a rebalance, a removed job, a crash loop) and its claim is
        released, or the release fails and the claim is kept to reconcile."""
        p = self._proc(i)
        if p is not None and job in p.running:
            token = p.end(job)
            if release:
                self.w.release(p, job, token)
            else:
                p.kept.add(job)

    @rule(i=st.integers(0, 7))
    def reconcile(self, i: int) -> None:
        """Claims held but not run are released (a full read reconciles them)."""
        p = self._proc(i)
        if p is not None:
            for job in list(p.kept):
                self.w.release(p, job)

    @rule(i=st.integers(0, 7), park=st.booleans(), released=st.frozensets(st.sampled_from(JOBS)))
    def leave(self, i: int, park: bool, released: frozenset[str]) -> None:
        p = self._proc(i)
        if p is not None:
            self.w.leave(p, park, released)

    # -- the checks --------------------------------------------------------------------

    @invariant()
    def never_two_runners(self) -> None:
        """G3, at this model instant."""
        for job in JOBS:
            believers = self.w.believers(job)
            assert len(believers) <= 1, f"{job} runs on {believers}: {self.w.describe()}"

    def teardown(self) -> None:
        """Liveness, after the last fault (on a copy: a failure above is reported as is)."""
        target(-self.w.closest, label="takeover closest to a lease's end")
        target(self.w.longest_race, label="longest claim racing a supersession")
        world = copy.deepcopy(self.w)
        world.settle()
        for job in JOBS:
            assert len(world.believers(job)) == 1


TestClaimModel = ClaimModel.TestCase
TestClaimModel.settings = settings(
    max_examples=200, stateful_step_count=60, deadline=None, print_blob=True
)


def _superseded_during_a_slow_claim(seen_at_start: bool) -> tuple[World, list[str]]:
    """w1 starts to claim j0, held by w0 (timeout 8 s, margin 4 s). Its transaction
    takes 3 s (retries, a slow commit). Meanwhile w0 heartbeats, freezes, and is
    started again elsewhere (timeout 3 s); w1's claim then reads w0's claim superseded
    (wait 8 s). The old w0 believes its lease until 8 - 4/2 = 6 s after that heartbeat."""
    w = World(seen_at_start=seen_at_start)
    old = w.start("w0", 8.0, 0.5, 1.0)
    claimant = w.start("w1", 3.0, 0.25, 1.0)
    w.round(old)
    assert sorted(old.running) == list(JOBS)
    w.claim_start(claimant, "j0")
    for _ in range(6):
        w.tick(0.5)
        w.round(old)
        w.heartbeat_start(claimant)
        w.heartbeat_commit(claimant, release=True)
    old.host.frozen = True  # right after a heartbeat: its lease runs 6 s from now
    w.start("w0", 3.0, 0.25, 1.0)
    w.claim_commit(claimant)
    assert claimant.waits.take("j0", claimant.now + 8.0) == frozenset({old.inc})
    takeover: list[str] = []
    for _ in range(100):
        w.tick(0.1)
        w.heartbeat_start(claimant)
        w.heartbeat_commit(claimant, release=True)
        if claimant.claim is None and "j0" not in claimant.running:
            w.claim_start(claimant, "j0")
            w.claim_commit(claimant)
        takeover = takeover or (w.believers("j0") if "j0" in claimant.running else [])
    return w, takeover


def test_a_claimant_counts_its_wait_from_after_its_read_not_from_before_its_transaction() -> None:
    """Found while writing this model (the claimant's clock is read twice in a claim,
    so the model had to choose): the runner counted its wait for a superseded holder
    from the start of its claim transaction, and took the job while the holder still
    had 1 s of lease (the transaction took 3 s, more than half the margin, and the
    supersession committed in between). Counted from after the read, the holder's
    hard end has passed when it takes the job. The random search alone did not reach
    this interleaving in 20,000 runs (it needs a claim in flight for more than half a
    margin, a heartbeat of the holder just before its supersession, and a freeze), so it
    is pinned here; ``tests/test_jobs.py`` checks the runner itself."""
    _, takeover = _superseded_during_a_slow_claim(seen_at_start=True)
    assert len(takeover) == 2  # the old rule: two believers
    w, takeover = _superseded_during_a_slow_claim(seen_at_start=False)
    assert takeover and len(takeover) == 1
    assert w.claims["j0"][0].wid == "w1"
