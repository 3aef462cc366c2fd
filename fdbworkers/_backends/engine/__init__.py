"""The embedded engine: FoundationDB's semantics in this process, on the event loop's clock.

``Engine`` is one "cluster" (data, versions, conflicts, watches, faults); each
``engine.open_database()`` is a client handle implementing :class:`fdbworkers.Database`.
See docs/engine.md for what it models and what it does not.
"""

from ._database import Engine, EngineDatabase
from ._faults import FaultPlan, Latency
from ._stats import EngineStatistics
from ._store import MVCC_WINDOW, VERSIONS_PER_SECOND, Store
from ._transaction import EngineTransaction
from ._versionstamps import EngineVersionstampFuture
from ._watches import EngineWatch

__all__ = [
    "MVCC_WINDOW",
    "VERSIONS_PER_SECOND",
    "Engine",
    "EngineDatabase",
    "EngineStatistics",
    "EngineTransaction",
    "EngineVersionstampFuture",
    "EngineWatch",
    "FaultPlan",
    "Latency",
    "Store",
]
