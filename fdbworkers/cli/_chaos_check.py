"""The chaos soak's record and its checks: the handlers' own records of their runs
(one JSON line per start and stop, a file per worker id) and the harness's record of the
faults, freezes and deaths, compared after the quiet (live double runs, resumed
holders, token order, stranding, end state; ``cli/_chaos.py`` describes them). The
harness's state is saved next to the records, so ``./scripts/chaos --recheck DIR``
runs the checks again on a kept run without a cluster.
"""

from __future__ import annotations

import argparse
import itertools
import json
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

RESOLUTION = 0.001
RESUMED_LIMIT = 0.05
Interval = tuple[float, float]


@dataclass
class Fault:
    kind: str
    target: str
    start: float
    end: float


@dataclass
class Run:
    job: str
    token: str
    pid: int
    start: float
    stop: float | None = None
    #: When the handler's job.check() last passed (None: never, or no stop recorded).
    last_ok: float | None = None


@dataclass
class Report:
    seed: int
    violations: list[str] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)

    def add(self, line: str) -> None:
        self.lines.append(line)

    def violate(self, what: str) -> None:
        self.violations.append(what)


class ChaosRecord:
    """What the harness records (set by :class:`~fdbworkers.cli._chaos.Chaos` as it runs,
    or loaded by :meth:`load_state`) and the checks over it and the handlers' records."""

    args: argparse.Namespace
    tmp: Path
    faults: list[Fault]
    frozen: dict[int, list[Interval]]
    server_frozen: list[Interval]
    dead_pids: dict[int, float]
    timeout_of_pid: dict[int, float]
    jobs_added: dict[str, float]
    jobs_removed: dict[str, float]
    counts: dict[str, int]
    max_timeout: float
    chaos_start: float
    chaos_end: float
    quiet_end: float

    STATE = "harness.json"

    def save_state(self, cli: dict[str, str | None]) -> None:
        """The harness's own record (faults, freezes, deaths, jobs), next to the handlers'
        records, so that ``--recheck DIR`` can run the checks again on a kept run."""
        state = {
            "seed": self.args.seed,
            "faults": [[f.kind, f.target, f.start, f.end] for f in self.faults],
            "frozen": {str(k): v for k, v in self.frozen.items()},
            "server_frozen": self.server_frozen,
            "dead_pids": {str(k): v for k, v in self.dead_pids.items()},
            "timeout_of_pid": {str(k): v for k, v in self.timeout_of_pid.items()},
            "jobs_added": self.jobs_added,
            "jobs_removed": self.jobs_removed,
            "counts": self.counts,
            "max_timeout": self.max_timeout,
            "chaos_start": self.chaos_start,
            "chaos_end": self.chaos_end,
            "quiet_end": self.quiet_end,
            "cli": cli,
        }
        (self.tmp / self.STATE).write_text(json.dumps(state))

    def load_state(self) -> dict[str, str | None]:
        state = json.loads((self.tmp / self.STATE).read_text())
        self.faults = [Fault(*f) for f in state["faults"]]
        self.frozen = defaultdict(
            list, {int(k): [(s, e) for s, e in v] for k, v in state["frozen"].items()}
        )
        self.server_frozen = [(s, e) for s, e in state["server_frozen"]]
        self.dead_pids = {int(k): v for k, v in state["dead_pids"].items()}
        self.timeout_of_pid = {int(k): v for k, v in state["timeout_of_pid"].items()}
        self.jobs_added = state["jobs_added"]
        self.jobs_removed = state["jobs_removed"]
        self.counts = defaultdict(int, state["counts"])
        self.max_timeout = state["max_timeout"]
        self.chaos_start = state["chaos_start"]
        self.chaos_end = state["chaos_end"]
        self.quiet_end = state["quiet_end"]
        cli: dict[str, str | None] = state["cli"]
        return cli

    # -- the checks

    def runs(self) -> tuple[list[Run], dict[int, str]]:
        runs: dict[tuple[str, str, int], Run] = {}
        owner_of_pid: dict[int, str] = {}
        for path in sorted(self.tmp.glob("*.jsonl")):
            for line in path.read_text().splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut by kill -9
                pid = int(row["pid"])
                owner_of_pid[pid] = path.stem
                if row["ev"] == "start":
                    runs[(row["job"], row["token"], pid)] = Run(
                        row["job"], row["token"], pid, row["mono"]
                    )
                elif row["ev"] == "stop":
                    r = runs.get((row["job"], row["token"], pid))
                    if r is not None:
                        r.stop = row["mono"]
                        r.last_ok = row.get("last_ok")
        return list(runs.values()), owner_of_pid

    def end_of(self, run: Run) -> float:
        if run.stop is not None:
            return run.stop
        return self.dead_pids.get(run.pid, self.quiet_end)

    def live(self, run: Run) -> list[Interval]:
        """The stretches in which the run's process ran (not frozen)."""
        return subtract([(run.start, self.end_of(run))], self.frozen.get(run.pid, []))

    def check(self, cli: dict[str, str | None]) -> Report:
        rep = Report(self.args.seed)
        runs, owner_of_pid = self.runs()
        by_job: dict[str, list[Run]] = defaultdict(list)
        for r in runs:
            by_job[r.job].append(r)
        self._check_overlaps(rep, by_job)
        self._check_tokens(rep, by_job)
        self._check_wakes(rep, runs)
        self._check_gaps(rep, by_job, owner_of_pid)
        self._check_end(rep, by_job, owner_of_pid, cli)
        # Not faults of their own: freezes that did not take, or did not hold.
        notes = ("freeze_not_effective", "freeze_broken")
        rep.add(
            f"faults: {sum(v for k, v in self.counts.items() if k not in notes)} "
            + " ".join(f"{k}={v}" for k, v in sorted(self.counts.items()) if k != "added")
            + f"; handler runs: {len(runs)}; jobs: {len(self.current_jobs())}"
        )
        return rep

    def current_jobs(self) -> list[str]:
        return sorted(j for j in self.jobs_added if j not in self.jobs_removed)

    def _check_overlaps(self, rep: Report, by_job: dict[str, list[Run]]) -> None:
        live_max = resumed_max = 0.0
        resumed_n = 0
        for job, rs in by_job.items():
            for i, a in enumerate(rs):
                for b in rs[i + 1 :]:
                    if a.token == b.token:
                        continue
                    old, new = (a, b) if a.token < b.token else (b, a)
                    both = measure(intersect(self.live(old), self.live(new)))
                    if both <= 0:
                        continue
                    was_frozen = any(
                        s < new.start + 1.0 and e > old.start
                        for s, e in self.frozen.get(old.pid, [])
                    )
                    if was_frozen:
                        resumed_n += 1
                        resumed_max = max(resumed_max, both)
                        if both > RESUMED_LIMIT:
                            rep.violate(
                                f"resumed holder: {job} token {old.token} (pid {old.pid}) ran "
                                f"{both:.3f} s after token {new.token} (pid {new.pid}) started"
                            )
                    else:
                        live_max = max(live_max, both)
                        if both > RESOLUTION:
                            rep.violate(
                                f"live double run: {job} tokens {old.token} and {new.token} "
                                f"both ran for {both:.3f} s"
                            )
        rep.add(f"live double runs: longest overlap {live_max * 1000:.1f} ms (limit 1 ms)")
        rep.add(
            f"resumed holders overlapping a newer holder: {resumed_n}, longest "
            f"{resumed_max * 1000:.1f} ms (limit {RESUMED_LIMIT * 1000:.0f} ms)"
        )

    def _check_tokens(self, rep: Report, by_job: dict[str, list[Run]]) -> None:
        bad = 0
        for job, rs in by_job.items():
            ordered = sorted(rs, key=lambda r: r.start)
            for x, y in itertools.pairwise(ordered):
                if y.token < x.token:
                    bad += 1
                    rep.violate(f"token order: {job} started {y.token} after {x.token}")
        rep.add(f"token order: {bad} regressions")

    def _cause(
        self, job: str, s: float, runs: list[Run], owner_of_pid: dict[int, str]
    ) -> list[Fault]:
        """The faults that caused a stretch without a runner starting at ``s``: those on
        the worker id whose run of the job ended at ``s`` (or on the server) that were
        still going on at ``s``. None for a new job or a run ended by a move."""
        ended = [
            r for r in runs if r.job == job and any(abs(e - s) < 1e-6 for _, e in self.live(r))
        ]
        targets = {"fdbserver"} | {owner_of_pid.get(r.pid, "") for r in ended}
        return [
            f for f in self.faults if f.target in targets and f.start <= s + 0.01 and f.end >= s
        ]

    def _check_gaps(
        self, rep: Report, by_job: dict[str, list[Run]], owner_of_pid: dict[int, str]
    ) -> None:
        """Each stretch of a job without a live run, measured from the end of the fault
        that caused it (a kill until the restart, a freeze until the resume, a server
        freeze until it resumes), not counting later server freezes (nothing can commit
        then): against 3 x the largest timeout + 10 s."""
        bound = 3 * self.max_timeout + 10.0
        gaps: list[tuple[float, float, str, float, float, list[Fault]]] = []
        for job, added in self.jobs_added.items():
            until = self.jobs_removed.get(job, self.quiet_end)
            runs = by_job.get(job, [])
            covered = union(iv for r in runs for iv in self.live(r))
            for s, e in subtract([(added, until)], covered):
                causes = self._cause(job, s, runs, owner_of_pid)
                begin = min(e, max([s, *(f.end for f in causes)]))
                length = e - begin - measure(intersect([(begin, e)], self.server_frozen))
                gaps.append((length, e - s, job, s, e, causes))
        gaps.sort(key=lambda g: g[0], reverse=True)

        def before(s: float, causes: list[Fault]) -> str:
            near = [f for f in self.faults if f.start <= s + 0.5 and f.end >= s - 15.0]
            shown = [*causes, *(f for f in near[-3:] if f not in causes)]
            return "; ".join(
                f"{f.kind} {f.target} at {f.start - self.chaos_start:.1f}s"
                f"-{f.end - self.chaos_start:.1f}s" + (" (cause)" if f in causes else "")
                for f in shown
            )

        over = [g for g in gaps if g[0] > bound]
        for length, raw, job, s, e, causes in over:
            rep.violate(
                f"stranded: {job} had no runner for {length:.1f} s after its fault "
                f"({raw:.1f} s in all, from {s - self.chaos_start:.1f} s to "
                f"{e - self.chaos_start:.1f} s; bound {bound:g} s); before it: "
                f"{before(s, causes) or 'no fault'}"
            )
        rep.add(
            f"stranding: {len(over)} stretches without a runner over {bound:g} s "
            "(3 x the largest timeout + 10 s, from the end of the fault that caused them)"
        )
        rep.add("  longest (after the fault / in all):")
        for length, raw, job, s, _, causes in gaps[:5]:
            why = before(s, causes)
            rep.add(
                f"  {length:6.1f} s / {raw:6.1f} s  {job} from {s - self.chaos_start:7.1f} s"
                + (f"  after: {why}" if why else "")
            )

    def _check_wakes(self, rep: Report, runs: list[Run]) -> None:
        """Runs whose process was frozen for at least its timeout, so past its lease's
        hard end: after the resume, no job.check() may pass (the handler must learn at
        once), and the time from the resume to the handler's stop is the window that
        remains (the step it was in when it froze)."""
        windows: list[float] = []
        for r in runs:
            timeout = self.timeout_of_pid.get(r.pid)
            if timeout is None:
                continue
            for fs, fe in self.frozen.get(r.pid, []):
                if fe - fs < timeout or not r.start < fs < self.end_of(r):
                    continue
                if r.last_ok is not None and r.last_ok > fe:
                    rep.violate(
                        f"woken past its lease: {r.job} token {r.token} (pid {r.pid}) passed "
                        f"job.check() {r.last_ok - fe:.3f} s after a {fe - fs:.1f} s freeze "
                        f"(timeout {timeout:g} s)"
                    )
                if r.stop is not None and r.stop >= fe:
                    windows.append(r.stop - fe)
        windows.sort()
        if windows:
            rep.add(
                f"woken past the lease: {len(windows)} handlers; stopped after the resume "
                f"in median {windows[len(windows) // 2] * 1000:.1f} ms, at most "
                f"{windows[-1] * 1000:.1f} ms; job.check() passing after the wake: "
                f"{sum(1 for v in rep.violations if v.startswith('woken'))}"
            )
        else:
            rep.add("woken past the lease: no handler frozen past its lease was resumed")

    def _check_end(
        self,
        rep: Report,
        by_job: dict[str, list[Run]],
        owner_of_pid: dict[int, str],
        cli: dict[str, str | None],
    ) -> None:
        t = self.quiet_end - 0.5
        wrong = 0
        agree = 0
        for job in self.current_jobs():
            holders = [
                r
                for r in by_job.get(job, [])
                if r.start <= t < self.end_of(r)
                and not any(s <= t < e for s, e in self.frozen.get(r.pid, []))
            ]
            if len(holders) != 1:
                wrong += 1
                rep.violate(f"end state: {job} has {len(holders)} runners after the quiet")
                continue
            if cli.get(job) == owner_of_pid.get(holders[0].pid):
                agree += 1
            else:
                rep.violate(
                    f"end state: the CLI says {job} is held by {cli.get(job)!r}, its handler "
                    f"runs on {owner_of_pid.get(holders[0].pid)!r}"
                )
        n = len(self.current_jobs())
        rep.add(f"end state: {n - wrong}/{n} jobs with one runner; CLI agrees on {agree}/{n}")
        if "<cli failed>" in cli:
            rep.violate(f"the CLI failed: {cli['<cli failed>']}")


# --- interval arithmetic -----------------------------------------------------------------


def union(ivs: Iterable[Interval]) -> list[Interval]:
    out: list[Interval] = []
    for s, e in sorted(ivs):
        if out and s <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], e))
        elif e > s:
            out.append((s, e))
    return out


def intersect(a: list[Interval], b: list[Interval]) -> list[Interval]:
    out = []
    for s1, e1 in union(a):
        for s2, e2 in union(b):
            s, e = max(s1, s2), min(e1, e2)
            if e > s:
                out.append((s, e))
    return out


def subtract(a: list[Interval], b: list[Interval]) -> list[Interval]:
    out = []
    cuts = union(b)
    for s, e in union(a):
        cur = s
        for cs, ce in cuts:
            if ce <= cur or cs >= e:
                continue
            if cs > cur:
                out.append((cur, cs))
            cur = max(cur, ce)
        if cur < e:
            out.append((cur, e))
    return out


def measure(ivs: Iterable[Interval]) -> float:
    return sum(e - s for s, e in union(ivs))
