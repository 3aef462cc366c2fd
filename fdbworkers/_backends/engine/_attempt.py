"""One attempt of an engine transaction, and the retry loop between attempts.

:class:`_Attempt` is the base of :class:`~._transaction.EngineTransaction`: the state of
one try (a new attempt is FDB's resetRyow: its generation, write map and read version,
the reset promise and its error code, the deferred error of the synchronous operations,
the watches and the versionstamp waiting for its commit); the waits that observe it (a
network round trip under latency and partitions, the transaction's timeout 1031, its
cancellation 1025); its read version, taken lazily; and the options and the retry loop
(``set_timeout``, ``set_retry_limit``, ``on_error``, ``reset``, ``cancel``).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Final, Protocol

from ..._db import KeyValue, ReadTransaction, check_retry_limit, check_timeout
from ..._errors import RETRYABLE, FDBError
from ..._loop import Event, checkpoint, move_on_at, new_event
from ._ryw import WriteMap
from ._stats import EngineStatistics
from ._store import Store
from ._versionstamps import _VersionstampState
from ._watches import EngineWatch, _Engine, _Handle

#: FDB's client backoff: the first retry delay bound, and the cap (max_retry_delay).
INITIAL_BACKOFF: Final = 0.01
MAX_BACKOFF: Final = 1.0
#: Delay before retrying 1007 / 1009 (FUTURE_VERSION_RETRY_DELAY).
TOO_OLD_RETRY_DELAY: Final = 0.01


class _TxEngine(_Engine, Protocol):
    """What a transaction needs of its engine (:class:`~._database.Engine`): what its
    watches need, and the latency of a network round trip."""

    def _latency(self, op: str) -> float: ...


class _TxHandle(_Handle, Protocol):
    """What a transaction needs of its database handle
    (:class:`~._database.EngineDatabase`)."""

    name: str
    engine_stats: EngineStatistics
    _max_watches: int
    _commits_stalled: bool
    _waiting: set[_Attempt]

    @property
    def engine(self) -> _TxEngine: ...

    def _count_read(self, op: str, keys: int, nbytes: int) -> None: ...


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

    def __init__(self, tr: _Attempt) -> None:
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


class _Attempt:
    """An engine transaction's attempts and retry loop: the base of
    :class:`~._transaction.EngineTransaction` (its reads are :class:`~._reads._Reads`)."""

    def __init__(self, db: _TxHandle) -> None:
        self._db = db
        self._engine = db.engine
        self._store = db.engine.store
        self._snapshot: ReadTransaction | None = None  # the snapshot view (:mod:`._reads`)
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
