"""The ownership replay of the peer comparison (``peer_compare.py``): pure functions over
the records that the worker processes and the harness wrote, the same for every system.

A worker process writes one record when its handler starts holding a job (``start``)
and one when it stops (``stop``); the harness adds what it did to the processes
(``kill``, ``pause``, ``resume``, ``exit``). A process that was killed holds nothing
from the kill on. A process may also write ``lease`` records: the last moment (on the
same clock) until which its handlers may still act without hearing from the cluster
again. Only fdbworkers has such a bound (a worker's lease: past its hard end a handler
is cancelled, ``job.check()`` raises and ``job.fence(tr)`` fails), so only an
fdbworkers process that is frozen (SIGSTOP) stops holding before it can write its
``stop`` records; kazoo and tooz give a handler nothing to know this by, and a frozen
process of theirs holds its jobs until it writes ``stop``. ``lease_bounded=False``
ignores lease records (the handlers' own start/stop records alone).

Every figure is computed from these records after the run; nothing here reads a clock.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

EPS = 1e-6


@dataclass(frozen=True)
class Record:
    """One line of a process (or of the harness about a process).

    ``proc`` names one process (``w2#1``: worker id ``w2``, its second process),
    ``wid`` its worker id: a process restarted with the same id has a new ``proc`` and
    the same ``wid``."""

    t: float
    proc: str
    wid: str
    ev: str
    job: str | None = None
    until: float | None = None
    n: int | None = None


@dataclass(frozen=True)
class Hold:
    job: str
    proc: str
    wid: str
    start: float
    end: float


def _lapses(records: Sequence[Record]) -> dict[str, list[float]]:
    """Per process, the sorted times at which its lease lapsed (a ``lease`` record's
    ``until`` passed before the next one was written)."""
    by_proc: dict[str, list[Record]] = {}
    for r in records:
        if r.ev == "lease" and r.until is not None:
            by_proc.setdefault(r.proc, []).append(r)
    out: dict[str, list[float]] = {}
    for proc, rs in by_proc.items():
        rs.sort(key=lambda r: r.t)
        lapses: list[float] = []
        until = -float("inf")
        for r in rs:
            if until != -float("inf") and r.t > until:
                lapses.append(until)
            until = max(until, r.until if r.until is not None else until)
        lapses.append(until)  # the last known lease lapses unless renewed
        out[proc] = lapses
    return out


def holds(records: Iterable[Record], t_end: float, *, lease_bounded: bool = True) -> list[Hold]:
    """Every hold of every job, ended by the process's ``stop`` record, its ``kill``,
    ``exit`` (a process that ended holds nothing), ``t_end``, or (``lease_bounded``)
    its first lease lapse after the start."""
    rs = sorted(records, key=lambda r: r.t)
    lapses = _lapses(rs) if lease_bounded else {}
    open_: dict[tuple[str, str], Record] = {}
    out: list[Hold] = []

    def close(key: tuple[str, str], start: Record, t: float) -> None:
        end = t
        lp = lapses.get(start.proc)
        if lp:
            i = bisect.bisect_left(lp, start.t)
            if i < len(lp):
                end = min(end, lp[i])
        end = max(end, start.t)
        out.append(Hold(key[1], start.proc, start.wid, start.t, end))

    for r in rs:
        if r.ev == "start" and r.job is not None:
            key = (r.proc, r.job)
            if key in open_:
                close(key, open_.pop(key), r.t)
            open_[key] = r
        elif r.ev == "stop" and r.job is not None:
            key = (r.proc, r.job)
            if key in open_:
                close(key, open_.pop(key), r.t)
        elif r.ev in ("kill", "exit"):
            for key in [k for k in open_ if k[0] == r.proc]:
                close(key, open_.pop(key), r.t)
    for key, start in open_.items():
        close(key, start, max(t_end, start.t))
    out.sort(key=lambda h: (h.start, h.job, h.proc))
    return out


def held_twice(hs: Sequence[Hold], t0: float = -float("inf")) -> set[str]:
    """Jobs that two processes held at the same moment (at or after ``t0``)."""
    by_job: dict[str, list[Hold]] = {}
    for h in hs:
        if h.end > t0:
            by_job.setdefault(h.job, []).append(h)
    bad: set[str] = set()
    for job, js in by_job.items():
        for a, b in itertools.combinations(js, 2):
            if a.proc != b.proc and max(a.start, b.start, t0) < min(a.end, b.end) - EPS:
                bad.add(job)
                break
    return bad


def unowned_seconds(hs: Sequence[Hold], jobs: Sequence[str], t0: float, t1: float) -> float:
    """Job-seconds in [t0, t1] during which a job had no holder."""
    by_job: dict[str, list[tuple[float, float]]] = {j: [] for j in jobs}
    for h in hs:
        if h.job in by_job and h.end > t0 and h.start < t1:
            by_job[h.job].append((max(h.start, t0), min(h.end, t1)))
    total = 0.0
    for spans in by_job.values():
        spans.sort()
        cur = t0
        for a, b in spans:
            if a > cur:
                total += a - cur
            cur = max(cur, b)
        total += max(0.0, t1 - cur)
    return total


def first_all_held(
    hs: Sequence[Hold],
    jobs: Sequence[str],
    t0: float,
    *,
    exclude_procs: Iterable[str] = (),
) -> float | None:
    """The first moment at or after ``t0`` at which every job is held by some process
    not in ``exclude_procs``; None if there is none."""
    excl = set(exclude_procs)
    mine = [h for h in hs if h.proc not in excl and h.end > t0]
    candidates = sorted({t0} | {h.start for h in mine if h.start >= t0})
    want = set(jobs)
    for t in candidates:
        covered = {h.job for h in mine if h.start <= t + EPS and h.end > t + EPS}
        if want <= covered:
            return t
    return None


def holders_at(hs: Sequence[Hold], t: float) -> dict[str, list[Hold]]:
    out: dict[str, list[Hold]] = {}
    for h in hs:
        if h.start <= t + EPS and h.end > t + EPS:
            out.setdefault(h.job, []).append(h)
    return out


def counts_at(hs: Sequence[Hold], t: float) -> list[int]:
    """Jobs per worker id at ``t``, sorted."""
    per: dict[str, int] = {}
    for job_holds in holders_at(hs, t).values():
        for h in job_holds:
            per[h.wid] = per.get(h.wid, 0) + 1
    return sorted(per.values())


@dataclass(frozen=True)
class Moves:
    """Jobs whose holder changed worker id in a window, grouped into rebalances: moves
    less than ``gap`` seconds apart belong to one rebalance."""

    starts: int
    moves: int
    rebalances: int


def moves(hs: Sequence[Hold], t0: float, t1: float, gap: float = 1.0) -> Moves:
    """Handler starts in [t0, t1], and how many of them moved a job to another worker
    id than its previous holder's (a process restarted with the same id taking its own
    jobs back is not a move)."""
    by_job: dict[str, list[Hold]] = {}
    for h in hs:
        by_job.setdefault(h.job, []).append(h)
    starts = 0
    move_times: list[float] = []
    for js in by_job.values():
        js.sort(key=lambda h: h.start)
        prev: Hold | None = None
        for h in js:
            if t0 <= h.start <= t1:
                starts += 1
                if prev is not None and prev.wid != h.wid:
                    move_times.append(h.start)
            prev = h
    move_times.sort()
    rebalances = 0
    last = -float("inf")
    for t in move_times:
        if t - last > gap:
            rebalances += 1
        last = t
    return Moves(starts, len(move_times), rebalances)
