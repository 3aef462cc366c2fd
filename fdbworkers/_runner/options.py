"""The checks of JobRunner's options: a bad option raises ConfigError naming it, before
the runner holds any state."""

from __future__ import annotations

import math
from typing import Any

from .._errors import ConfigError
from .job import Handler


def check_options(
    handler: Handler,
    *,
    grace: float,
    max_moves: int | None,
    move_interval: float,
    restart_backoff: tuple[float, float],
    resync_interval: float,
    full_resync_interval: float,
    claim_poll: float,
    park_after: int | None,
    healthy_after: float,
) -> None:
    """ConfigError naming the first bad option of a JobRunner."""
    if park_after is not None and (
        isinstance(park_after, bool) or not isinstance(park_after, int) or park_after < 1
    ):
        raise ConfigError(f"park_after must be an integer >= 1 (or None), got {park_after!r}")
    _check_seconds(healthy_after=healthy_after)
    if healthy_after <= 0:
        raise ConfigError(f"healthy_after must be > 0 seconds, got {healthy_after!r}")
    if not (isinstance(restart_backoff, tuple) and len(restart_backoff) == 2):
        raise ConfigError(
            "restart_backoff must be a tuple (initial, maximum) of seconds, "
            f"got {restart_backoff!r}"
        )
    _check_seconds(
        grace=grace,
        move_interval=move_interval,
        restart_backoff=restart_backoff,
        resync_interval=resync_interval,
        full_resync_interval=full_resync_interval,
        claim_poll=claim_poll,
    )
    if not callable(handler):
        raise ConfigError(f"handler must be an async function of a Job, got {handler!r}")
    if grace < 0:
        raise ConfigError("grace must be >= 0")
    if max_moves is not None and (
        isinstance(max_moves, bool) or not isinstance(max_moves, int) or max_moves < 1
    ):
        raise ConfigError(
            f"max_moves must be an integer >= 1 (or None for no velocity limit), got {max_moves!r}"
        )
    if not move_interval > 0 or not claim_poll > 0:
        raise ConfigError("move_interval and claim_poll must be > 0 seconds")
    if restart_backoff[0] <= 0 or restart_backoff[1] < restart_backoff[0]:
        raise ConfigError("restart_backoff must be (initial > 0, maximum >= initial)")


def _check_seconds(**values: Any) -> None:
    """ConfigError naming the option unless each value is a finite number (NaN passes
    every ``<`` check, so the range checks alone would accept it)."""
    for name, value in values.items():
        for v in value if isinstance(value, tuple) else (value,):
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
                raise ConfigError(f"{name} must be a finite number of seconds, got {value!r}")
