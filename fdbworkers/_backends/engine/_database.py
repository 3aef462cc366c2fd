"""The engine's async shell (asyncio or trio): :class:`Engine` and its database handles
(:class:`EngineDatabase`), whose transactions (:mod:`._transaction`, :mod:`._reads`,
:mod:`._attempt`), watches (:mod:`._watches`) and versionstamp futures
(:mod:`._versionstamps`) implement the seam of :mod:`fdbworkers._db` over the pure
core (:mod:`._store`, :mod:`._ryw`). Its waits use the running loop's own primitives
(:mod:`fdbworkers._loop`: checkpoints, events, deadlines, per operation).

Every operation that would be a network call in FoundationDB yields to the event loop
(at least a checkpoint; with ``FaultPlan.latency`` a sleep on the engine's clock), honours the
transaction's timeout (1031) and its cancellation (1025), and hangs while its database
handle is partitioned. Nothing runs in the background: delays, spurious watch fires
and timeouts are deadlines that the waiting task observes, so the engine needs no
task group of its own and is deterministic under trio's virtual clock.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Final

from ..._db import DEFAULT_MAX_WATCHES, Database
from ..._errors import ConfigError, FDBError
from ..._log import get_logger
from ..._loop import checkpoint, current_time
from ._attempt import _Attempt
from ._faults import FaultPlan
from ._stats import EngineStatistics
from ._store import Store
from ._transaction import EngineTransaction
from ._watches import EngineWatch

__all__ = ["Engine", "EngineDatabase"]

log = get_logger("fdbworkers.engine")

MAX_WATCHES_LIMIT: Final = 1_000_000


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
        self._waiting: set[_Attempt] = set()
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
