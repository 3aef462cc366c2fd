"""The database seam: the one async transaction API the rest of fdbworkers uses.

Two implementations live behind it: the real one over FoundationDB's Python binding
(``fdbworkers._backends.fdb``) and the embedded engine with FoundationDB's semantics
(``fdbworkers._backends.engine``). Nothing else in the package talks to a database.

The API follows the binding closely, so that code reads the same as FDB code, with three
differences: every read is ``await``-ed (futures are bridged into the event loop, asyncio
or trio, never waited on in a thread), errors are :class:`~fdbworkers.FDBError` with FDB's
numeric codes on both backends, and ``Database.transact`` is the one retry loop (FDB's
``@transactional``).

Functions that run inside a transaction take it as their first argument::

    async def bump(tr: Transaction, key: bytes) -> None:
        tr.add(key, (1).to_bytes(8, "little"))

    await db.transact(bump, key)
"""

from __future__ import annotations

import abc
import enum
import math
from collections.abc import Awaitable, Callable, Generator, Sequence
from dataclasses import dataclass, field
from typing import Any, Concatenate, NamedTuple, ParamSpec, TypeVar

from ._core.tuples import VERSIONSTAMP_SIZE as VERSIONSTAMP_SIZE
from ._core.tuples import strinc as strinc
from ._errors import ConfigError, FDBError

T = TypeVar("T")
P = ParamSpec("P")

#: FoundationDB's limits (known-limitations.rst), inclusive.
MAX_KEY_SIZE = 10_000
MAX_VALUE_SIZE = 100_000
MAX_TRANSACTION_SIZE = 10_000_000
#: Default per-database limit of unfired watches (option ``max_watches``).
DEFAULT_MAX_WATCHES = 10_000
#: The longest transaction timeout FDB takes (2**31 - 1 milliseconds, about 24.8 days).
MAX_TRANSACTION_TIMEOUT = (2**31 - 1) / 1000


def check_timeout(seconds: Any, what: str = "a transaction timeout") -> float:
    """``seconds`` as a float if it is a timeout FDB takes (0: none), else ConfigError
    naming ``what`` (bool, str, NaN, infinities and more than about 24.8 days refused)."""
    if (
        isinstance(seconds, bool)
        or not isinstance(seconds, int | float)
        or not math.isfinite(seconds)
        or not 0 <= seconds <= MAX_TRANSACTION_TIMEOUT
    ):
        raise ConfigError(
            f"{what} is a number of seconds in [0, {MAX_TRANSACTION_TIMEOUT:g}] "
            f"(0: none), not {seconds!r}"
        )
    return float(seconds)


def check_retry_limit(retries: Any, what: str = "a retry limit") -> int:
    """``retries`` if it is an int >= -1 (-1: no limit), else ConfigError naming ``what``."""
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < -1:
        raise ConfigError(f"{what} is an integer >= -1 (-1: no limit), not {retries!r}")
    return retries


class MutationType(enum.IntEnum):
    """Atomic operations, with FoundationDB's option codes."""

    ADD = 2
    BIT_AND = 6
    BIT_OR = 7
    BIT_XOR = 8
    APPEND_IF_FITS = 9
    MAX = 12
    MIN = 13
    SET_VERSIONSTAMPED_KEY = 14
    SET_VERSIONSTAMPED_VALUE = 15
    BYTE_MIN = 16
    BYTE_MAX = 17
    COMPARE_AND_CLEAR = 20


@dataclass(frozen=True, slots=True)
class KeySelector:
    """FoundationDB's key selector: the ``offset``-th key relative to the last key
    ``<= key`` (``or_equal``) or ``< key`` (not ``or_equal``)."""

    key: bytes
    or_equal: bool
    offset: int

    @classmethod
    def first_greater_or_equal(cls, key: bytes) -> KeySelector:
        return cls(key, False, 1)

    @classmethod
    def first_greater_than(cls, key: bytes) -> KeySelector:
        return cls(key, True, 1)

    @classmethod
    def last_less_than(cls, key: bytes) -> KeySelector:
        return cls(key, False, 0)

    @classmethod
    def last_less_or_equal(cls, key: bytes) -> KeySelector:
        return cls(key, True, 0)

    def __add__(self, n: int) -> KeySelector:
        return KeySelector(self.key, self.or_equal, self.offset + n)

    def __sub__(self, n: int) -> KeySelector:
        return KeySelector(self.key, self.or_equal, self.offset - n)


class KeyValue(NamedTuple):
    key: bytes
    value: bytes


KeyOrSelector = bytes | KeySelector


def check_bytes(value: object, what: str = "key") -> None:
    """The type check every backend makes on keys and values (a TypeError, as the
    binding raises, before anything reaches the database)."""
    if not isinstance(value, bytes):
        raise TypeError(f"{what} must be bytes, not {type(value).__name__}")


def check_limit(limit: object) -> None:
    """The row limit of a range read: an int >= 0 (0 = no limit), on every backend."""
    if not isinstance(limit, int) or limit < 0:
        raise ValueError(f"limit must be >= 0 (0 = no limit), not {limit}")


def as_selector(k: KeyOrSelector) -> KeySelector:
    """A range bound as a key selector (bytes mean ``first_greater_or_equal``)."""
    if isinstance(k, KeySelector):
        check_bytes(k.key)
        return k
    if isinstance(k, bytes):
        return KeySelector.first_greater_or_equal(k)
    raise TypeError(f"a key must be bytes or a KeySelector, not {type(k).__name__}")


class Watch(abc.ABC):
    """A watch on one key, created by :meth:`Transaction.watch`.

    It becomes ready after its transaction committed and the key's value then differs
    from the value the transaction could read; it may also fire spuriously. If the
    transaction fails to commit, ``wait`` raises that error; if the transaction is reset
    or cancelled uncommitted, it raises 1025 ``transaction_cancelled``. A watch outlives
    its transaction: cancel it when no longer needed (it counts against the database's
    ``max_watches`` until it fires or is cancelled).
    """

    @abc.abstractmethod
    async def wait(self) -> None:
        """Return when the watch fires; raise :class:`FDBError` if it failed."""

    @abc.abstractmethod
    def cancel(self) -> None:
        """Stop the watch (idempotent); a pending ``wait`` raises 1101."""

    @property
    @abc.abstractmethod
    def done(self) -> bool:
        """True once the watch fired, failed or was cancelled."""


class VersionstampFuture(abc.ABC):
    """The commit versionstamp of a transaction, ready once it committed.

    Awaiting it after a failed or read-only commit raises an error: 2020
    ``transaction_invalid_version`` after a failed commit, 2021 ``no_commit_version``
    for a read-only transaction (both as on a real 7.3 cluster)."""

    @abc.abstractmethod
    async def get(self) -> bytes:
        """The 10-byte versionstamp."""

    def __await__(self) -> Generator[Any, None, bytes]:
        return self.get().__await__()


class ReadTransaction(abc.ABC):
    """Reads. ``Transaction.snapshot`` is a ReadTransaction whose reads add no conflicts."""

    @abc.abstractmethod
    async def get(self, key: bytes) -> bytes | None: ...

    @abc.abstractmethod
    async def get_key(self, selector: KeySelector) -> bytes: ...

    @abc.abstractmethod
    async def get_range(
        self,
        begin: KeyOrSelector,
        end: KeyOrSelector,
        *,
        limit: int = 0,
        reverse: bool = False,
    ) -> list[KeyValue]:
        """Keys in ``[begin, end)`` (bytes are ``first_greater_or_equal``), at most
        ``limit`` (0 = no limit), in reverse order when asked. The read conflict range
        covers only what was read up to where the limit stopped it."""

    async def get_many(self, keys: Sequence[bytes]) -> list[bytes | None]:
        """The values of ``keys`` (None where absent), as ``get`` reads them. On
        FoundationDB the reads are sent together, so they take one round trip instead
        of one each. Every key is read, and adds its read conflict, even if the caller
        then looks at only some of them."""
        return [await self.get(key) for key in keys]

    async def get_range_startswith(
        self, prefix: bytes, *, limit: int = 0, reverse: bool = False
    ) -> list[KeyValue]:
        return await self.get_range(prefix, strinc(prefix), limit=limit, reverse=reverse)

    @abc.abstractmethod
    async def get_read_version(self) -> int: ...


class Transaction(ReadTransaction):
    """One FoundationDB transaction. Writes are buffered and visible to its own reads."""

    #: True after a retry that followed 1021/1039: an earlier attempt may have committed.
    maybe_committed: bool = False

    @property
    @abc.abstractmethod
    def snapshot(self) -> ReadTransaction:
        """The same transaction, reading without adding read conflict ranges."""

    @abc.abstractmethod
    def set(self, key: bytes, value: bytes) -> None: ...

    @abc.abstractmethod
    def clear(self, key: bytes) -> None: ...

    @abc.abstractmethod
    def clear_range(self, begin: bytes, end: bytes) -> None: ...

    def clear_range_startswith(self, prefix: bytes) -> None:
        self.clear_range(prefix, strinc(prefix))

    @abc.abstractmethod
    def atomic_op(self, op: MutationType, key: bytes, param: bytes) -> None: ...

    # Convenience forms of the atomic operations.
    def add(self, key: bytes, param: bytes) -> None:
        self.atomic_op(MutationType.ADD, key, param)

    def max(self, key: bytes, param: bytes) -> None:
        self.atomic_op(MutationType.MAX, key, param)

    def min(self, key: bytes, param: bytes) -> None:
        self.atomic_op(MutationType.MIN, key, param)

    def byte_max(self, key: bytes, param: bytes) -> None:
        self.atomic_op(MutationType.BYTE_MAX, key, param)

    def byte_min(self, key: bytes, param: bytes) -> None:
        self.atomic_op(MutationType.BYTE_MIN, key, param)

    def compare_and_clear(self, key: bytes, param: bytes) -> None:
        self.atomic_op(MutationType.COMPARE_AND_CLEAR, key, param)

    def set_versionstamped_key(self, key: bytes, value: bytes) -> None:
        """``key`` ends with a 4-byte little-endian offset of a 10-byte placeholder."""
        self.atomic_op(MutationType.SET_VERSIONSTAMPED_KEY, key, value)

    def set_versionstamped_value(self, key: bytes, value: bytes) -> None:
        """``value`` ends with a 4-byte little-endian offset of a 10-byte placeholder."""
        self.atomic_op(MutationType.SET_VERSIONSTAMPED_VALUE, key, value)

    @abc.abstractmethod
    def add_read_conflict_range(self, begin: bytes, end: bytes) -> None: ...

    def add_read_conflict_key(self, key: bytes) -> None:
        self.add_read_conflict_range(key, key + b"\x00")

    @abc.abstractmethod
    def add_write_conflict_range(self, begin: bytes, end: bytes) -> None: ...

    def add_write_conflict_key(self, key: bytes) -> None:
        self.add_write_conflict_range(key, key + b"\x00")

    @abc.abstractmethod
    def watch(self, key: bytes) -> Watch:
        """Watch ``key``: adds a read conflict on it, like a non-snapshot read."""

    @abc.abstractmethod
    def get_versionstamp(self) -> VersionstampFuture: ...

    @abc.abstractmethod
    def get_committed_version(self) -> int:
        """The commit version after a successful commit (-1 for a read-only one)."""

    @abc.abstractmethod
    def set_timeout(self, seconds: float) -> None:
        """Fail with 1031 ``transaction_timed_out`` once the transaction (across its
        retries) is older than this; 0 disables."""

    @abc.abstractmethod
    def set_retry_limit(self, retries: int) -> None:
        """After this many retries ``on_error`` raises the error (-1: no limit)."""

    @abc.abstractmethod
    async def commit(self) -> None: ...

    @abc.abstractmethod
    async def on_error(self, error: FDBError) -> None:
        """FDB's ``on_error``: for a retryable error within the retry limit, wait a
        backoff and reset the transaction for another attempt; otherwise raise it."""

    @abc.abstractmethod
    def reset(self) -> None: ...

    @abc.abstractmethod
    def cancel(self) -> None: ...


@dataclass
class DatabaseStatistics:
    """Counters of the retry loop, the same on both backends."""

    transactions: int = 0
    commits: int = 0
    retries: int = 0
    conflicts: int = 0
    unknown_results: int = 0
    errors_by_code: dict[int, int] = field(default_factory=dict)

    def snapshot(self) -> DatabaseStatistics:
        return DatabaseStatistics(
            self.transactions,
            self.commits,
            self.retries,
            self.conflicts,
            self.unknown_results,
            dict(self.errors_by_code),
        )


class Database(abc.ABC):
    """A database handle: creates transactions and runs the shared retry loop."""

    #: "engine", "remote-engine" or "fdb".
    backend: str = "abstract"

    def __init__(self) -> None:
        self.stats = DatabaseStatistics()
        self._default_timeout: float | None = None
        self._default_retry_limit: int | None = None

    @property
    def default_timeout(self) -> float | None:
        """The timeout (seconds) of every transaction ``transact`` runs; None: none."""
        return self._default_timeout

    @default_timeout.setter
    def default_timeout(self, seconds: float | None) -> None:
        self._default_timeout = (
            None if seconds is None else check_timeout(seconds, "default_timeout")
        )

    @property
    def default_retry_limit(self) -> int | None:
        """The retry limit of every transaction ``transact`` runs; None: none."""
        return self._default_retry_limit

    @default_retry_limit.setter
    def default_retry_limit(self, retries: int | None) -> None:
        self._default_retry_limit = (
            None if retries is None else check_retry_limit(retries, "default_retry_limit")
        )

    @abc.abstractmethod
    def create_transaction(self) -> Transaction: ...

    @abc.abstractmethod
    def set_max_watches(self, n: int) -> None:
        """The most unfired watches this handle may hold (FDB's ``max_watches``)."""

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Close the handle: outstanding watches fail, nothing else is touched."""

    async def __aenter__(self) -> Database:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def transact(
        self,
        fn: Callable[Concatenate[Transaction, P], Awaitable[T]],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> T:
        """Run ``fn(tr, *args, **kwargs)`` and commit, retrying as FoundationDB's
        retry loop does. ``fn`` may run more than once; after 1021 an earlier run may
        have committed (``tr.maybe_committed`` tells), so its writes must be idempotent.
        The database's ``default_timeout`` / ``default_retry_limit`` apply."""
        tr = self.create_transaction()
        if self._default_timeout is not None:
            tr.set_timeout(self._default_timeout)
        if self._default_retry_limit is not None:
            tr.set_retry_limit(self._default_retry_limit)
        return await run_transaction(self, tr, fn, *args, **kwargs)


async def run_transaction(
    db: Database,
    tr: Transaction,
    fn: Callable[Concatenate[Transaction, P], Awaitable[T]],
    *args: P.args,
    **kwargs: P.kwargs,
) -> T:
    """The retry loop on an already configured transaction (timeout, retry limit)."""
    stats = db.stats
    stats.transactions += 1
    try:
        while True:
            try:
                result = await fn(tr, *args, **kwargs)
                await tr.commit()
                stats.commits += 1
                return result
            except FDBError as e:
                stats.errors_by_code[e.code] = stats.errors_by_code.get(e.code, 0) + 1
                if e.code == 1020:
                    stats.conflicts += 1
                if e.maybe_committed:
                    stats.unknown_results += 1
                await tr.on_error(e)  # raises when not retryable or out of retries
                stats.retries += 1
                if e.maybe_committed:
                    tr.maybe_committed = True
    except BaseException:
        tr.cancel()
        raise


def backoff_delay(attempt: int, *, initial: float = 0.01, maximum: float = 1.0) -> float:
    """FDB's client backoff: doubles from 10 ms up to ``max_retry_delay`` (1 s)."""
    return min(maximum, initial * math.pow(2, max(0, attempt)))
