"""The engine's pure, synchronous core: one "cluster" of versioned key-value data.

No trio and no I/O here: the clock is injected (any ``() -> float`` in seconds), so the
same core can run under trio's virtual clock in one process, or be served to other
processes by a dev server.

What it models (FoundationDB's storage servers, resolvers and commit proxies together):

* **Versions.** Versions advance :data:`VERSIONS_PER_SECOND` per second of the clock and
  strictly increase per commit; every commit version is greater than every read
  version handed out before it, so a snapshot never changes under a reader.
* **MVCC.** Each key keeps its recent history (version, value); reads at a read
  version see the newest entry not after it. History older than the
  :data:`MVCC_WINDOW` (5 s of versions) is collected; reads and commits of a
  transaction whose read version fell out of the window fail with 1007.
* **Conflicts.** A commit log keeps, per committed version, the write conflict ranges
  of that commit (for the last 5 s). A commit with read conflict ranges fails with 1020
  when any committed after its read version wrote into one of them. Only the commits
  after the read version are examined (bisect on the version list), each write range
  with one bisect into the sorted read ranges: the cost is proportional to the
  concurrent writes, never to the history or the data.
* **Mutations.** Set, clear, clear-range, FDB's atomic ops and versionstamps (the
  commit version + batch order 0, since every commit has a version of its own); a
  ``SET_VERSIONSTAMPED_KEY`` adds a write conflict range on the key it produced, like
  the commit proxy does.
* **Watches.** A registry of plain callbacks: a watch fires once a committed mutation
  leaves its key with a value different from the one the watch was set with.
"""

from __future__ import annotations

from bisect import bisect_right
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import Final

from sortedcontainers import SortedList

from ..._db import KeyValue
from ..._errors import FDBError
from ._mutations import (
    CLEAR,
    CLEAR_RANGE,
    SET,
    SET_VERSIONSTAMPED_KEY,
    SET_VERSIONSTAMPED_VALUE,
    apply_atomic,
    place_versionstamp,
    versionstamp,
)

#: Versions per second of the clock (FoundationDB's VERSIONS_PER_SECOND).
VERSIONS_PER_SECOND: Final = 1_000_000
#: How far back reads and conflict checks reach (MAX_READ_TRANSACTION_LIFE_VERSIONS).
MVCC_WINDOW: Final = 5 * VERSIONS_PER_SECOND
#: The version at the clock's first reading (a real cluster never starts at 0).
BASE_VERSION: Final = VERSIONS_PER_SECOND

#: One mutation of a commit: (code, key, param). Codes: ``SET``/``CLEAR``/
#: ``CLEAR_RANGE`` (key = begin, param = end) or an atomic op code of ``MutationType``.
Mutation = tuple[int, bytes, bytes | None]
#: A half-open key range.
KeyRange = tuple[bytes, bytes]

_History = list[tuple[int, bytes | None]]

#: Builds a KeyValue without the NamedTuple constructor's Python-level call (3x faster).
_new_kv: Callable[[type[KeyValue], tuple[bytes, bytes]], KeyValue] = tuple.__new__


def _value_at(history: _History, version: int) -> bytes | None:
    for v, value in reversed(history):
        if v <= version:
            return value
    return None


class StoreWatch:
    """A registered watch: ``callback(self)`` runs (once) inside the commit that changed
    the key to a value other than ``value``."""

    __slots__ = ("active", "callback", "key", "value")

    def __init__(self, key: bytes, value: bytes | None, callback: Callable[[StoreWatch], None]):
        self.key = key
        self.value = value
        self.callback = callback
        self.active = True


class CommitResult:
    __slots__ = ("keys_written", "version", "versionstamp")

    def __init__(self, version: int, stamp: bytes, keys_written: int) -> None:
        self.version = version
        self.versionstamp = stamp
        self.keys_written = keys_written


class Store:
    """Versioned data, conflict detection and watches; see the module docstring."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._t0: float | None = None
        self._base = BASE_VERSION
        #: The newest version handed out, as a read version or a commit version.
        self._version = 0
        self._last_commit = 0
        self._hist: dict[bytes, _History] = {}
        self._keys: SortedList[bytes] = SortedList()
        # The conflict log: commit versions (ascending) and their write conflict ranges.
        self._log_versions: list[int] = []
        self._log_writes: list[Sequence[KeyRange]] = []
        self._log_start = 0
        # (version, keys written at it) in commit order, for collecting old history.
        self._gc_queue: deque[tuple[int, list[bytes]]] = deque()
        self._watches: dict[bytes, list[StoreWatch]] = {}
        self.watch_count = 0

    # -- versions ----------------------------------------------------------------------
    def clock_version(self) -> int:
        now = self._clock()
        if self._t0 is None:
            self._t0 = now
        return self._base + int((now - self._t0) * VERSIONS_PER_SECOND)

    def now_version(self) -> int:
        """The cluster's current version (the clock's, or the last one handed out)."""
        v = self.clock_version()
        return v if v > self._version else self._version

    def read_version(self) -> int:
        """A read version for a new transaction (FDB's GRV)."""
        v = self.now_version()
        self._version = v
        return v

    @property
    def last_commit_version(self) -> int:
        return self._last_commit

    def check_read_version(self, read_version: int) -> None:
        """Raise 1007 transaction_too_old when reads at ``read_version`` are no longer
        served (older than the MVCC window)."""
        if self.now_version() - read_version > MVCC_WINDOW:
            raise FDBError(1007)

    # -- reads -------------------------------------------------------------------------
    def get(self, key: bytes, version: int) -> bytes | None:
        h = self._hist.get(key)
        if h is None:
            return None
        v, value = h[-1]
        if v <= version:
            return value
        return _value_at(h, version)

    def latest(self, key: bytes) -> bytes | None:
        h = self._hist.get(key)
        return None if h is None else h[-1][1]

    def iter_range(
        self, begin: bytes, end: bytes, version: int, reverse: bool = False
    ) -> Iterator[KeyValue]:
        """Present keys in ``[begin, end)`` at ``version``, in order. Must be consumed
        before the next commit (the engine reads synchronously)."""
        if begin >= end:
            return
        hist = self._hist
        for k in self._keys.irange(begin, end, inclusive=(True, False), reverse=reverse):
            h = hist[k]
            v, value = h[-1]
            if v > version:
                value = _value_at(h, version)
            if value is not None:
                yield _new_kv(KeyValue, (k, value))

    def get_range(
        self, begin: bytes, end: bytes, version: int, limit: int = 0, reverse: bool = False
    ) -> list[KeyValue]:
        """Like :meth:`iter_range`, at most ``limit`` pairs (0 = all)."""
        out: list[KeyValue] = []
        if begin >= end:
            return out
        hist = self._hist
        append = out.append
        new_kv = _new_kv
        kv_type = KeyValue
        for k in self._keys.irange(begin, end, inclusive=(True, False), reverse=reverse):
            h = hist[k]
            v, value = h[-1]
            if v > version:
                value = _value_at(h, version)
            if value is not None:
                append(new_kv(kv_type, (k, value)))
                if len(out) == limit:
                    break
        return out

    def dump(self) -> tuple[int, list[KeyValue]]:
        """(last commit version, the latest present key-values in key order)."""
        hist = self._hist
        items = []
        for k in self._keys:
            value = hist[k][-1][1]
            if value is not None:
                items.append(_new_kv(KeyValue, (k, value)))
        return self._last_commit, items

    def load(self, version: int, items: Sequence[tuple[bytes, bytes]]) -> None:
        """Replace all data with ``items`` as committed at ``version``; later versions
        continue above it (the clock's current reading becomes ``version + 1``)."""
        if version < 0:
            raise ValueError(f"a version is >= 0, not {version}")
        self._hist = {bytes(k): [(version, bytes(v))] for k, v in items}
        self._keys = SortedList(self._hist)
        self._log_versions = []
        self._log_writes = []
        self._log_start = 0
        self._gc_queue.clear()
        self._version = max(self._version, version)
        self._last_commit = version
        if version > 0:
            self._t0 = None
            self._base = self._version + 1

    def key_count(self) -> int:
        """Keys with a present value now (O(keys); for tests and diagnostics)."""
        return sum(1 for h in self._hist.values() if h[-1][1] is not None)

    # -- commits -----------------------------------------------------------------------
    def has_conflict(self, read_version: int, reads: Sequence[KeyRange]) -> bool:
        """True when a commit after ``read_version`` wrote into one of ``reads``
        (sorted, disjoint ranges)."""
        versions = self._log_versions
        i = bisect_right(versions, read_version, self._log_start)
        n = len(versions)
        if i >= n or not reads:
            return False
        log = self._log_writes
        if len(reads) == 1:
            rb, re = reads[0]
            for j in range(i, n):
                for wb, we in log[j]:
                    if wb < re and rb < we:
                        return True
            return False
        begins = [r[0] for r in reads]
        ends = [r[1] for r in reads]
        nr = len(reads)
        for j in range(i, n):
            for wb, we in log[j]:
                k = bisect_right(ends, wb)
                if k < nr and begins[k] < we:
                    return True
        return False

    def commit(
        self,
        read_version: int | None,
        reads: Sequence[KeyRange],
        writes: Sequence[KeyRange],
        mutations: Sequence[Mutation],
        *,
        check_conflicts: bool = True,
    ) -> CommitResult:
        """Resolve and apply one transaction. ``reads`` are sorted, disjoint, non-empty
        conflict ranges, ``writes`` any non-empty conflict ranges (kept, not copied);
        ``mutations`` apply in order. Raises 1007 or 1020."""
        if reads and read_version is not None and check_conflicts:
            if self.now_version() - read_version > MVCC_WINDOW:
                raise FDBError(1007)
            if self.has_conflict(read_version, reads):
                raise FDBError(1020)
        cv = self.clock_version()
        version = cv if cv > self._version else self._version + 1
        self._version = version
        self._last_commit = version
        stamp = versionstamp(version)
        touched: dict[bytes, None] = {}
        extra_writes = self._apply(mutations, version, stamp, touched)
        all_writes = [*writes, *extra_writes] if extra_writes else writes
        if all_writes:
            self._log_versions.append(version)
            self._log_writes.append(all_writes)
        if touched:
            keys = list(touched)
            self._gc_queue.append((version, keys))
            if self._watches:
                self._notify(keys)
        horizon = version - MVCC_WINDOW
        q = self._gc_queue
        if (q and q[0][0] <= horizon) or (
            self._log_start < len(self._log_versions)
            and self._log_versions[self._log_start] <= horizon
        ):
            self._collect(horizon)
        return CommitResult(version, stamp, len(touched))

    def _apply(
        self,
        mutations: Sequence[Mutation],
        version: int,
        stamp: bytes,
        touched: dict[bytes, None],
    ) -> list[KeyRange]:
        """Apply ``mutations`` in order at ``version`` (``stamp`` its versionstamp),
        noting the keys written in ``touched``. Returns the write conflict ranges the
        versionstamped keys add."""
        extra_writes: list[KeyRange] = []
        hist = self._hist
        for code, key, param in mutations:
            if code == SET:
                self._put(key, version, param, touched)
            elif code == CLEAR:
                if key in hist:
                    self._put(key, version, None, touched)
            elif code == CLEAR_RANGE:
                assert param is not None
                for k in list(self._keys.irange(key, param, inclusive=(True, False))):
                    if hist[k][-1][1] is not None:
                        self._put(k, version, None, touched)
            elif code == SET_VERSIONSTAMPED_KEY:
                k = place_versionstamp(key, stamp)
                self._put(k, version, param, touched)
                extra_writes.append((k, k + b"\x00"))
            elif code == SET_VERSIONSTAMPED_VALUE:
                assert param is not None
                self._put(key, version, place_versionstamp(param, stamp), touched)
            else:
                assert param is not None
                h = hist.get(key)
                old = None if h is None else h[-1][1]
                self._put(key, version, apply_atomic(code, old, param), touched)
        return extra_writes

    def _put(
        self, key: bytes, version: int, value: bytes | None, touched: dict[bytes, None]
    ) -> None:
        h = self._hist.get(key)
        if h is None:
            if value is None:
                return
            self._hist[key] = [(version, value)]
            self._keys.add(key)
        else:
            last_v, last_value = h[-1]
            if last_v == version:
                h[-1] = (version, value)
            elif value is None and last_value is None:
                return
            else:
                h.append((version, value))
        touched[key] = None

    def _collect(self, horizon: int) -> None:
        """Drop history no read can reach any more (older than ``horizon``)."""
        q = self._gc_queue
        hist = self._hist
        while q and q[0][0] <= horizon:
            _, keys = q.popleft()
            for k in keys:
                h = hist.get(k)
                if h is None or (len(h) == 1 and h[0][1] is not None):
                    continue
                # Keep the newest entry at or before the horizon, and all after it.
                i = len(h) - 1
                while i > 0 and h[i][0] > horizon:
                    i -= 1
                if i > 0:
                    del h[:i]
                if len(h) == 1 and h[0][1] is None and h[0][0] <= horizon:
                    del hist[k]
                    self._keys.remove(k)
        versions = self._log_versions
        start = self._log_start
        n = len(versions)
        while start < n and versions[start] <= horizon:
            start += 1
        if start > 1024 and start * 2 > n:
            del versions[:start]
            del self._log_writes[:start]
            start = 0
        self._log_start = start

    # -- watches -----------------------------------------------------------------------
    def add_watch(
        self, key: bytes, value: bytes | None, callback: Callable[[StoreWatch], None]
    ) -> StoreWatch | None:
        """Register a watch of ``key`` against ``value``; None when the key's value
        already differs (the caller treats the watch as fired)."""
        if self.latest(key) != value:
            return None
        w = StoreWatch(key, value, callback)
        self._watches.setdefault(key, []).append(w)
        self.watch_count += 1
        return w

    def cancel_watch(self, w: StoreWatch) -> None:
        if not w.active:
            return
        w.active = False
        lst = self._watches.get(w.key)
        if lst is not None:
            try:
                lst.remove(w)
            except ValueError:  # pragma: no cover - active watches are registered
                return
            self.watch_count -= 1
            if not lst:
                del self._watches[w.key]

    def _notify(self, keys: list[bytes]) -> None:
        watches = self._watches
        for k in keys:
            lst = watches.get(k)
            if lst is None:
                continue
            value = self.latest(k)
            fired = [w for w in lst if w.value != value]
            if not fired:
                continue
            keep = [w for w in lst if w.value == value]
            if keep:
                watches[k] = keep
            else:
                del watches[k]
            self.watch_count -= len(fired)
            for w in fired:
                w.active = False
                w.callback(w)


def merge_ranges(ranges: Sequence[KeyRange]) -> list[KeyRange]:
    """Sort and coalesce half-open ranges (touching ranges merge); empty ones vanish."""
    if len(ranges) == 1:
        r = ranges[0]
        return [r] if r[0] < r[1] else []
    rs = sorted(r for r in ranges if r[0] < r[1])
    if len(rs) <= 1:
        return rs
    out: list[KeyRange] = []
    cb, ce = rs[0]
    for b, e in rs[1:]:
        if b <= ce:
            if e > ce:
                ce = e
        else:
            out.append((cb, ce))
            cb, ce = b, e
    out.append((cb, ce))
    return out
