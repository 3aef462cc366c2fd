"""The demo's record and its checks: the runs the demo handlers recorded (one JSON line
per start and stop), the rest points after each step (:class:`Phase`), and the pure
checks over them: at most one runner, moves only as required, balance, agreement at
rest (docs/demo.md).
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from .._core.liveness import default_check_interval

if TYPE_CHECKING:
    from .._store.events import EventInfo

#: Extra allowance on the crash-detection bound for the demo's own observation: the
#: eviction and the last heartbeat are both seen through watches plus one read.
OBSERVATION_SLACK: Final = 0.5


@dataclass
class Phase:
    name: str
    kind: str  # start, leave, join, jobs
    subject: str | None = None
    t_trio: float = 0.0
    t_mono: float = 0.0
    rest_ok: bool = True
    owners: dict[str, str | None] = field(default_factory=dict)
    weights: dict[str, float] = field(default_factory=dict)


@dataclass
class Run:
    job: str
    worker: str
    incarnation: str
    token: bytes
    start: float
    stop: float | None
    pid: int
    reason: str = ""


@dataclass
class CheckResult:
    name: str
    ok: bool
    lines: list[str]


def read_runs(folder: Path, exit_times: dict[int, float]) -> list[Run]:
    """Every run the demo handlers recorded; a run without a stop (its process was
    killed) ends when its process was seen to exit."""
    runs: list[Run] = []
    for path in sorted(folder.glob("*.jsonl")):
        open_runs: dict[tuple[str, str], Run] = {}
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by SIGKILL
            key = (rec["job"], rec["token"])
            if rec["event"] == "start":
                r = Run(rec["job"], rec["worker"], rec["incarnation"], bytes.fromhex(rec["token"]),
                        float(rec["t"]), None, int(rec["pid"]))  # fmt: skip
                open_runs[key] = r
                runs.append(r)
            elif rec["event"] == "stop" and key in open_runs:
                r = open_runs.pop(key)
                r.stop = float(rec["t"])
                r.reason = str(rec.get("reason", ""))
        for r in open_runs.values():
            r.stop = exit_times.get(r.pid)
    return runs


def check_single_runner(runs: list[Run]) -> tuple[int, list[str]]:
    """Overlapping runs of a job and non-increasing tokens (pure)."""
    problems: list[str] = []
    by_job: dict[str, list[Run]] = {}
    for r in runs:
        by_job.setdefault(r.job, []).append(r)
    for job, rs in sorted(by_job.items()):
        rs.sort(key=lambda r: r.start)
        for a, b in itertools.pairwise(rs):
            end = a.stop if a.stop is not None else math.inf
            if b.start < end:
                problems.append(
                    f"{job}: run on {b.worker} (token {b.token.hex()}) started "
                    f"{end - b.start:.3f}s before the run on {a.worker} "
                    f"(token {a.token.hex()}) stopped"
                )
            if b.token <= a.token:
                problems.append(
                    f"{job}: token {b.token.hex()} on {b.worker} is not above {a.token.hex()}"
                )
    return len(by_job), problems


def count_moves(runs: list[Run], t0: float, t1: float) -> int:
    """Runs started in (t0, t1] on another worker than the job's previous run (pure)."""
    by_job: dict[str, list[Run]] = {}
    for r in runs:
        by_job.setdefault(r.job, []).append(r)
    moves = 0
    for rs in by_job.values():
        rs.sort(key=lambda r: r.start)
        for prev, cur in itertools.pairwise(rs):
            if t0 < cur.start <= t1 and cur.worker != prev.worker:
                moves += 1
    return moves


def required_and_optimum(before: Phase, after: Phase) -> tuple[int, int]:
    """Moves the assignment required between two rest points, and the fewest moves any
    balanced assignment needs (pure)."""
    common = [j for j in after.owners if j in before.owners]
    required = sum(1 for j in common if before.owners[j] != after.owners[j])
    if after.kind == "leave" and after.subject is not None:
        optimum = sum(1 for j in common if before.owners[j] == after.subject)
    elif after.kind == "join" and after.subject is not None:
        total = sum(after.weights.values()) or 1.0
        optimum = math.floor(len(common) * after.weights.get(after.subject, 0.0) / total)
    else:
        optimum = 0
    return required, optimum


def balanced(owners: dict[str, str | None], weights: dict[str, float]) -> bool:
    """Every worker within one job of its fair share ``J * w / W`` (pure)."""
    total_w = sum(weights.values())
    if total_w <= 0:
        return True
    held = dict.fromkeys(weights, 0)
    for w in owners.values():
        if w is not None:
            held[w] = held.get(w, 0) + 1
    jobs = sum(held.values())
    return all(abs(n - jobs * weights.get(w, 0.0) / total_w) <= 1.0 for w, n in held.items())


def balance_check(phases: list[Phase]) -> CheckResult:
    """Jobs per worker after each step beside the fair share ``J * w / W`` (pure): every
    worker within one job of it (the stored plan balances per job)."""
    ok = True
    lines: list[str] = []
    for ph in phases:
        held: dict[str, int] = dict.fromkeys(ph.weights, 0)
        for w in ph.owners.values():
            if w is not None:
                held[w] = held.get(w, 0) + 1
        total_w = sum(ph.weights.values())
        jobs = sum(held.values())
        if not held or total_w <= 0:
            continue
        parts = []
        for w in sorted(held):
            fair = jobs * ph.weights.get(w, 0.0) / total_w
            bad = abs(held[w] - fair) > 1.0
            ok &= not bad
            parts.append(f"{w} {held[w]}/{fair:.1f}{' <-' if bad else ''}")
        lines.append(f"{ph.name:<28} " + "  ".join(parts))
    lines.append("(jobs / fair share J*w/W per worker; each within 1 of its share)")
    return CheckResult("jobs balanced per worker", ok, lines)


def movement_check(phases: list[Phase], runs: list[Run]) -> CheckResult:
    """Per step, the jobs that started on another worker against the moves the
    assignment required and the optimum (pure): moved <= required."""
    move_lines = []
    total_moved = total_required = total_optimum = 0
    moves_ok = True
    for before, after in itertools.pairwise(phases):
        moved = count_moves(runs, before.t_mono, after.t_mono)
        required, optimum = required_and_optimum(before, after)
        total_moved += moved
        total_required += required
        total_optimum += optimum
        flag = "" if moved <= required else "  <- more than required"
        moves_ok &= moved <= required
        move_lines.append(
            f"{after.name:<28} moved {moved:3d}  required {required:3d}  optimum {optimum:3d}{flag}"
        )
    move_lines.append(
        f"{'total':<28} moved {total_moved:3d}  required {total_required:3d}  "
        f"optimum {total_optimum:3d}"
    )
    move_lines.append(
        "(moved: jobs that started on another worker; required: jobs whose owner the "
        "assignment changed; optimum: the fewest moves a perfectly balanced map needs, "
        "a leaver's jobs or a newcomer's fair share)"
    )
    return CheckResult("jobs moved only as required", moves_ok, move_lines)


def single_runner_check(runs: list[Run]) -> CheckResult:
    """No two recorded runs of a job overlap and the tokens increase (pure)."""
    jobs, problems = check_single_runner(runs)
    return CheckResult(
        "no job ran on two workers",
        not problems,
        [
            f"{len(runs)} runs of {jobs} jobs checked: {len(problems)} overlap(s) "
            "or token regressions",
            *problems[:10],
        ],
    )


def rest_check(phases: list[Phase]) -> CheckResult:
    """Agreement at rest after each step (pure)."""
    rest = [ph.name for ph in phases if not ph.rest_ok]
    return CheckResult(
        "agreement at rest after each step",
        not rest,
        ["every job owned by the member the assignment names, after each step"]
        if not rest
        else [f"not at rest after: {', '.join(rest)}"],
    )


def crash_detection_checks(
    kills: list[dict[str, Any]],
    evictions: dict[str, tuple[EventInfo, float]],
    last_heartbeat_seen: dict[str, float],
    t: float,
    bound: float,
) -> list[CheckResult]:
    """Each kill: the time from the victim's last heartbeat seen to its eviction seen,
    against ``bound`` (for worker timeout ``t``) plus the observation slack (pure)."""
    checks: list[CheckResult] = []
    for k in kills:
        wid = k["worker"]
        ev = evictions.get(wid)
        last = last_heartbeat_seen.get(wid)
        if ev is None:
            checks.append(CheckResult("crash detection", False, [f"{wid} was never evicted"]))
            continue
        event, seen_at = ev
        since_kill = seen_at - k["at"]
        if last is None:
            detail = f"{wid}: evicted {since_kill:.2f}s after the kill (no heartbeat was seen)"
            detection = since_kill
        else:
            detection = seen_at - last
            detail = (
                f"{wid}: evicted by {event.data.get('by')} {detection:.2f}s after its "
                f"last heartbeat was seen ({since_kill:.2f}s after the kill; the "
                f"evictor measured {event.data.get('silent_for')}s of silence)"
            )
        ok = detection <= bound + OBSERVATION_SLACK
        checks.append(
            CheckResult(
                "crash detection",
                ok,
                [
                    detail,
                    f"bound {bound:.2f}s = timeout {t:g}s + check interval "
                    f"{default_check_interval(t):g}s + one transaction "
                    f"{max(0.1, min(t / 3, 5.0)):.2f}s "
                    f"(+{OBSERVATION_SLACK}s observation slack)",
                ],
            )
        )
    return checks
