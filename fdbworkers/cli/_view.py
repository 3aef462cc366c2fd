"""The live view of a role (``fdbworkers watch`` and the demo).

Two halves:

* :class:`ViewSnapshot` and the render functions are pure: a snapshot becomes a rich
  renderable (:func:`render_view`), a string (:func:`render_to_string`, for tests and
  logs) or plain lines (:func:`render_plain`, when stdout is not a terminal).
* :class:`LiveRole` keeps a snapshot current without polling: it re-reads the role when
  an FDB watch fires on the role's ``epoch`` key (membership), its ``jobs_epoch`` key
  (jobs added or removed), the ``events_head`` key (a new event), or the claim key of a
  job that is changing hands; and it watches each member's health key to time, on its
  own clock, how long each heartbeat stamp has stayed unchanged (as the neighbour check
  does, never comparing wall clocks).
"""

from __future__ import annotations

import io
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Final

import trio
from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

from .._core.keys import RoleSpace
from .._core.plan import Plan
from .._core.records import Claim, MemberRecord, RoleConfig
from .._db import Database, Transaction, Watch
from .._errors import FDBError, FdbworkersError
from .._log import get_logger
from .._store.admin import (
    HealthStamp,
    JobInfoRecord,
    Observation,
    RoleSnapshot,
    read_jobs_and_claims,
    read_plan,
)
from .._store.events import EventInfo, read_events_after, read_recent_events
from .._store.views import (
    JobView,
    MemberView,
    job_views,
    member_views,
)

#: Members whose health keys are watched; beyond it their liveness shows as unknown.
HEALTH_WATCH_CAP: Final = 256
#: Claim keys of jobs changing hands watched at once.
MOTION_WATCH_CAP: Final = 64
#: A full re-read even without any watch firing (a safety net against a lost watch).
RESYNC_INTERVAL: Final = 60.0

STATE_STYLE: Final = {
    "ok": "green",
    "suspect": "yellow",
    "stale": "bold red",
    "draining": "cyan",
    "unknown": "dim",
    "left": "dim",
}
EVENT_STYLE: Final = {
    "joined": "green",
    "evicted": "bold red",
    "left": "cyan",
    "drained": "cyan",
    "drain_requested": "cyan",
    "self_fenced": "yellow",
}


@dataclass(frozen=True)
class ViewSnapshot:
    """Everything one frame of the live view shows."""

    role: str
    cluster: str
    epoch: bytes
    members: Sequence[MemberView]
    jobs: Sequence[JobView]
    events: Sequence[EventInfo]
    #: Free lines under the tables (the demo's timeline).
    notes: Sequence[str] = ()
    title: str = "fdbworkers watch"
    #: Seconds since the view started (shown when set).
    elapsed: float | None = None
    #: A problem reading the cluster, shown in the header.
    error: str | None = None

    @property
    def job_states(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for j in self.jobs:
            out[j.state] = out.get(j.state, 0) + 1
        return out

    @property
    def at_rest(self) -> bool:
        """Every job owned by the member the assignment names, every member heartbeating
        (or draining), nobody past its timeout."""
        return (
            bool(self.members)
            and all(j.state == "owned" for j in self.jobs)
            and all(m.state in ("ok", "draining") for m in self.members)
        )


def _fmt_silent(m: MemberView) -> str:
    if m.silent_for is None:
        return "?"
    prefix = "" if m.silent_for_exact else ">="
    return f"{prefix}{m.silent_for:.1f}s"


def _clock(wall: float | None) -> str:
    if wall is None:
        return "--:--:--"
    return time.strftime("%H:%M:%S", time.localtime(wall))


def _summary_line(snap: ViewSnapshot, *, clock: bool = True) -> str:
    states = snap.job_states
    parts = [
        f"{states[s]} {s}" for s in ("owned", "moving", "unclaimed", "orphaned") if states.get(s)
    ]
    jobs = f"jobs {len(snap.jobs)}" + (f" ({', '.join(parts)})" if parts else "")
    head = f"role {snap.role}  cluster {snap.cluster}  members {len(snap.members)}  {jobs}"
    if clock and snap.elapsed is not None:
        head = f"t={snap.elapsed:5.1f}s  " + head
    return head


def render_view(snap: ViewSnapshot, *, max_bar: int = 30) -> RenderableType:
    """The frame as a rich renderable: a header, the members with their jobs, events."""
    header = Text()
    header.append(snap.title, style="bold")
    header.append("  " + _summary_line(snap))
    if snap.at_rest:
        header.append("  at rest", style="green")
    elif snap.members:
        header.append("  rebalancing", style="yellow")
    if snap.error:
        header.append(f"\n{snap.error}", style="bold red")

    members = Table(box=None, pad_edge=False, expand=False, header_style="bold")
    for col, justify in (
        ("WORKER", "left"),
        ("STATE", "left"),
        ("SILENT", "right"),
        ("JOBS", "right"),
        ("", "left"),
        ("HOST:PID", "left"),
        ("WEIGHT", "right"),
    ):
        members.add_column(col, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    most = max([m.jobs for m in snap.members] + [m.assigned for m in snap.members] + [1])
    scale = min(1.0, max_bar / most)
    for m in snap.members:
        held = round(m.jobs * scale)
        extra = max(0, round(m.assigned * scale) - held)
        bar = Text("█" * held, style="green")
        bar.append("░" * extra, style="yellow")
        jobs = f"{m.jobs}" if m.jobs == m.assigned else f"{m.jobs}→{m.assigned}"
        members.add_row(
            m.id,
            Text(m.state, style=STATE_STYLE.get(m.state, "")),
            _fmt_silent(m),
            jobs,
            bar,
            f"{m.host}:{m.pid}",
            f"{m.weight:g}",
        )
    if not snap.members:
        members.add_row("(no members)", "", "", "", "", "", "")

    events = Table(box=None, pad_edge=False, show_header=False)
    events.add_column("time", style="dim", no_wrap=True)
    events.add_column("event", no_wrap=True)
    for ev in snap.events:
        events.add_row(_clock(ev.wall_time), Text(ev.summary(), style=EVENT_STYLE.get(ev.type, "")))
    parts: list[RenderableType] = [header, Text(""), members, Text("")]
    parts.append(Text("recent events", style="bold"))
    parts.append(events if snap.events else Text("(none)", style="dim"))
    if snap.notes:
        parts.append(Text(""))
        parts.append(Text("timeline", style="bold"))
        parts.extend(Text(n) for n in snap.notes)
    return Group(*parts)


def render_to_string(snap: ViewSnapshot, *, width: int = 100, color: bool = False) -> str:
    """The frame as text (``color`` adds ANSI styles)."""
    buf = io.StringIO()
    console = Console(
        file=buf,
        width=width,
        force_terminal=color,
        color_system="standard" if color else None,
        no_color=not color,
        highlight=False,
        emoji=False,
    )
    console.print(render_view(snap))
    return buf.getvalue()


def render_plain(snap: ViewSnapshot, *, with_ages: bool = True) -> str:
    """Plain lines for logs and pipes (no colours, no box drawing). Without ``with_ages``
    nothing in the frame depends on the clock (no heartbeat ages, no elapsed time), so
    two frames are equal exactly when nothing changed."""
    lines = [_summary_line(snap, clock=with_ages) + ("  at rest" if snap.at_rest else "")]
    if snap.error:
        lines.append(f"error: {snap.error}")
    for m in snap.members:
        age = f" silent={_fmt_silent(m)}" if with_ages else ""
        lines.append(
            f"  member {m.id} state={m.state}{age} jobs={m.jobs} assigned={m.assigned} "
            f"pid={m.pid} weight={m.weight:g}"
        )
    return "\n".join(lines)


# --- the live tracker -----------------------------------------------------------------


@dataclass
class _Structure:
    epoch: bytes = b""
    config: RoleConfig | None = None
    members: dict[str, MemberRecord] = field(default_factory=dict)
    corrupt_members: list[bytes] = field(default_factory=list)
    jobs: dict[str, JobInfoRecord] = field(default_factory=dict)
    claims: dict[str, Claim] = field(default_factory=dict)
    corrupt: list[str] = field(default_factory=list)
    plan: Plan | None = None


class LiveRole:
    """Keeps a :class:`ViewSnapshot` of one role current, driven by FDB watches.

    Run it in a nursery (``await nursery.start(live.run)``); ``snapshot()`` gives the
    current frame, ``wait_changed()`` waits for the next re-read. ``on_event`` is
    called for every new event of the role with the local time it was seen."""

    def __init__(
        self,
        db: Database,
        space: RoleSpace,
        *,
        cluster: str = "",
        events: int = 8,
        on_event: Callable[[EventInfo, float], None] | None = None,
        clock: Callable[[], float] = trio.current_time,
    ) -> None:
        self.db = db
        self.space = space
        self.cluster = cluster
        self.events_kept = events
        self.on_event = on_event
        self.clock = clock
        self.started_at = clock()
        self.error: str | None = None
        self.reads = 0
        self._s = _Structure()
        self._events: list[EventInfo] = []
        self._last_event_key: bytes | None = None
        self._obs: dict[str, Observation] = {}
        #: wid -> local time of the latest heartbeat stamp change seen (kept after the
        #: member is gone: the demo measures detection times from it).
        self.last_heartbeat_seen: dict[str, float] = {}
        self._health_scopes: dict[str, trio.CancelScope] = {}
        self._fired_at: dict[str, float] = {}
        self._changed = trio.Event()
        self._nursery: trio.Nursery | None = None
        self.log = get_logger("fdbworkers").bind(component="live_view", role=space.role)

    # -- reading -------------------------------------------------------------------------

    def snapshot(
        self, *, notes: Sequence[str] = (), title: str = "fdbworkers watch"
    ) -> ViewSnapshot:
        now = self.clock()
        s = self._s
        obs = {wid: replace(o, last_seen=now) for wid, o in self._obs.items()}
        snap = RoleSnapshot(
            self.space.role,
            s.config or RoleConfig(1),
            s.epoch,
            s.members,
            s.corrupt_members,
            s.jobs,
            s.claims,
            s.corrupt,
            plan=s.plan,
        )
        jobs = job_views(snap) if s.config is not None else []
        members = member_views(snap, obs, jobs)
        return ViewSnapshot(
            self.space.role,
            self.cluster,
            s.epoch,
            members,
            jobs,
            list(self._events),
            notes=notes,
            title=title,
            elapsed=now - self.started_at,
            error=self.error,
        )

    def role_snapshot(self) -> RoleSnapshot | None:
        s = self._s
        if s.config is None:
            return None
        return RoleSnapshot(
            self.space.role, s.config, s.epoch, dict(s.members), list(s.corrupt_members),
            dict(s.jobs), dict(s.claims), list(s.corrupt), plan=s.plan,
        )  # fmt: skip

    async def wait_changed(self) -> None:
        await self._changed.wait()

    def _notify(self) -> None:
        ev, self._changed = self._changed, trio.Event()
        ev.set()

    # -- the loops -----------------------------------------------------------------------

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            started = False
            while True:
                try:
                    watches = await self._read_all()
                    self.error = None
                except (FDBError, FdbworkersError) as e:
                    self.error = f"cannot read the cluster: {e}; retrying"
                    self.log.warning("live_view_read_failed", error=str(e))
                    self._notify()
                    if not started:
                        raise
                    await trio.sleep(1.0)
                    continue
                self.reads += 1
                self._notify()
                if not started:
                    started = True
                    task_status.started()
                try:
                    await self._wait_any(watches)
                finally:
                    for w in watches:
                        w.cancel()
                await trio.sleep(0.05)  # let a burst of changes land in one re-read

    async def _wait_any(self, watches: list[Watch]) -> None:
        async with trio.open_nursery() as n:

            async def one(w: Watch) -> None:
                try:
                    await w.wait()
                except FDBError as e:
                    if e.code == 1032:  # too many watches: fall back to a slow re-read
                        await trio.sleep(5.0)
                    else:
                        await trio.sleep(0.5)
                n.cancel_scope.cancel()

            for w in watches:
                n.start_soon(one, w)
            n.cancel_scope.deadline = trio.current_time() + RESYNC_INTERVAL

    async def _read_all(self) -> list[Watch]:
        space = self.space
        watches: list[Watch] = []
        try:

            async def structure(
                tr: Transaction,
            ) -> tuple[bytes | None, bytes, dict[str, MemberRecord], list[bytes], list[Watch]]:
                raw_cfg = await tr.snapshot.get(space.config_key)
                epoch = await tr.snapshot.get(space.epoch_key) or b""
                members: dict[str, MemberRecord] = {}
                corrupt: list[bytes] = []
                begin, end = space.members_range()
                for kv in await tr.snapshot.get_range(begin, end):
                    try:
                        wid = str(space.unpack(kv.key)[-1])
                        members[wid] = MemberRecord.decode(wid, kv.key, kv.value)
                    except FdbworkersError:
                        corrupt.append(kv.key)
                ws = [
                    tr.watch(space.epoch_key),
                    tr.watch(space.jobs_epoch_key),
                    tr.watch(space.config_key),
                    tr.watch(space.plan_key),
                ]
                return raw_cfg, epoch, members, corrupt, ws

            raw_cfg, epoch, members, corrupt, ws = await self.db.transact(structure)
            watches.extend(ws)
            s = self._s
            s.config = None if raw_cfg is None else RoleConfig.decode(space.config_key, raw_cfg)
            s.epoch, s.members, s.corrupt_members = epoch, members, corrupt
            await self._read_events(watches)
            jobs, claims, corrupt_jobs = await read_jobs_and_claims(self.db, space)
            s.jobs, s.claims, s.corrupt = jobs, claims, corrupt_jobs
            s.plan = await read_plan(self.db, space)
            self._sync_health_watchers()
            watches.extend(await self._motion_watches())
        except BaseException:
            for w in watches:
                w.cancel()
            raise
        return watches

    async def _read_events(self, watches: list[Watch]) -> None:
        if self._last_event_key is None:
            self._events = await read_recent_events(
                self.db, self.space.layout, limit=self.events_kept, role=self.space.role
            )
            if self._events:
                self._last_event_key = self._events[-1].key
            else:
                # Start following from the newest event of any role.
                async def newest(tr: Transaction) -> bytes | None:
                    begin, end = self.space.layout.events_range()
                    kvs = await tr.snapshot.get_range(begin, end, limit=1, reverse=True)
                    return kvs[0].key if kvs else None

                self._last_event_key = await self.db.transact(newest)
        new, watch = await read_events_after(
            self.db, self.space.layout, self._last_event_key, arm=True
        )
        if watch is not None:
            watches.append(watch)
        now = self.clock()
        for ev in new:
            self._last_event_key = ev.key
            if ev.role != self.space.role:
                continue
            self._events.append(ev)
            if self.on_event is not None:
                self.on_event(ev, now)
        del self._events[: max(0, len(self._events) - self.events_kept)]

    async def _motion_watches(self) -> list[Watch]:
        """Watches on the claim keys of jobs changing hands (claims move without any
        epoch changing), each compared with the claim as just read."""
        s = self._s
        if s.config is None:
            return []
        snap = self.role_snapshot()
        assert snap is not None
        moving = [j for j in job_views(snap) if j.state != "owned"][:MOTION_WATCH_CAP]
        if not moving:
            return []
        space = self.space

        async def tx(tr: Transaction) -> tuple[bool, list[Watch]]:
            stale = False
            ws: list[Watch] = []
            for j in moving:
                key = space.claim_key(j.partition, j.id)
                raw = await tr.get(key)
                token = raw[:10] if raw is not None else None
                if token != j.token:
                    stale = True
                ws.append(tr.watch(key))
            return stale, ws

        stale, ws = await self.db.transact(tx)
        if stale:  # changed since the scan: re-read at once
            for w in ws:
                w.cancel()
            return [_FiredWatch()]
        return ws

    def _sync_health_watchers(self) -> None:
        assert self._nursery is not None
        wanted = sorted(self._s.members)[:HEALTH_WATCH_CAP]
        for wid in list(self._health_scopes):
            if wid not in self._s.members or wid not in wanted:
                self._health_scopes.pop(wid).cancel()
                self._obs.pop(wid, None)
        for wid in wanted:
            rec = self._s.members[wid]
            scope = self._health_scopes.get(wid)
            if scope is None:
                scope = trio.CancelScope()
                self._health_scopes[wid] = scope
                self._nursery.start_soon(self._health_loop, wid, rec.incarnation, scope)

    async def _health_loop(self, wid: str, incarnation: str, scope: trio.CancelScope) -> None:
        key = self.space.health_key(wid)
        with scope:
            while True:

                async def tx(tr: Transaction) -> tuple[HealthStamp, Watch]:
                    raw = await tr.get(key)
                    return HealthStamp.parse(key, raw), tr.watch(key)

                try:
                    h, watch = await self.db.transact(tx)
                except FDBError:
                    await trio.sleep(1.0)
                    continue
                now = self.clock()
                obs = self._obs.get(wid)
                if obs is None:
                    self._obs[wid] = Observation(wid, h.stamp, h.wall_time, anchor=now)
                elif obs.stamp != h.stamp and h.stamp is not None:
                    # A new stamp is a heartbeat (a cleared key is a leave or eviction).
                    obs.stamp, obs.wall_time, obs.changed = h.stamp, h.wall_time, True
                    obs.anchor = self._fired_at.pop(wid, now)
                    self.last_heartbeat_seen[wid] = obs.anchor
                try:
                    await watch.wait()
                    self._fired_at[wid] = self.clock()
                except FDBError:
                    await trio.sleep(0.2)
                finally:
                    watch.cancel()


class _FiredWatch(Watch):
    """A watch that has already fired (forces an immediate re-read)."""

    async def wait(self) -> None:
        await trio.lowlevel.checkpoint()

    def cancel(self) -> None:
        pass

    @property
    def done(self) -> bool:
        return True


def jobs_per_member(snap: ViewSnapshot) -> Mapping[str, int]:
    return {m.id: m.jobs for m in snap.members}


def fmt_seconds(x: float | None) -> str:
    if x is None or math.isnan(x):
        return "?"
    return f"{x:.2f}s"


def jsonable_snapshot(snap: ViewSnapshot) -> dict[str, Any]:
    return {
        "role": snap.role,
        "members": [m.to_json() for m in snap.members],
        "jobs": [j.to_json() for j in snap.jobs],
        "events": [e.to_json() for e in snap.events],
        "at_rest": snap.at_rest,
    }
