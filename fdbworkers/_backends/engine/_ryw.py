"""Read-your-writes: a transaction's buffered writes and conflict ranges (pure, sync).

This mirrors FoundationDB's client (``fdbclient/ReadYourWrites.actor.cpp`` and
``WriteMap``, 7.3): reads see the snapshot at the read version merged with the
transaction's own writes; a read adds a read conflict range only where the result
depends on the snapshot (a key the transaction set or cleared itself adds none, a key
with a pending atomic op does); range reads add exactly the range they read, up to where
a limit stopped them; reading a key or value written by a versionstamp operation of the
same transaction raises 1036. Writes coalesce like the write map does, so the commit
sends one mutation per key (plus pending atomic ops) and the cleared ranges.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right, insort
from collections.abc import Iterator
from typing import Final, Protocol

from ..._db import KeySelector, KeyValue
from ..._errors import FDBError
from ._merge import walk_forward, walk_reverse
from ._mutations import (
    CLEAR,
    CLEAR_RANGE,
    SET,
    SET_VERSIONSTAMPED_KEY,
    SET_VERSIONSTAMPED_VALUE,
    apply_atomic,
    versionstamp_key_range,
)
from ._store import KeyRange, Mutation, merge_ranges

#: The end of the normal key space (reads and writes at or past it: 2004).
MAX_KEY: Final = b"\xff"


class SnapshotReader(Protocol):
    """Reads of the database at the transaction's read version."""

    def get(self, key: bytes) -> bytes | None: ...

    def iter_range(self, begin: bytes, end: bytes, reverse: bool) -> Iterator[KeyValue]: ...

    def get_range(self, begin: bytes, end: bytes, limit: int, reverse: bool) -> list[KeyValue]: ...


class RangeSet:
    """Sorted, disjoint half-open ranges."""

    __slots__ = ("begins", "ends")

    def __init__(self) -> None:
        self.begins: list[bytes] = []
        self.ends: list[bytes] = []

    def __bool__(self) -> bool:
        return bool(self.begins)

    def add(self, b: bytes, e: bytes) -> None:
        begins, ends = self.begins, self.ends
        i = bisect_left(ends, b)  # first range ending at or after b (touching merges)
        j = bisect_right(begins, e)  # ranges beginning at or before e
        if i < j:
            if begins[i] < b:
                b = begins[i]
            if ends[j - 1] > e:
                e = ends[j - 1]
        begins[i:j] = [b]
        ends[i:j] = [e]

    def remove(self, b: bytes, e: bytes) -> None:
        begins, ends = self.begins, self.ends
        i = bisect_right(ends, b)  # first range ending after b
        j = bisect_left(begins, e)  # ranges beginning before e
        if i >= j:
            return
        nb: list[bytes] = []
        ne: list[bytes] = []
        if begins[i] < b:
            nb.append(begins[i])
            ne.append(b)
        if ends[j - 1] > e:
            nb.append(e)
            ne.append(ends[j - 1])
        begins[i:j] = nb
        ends[i:j] = ne

    def contains(self, k: bytes) -> bool:
        i = bisect_right(self.begins, k) - 1
        return i >= 0 and k < self.ends[i]

    def intersects(self, b: bytes, e: bytes) -> bool:
        i = bisect_right(self.ends, b)
        return i < len(self.ends) and self.begins[i] < e

    def overlapping(self, b: bytes, e: bytes) -> list[KeyRange]:
        begins, ends = self.begins, self.ends
        i = bisect_right(ends, b)
        out: list[KeyRange] = []
        while i < len(begins) and begins[i] < e:
            out.append((max(b, begins[i]), min(e, ends[i])))
            i += 1
        return out


#: The shared empty RangeSet of a fresh write map (never added to).
_NO_RANGES: Final = RangeSet()


class _Entry:
    """The write map's state of one key.

    ``independent``: the value no longer depends on the snapshot (set, cleared, or an
    atomic op over a known value); then ``value`` holds it (None = cleared). Otherwise
    ``ops`` are atomic ops to apply over the snapshot's value. ``unreadable`` entries
    (touched by a versionstamp op) keep the whole stack in ``ops``."""

    __slots__ = ("independent", "ops", "unreadable", "value")

    def __init__(
        self,
        independent: bool,
        value: bytes | None = None,
        ops: list[tuple[int, bytes | None]] | None = None,
        unreadable: bool = False,
    ) -> None:
        self.independent = independent
        self.value = value
        self.ops = ops
        self.unreadable = unreadable


#: The value yielded for a "phantom" position when walking key selectors (see
#: ``_resolve_selector``); compared by identity, never a user's value.
_PHANTOM: Final = bytes(bytearray(b"<phantom>"))


def _unreadable() -> FDBError:
    return FDBError(1036)


def _uncleared(clears: RangeSet, lo: bytes, hi: bytes) -> list[KeyRange]:
    """The parts of ``[lo, hi)`` outside the cleared ranges ``clears``, in order."""
    segments: list[KeyRange] = []
    pos = lo
    if clears:
        for cb, ce in clears.overlapping(lo, hi):
            if pos < cb:
                segments.append((pos, cb))
            pos = ce
    if pos < hi:
        segments.append((pos, hi))
    return segments


class WriteMap:
    """One attempt of a transaction: buffered writes, read and write conflict ranges."""

    __slots__ = (
        "_point_keys",
        "clears",
        "points",
        "read_conflicts",
        "unreadable",
        "vs_keys",
        "write_conflicts",
    )

    def __init__(self) -> None:
        self.points: dict[bytes, _Entry] = {}
        self._point_keys: list[bytes] = []  # sorted keys of ``points``
        self.clears = _NO_RANGES  # replaced by a RangeSet of its own on first use
        self.unreadable = _NO_RANGES
        self.vs_keys: list[tuple[bytes, bytes, bytes]] = []  # (range begin, key, value)
        self.read_conflicts: list[KeyRange] = []
        self.write_conflicts: list[KeyRange] = []

    @property
    def empty(self) -> bool:
        return not (self.points or self.clears or self.vs_keys or self.write_conflicts)

    # -- writes ------------------------------------------------------------------------
    def _new_point(self, key: bytes, entry: _Entry) -> None:
        self.points[key] = entry
        keys = self._point_keys
        if not keys or key > keys[-1]:
            keys.append(key)
        else:
            insort(keys, key)

    def set(self, key: bytes, value: bytes) -> None:
        e = self.points.get(key)
        if e is None:
            if self.unreadable and self.unreadable.contains(key):
                self._new_point(key, _Entry(True, ops=[(SET, value)], unreadable=True))
            else:
                self._new_point(key, _Entry(True, value))
        elif e.unreadable:
            assert e.ops is not None
            e.ops.append((SET, value))
        else:
            e.independent = True
            e.value = value
            e.ops = None

    def clear(self, key: bytes) -> None:
        if self.unreadable:
            self.unreadable.remove(key, key + b"\x00")
        e = self.points.get(key)
        if e is None:
            self._new_point(key, _Entry(True, None))
        else:
            e.independent = True
            e.value = None
            e.ops = None
            e.unreadable = False

    def clear_range(self, begin: bytes, end: bytes) -> None:
        keys = self._point_keys
        i = bisect_left(keys, begin)
        j = bisect_left(keys, end)
        if i < j:
            points = self.points
            for k in keys[i:j]:
                del points[k]
            del keys[i:j]
        if self.clears is _NO_RANGES:
            self.clears = RangeSet()
        self.clears.add(begin, end)
        if self.unreadable:
            self.unreadable.remove(begin, end)
        if self.vs_keys:
            self.vs_keys = [v for v in self.vs_keys if not begin <= v[0] < end]

    def atomic(self, op: int, key: bytes, param: bytes) -> None:
        e = self.points.get(key)
        if e is None:
            unreadable = bool(self.unreadable) and self.unreadable.contains(key)
            if not unreadable and self.clears and self.clears.contains(key):
                self._new_point(key, _Entry(True, apply_atomic(op, None, param)))
            else:
                self._new_point(key, _Entry(False, ops=[(op, param)], unreadable=unreadable))
        elif e.unreadable or not e.independent:
            assert e.ops is not None
            e.ops.append((op, param))
        else:
            e.value = apply_atomic(op, e.value, param)

    def set_versionstamped_value(self, key: bytes, param: bytes) -> None:
        e = self.points.get(key)
        if e is not None and e.unreadable:
            assert e.ops is not None
            e.ops.append((SET_VERSIONSTAMPED_VALUE, param))
        elif e is None:
            self._new_point(
                key, _Entry(True, ops=[(SET_VERSIONSTAMPED_VALUE, param)], unreadable=True)
            )
        else:
            e.independent = True
            e.value = None
            e.ops = [(SET_VERSIONSTAMPED_VALUE, param)]
            e.unreadable = True

    def set_versionstamped_key(self, key: bytes, value: bytes, read_version: int | None) -> None:
        begin, end = versionstamp_key_range(key, read_version)
        if begin < end:
            if self.unreadable is _NO_RANGES:
                self.unreadable = RangeSet()
            self.unreadable.add(begin, end)
            keys = self._point_keys
            for k in keys[bisect_left(keys, begin) : bisect_left(keys, end)]:
                e = self.points[k]
                if not e.unreadable:
                    e.unreadable = True
                    if e.independent:
                        e.ops = [(SET, e.value) if e.value is not None else (CLEAR, None)]
        self.vs_keys.append((begin, key, value))

    def add_write_conflict(self, begin: bytes, end: bytes) -> None:
        self.write_conflicts.append((begin, end))

    # -- conflict ranges ---------------------------------------------------------------
    def add_read_conflict(self, begin: bytes, end: bytes) -> None:
        """Add ``[begin, end)`` minus the parts the transaction's own independent
        writes decide (FDB's ``updateConflictMap``)."""
        if begin >= end:
            return
        keys = self._point_keys
        i = bisect_left(keys, begin)
        j = bisect_left(keys, end)
        clears = self.clears.overlapping(begin, end) if self.clears else []
        if i == j and not clears:
            self.read_conflicts.append((begin, end))
            return
        holes: list[KeyRange] = list(clears)
        points = self.points
        for k in keys[i:j]:
            e = points[k]
            if e.independent:
                holes.append((k, k + b"\x00"))
        if not holes:
            self.read_conflicts.append((begin, end))
            return
        pos = begin
        for hb, he in merge_ranges(holes):
            if hb > pos:
                self.read_conflicts.append((pos, min(hb, end)))
            if he > pos:
                pos = he
        if pos < end:
            self.read_conflicts.append((pos, end))

    # -- reads -------------------------------------------------------------------------
    def get(self, reader: SnapshotReader, key: bytes, snapshot: bool) -> bytes | None:
        e = self.points.get(key)
        if e is not None:
            if e.unreadable:
                raise _unreadable()
            if e.independent:
                return e.value
            value = reader.get(key)
            assert e.ops is not None
            for op, param in e.ops:
                assert param is not None
                value = apply_atomic(op, value, param)
            if not snapshot:
                self.read_conflicts.append((key, key + b"\x00"))
            return value
        if self.unreadable and self.unreadable.contains(key):
            raise _unreadable()
        if self.clears and self.clears.contains(key):
            return None
        value = reader.get(key)
        if not snapshot:
            self.read_conflicts.append((key, key + b"\x00"))
        return value

    def _resolve_point(self, reader: SnapshotReader, key: bytes, e: _Entry) -> bytes | None:
        if e.unreadable:
            raise _unreadable()
        if e.independent:
            return e.value
        value = reader.get(key)
        assert e.ops is not None
        for op, param in e.ops:
            assert param is not None
            value = apply_atomic(op, value, param)
        return value

    def iter_merged(
        self, reader: SnapshotReader, lo: bytes, hi: bytes, reverse: bool, phantoms: bool = False
    ) -> Iterator[KeyValue]:
        """Present keys in ``[lo, hi)`` as this transaction sees them, in order.

        The store is consulted lazily, only for the parts its own writes do not decide
        (outside its cleared ranges, past its own keys at the cursor), like FDB's RYW
        iterator: a walk that ends inside what the transaction wrote reads nothing
        (:mod:`._merge`). With ``phantoms``, keys that a pending atomic op clears are
        yielded too, with the value ``_PHANTOM``."""
        if lo >= hi:
            return
        keys = self._point_keys
        pk = keys[bisect_left(keys, lo) : bisect_left(keys, hi)]
        clears = self.clears
        if not pk and not clears:
            yield from reader.iter_range(lo, hi, reverse)
            return
        segments = _uncleared(clears, lo, hi)
        if reverse:
            pk.reverse()
            segments.reverse()
        points = self.points

        def point(pkey: bytes) -> KeyValue | None:
            e = points[pkey]
            value = self._resolve_point(reader, pkey, e)
            if value is not None:
                return KeyValue(pkey, value)
            if phantoms and not e.independent:
                return KeyValue(pkey, _PHANTOM)
            return None

        walk = walk_reverse if reverse else walk_forward
        iter_range = reader.iter_range
        pi = 0
        for sb, se in segments:
            pi = yield from walk(iter_range, pk, pi, sb, se, point)
        np = len(pk)
        while pi < np:
            kv = point(pk[pi])
            pi += 1
            if kv is not None:
                yield kv

    def _check_readable(self, lo: bytes, hi: bytes) -> None:
        if self.unreadable and self.unreadable.intersects(lo, hi):
            raise _unreadable()

    def _collect(
        self, reader: SnapshotReader, lo: bytes, hi: bytes, limit: int, reverse: bool
    ) -> list[KeyValue]:
        if lo >= hi:
            return []
        if not self.points and not self.clears and not self.unreadable:
            return reader.get_range(lo, hi, limit, reverse)
        out: list[KeyValue] = []
        for kv in self.iter_merged(reader, lo, hi, reverse):
            out.append(kv)
            if len(out) == limit:
                break
        if self.unreadable:
            if limit and len(out) == limit:
                last = out[-1][0]
                if reverse:
                    self._check_readable(last, hi)
                else:
                    self._check_readable(lo, last + b"\x00")
            else:
                self._check_readable(lo, hi)
        return out

    def _resolve_selector(
        self, reader: SnapshotReader, key: bytes, offset: int
    ) -> tuple[bytes, bool, bool]:
        """A normalized selector (or_equal removed) resolved in this transaction's view:
        (key, ran off the beginning, ran off the end).

        Like FDB 7.3's read-your-writes, a key that a pending atomic op of this
        transaction clears (COMPARE_AND_CLEAR) still counts as a position; landing on
        it yields the next present key in the walking direction."""
        if offset > 0:
            n = offset
            for k, v in self.iter_merged(reader, key, MAX_KEY, False, phantoms=True):
                if n > 0:
                    n -= 1
                if n == 0 and v is not _PHANTOM:
                    self._check_readable(key, k + b"\x00")
                    return k, False, False
            self._check_readable(key, MAX_KEY)
            return MAX_KEY, False, True
        n = 1 - offset
        for k, v in self.iter_merged(reader, b"", key, True, phantoms=True):
            if n > 0:
                n -= 1
            if n == 0 and v is not _PHANTOM:
                self._check_readable(k, key)
                return k, False, False
        self._check_readable(b"", key)
        return b"", True, False

    def get_key(self, reader: SnapshotReader, selector: KeySelector, snapshot: bool) -> bytes:
        nkey = selector.key + b"\x00" if selector.or_equal else selector.key
        offset = selector.offset
        result, _, _ = self._resolve_selector(reader, nkey, offset)
        if not snapshot:
            if offset <= 0:
                self.add_read_conflict(result, nkey)
            else:
                self.add_read_conflict(nkey, result + b"\x00")
        return result

    def get_range(
        self,
        reader: SnapshotReader,
        begin: KeySelector,
        end: KeySelector,
        limit: int,
        reverse: bool,
        snapshot: bool,
    ) -> list[KeyValue]:
        bk = begin.key + b"\x00" if begin.or_equal else begin.key
        bo = begin.offset
        ek = end.key + b"\x00" if end.or_equal else end.key
        eo = end.offset
        if bo >= eo and bk >= ek:
            return []
        to_begin = through_end = False
        if bo == 1:
            lo = bk
        else:
            lo, to_begin, _ = self._resolve_selector(reader, bk, bo)
        if eo == 1:
            hi = ek
        else:
            hi, _, through_end = self._resolve_selector(reader, ek, eo)
        results = self._collect(reader, lo, hi, limit, reverse) if lo < hi else []
        if snapshot:
            return results
        more = limit > 0 and len(results) == limit
        if not reverse:
            if bk < ek:
                rb = bk
                re = bk if eo > 0 and more else ek
            else:
                rb, re = ek, bk
            if to_begin and bo <= 0:
                rb = b""
            if through_end and eo > 0:
                re = MAX_KEY
            if results:
                if bo <= 0 and results[0][0] < rb:
                    rb = results[0][0]
                if re <= results[-1][0]:
                    re = results[-1][0] + b"\x00"
        else:
            if bk < ek:
                rb = ek if bo <= 1 and more else bk
                re = ek
            else:
                rb, re = ek, bk
            if to_begin and bo <= 0:
                rb = b""
            if through_end and eo > 0:
                re = MAX_KEY
            if results:
                if results[-1][0] < rb:
                    rb = results[-1][0]
                if eo > 0 and re <= results[0][0]:
                    re = results[0][0] + b"\x00"
        self.add_read_conflict(rb, re)
        return results

    # -- commit ------------------------------------------------------------------------
    def commit_request(self) -> tuple[list[Mutation], list[KeyRange], list[KeyRange], int]:
        """(mutations, write conflict ranges, sorted and disjoint read conflict ranges,
        size in bytes as FDB counts it for the 10 MB limit)."""
        mutations: list[Mutation] = []
        writes: list[KeyRange] = list(self.write_conflicts)
        size = 0
        cb, ce = self.clears.begins, self.clears.ends
        for i in range(len(cb)):
            mutations.append((CLEAR_RANGE, cb[i], ce[i]))
            writes.append((cb[i], ce[i]))
            size += len(cb[i]) + len(ce[i])
        for k in self._point_keys:
            e = self.points[k]
            writes.append((k, k + b"\x00"))
            if e.ops is None or (e.independent and not e.unreadable):
                if e.value is None:
                    mutations.append((CLEAR, k, None))
                    size += 2 * len(k) + 1
                else:
                    mutations.append((SET, k, e.value))
                    size += len(k) + len(e.value)
                continue
            for op, param in e.ops:
                mutations.append((op, k, param))
                size += len(k) + (len(param) if param is not None else len(k) + 1)
        for _, key, value in self.vs_keys:
            mutations.append((SET_VERSIONSTAMPED_KEY, key, value))
            size += len(key) + len(value)
        rc = self.read_conflicts
        reads = rc if len(rc) <= 1 else merge_ranges(rc)
        for rb, re in writes:
            size += len(rb) + len(re)
        for rb, re in reads:
            size += len(rb) + len(re)
        return mutations, writes, reads, size
