"""The audit log: events written in the transaction that causes them (versionstamped keys:
ordered, never conflicting), trimmed by age in cluster versions, and read back for people."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .._core.keys import Layout, RoleSpace
from .._core.records import (
    VERSIONS_PER_SECOND,
    decode,
    encode,
    epoch_value,
    jsonable,
    stamp_version,
)
from .._db import Database, Transaction, Watch
from .._errors import CorruptDataError, LayoutError
from .scan import PAGE

DEFAULT_EVENT_RETENTION = 7 * 24 * 3600.0


def write_event(tr: Transaction, space: RoleSpace, kind: str, **data: Any) -> None:
    """Append an event of ``space``'s role to the audit log (a versionstamped key:
    ordered, never conflicting; the log itself is root-level)."""
    layout = space.layout
    tr.set_versionstamped_key(
        layout.event_key_template(),
        encode({"type": kind, "role": space.role, "wall_time": time.time(), **data}),
    )
    # A blind atomic write (no read conflict): event writers never conflict on it.
    tr.set_versionstamped_value(layout.events_head_key, epoch_value())


async def trim_events(tr: Transaction, layout: Layout, retention: float) -> None:
    """Drop events older than ``retention`` seconds of cluster versions (a blind clear)."""
    rv = await tr.get_read_version()
    cut = rv - int(retention * VERSIONS_PER_SECOND)
    if cut > 0:
        begin, _ = layout.events_range()
        tr.clear_range(begin, layout.events_before_version(cut))


async def tx_event(
    tr: Transaction, /, space: RoleSpace, kind: str, retention: float, **data: Any
) -> None:
    write_event(tr, space, kind, **data)
    await trim_events(tr, space.layout, retention)


@dataclass(frozen=True)
class EventInfo:
    key: bytes
    stamp: bytes
    type: str
    role: str
    wall_time: float | None
    data: Mapping[str, Any] = field(default_factory=dict)

    @property
    def version(self) -> int:
        return stamp_version(self.stamp)

    def to_json(self) -> dict[str, Any]:
        return {
            "stamp": self.stamp.hex(),
            "version": self.version,
            "type": self.type,
            "role": self.role,
            "wall_time": self.wall_time,
            "data": jsonable(dict(self.data)),
        }

    def summary(self) -> str:
        """One line for people: ``evicted w3 by w1 (silent 3.2s)``."""
        d = self.data
        worker = d.get("worker", "")
        if self.type == "evicted":
            extra = f" by {d.get('by')}"
            if d.get("silent_for") is not None:
                extra += f" (silent {d.get('silent_for')}s)"
            return f"evicted {worker}{extra}"
        if self.type == "joined":
            more = f" on {d.get('host')} pid {d.get('pid')}" if d.get("host") else ""
            if d.get("replaced"):
                more += f", replacing incarnation {str(d.get('replaced'))[:8]}"
            return f"joined {worker}{more}"
        if worker:
            rest = {k: v for k, v in d.items() if k not in ("worker", "incarnation")}
            tail = " " + " ".join(f"{k}={v}" for k, v in sorted(rest.items())) if rest else ""
            return f"{self.type} {worker}{tail}"
        return f"{self.type} " + " ".join(f"{k}={v}" for k, v in sorted(d.items()))


def parse_event(layout: Layout, key: bytes, value: bytes) -> EventInfo:
    stamp = layout.stamp_of_key(key)
    try:
        obj = decode(key, value)
    except (CorruptDataError, LayoutError) as e:
        return EventInfo(key, stamp, "corrupt", "", None, {"error": str(e)})
    data = {k: v for k, v in obj.items() if k not in ("v", "type", "role", "wall_time")}
    wall = obj.get("wall_time")
    return EventInfo(
        key,
        stamp,
        str(obj.get("type", "?")),
        str(obj.get("role", "")),
        float(wall) if isinstance(wall, int | float) else None,
        data,
    )


async def read_recent_events(
    db: Database, layout: Layout, *, limit: int, role: str | None = None
) -> list[EventInfo]:
    """The last ``limit`` events (of ``role`` if given), oldest first."""
    begin, end = layout.events_range()
    found: list[EventInfo] = []
    while len(found) < limit:

        async def page(tr: Transaction, end: bytes = end) -> list[tuple[bytes, bytes]]:
            kvs = await tr.snapshot.get_range(begin, end, limit=max(limit * 2, 100), reverse=True)
            return [(kv.key, kv.value) for kv in kvs]

        kvs = await db.transact(page)
        for key, value in kvs:
            ev = parse_event(layout, key, value)
            if role is None or ev.role == role:
                found.append(ev)
                if len(found) >= limit:
                    break
        if len(kvs) < max(limit * 2, 100):
            break
        end = kvs[-1][0]
    found.reverse()
    return found


async def read_events_after(
    db: Database, layout: Layout, after: bytes | None, *, arm: bool = False
) -> tuple[list[EventInfo], Watch | None]:
    """Events after the key ``after`` (all of them if None), and optionally a watch on
    the events head armed in the same transaction as the last read, so that no event
    committed after it is missed."""
    _, end = layout.events_range()
    begin = layout.events_range()[0] if after is None else after + b"\x00"
    out: list[EventInfo] = []
    while True:

        async def page(
            tr: Transaction, begin: bytes = begin
        ) -> tuple[list[tuple[bytes, bytes]], Watch | None]:
            kvs = await tr.get_range(begin, end, limit=PAGE)
            w = tr.watch(layout.events_head_key) if arm and len(kvs) < PAGE else None
            return [(kv.key, kv.value) for kv in kvs], w

        kvs, watch = await db.transact(page)
        out.extend(parse_event(layout, k, v) for k, v in kvs)
        if len(kvs) < PAGE:
            return out, watch
        begin = kvs[-1][0] + b"\x00"
