"""The engine's async shell (asyncio or trio): :class:`Engine`, its database handles,
transactions and watches, implementing the seam of :mod:`fdbworkers._db` over the pure
core (:mod:`._store`, :mod:`._ryw`). Its waits use the running loop's own primitives
(:mod:`fdbworkers._loop`: checkpoints, events, deadlines, per operation).

Every operation that would be a network call in FoundationDB yields to the event loop
(at least a checkpoint; with ``FaultPlan.latency`` a sleep on the engine's clock), honours the
transaction's timeout (1031) and its cancellation (1025), and hangs while its database
handle is partitioned. Nothing runs in the background: delays, spurious watch fires
and timeouts are deadlines that the waiting task observes, so the engine needs no
task group of its own and is deterministic under trio's virtual clock.

Errors follow libfdb_c 7.3 as seen through the Python binding: errors of the
synchronous operations (``set``, ``clear``, ``atomic_op``, ...) are *deferred*, raised
by the transaction's next read, watch, versionstamp or commit (the first one wins and
later synchronous operations are skipped); an operation after ``commit`` started raises
2017 and fails that commit; ``on_error`` of a non-retryable error raises it and
cancels the transaction (1025 afterwards).
"""

from __future__ import annotations

import contextlib
import math
import random
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field, fields
from typing import Final, NoReturn, TypeVar, TypeVarTuple

from ..._db import (
    DEFAULT_MAX_WATCHES,
    MAX_KEY_SIZE,
    MAX_TRANSACTION_SIZE,
    MAX_VALUE_SIZE,
    Database,
    KeyOrSelector,
    KeySelector,
    KeyValue,
    MutationType,
    ReadTransaction,
    Transaction,
    VersionstampFuture,
    Watch,
    check_limit,
    check_retry_limit,
    check_timeout,
)
from ..._db import (
    as_selector as _selector,
)
from ..._db import (
    check_bytes as _check_key,
)
from ..._errors import RETRYABLE, ConfigError, FDBError
from ..._log import get_logger
from ..._loop import Event, checkpoint, current_time, move_on_at, new_event
from ._faults import FaultPlan
from ._mutations import SET_VERSIONSTAMPED_KEY, SET_VERSIONSTAMPED_VALUE, versionstamp_offset
from ._ryw import MAX_KEY, SnapshotReader, WriteMap
from ._store import CommitResult, Mutation, Store
from ._versionstamps import EngineVersionstampFuture, _VersionstampState
from ._watches import _PENDING, EngineWatch

__all__ = [
    "Engine",
    "EngineDatabase",
    "EngineStatistics",
    "EngineTransaction",
]

log = get_logger("fdbworkers.engine")

#: Keys longer than this cannot exist (FDB allows for an 8-byte tenant prefix): reads
#: of them return nothing and clears of them do nothing.
MAX_READ_KEY_SIZE: Final = MAX_KEY_SIZE + 8
#: FDB's client backoff: the first retry delay bound, and the cap (max_retry_delay).
INITIAL_BACKOFF: Final = 0.01
MAX_BACKOFF: Final = 1.0
#: Delay before retrying 1007 / 1009 (FUTURE_VERSION_RETRY_DELAY).
TOO_OLD_RETRY_DELAY: Final = 0.01
MAX_WATCHES_LIMIT: Final = 1_000_000

_VALID_OPS: Final = frozenset(int(m) for m in MutationType)
# Errors that a transaction's "reset promise" carries (timeout, cancel, misuse).
_RESET_CODES: Final = frozenset({1025, 1031, 2017})


@dataclass
class EngineStatistics:
    """Counters of an engine (``engine.stats``) or of one handle (``db.engine_stats``)."""

    transactions_committed: int = 0
    read_only_commits: int = 0
    conflicts: int = 0
    too_old: int = 0
    unknown_results: int = 0
    keys_read: int = 0
    keys_written: int = 0
    bytes_read: int = 0
    bytes_written: int = 0
    watches_set: int = 0
    watches_fired: int = 0
    reads_by_op: dict[str, int] = field(default_factory=dict)

    def add(self, other: EngineStatistics) -> None:
        """Add ``other``'s counters to these."""
        for f in fields(self):
            if f.name != "reads_by_op":
                setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))
        for op, n in other.reads_by_op.items():
            self.reads_by_op[op] = self.reads_by_op.get(op, 0) + n

    def snapshot(self) -> EngineStatistics:
        copy = EngineStatistics(
            **{f.name: getattr(self, f.name) for f in fields(self) if f.name != "reads_by_op"}
        )
        copy.reads_by_op = dict(self.reads_by_op)
        return copy


class Engine:
    """One embedded "cluster": data, versions, conflict detection, watches and faults.

    ``clock`` is read lazily at each operation (default: the running loop's ``current_time``, so it
    follows trio's virtual clock in tests); ``rng`` drives faults and retry jitter
    (seed it for reproducible runs); ``faults`` can be replaced at any time.
    Several handles from :meth:`open_database` share the engine like clients of one
    cluster."""

    def __init__(
        self,
        *,
        clock: Callable[[], float] | None = None,
        rng: random.Random | None = None,
        faults: FaultPlan | None = None,
    ) -> None:
        self._clock = clock
        self.rng = rng if rng is not None else random.Random()
        self._faults = faults if faults is not None else FaultPlan()
        #: Watch fires held back by ``lost_watch_probability``, delivered on healing.
        self._held_watches: list[EngineWatch] = []
        self.store = Store(self.now)
        self._handles: list[EngineDatabase] = []

    @property
    def faults(self) -> FaultPlan:
        """The faults injected now; replace it at any time. A plan that loses no watches
        delivers every watch fire held back by the one before."""
        return self._faults

    @faults.setter
    def faults(self, plan: FaultPlan) -> None:
        self._faults = plan
        if plan.lost_watch_probability == 0 and self._held_watches:
            held, self._held_watches = self._held_watches, []
            for w in held:
                w._fire(self.now(), local=True)

    @property
    def stats(self) -> EngineStatistics:
        """Counters of all handles of this engine (a snapshot: read it again later)."""
        total = EngineStatistics()
        for db in self._handles:
            total.add(db.engine_stats)
        return total

    def now(self) -> float:
        """The engine's clock, in seconds."""
        return self._clock() if self._clock is not None else current_time()

    def loop_deadline(self, t: float) -> float:
        """The event loop's deadline for engine time ``t``."""
        if self._clock is None:
            return t
        return current_time() + (t - self._clock())

    def open_database(self, name: str = "client") -> EngineDatabase:
        """A client handle of this engine."""
        db = EngineDatabase(self, name)
        self._handles.append(db)
        return db

    def dump_snapshot(self) -> tuple[int, list[tuple[bytes, bytes]]]:
        """(last commit version, latest key-values in key order): what a dev server
        saves."""
        version, items = self.store.dump()
        return version, [(kv.key, kv.value) for kv in items]

    def load_snapshot(self, version: int, items: list[tuple[bytes, bytes]]) -> None:
        """Replace the data with ``items`` committed at ``version``; versions (and so
        versionstamps) continue above it."""
        self.store.load(version, items)

    def _latency(self, op: str) -> float:
        faults = self.faults
        if faults.latency is None:
            return 0.0
        return faults.draw_latency(self.rng, op)

    def __repr__(self) -> str:
        return f"<Engine version={self.store.last_commit_version} handles={len(self._handles)}>"


class EngineDatabase(Database):
    """A client handle of an :class:`Engine` (one "database connection")."""

    backend = "engine"

    def __init__(self, engine: Engine, name: str = "client") -> None:
        super().__init__()
        self.engine = engine
        self.name = name
        self.engine_stats = EngineStatistics()
        self._max_watches = DEFAULT_MAX_WATCHES
        self._unfired = 0
        self._watches: set[EngineWatch] = set()
        self._partitioned = False
        self._commits_stalled = False
        self._waiting: set[EngineTransaction] = set()
        self._waiting_watches: set[EngineWatch] = set()
        self._closed = False

    @property
    def partitioned(self) -> bool:
        """While True, this client's operations hang (until their transaction's
        timeout, 1031, or cancellation) and its watches are not delivered; setting it
        back to False lets them continue."""
        return self._partitioned

    @partitioned.setter
    def partitioned(self, value: bool) -> None:
        if bool(value) != self._partitioned:
            self._partitioned = bool(value)
            self._fault_switched("partitioned", self._partitioned)

    @property
    def commits_stalled(self) -> bool:
        """While True, this client's commits that write hang (until their transaction's
        timeout, 1031, or cancellation) while its reads and watches go on: an
        asymmetric fault (a proxy that takes reads but not commits). Setting it back to
        False lets the commits continue."""
        return self._commits_stalled

    @commits_stalled.setter
    def commits_stalled(self, value: bool) -> None:
        if bool(value) != self._commits_stalled:
            self._commits_stalled = bool(value)
            self._fault_switched("commits_stalled", self._commits_stalled)

    def _fault_switched(self, fault: str, on: bool) -> None:
        """A per-client fault went on or off: when off, what waited on it continues."""
        log.debug("engine_client_fault", client=self.name, fault=fault, on=on)
        if not on:
            for tr in list(self._waiting):
                tr._wake_up()
            for w in list(self._waiting_watches):
                w._changed()

    @property
    def unfired_watches(self) -> int:
        """Watches of this handle that count against ``max_watches``."""
        return self._unfired

    def create_transaction(self) -> EngineTransaction:
        if self._closed:
            raise FDBError(2000, "the database handle is closed")
        return EngineTransaction(self)

    def set_max_watches(self, n: int) -> None:
        if not 0 <= n <= MAX_WATCHES_LIMIT:
            raise ConfigError(f"max_watches is 0..{MAX_WATCHES_LIMIT}, not {n}")
        if self._closed:
            raise FDBError(2000, "the database handle is closed")
        self._max_watches = n

    async def aclose(self) -> None:
        for w in list(self._watches):
            w.cancel()
        self._watches.clear()
        self._closed = True
        await checkpoint()

    def _count_read(self, op: str, keys: int, nbytes: int) -> None:
        s = self.engine_stats
        by_op = s.reads_by_op
        by_op[op] = by_op.get(op, 0) + 1
        s.keys_read += keys
        s.bytes_read += nbytes

    def _count(self, name: str, n: int = 1) -> None:
        s = self.engine_stats
        setattr(s, name, getattr(s, name) + n)

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        part = " partitioned" if self._partitioned else ""
        return f"<EngineDatabase {self.name!r} {state}{part} watches={self._unfired}>"


class _Reader:
    """Reads of the store at one read version; each read checks the version's age."""

    __slots__ = ("store", "version")

    def __init__(self, store: Store, version: int) -> None:
        self.store = store
        self.version = version

    def get(self, key: bytes) -> bytes | None:
        self.store.check_read_version(self.version)
        return self.store.get(key, self.version)

    def iter_range(self, begin: bytes, end: bytes, reverse: bool) -> Iterator[KeyValue]:
        self.store.check_read_version(self.version)
        return self.store.iter_range(begin, end, self.version, reverse)

    def get_range(self, begin: bytes, end: bytes, limit: int, reverse: bool) -> list[KeyValue]:
        self.store.check_read_version(self.version)
        return self.store.get_range(begin, end, self.version, limit, reverse)


class _LazyReader:
    """The reader handed to read-your-writes: it takes the transaction's read version
    only when a read really reaches the store (reads answered by the transaction's own
    writes take none, as in FDB)."""

    __slots__ = ("_tr",)

    def __init__(self, tr: EngineTransaction) -> None:
        self._tr = tr

    def _reader(self) -> _Reader:
        r = self._tr._reader
        return r if r is not None else self._tr._read_version_now()

    def get(self, key: bytes) -> bytes | None:
        return self._reader().get(key)

    def iter_range(self, begin: bytes, end: bytes, reverse: bool) -> Iterator[KeyValue]:
        return self._reader().iter_range(begin, end, reverse)

    def get_range(self, begin: bytes, end: bytes, limit: int, reverse: bool) -> list[KeyValue]:
        return self._reader().get_range(begin, end, limit, reverse)


class _NeedsStorage(Exception):
    """Raised by :data:`_LOCAL_ONLY` when a read cannot be answered locally."""


class _LocalOnly:
    """A reader for a first, local attempt at a read: reads answered by the
    transaction's own writes need no network round trip and no read version (FDB
    answers them from its write map at once)."""

    __slots__ = ()

    def get(self, key: bytes) -> bytes | None:
        raise _NeedsStorage

    def iter_range(self, begin: bytes, end: bytes, reverse: bool) -> Iterator[KeyValue]:
        raise _NeedsStorage

    def get_range(self, begin: bytes, end: bytes, limit: int, reverse: bool) -> list[KeyValue]:
        raise _NeedsStorage


_LOCAL_ONLY: Final = _LocalOnly()

_T = TypeVar("_T")
_Args = TypeVarTuple("_Args")


async def _fail(code: int) -> NoReturn:
    """A read failing before it starts: one checkpoint, then ``code``."""
    await checkpoint()
    raise FDBError(code)


def _value_read(value: bytes | None) -> tuple[int, int]:
    """The keys and bytes a point read counts."""
    return (0, 0) if value is None else (1, len(value))


def _values_read(values: list[bytes | None]) -> tuple[int, int]:
    """The keys and bytes point reads count."""
    n = nbytes = 0
    for v in values:
        if v is not None:
            n += 1
            nbytes += len(v)
    return n, nbytes


def _get_all(
    rw: WriteMap, reader: SnapshotReader, keys: list[bytes], snapshot: bool
) -> list[bytes | None]:
    return [None if len(k) > MAX_READ_KEY_SIZE else rw.get(reader, k, snapshot) for k in keys]


def _key_read(key: bytes) -> tuple[int, int]:
    """The keys and bytes a key selector's resolution counts."""
    return 1, len(key)


def _rows_read(rows: list[KeyValue]) -> tuple[int, int]:
    """The keys and bytes a range read counts."""
    nbytes = 0
    for k, v in rows:
        nbytes += len(k) + len(v)
    return len(rows), nbytes


class _SnapshotView(ReadTransaction):
    """``tr.snapshot``: the same transaction, reading without conflict ranges."""

    def __init__(self, tr: EngineTransaction) -> None:
        self._tr = tr

    async def get(self, key: bytes) -> bytes | None:
        return await self._tr._get(key, True)

    async def get_many(self, keys: Sequence[bytes]) -> list[bytes | None]:
        return await self._tr._get_many(keys, True)

    async def get_key(self, selector: KeySelector) -> bytes:
        return await self._tr._get_key(selector, True)

    async def get_range(
        self,
        begin: KeyOrSelector,
        end: KeyOrSelector,
        *,
        limit: int = 0,
        reverse: bool = False,
    ) -> list[KeyValue]:
        return await self._tr._get_range(begin, end, limit, reverse, True)

    async def get_read_version(self) -> int:
        return await self._tr.get_read_version()

    def __repr__(self) -> str:
        return f"<snapshot of {self._tr!r}>"


class EngineTransaction(Transaction):
    """A transaction of the engine; see :class:`fdbworkers.Transaction`."""

    def __init__(self, db: EngineDatabase) -> None:
        self._db = db
        self._engine = db.engine
        self._store = db.engine.store
        self._snapshot: _SnapshotView | None = None
        self.maybe_committed = False
        try:
            self._created: float | None = self._engine.now()
        except RuntimeError:  # created outside a loop: the clock starts at first use
            self._created = None
        self._timeout: float | None = None
        self._deadline: float | None = None
        self._retry_limit = -1
        self._retries = 0
        self._backoff = INITIAL_BACKOFF
        self._gen = 0
        self._wake: Event | None = None
        self._in_flight = 0
        self._lazy = _LazyReader(self)
        self._new_attempt()

    # -- attempt state -----------------------------------------------------------------
    def _new_attempt(self) -> None:
        """Start a fresh attempt (FDB's resetRyow): old in-flight operations fail with
        1025, pending watches with 1025, a pending versionstamp with 1100."""
        old_watches = getattr(self, "_pending_watches", None)
        old_vs = getattr(self, "_vs", None)
        self._gen += 1
        self._wake_up()
        self._rw = WriteMap()
        self._rv: int | None = None
        self._reader: _Reader | None = None
        self._reset_code: int | None = None
        self._deferred: int | None = None
        self._commit_started = False
        self._committed_version = -1
        self._vs: _VersionstampState | None = None
        self._pending_watches: list[EngineWatch] = []
        if old_watches:
            for w in old_watches:
                w._fail(1025)
        if old_vs is not None:
            old_vs.resolve(None, 1100)  # broken_promise, as libfdb_c reports it

    def _wake_up(self) -> None:
        ev = self._wake
        if ev is not None:
            self._wake = None
            ev.set()

    def _set_reset(self, code: int) -> None:
        """Fail the attempt with ``code`` (FDB's reset promise): every later operation
        raises it, operations in flight wake up and raise it."""
        if self._reset_code is not None:
            return
        self._reset_code = code
        if self._vs is not None:
            self._vs.resolve(None, code)
        self._wake_up()

    def _timed_out(self) -> bool:
        deadline = self._deadline
        if deadline is None:
            return False
        if self._engine.now() >= deadline:
            self._set_reset(1031)
            return True
        return False

    def _check_alive(self, gen: int) -> None:
        if gen != self._gen:
            raise FDBError(1025)
        if self._reset_code is not None:
            raise FDBError(self._reset_code)
        if self._deadline is not None and self._timed_out():
            raise FDBError(1031)

    def _read_error(self) -> int | None:
        """The error a read-like operation fails with before doing anything."""
        if self._deferred is not None:
            return self._deferred
        if self._commit_started:
            self._set_reset(2017)
            return 2017
        if self._reset_code is not None:
            return self._reset_code
        if self._deadline is not None and self._timed_out():
            return 1031
        return None

    def _write_error(self) -> bool:
        """True when a synchronous operation must be skipped (a deferred error is set,
        or it is used during commit, which becomes the deferred error)."""
        if self._deferred is not None:
            return True
        if self._commit_started:
            self._set_reset(2017)
            self._deferred = 2017
            return True
        return False

    def _defer(self, code: int) -> None:
        if self._deferred is None:
            self._deferred = code

    async def _wait(
        self, duration: float, gen: int, *, network: bool = True, commit: bool = False
    ) -> bool:
        """Wait ``duration`` seconds of engine time, as a network round trip (which
        hangs while the handle is partitioned, or for a ``commit`` while the handle's
        commits are stalled) unless ``network`` is False. Raises the attempt's reset
        error (1025/1031/2017) as soon as it happens. Returns True when the handle was
        partitioned at some point of the wait."""
        db = self._db
        if duration <= 0 and not (
            network and (db._partitioned or (commit and db._commits_stalled))
        ):
            await checkpoint()
            self._check_alive(gen)
            return False
        engine = self._engine
        end = engine.now() + duration
        was_partitioned = False
        while True:
            self._check_alive(gen)
            partitioned = network and (db._partitioned or (commit and db._commits_stalled))
            if partitioned:
                was_partitioned = True
            elif engine.now() >= end:
                return was_partitioned
            target = math.inf if partitioned else end
            deadline = self._deadline
            if deadline is not None and deadline < target:
                target = deadline
            ev = self._wake
            if ev is None:
                ev = self._wake = new_event()
            if partitioned:
                db._waiting.add(self)
            try:
                if target == math.inf:
                    await ev.wait()
                else:
                    with move_on_at(engine.loop_deadline(target)):
                        await ev.wait()
            finally:
                if partitioned:
                    db._waiting.discard(self)

    async def _ensure_read_version(self, gen: int) -> _Reader:
        if self._reader is None:
            engine = self._engine
            if engine.faults.latency is not None or self._db._partitioned:
                await self._wait(engine._latency("get_read_version"), gen)
            if self._reader is None:
                rv = self._store.read_version()
                self._rv = rv
                self._reader = _Reader(self._store, rv)
        return self._reader

    def _read_version_now(self) -> _Reader:
        if self._reader is None:
            rv = self._store.read_version()
            self._rv = rv
            self._reader = _Reader(self._store, rv)
        return self._reader

    async def _wait_reads(self, gen: int) -> None:
        while self._in_flight > 0:
            self._check_alive(gen)
            ev = self._wake
            if ev is None:
                ev = self._wake = new_event()
            if self._deadline is None:
                await ev.wait()
            else:
                with move_on_at(self._engine.loop_deadline(self._deadline)):
                    await ev.wait()
        self._check_alive(gen)

    def _ended_read(self) -> None:
        self._in_flight -= 1
        if self._in_flight == 0 and self._commit_started:
            self._wake_up()

    # -- reads -------------------------------------------------------------------------
    @property
    def snapshot(self) -> ReadTransaction:
        view = self._snapshot
        if view is None:
            view = self._snapshot = _SnapshotView(self)
        return view

    async def get(self, key: bytes) -> bytes | None:
        return await self._get(key, False)

    async def get_many(self, keys: Sequence[bytes]) -> list[bytes | None]:
        return await self._get_many(keys, False)

    async def get_key(self, selector: KeySelector) -> bytes:
        return await self._get_key(selector, False)

    async def get_range(
        self,
        begin: KeyOrSelector,
        end: KeyOrSelector,
        *,
        limit: int = 0,
        reverse: bool = False,
    ) -> list[KeyValue]:
        return await self._get_range(begin, end, limit, reverse, False)

    async def get_read_version(self) -> int:
        gen = self._gen
        code = self._read_error()
        if code is not None:
            await checkpoint()
            raise FDBError(code)
        if self._reader is not None:
            await self._wait(0.0, gen, network=False)
        else:
            self._in_flight += 1
            try:
                await self._ensure_read_version(gen)
                await self._wait(0.0, gen, network=False)
            finally:
                self._ended_read()
        assert self._rv is not None
        return self._rv

    def _get(self, key: bytes, snapshot: bool) -> Awaitable[bytes | None]:
        if type(key) is not bytes:
            _check_key(key)
        gen = self._gen
        code = None
        if (
            self._deferred is not None
            or self._commit_started
            or self._reset_code is not None
            or self._deadline is not None
        ):
            code = self._read_error()
        if code is None and key >= MAX_KEY:
            code = 2004
        if code is not None:
            return _fail(code)
        if len(key) > MAX_READ_KEY_SIZE:
            return self._answer(gen, None)
        return self._read("get", gen, WriteMap.get, _value_read, key, snapshot)

    async def _get_many(self, keys: Sequence[bytes], snapshot: bool) -> list[bytes | None]:
        """Point reads sent together, as the real backend does: one round trip (one
        latency, one checkpoint) for all of them; each counts as a read request."""
        keys = list(keys)
        for key in keys:
            if type(key) is not bytes:
                _check_key(key)
        gen = self._gen
        code = self._read_error()
        if code is None and any(key >= MAX_KEY for key in keys):
            code = 2004
        if code is not None:
            return await _fail(code)
        if not keys:
            return await self._answer(gen, [])
        out = await self._read("get", gen, _get_all, _values_read, keys, snapshot)
        by_op = self._db.engine_stats.reads_by_op
        by_op["get"] = by_op.get("get", 0) + len(keys) - 1
        return out

    def _get_key(self, selector: KeySelector, snapshot: bool) -> Awaitable[bytes]:
        if not isinstance(selector, KeySelector):
            raise TypeError(f"get_key takes a KeySelector, not {type(selector).__name__}")
        _check_key(selector.key)
        gen = self._gen
        code = self._read_error()
        if code is None and selector.key > MAX_KEY:
            code = 2004
        if code is not None:
            return _fail(code)
        return self._read("get_key", gen, WriteMap.get_key, _key_read, selector, snapshot)

    def _get_range(
        self,
        begin: KeyOrSelector,
        end: KeyOrSelector,
        limit: int,
        reverse: bool,
        snapshot: bool,
    ) -> Awaitable[list[KeyValue]]:
        b = _selector(begin)
        e = _selector(end)
        check_limit(limit)
        gen = self._gen
        code = self._read_error()
        if code is None and (b.key > MAX_KEY or e.key > MAX_KEY):
            code = 2004
        if code is not None:
            return _fail(code)
        if b.offset >= e.offset and (
            (b.key + b"\x00" if b.or_equal else b.key) >= (e.key + b"\x00" if e.or_equal else e.key)
        ):
            # Empty by its selectors alone: answered without a read version (like RYW).
            return self._answer(gen, [])
        return self._read(
            "get_range", gen, WriteMap.get_range, _rows_read, b, e, limit, reverse, snapshot
        )

    async def _answer(self, gen: int, result: _T) -> _T:
        """A read decided by its arguments alone: one checkpoint, no read version."""
        await self._wait(0.0, gen, network=False)
        return result

    async def _read(
        self,
        op: str,
        gen: int,
        read: Callable[[WriteMap, SnapshotReader, *_Args], _T],
        counted: Callable[[_T], tuple[int, int]],
        *args: *_Args,
    ) -> _T:
        """The part every read shares once its own checks passed: ``read(rw, reader,
        *args)`` first against the transaction's own writes (when they decide it: no
        network, no read version, one checkpoint), else at the read version after one
        network round trip of ``op`` (the read counts as in flight for commit, 1007
        counts as ``too_old``). ``counted(result)`` gives the keys and bytes it read."""
        rw = self._rw
        if rw.points or rw.clears or rw.unreadable:
            try:  # answered by its own writes: no network, no read version
                result = read(rw, _LOCAL_ONLY, *args)
            except _NeedsStorage:
                pass
            else:
                await checkpoint()  # = self._wait(0.0, gen, network=False)
                self._check_alive(gen)
                keys, nbytes = counted(result)
                self._db._count_read(op, keys, nbytes)
                return result
        self._in_flight += 1
        try:
            if self._reader is None:
                await self._ensure_read_version(gen)
            # One network round trip of ``op`` (latency, partition, timeout), inline:
            # the hot path of every read that reaches the store.
            if self._engine.faults.latency is None and not self._db._partitioned:
                await checkpoint()
                if gen != self._gen or self._reset_code is not None or self._deadline is not None:
                    self._check_alive(gen)
            else:
                await self._wait(self._engine._latency(op), gen)
            result = read(self._rw, self._lazy, *args)
        except FDBError as exc:
            if exc.code == 1007:
                self._db._count("too_old")
            raise
        finally:
            self._ended_read()
        keys, nbytes = counted(result)
        self._db._count_read(op, keys, nbytes)
        return result

    # -- writes ------------------------------------------------------------------------
    def set(self, key: bytes, value: bytes) -> None:
        _check_key(key)
        _check_key(value, "value")
        if self._write_error():
            return
        if key >= MAX_KEY:
            self._defer(2004)
        elif len(key) > MAX_KEY_SIZE:
            self._defer(2102)
        elif len(value) > MAX_VALUE_SIZE:
            self._defer(2103)
        else:
            self._rw.set(key, value)
            if self._pending_watches:
                self._trigger_watches(key, key + b"\x00", value, True)

    def clear(self, key: bytes) -> None:
        _check_key(key)
        if self._write_error():
            return
        if key >= MAX_KEY:
            self._defer(2004)
        elif len(key) <= MAX_READ_KEY_SIZE:
            self._rw.clear(key)
            if self._pending_watches:
                self._trigger_watches(key, key + b"\x00", None, True)

    def clear_range(self, begin: bytes, end: bytes) -> None:
        _check_key(begin)
        _check_key(end)
        if self._deferred is not None:
            return
        if begin > end:
            self._defer(2005)
            return
        if self._write_error():
            return
        if begin > MAX_KEY or end > MAX_KEY:
            self._defer(2004)
            return
        begin = begin[: MAX_READ_KEY_SIZE + 1]
        end = end[: MAX_READ_KEY_SIZE + 1]
        if begin >= end:
            return
        self._rw.clear_range(begin, end)
        if self._pending_watches:
            self._trigger_watches(begin, end, None, True)

    def atomic_op(self, op: MutationType, key: bytes, param: bytes) -> None:
        _check_key(key)
        _check_key(param, "param")
        code = int(op)
        if code not in _VALID_OPS:
            raise ValueError(f"{op!r} is not a valid MutationType")
        if self._write_error():
            return
        if key >= MAX_KEY:
            self._defer(2004)
            return
        if len(key) > MAX_KEY_SIZE:
            self._defer(2102)
            return
        if len(param) > MAX_VALUE_SIZE:
            self._defer(2103)
            return
        rw = self._rw
        if code == SET_VERSIONSTAMPED_KEY:
            try:
                versionstamp_offset(key)
            except FDBError as e:
                self._defer(e.code)
                return
            rw.set_versionstamped_key(key, param, self._rv)
            return
        if code == SET_VERSIONSTAMPED_VALUE:
            try:
                versionstamp_offset(param)
            except FDBError as e:
                self._defer(e.code)
                return
            rw.set_versionstamped_value(key, param)
        else:
            rw.atomic(code, key, param)
        if self._pending_watches:
            self._trigger_watches(key, key + b"\x00", None, False)

    def _conflict_bounds(self, begin: bytes, end: bytes) -> tuple[bytes, bytes] | None:
        """A manual conflict range's checks, shared by reads and writes: 2005 at once for
        an inverted range, a deferred 2004 beyond the system keys, keys cut to the
        longest a conflict range keeps; None when nothing is to be added."""
        _check_key(begin)
        _check_key(end)
        if begin > end:
            raise FDBError(2005)
        if self._write_error():
            return None
        if begin > MAX_KEY or end > MAX_KEY:
            self._defer(2004)
            return None
        return begin[: MAX_READ_KEY_SIZE + 1], end[: MAX_READ_KEY_SIZE + 1]

    def add_read_conflict_range(self, begin: bytes, end: bytes) -> None:
        bounds = self._conflict_bounds(begin, end)
        if bounds is not None:
            self._rw.add_read_conflict(*bounds)

    def add_write_conflict_range(self, begin: bytes, end: bytes) -> None:
        bounds = self._conflict_bounds(begin, end)
        if bounds is not None and bounds[0] < bounds[1]:
            self._rw.add_write_conflict(*bounds)

    # -- watches -----------------------------------------------------------------------
    def watch(self, key: bytes) -> Watch:
        _check_key(key)
        db = self._db
        w = EngineWatch(db, key)
        code = self._read_error()
        if code is None and key >= MAX_KEY:
            code = 2004
        if code is None and len(key) > MAX_KEY_SIZE:
            code = 2102
        value: bytes | None = None
        if code is None:
            try:
                value = self._rw.get(self._lazy, key, False)
            except FDBError as e:
                code = e.code
        if code is None and db._unfired >= db._max_watches:
            code = 1032
        if code is not None:
            w._fail(code)
            return w
        w._value = value
        w._counted = True
        db._unfired += 1
        db._watches.add(w)
        db._count("watches_set")
        self._pending_watches.append(w)
        return w

    def _trigger_watches(self, begin: bytes, end: bytes, value: bytes | None, known: bool) -> None:
        """The transaction's own write fires its watches at once (FDB's RYW
        triggerWatches): a known different value, or any atomic op."""
        fired = False
        for w in self._pending_watches:
            if begin <= w.key < end and w._state == _PENDING and (not known or w._value != value):
                w._fire(self._engine.now(), local=True)
                fired = True
        if fired:
            self._pending_watches = [w for w in self._pending_watches if w._state == _PENDING]

    # -- versionstamps and commit ------------------------------------------------------
    def get_versionstamp(self) -> VersionstampFuture:
        code = self._read_error()
        if code is not None:
            st = _VersionstampState()
            st.resolve(None, code)
            return EngineVersionstampFuture(st)
        if self._vs is None:
            self._vs = _VersionstampState()
        return EngineVersionstampFuture(self._vs)

    def get_committed_version(self) -> int:
        return self._committed_version

    async def commit(self) -> None:
        gen = self._gen
        code = self._read_error()
        if code is not None:
            await checkpoint()
            raise FDBError(code)
        self._commit_started = True
        db = self._db
        engine = self._engine
        try:
            if self._in_flight > 0:  # FDB's commit waits for outstanding reads
                await self._wait_reads(gen)
            mutations, writes, reads, size = self._rw.commit_request()
            if reads and self._reader is None:  # conflict ranges but no read yet: a GRV
                await self._ensure_read_version(gen)
            if not mutations and not writes:
                await checkpoint()
                self._check_alive(gen)
                db.engine_stats.read_only_commits += 1
                self._committed(None)
                return
            if size > MAX_TRANSACTION_SIZE:
                raise FDBError(2101)
            faults = engine.faults
            rng = engine.rng
            fast = faults.latency is None and not db._partitioned and not db._commits_stalled
            latency = 0.0 if fast else engine._latency("commit")
            if fast:
                await checkpoint()
                self._check_alive(gen)
            else:
                await self._wait(latency / 2, gen, commit=True)
            p = faults.conflict_probability
            if reads and p > 0 and rng.random() < p:
                raise FDBError(1020)  # a spurious conflict
            p = faults.unknown_result_probability
            if p > 0 and rng.random() < p:
                if rng.random() < faults.unknown_result_committed_fraction:
                    with contextlib.suppress(FDBError):
                        self._apply(reads, writes, mutations)
                raise FDBError(1021)
            result = self._apply(reads, writes, mutations)
            self._committed_version = result.version
            if fast and not db._partitioned:
                self._check_alive(gen)
            elif await self._wait(latency / 2, gen):
                raise FDBError(1021)  # the reply was lost in the partition
            self._committed(result)
        except FDBError as e:
            if e.code == 1020:
                db._count("conflicts")
            elif e.code == 1021:
                db._count("unknown_results")
            elif e.code == 1007:
                db._count("too_old")
            if gen == self._gen:
                self._commit_failed(e.code)
            raise

    def _apply(
        self,
        reads: list[tuple[bytes, bytes]],
        writes: list[tuple[bytes, bytes]],
        mutations: list[Mutation],
    ) -> CommitResult:
        result = self._store.commit(self._rv, reads, writes, mutations)
        nbytes = 0
        for _, k, p in mutations:
            nbytes += len(k) + (len(p) if p is not None else 0)
        st = self._db.engine_stats
        st.transactions_committed += 1
        st.keys_written += len(mutations)
        st.bytes_written += nbytes
        return result

    def _committed(self, result: CommitResult | None) -> None:
        if result is None:
            self._committed_version = -1
        if self._vs is not None:
            if result is None:
                self._vs.resolve(None, 2021)
            else:
                self._vs.resolve(result.versionstamp)
        watches = self._pending_watches
        self._pending_watches = []
        for w in watches:
            w._arm()

    def _commit_failed(self, code: int) -> None:
        self._committed_version = -1
        if self._vs is not None:
            self._vs.resolve(None, code if code in _RESET_CODES else 2020)
        watches = self._pending_watches
        self._pending_watches = []
        for w in watches:
            w._fail(code)

    # -- options and the retry loop ----------------------------------------------------
    def set_timeout(self, seconds: float) -> None:
        seconds = check_timeout(seconds)
        ms = 0 if seconds == 0 else max(1, math.ceil(seconds * 1000))
        if ms == 0:
            self._timeout = None
            self._deadline = None
            return
        self._timeout = ms / 1000
        if self._created is None:
            self._created = self._engine.now()
        self._deadline = self._created + self._timeout

    def set_retry_limit(self, retries: int) -> None:
        retries = check_retry_limit(retries)
        self._retry_limit = retries

    async def on_error(self, error: FDBError) -> None:
        if not isinstance(error, FDBError):
            raise TypeError(f"on_error takes an FDBError, not {type(error).__name__}")
        gen = self._gen
        code = self._reset_code
        if code is None and self._deadline is not None and self._timed_out():
            code = 1031
        if code is not None:
            await checkpoint()
            raise FDBError(code)
        limit_hit = self._retry_limit >= 0 and self._retries >= self._retry_limit
        self._retries += 1
        if limit_hit or error.code not in RETRYABLE:
            self._set_reset(1025)
            await checkpoint()
            raise FDBError(error.code, error.description)
        if error.code in (1007, 1009):
            delay = min(TOO_OLD_RETRY_DELAY, MAX_BACKOFF)
        else:
            delay = self._backoff * self._engine.rng.random()
            self._backoff = min(self._backoff * 2, MAX_BACKOFF)
        await self._wait(delay, gen, network=False)
        self._new_attempt()

    def reset(self) -> None:
        self._new_attempt()
        self.maybe_committed = False
        self._retries = 0
        self._backoff = INITIAL_BACKOFF
        self._timeout = None
        self._deadline = None
        self._retry_limit = -1
        try:
            self._created = self._engine.now()
        except RuntimeError:
            self._created = None

    def cancel(self) -> None:
        self._set_reset(1025)
        watches = self._pending_watches
        self._pending_watches = []
        for w in watches:
            w._fail(1025)

    def __repr__(self) -> str:
        state = "committed" if self._committed_version >= 0 else "open"
        if self._reset_code is not None:
            state = f"failed({self._reset_code})"
        elif self._commit_started and self._committed_version < 0:
            state = "committing"
        return (
            f"<EngineTransaction {state} read_version={self._rv} "
            f"retries={self._retries} client={self._db.name!r}>"
        )
