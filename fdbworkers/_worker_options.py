"""A worker's options and its id: ``WorkerOptions`` (each option checked when the options
are made, by small named checks in the order ``__post_init__`` lists them), the defaults
and ranges the CLI shares, and how a worker id is given, kept in a file, or made.
"""

from __future__ import annotations

import math
import os
import socket
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeGuard

from ._core.assign import DEFAULT_PARTITIONS as ASSIGN_DEFAULT_PARTITIONS
from ._core.keys import validate_name
from ._core.liveness import default_check_interval, default_fence_margin, max_fence_margin
from ._core.records import encode
from ._errors import ConfigError
from ._store.events import DEFAULT_EVENT_RETENTION

DEFAULT_TIMEOUT = 10.0
#: The liveness timeout's range (seconds), as the CLI's `worker --timeout`.
MIN_TIMEOUT = 0.3
MAX_TIMEOUT = 3600.0
#: Membership reads of one worker are at least this far apart (see WorkerOptions).
MEMBERSHIP_READ_GAP = 0.25
#: Partitions of a new role: the assignment's measured choice (docs/assignment.md).
DEFAULT_PARTITIONS = ASSIGN_DEFAULT_PARTITIONS


def _number(value: Any) -> TypeGuard[float]:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _positive(name: str, value: float) -> None:
    if not _number(value) or value <= 0:
        raise ConfigError(f"{name} must be a positive number of seconds, got {value!r}")


@dataclass(frozen=True)
class WorkerOptions:
    """Validated options of one worker in one role (see ``open_worker``)."""

    timeout: float = DEFAULT_TIMEOUT
    weight: float = 1.0
    settle: float = 1.0
    settle_max: float | None = None
    #: Report the first change after a quiet window at once, and batch the changes that
    #: follow it for the window (a lone join costs no wait; a storm still one report
    #: per window). False: every change waits for ``settle`` seconds of quiet.
    settle_leading: bool = True
    check_interval: float | None = None
    fence_margin: float | None = None
    poll_interval: float = 5.0
    partitions: int = DEFAULT_PARTITIONS
    event_retention: float = DEFAULT_EVENT_RETENTION
    leave_timeout: float | None = None
    meta: Mapping[str, Any] = field(default_factory=dict)
    #: Stop (ClusterUnreachableError) once the cluster has not answered for this many
    #: seconds in a row; None: keep trying (saying so in the log) for ever.
    give_up_after: float | None = None

    def __post_init__(self) -> None:
        self._check_timeout()
        if not _number(self.weight) or not (0 < self.weight < 1e6):
            raise ConfigError(f"weight must be a number in (0, 1e6), got {self.weight!r}")
        self._check_settle()
        if self.leave_timeout is not None:
            _positive("leave_timeout", self.leave_timeout)
        if self.give_up_after is not None:
            _positive("give_up_after", self.give_up_after)
        if self.check_interval is not None:
            _positive("check_interval", self.check_interval)
            if self.check_interval > self.timeout:
                raise ConfigError("check_interval must not exceed timeout")
        if self.fence_margin is not None:
            self._check_fence_margin()
        _positive("poll_interval", self.poll_interval)
        if (
            not isinstance(self.partitions, int)
            or isinstance(self.partitions, bool)
            or not 1 <= self.partitions <= 1_000_000
        ):
            raise ConfigError(f"partitions must be an integer in [1, 1e6], got {self.partitions!r}")
        _positive("event_retention", self.event_retention)
        self._check_meta()

    def _check_timeout(self) -> None:
        _positive("timeout", self.timeout)
        if not MIN_TIMEOUT <= self.timeout <= MAX_TIMEOUT:
            raise ConfigError(
                f"timeout must be in [{MIN_TIMEOUT:g}, {MAX_TIMEOUT:g}] seconds, "
                f"got {self.timeout!r}"
            )

    def _check_settle(self) -> None:
        """``settle``, ``settle_leading`` and ``settle_max``, in that order."""
        if not _number(self.settle) or not 0 <= self.settle <= MAX_TIMEOUT:
            raise ConfigError(
                f"settle must be in [0, {MAX_TIMEOUT:g}] seconds, got {self.settle!r}"
            )
        if not isinstance(self.settle_leading, bool):
            raise ConfigError(f"settle_leading must be True or False, got {self.settle_leading!r}")
        if self.settle_max is not None and (
            not _number(self.settle_max) or self.settle_max < self.settle
        ):
            raise ConfigError(f"settle_max must be a number >= settle, got {self.settle_max!r}")

    def _check_fence_margin(self) -> None:
        """The lease (timeout - margin) must cover a heartbeat interval plus an operation
        timeout (``max_fence_margin``)."""
        most = max_fence_margin(self.timeout, self.heartbeat_interval, self.op_timeout)
        if not _number(self.fence_margin) or not 0 < self.fence_margin <= most:
            raise ConfigError(
                f"fence_margin must be > 0 and at most {most:g} s with timeout "
                f"{self.timeout:g} s: the lease (timeout - margin) must cover a heartbeat "
                f"interval ({self.heartbeat_interval:g} s) plus an operation timeout "
                f"({self.op_timeout:g} s); got {self.fence_margin!r}"
            )

    def _check_meta(self) -> None:
        if not isinstance(self.meta, Mapping):
            raise ConfigError("meta must be a mapping")
        try:
            encode({"meta": dict(self.meta)})
        except Exception as e:
            raise ConfigError(f"meta must be msgpack-serialisable: {e}") from e

    @property
    def effective_check_interval(self) -> float:
        return self.check_interval or default_check_interval(self.timeout)

    @property
    def effective_fence_margin(self) -> float:
        return self.fence_margin or default_fence_margin(self.timeout)

    @property
    def effective_settle_max(self) -> float:
        return self.settle_max if self.settle_max is not None else max(self.settle * 5, 1.0)

    @property
    def membership_read_gap(self) -> float:
        """The least time between two membership reads of a worker: during a burst of
        changes (a whole fleet starting) each worker reads the N member records at most
        once per gap, not once per change (O(N) per gap instead of O(N) per join). A
        quarter of the settle window at most, so the settled view is barely delayed."""
        return min(MEMBERSHIP_READ_GAP, self.settle / 4)

    @property
    def heartbeat_interval(self) -> float:
        return self.timeout / 3

    @property
    def op_timeout(self) -> float:
        """The timeout of each transaction: no operation waits longer."""
        return max(0.1, min(self.timeout / 3, 5.0))


def resolve_worker_id(worker_id: str | None, id_file: str | os.PathLike[str] | None) -> str:
    """The worker id: given, or kept in ``id_file`` so a quick restart keeps it, or new."""
    if worker_id is not None:
        return validate_name("worker id", worker_id)
    if id_file is not None:
        path = Path(id_file)
        try:
            existing = path.read_text().strip()
        except FileNotFoundError:
            existing = ""
        except OSError as e:
            raise ConfigError(f"cannot read the worker id file {path}: {e}") from e
        if existing:
            return validate_name(f"worker id in {path}", existing)
        new = new_worker_id()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(path.suffix + ".tmp")
            tmp.write_text(new + "\n")
            tmp.replace(path)
        except OSError as e:
            raise ConfigError(f"cannot write the worker id file {path}: {e}") from e
        return new
    return new_worker_id()


def new_worker_id() -> str:
    host = socket.gethostname().split(".")[0] or "worker"
    return f"{host}-{uuid.uuid4().hex[:8]}"


def make_options(options: WorkerOptions | None, overrides: dict[str, Any]) -> WorkerOptions:
    """The options of ``open_worker``: ``options``, or made from the individual ones."""
    if options is not None and overrides:
        raise ConfigError("pass either options= or individual options, not both")
    if options is not None:
        if not isinstance(options, WorkerOptions):
            raise ConfigError(f"options must be a WorkerOptions, got {options!r}")
        return options
    try:
        return WorkerOptions(**overrides)
    except TypeError as e:
        raise ConfigError(str(e)) from e
