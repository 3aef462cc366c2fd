"""The blocking façade's database and transaction: :class:`BlockingDatabase` and
:class:`BlockingTransaction`, the seam's methods for threaded code, each run in the
worker's loop through an anyio ``BlockingPortal`` and waited for (see
:mod:`fdbworkers._blocking`, which hands them out and exports them).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Concatenate, ParamSpec, TypeVar

import anyio
import anyio.abc
import anyio.from_thread
import anyio.to_thread

from ._db import Database, KeySelector, KeyValue, MutationType, Transaction

__all__ = ["BlockingDatabase", "BlockingTransaction"]

T = TypeVar("T")
P = ParamSpec("P")


class BlockingTransaction:
    """A transaction for blocking code: the methods of
    :class:`~fdbworkers.Transaction`, each run in the worker's loop and waited for."""

    def __init__(self, tr: Transaction, portal: anyio.from_thread.BlockingPortal) -> None:
        self._tr = tr
        self._portal = portal

    @property
    def transaction(self) -> Transaction:
        """The async transaction underneath (for use inside the worker's loop only)."""
        return self._tr

    @property
    def maybe_committed(self) -> bool:
        return self._tr.maybe_committed

    # -- reads -------------------------------------------------------------------------
    def get(self, key: bytes) -> bytes | None:
        return self._portal.call(self._tr.get, key)

    def get_many(self, keys: Sequence[bytes], *, snapshot: bool = False) -> list[bytes | None]:
        """The values of ``keys`` (None where absent), read together: one round trip on
        FoundationDB (``ReadTransaction.get_many``)."""
        reader = self._tr.snapshot if snapshot else self._tr
        return self._portal.call(reader.get_many, keys)

    def get_key(self, selector: KeySelector) -> bytes:
        return self._portal.call(self._tr.get_key, selector)

    def get_range(
        self,
        begin: bytes | KeySelector,
        end: bytes | KeySelector,
        *,
        limit: int = 0,
        reverse: bool = False,
        snapshot: bool = False,
    ) -> list[KeyValue]:
        reader = self._tr.snapshot if snapshot else self._tr

        async def read() -> list[KeyValue]:
            return await reader.get_range(begin, end, limit=limit, reverse=reverse)

        return self._portal.call(read)

    def get_range_startswith(
        self, prefix: bytes, *, limit: int = 0, reverse: bool = False, snapshot: bool = False
    ) -> list[KeyValue]:
        reader = self._tr.snapshot if snapshot else self._tr

        async def read() -> list[KeyValue]:
            return await reader.get_range_startswith(prefix, limit=limit, reverse=reverse)

        return self._portal.call(read)

    def snapshot_get(self, key: bytes) -> bytes | None:
        """``tr.snapshot.get(key)``: a read that adds no read conflict."""
        return self._portal.call(self._tr.snapshot.get, key)

    def get_read_version(self) -> int:
        return self._portal.call(self._tr.get_read_version)

    # -- writes (buffered in the transaction; run in the loop's thread) --------------------
    def set(self, key: bytes, value: bytes) -> None:
        self._portal.call(self._tr.set, key, value)

    def clear(self, key: bytes) -> None:
        self._portal.call(self._tr.clear, key)

    def clear_range(self, begin: bytes, end: bytes) -> None:
        self._portal.call(self._tr.clear_range, begin, end)

    def clear_range_startswith(self, prefix: bytes) -> None:
        self._portal.call(self._tr.clear_range_startswith, prefix)

    def atomic_op(self, op: MutationType, key: bytes, param: bytes) -> None:
        self._portal.call(self._tr.atomic_op, op, key, param)

    def add(self, key: bytes, param: bytes) -> None:
        self.atomic_op(MutationType.ADD, key, param)

    def add_read_conflict_key(self, key: bytes) -> None:
        self._portal.call(self._tr.add_read_conflict_key, key)

    def add_write_conflict_key(self, key: bytes) -> None:
        self._portal.call(self._tr.add_write_conflict_key, key)


class BlockingDatabase:
    """A :class:`~fdbworkers.Database` for blocking code: ``transact(fn, *args)`` runs
    ``fn(tr, *args)`` with a :class:`BlockingTransaction` in FoundationDB's retry loop
    (the same loop, statistics and defaults as ``Database.transact``)."""

    def __init__(
        self,
        db: Database,
        portal: anyio.from_thread.BlockingPortal,
        limiter: anyio.CapacityLimiter | None = None,
    ) -> None:
        self._db = db
        self._portal = portal
        self._limiter = limiter

    @property
    def database(self) -> Database:
        """The async database underneath (for use inside the worker's loop only)."""
        return self._db

    def transact(
        self,
        fn: Callable[Concatenate[BlockingTransaction, P], T],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> T:
        """Run ``fn(tr, *args, **kwargs)`` and commit, retrying as FoundationDB's retry
        loop does (``fn`` may run more than once: its writes must be idempotent). Each
        attempt of ``fn`` runs in a thread of its own; every operation of ``tr`` runs in
        the worker's loop."""
        portal = self._portal
        limiter = self._limiter

        async def attempt(tr: Transaction) -> T:
            return await anyio.to_thread.run_sync(
                lambda: fn(BlockingTransaction(tr, portal), *args, **kwargs), limiter=limiter
            )

        return portal.call(self._db.transact, attempt)
