"""Errors: FoundationDB's error codes (shared by both backends) and fdbworkers' own.

The classification of FDB errors mirrors ``fdb_error_predicate`` of libfdb_c 7.3.79
(checked through the binding on a real cluster): ``retryable`` is what the standard retry
loop (``Transaction::onError``) retries, ``maybe_committed`` marks the errors after which
the transaction may have committed (1021, 1039).
"""

from __future__ import annotations

from typing import Final

#: code -> (name, description); names from flow/include/flow/error_definitions.h.
FDB_ERRORS: Final[dict[int, tuple[str, str]]] = {
    1000: ("operation_failed", "Operation failed"),
    1004: ("timed_out", "Operation timed out"),
    1007: ("transaction_too_old", "Transaction is too old to perform reads or be committed"),
    1009: ("future_version", "Request for future version"),
    1020: ("not_committed", "Transaction not committed due to conflict with another transaction"),
    1021: ("commit_unknown_result", "Transaction may or may not have committed"),
    1025: ("transaction_cancelled", "Operation aborted because the transaction was cancelled"),
    1026: ("connection_failed", "Network connection failed"),
    1031: ("transaction_timed_out", "Operation aborted because the transaction timed out"),
    1032: ("too_many_watches", "Too many watches currently set"),
    1034: ("watches_disabled", "Watches cannot be set if read your writes is disabled"),
    1036: ("accessed_unreadable", "Read or wrote an unreadable key"),
    1037: ("process_behind", "Storage process does not have recent mutations"),
    1038: ("database_locked", "Database is locked"),
    1039: ("cluster_version_changed", "The protocol version of the cluster has changed"),
    1042: ("proxy_memory_limit_exceeded", "CommitProxy commit memory limit exceeded"),
    1051: ("batch_transaction_throttled", "Batch GRV request rate limit exceeded"),
    1078: ("grv_proxy_memory_limit_exceeded", "GetReadVersion proxy memory limit exceeded"),
    1101: ("operation_cancelled", "Asynchronous operation cancelled"),
    1213: ("tag_throttled", "Transaction tag is being throttled"),
    1500: ("platform_error", "Platform error"),
    2000: ("client_invalid_operation", "Invalid API call"),
    2004: ("key_outside_legal_range", "Key outside legal range"),
    2005: ("inverted_range", "Range begin key larger than end key"),
    2006: ("invalid_option_value", "Option set with an invalid value"),
    2007: ("invalid_option", "Option not valid in this context"),
    2017: ("used_during_commit", "Operation issued while a commit was outstanding"),
    2018: ("invalid_mutation_type", "Unrecognized atomic mutation type"),
    2020: ("transaction_invalid_version", "Transaction does not have a valid commit version"),
    2021: (
        "no_commit_version",
        "Transaction is read-only and therefore does not have a commit version",
    ),
    2101: ("transaction_too_large", "Transaction exceeds byte limit"),
    2102: ("key_too_large", "Key length exceeds limit"),
    2103: ("value_too_large", "Value length exceeds limit"),
    2200: ("api_version_unset", "API version is not set"),
    2201: ("api_version_already_set", "API version may be set only once"),
    2202: ("api_version_invalid", "API version not valid"),
    2203: ("api_version_not_supported", "API version not supported"),
}

#: Errors the standard retry loop retries (fdb_error_predicate RETRYABLE, libfdb_c 7.3.79).
RETRYABLE: Final[frozenset[int]] = frozenset(
    {1007, 1009, 1020, 1021, 1037, 1038, 1039, 1042, 1051, 1078, 1213}
)
#: Errors after which the transaction may have committed (MAYBE_COMMITTED).
MAYBE_COMMITTED: Final[frozenset[int]] = frozenset({1021, 1039})


class FdbworkersError(Exception):
    """Base class of every error fdbworkers raises on purpose."""


class FDBError(FdbworkersError):
    """An error of the database, with FoundationDB's numeric code and name.

    Both backends raise it with the same codes, so code written against the embedded
    engine handles the real cluster's errors the same way.
    """

    def __init__(self, code: int, description: str | None = None) -> None:
        self.code = code
        known = FDB_ERRORS.get(code)
        self.name = known[0] if known else f"error_{code}"
        self.description = description or (known[1] if known else "Unknown FoundationDB error")
        super().__init__(f"{self.description} ({self.name}, {code})")

    @property
    def retryable(self) -> bool:
        """True when the standard retry loop retries this error."""
        return self.code in RETRYABLE

    @property
    def maybe_committed(self) -> bool:
        """True when the failed commit may nevertheless have been applied."""
        return self.code in MAYBE_COMMITTED

    def __reduce__(self) -> tuple[type[FDBError], tuple[int, str]]:
        return (FDBError, (self.code, self.description))


class ConfigError(FdbworkersError, ValueError):
    """An invalid option or argument, reported before anything is written."""


class LayoutError(FdbworkersError):
    """The data under the root was written by a newer (or unknown) layout version."""


class CorruptDataError(FdbworkersError):
    """A stored value cannot be decoded: reported with its key, never silently dropped."""


class BackendUnavailableError(FdbworkersError):
    """The requested backend cannot be used here (no libfdb_c, version mismatch, ...)."""


class ClusterUnreachableError(FdbworkersError):
    """The cluster did not answer within the allowed time."""


class FencedError(FdbworkersError):
    """Raised inside a job whose claim this worker no longer holds (see ``Job.fence``)."""
