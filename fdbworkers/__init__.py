"""fdbworkers: worker membership, liveness and exactly-one job ownership on FoundationDB.

This module is the whole public API; everything else lives in private modules.
"""

from ._db import (
    Database,
    DatabaseStatistics,
    KeySelector,
    KeyValue,
    MutationType,
    ReadTransaction,
    Transaction,
    VersionstampFuture,
    Watch,
)
from ._errors import (
    BackendUnavailableError,
    ClusterUnreachableError,
    ConfigError,
    CorruptDataError,
    FDBError,
    FdbworkersError,
    FencedError,
    LayoutError,
)

__version__ = "0.1.0"

__all__ = [
    "BackendUnavailableError",
    "ClusterUnreachableError",
    "ConfigError",
    "CorruptDataError",
    "Database",
    "DatabaseStatistics",
    "FDBError",
    "FdbworkersError",
    "FencedError",
    "KeySelector",
    "KeyValue",
    "LayoutError",
    "MutationType",
    "ReadTransaction",
    "Transaction",
    "VersionstampFuture",
    "Watch",
    "__version__",
]
