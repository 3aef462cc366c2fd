"""The engine's transactions: :class:`EngineTransaction`, its writes, conflict ranges,
watches, versionstamp and commit. Its attempts and retry loop are in :mod:`._attempt`,
its reads in :mod:`._reads`.

Errors follow libfdb_c 7.3 as seen through the Python binding: errors of the
synchronous operations (``set``, ``clear``, ``atomic_op``, ...) are *deferred*, raised
by the transaction's next read, watch, versionstamp or commit (the first one wins and
later synchronous operations are skipped); an operation after ``commit`` started raises
2017 and fails that commit; ``on_error`` of a non-retryable error raises it and
cancels the transaction (1025 afterwards).
"""

from __future__ import annotations

import contextlib
from typing import Final

from ..._db import (
    MAX_KEY_SIZE,
    MAX_TRANSACTION_SIZE,
    MAX_VALUE_SIZE,
    MutationType,
    Transaction,
    VersionstampFuture,
    Watch,
)
from ..._db import (
    check_bytes as _check_key,
)
from ..._errors import FDBError
from ..._loop import checkpoint
from ._mutations import SET_VERSIONSTAMPED_KEY, SET_VERSIONSTAMPED_VALUE, versionstamp_offset
from ._reads import MAX_READ_KEY_SIZE, _Reads
from ._ryw import MAX_KEY
from ._store import CommitResult, Mutation
from ._versionstamps import EngineVersionstampFuture, _VersionstampState
from ._watches import _PENDING, EngineWatch

__all__ = ["EngineTransaction"]

_VALID_OPS: Final = frozenset(int(m) for m in MutationType)
# Errors that a transaction's "reset promise" carries (timeout, cancel, misuse).
_RESET_CODES: Final = frozenset({1025, 1031, 2017})


class EngineTransaction(_Reads, Transaction):
    """A transaction of the engine; see :class:`fdbworkers.Transaction`."""

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
