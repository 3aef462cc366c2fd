"""The reads of an engine transaction: :class:`_Reads`, the layer of
:class:`~._transaction.EngineTransaction` over its attempt (:mod:`._attempt`): ``get``,
``get_many``, ``get_key``, ``get_range``, ``get_read_version`` and the snapshot view.

A read is answered by the transaction's own writes when they decide it (no network
round trip and no read version, as in FDB), else at the read version after one network
round trip; it counts as in flight for the commit, and counts its keys and bytes.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Final, NoReturn, TypeVar, TypeVarTuple

from ..._db import (
    MAX_KEY_SIZE,
    KeyOrSelector,
    KeySelector,
    KeyValue,
    ReadTransaction,
    check_limit,
)
from ..._db import (
    as_selector as _selector,
)
from ..._db import (
    check_bytes as _check_key,
)
from ..._errors import FDBError
from ..._loop import checkpoint
from ._attempt import _Attempt
from ._ryw import MAX_KEY, SnapshotReader, WriteMap

#: Keys longer than this cannot exist (FDB allows for an 8-byte tenant prefix): reads
#: of them return nothing and clears of them do nothing.
MAX_READ_KEY_SIZE: Final = MAX_KEY_SIZE + 8


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

    def __init__(self, tr: _Reads) -> None:
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


class _Reads(_Attempt):
    """An engine transaction's reads: the layer of
    :class:`~._transaction.EngineTransaction` over its attempt (:class:`~._attempt._Attempt`)."""

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
