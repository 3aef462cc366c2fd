"""fdbworkers: worker membership, liveness and exactly-one job ownership on FoundationDB.

This module is the whole public API; everything else lives in private modules.
"""

from ._backends.connect import open_database
from ._blocking import BlockingDatabase, BlockingJob, BlockingTransaction, BlockingWorker
from ._core.membership import Membership, MembershipChange
from ._core.states import WorkerState
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
from ._runner.admin import add_job, add_jobs, remove_job
from ._runner.job import Job, OwnershipChange, RunnerStatistics
from ._runner.runner import JobRunner
from ._store.bulk import AddJobsResult
from ._store.jobs import JobRecord
from ._worker import Worker, WorkerStatistics, open_worker, run_worker
from ._worker_lease import WorkerSupersededError
from ._worker_options import WorkerOptions

__version__ = "0.1.0"

__all__ = [
    "AddJobsResult",
    "BackendUnavailableError",
    "BlockingDatabase",
    "BlockingJob",
    "BlockingTransaction",
    "BlockingWorker",
    "ClusterUnreachableError",
    "ConfigError",
    "CorruptDataError",
    "Database",
    "DatabaseStatistics",
    "FDBError",
    "FdbworkersError",
    "FencedError",
    "Job",
    "JobRecord",
    "JobRunner",
    "KeySelector",
    "KeyValue",
    "LayoutError",
    "Membership",
    "MembershipChange",
    "MutationType",
    "OwnershipChange",
    "ReadTransaction",
    "RunnerStatistics",
    "Transaction",
    "VersionstampFuture",
    "Watch",
    "Worker",
    "WorkerOptions",
    "WorkerState",
    "WorkerStatistics",
    "WorkerSupersededError",
    "__version__",
    "add_job",
    "add_jobs",
    "open_database",
    "open_worker",
    "remove_job",
    "run_worker",
]
