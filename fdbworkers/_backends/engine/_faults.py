"""Fault injection for the embedded engine: what can go wrong, and how often.

Every fault is drawn from the engine's seeded ``random.Random`` at the moment the
operation runs, so a run is reproducible from its seed and the schedule of calls. All
faults are off by default; ``engine.faults`` can be swapped at any time.

Operation names passed to a latency callable: ``"get_read_version"``, ``"get"``,
``"get_key"``, ``"get_range"``, ``"commit"`` (drawn once per commit, half before the
commit is resolved and half after).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass

from ..._errors import ConfigError

#: A latency distribution: (min, max) seconds, uniform, or ``f(rng, op) -> seconds``.
Latency = tuple[float, float] | Callable[[random.Random, str], float]


def _probability(name: str, p: float) -> None:
    if not (0.0 <= p <= 1.0):
        raise ConfigError(f"FaultPlan.{name} is a probability in [0, 1], not {p!r}")


def _non_negative(name: str, x: float) -> None:
    if not (x >= 0.0 and math.isfinite(x)):
        raise ConfigError(f"FaultPlan.{name} must be a finite number >= 0, not {x!r}")


@dataclass(frozen=True)
class FaultPlan:
    """Faults the engine injects (all off by default).

    * ``latency``: network delay of every database operation.
    * ``conflict_probability``: a commit that has read conflict ranges fails with 1020
      although nothing conflicted (a real resolver never reports a conflict for a
      transaction without reads, so blind writes are spared).
    * ``unknown_result_probability``: a commit fails with 1021 commit_unknown_result;
      with ``unknown_result_committed_fraction`` it was applied all the same.
    * ``watch_delay_max``: each watch fire is delivered up to this many seconds late
      (uniform).
    * ``spurious_watch_rate``: spurious fires per watch per second (Poisson), and
      ``spurious_watch_probability``: chance that a watch fires spuriously as soon as it
      is set.
    * ``lost_watch_probability``: chance that a watch's fire is held back: the watch
      seems never to fire for as long as the engine's plan loses watches; the held
      fires are delivered when a plan without this fault replaces it (the engine heals).

    A partitioned client is switched per database handle: ``db.partitioned = True``.
    """

    latency: Latency | None = None
    conflict_probability: float = 0.0
    unknown_result_probability: float = 0.0
    unknown_result_committed_fraction: float = 0.5
    watch_delay_max: float = 0.0
    spurious_watch_rate: float = 0.0
    spurious_watch_probability: float = 0.0
    lost_watch_probability: float = 0.0

    def __post_init__(self) -> None:
        _probability("lost_watch_probability", self.lost_watch_probability)
        _probability("conflict_probability", self.conflict_probability)
        _probability("unknown_result_probability", self.unknown_result_probability)
        _probability("unknown_result_committed_fraction", self.unknown_result_committed_fraction)
        _probability("spurious_watch_probability", self.spurious_watch_probability)
        _non_negative("watch_delay_max", self.watch_delay_max)
        _non_negative("spurious_watch_rate", self.spurious_watch_rate)
        lat = self.latency
        if isinstance(lat, tuple):
            if len(lat) != 2:
                raise ConfigError(f"FaultPlan.latency is (min, max) seconds, not {lat!r}")
            lo, hi = lat
            _non_negative("latency min", lo)
            _non_negative("latency max", hi)
            if lo > hi:
                raise ConfigError(f"FaultPlan.latency: min {lo} > max {hi}")
        elif lat is not None and not callable(lat):
            raise ConfigError(f"FaultPlan.latency is (min, max) or a callable, not {lat!r}")

    @property
    def any_latency(self) -> bool:
        lat = self.latency
        return lat is not None and not (isinstance(lat, tuple) and lat[1] <= 0)

    def draw_latency(self, rng: random.Random, op: str) -> float:
        lat = self.latency
        if lat is None:
            return 0.0
        if isinstance(lat, tuple):
            lo, hi = lat
            if hi <= 0:
                return 0.0
            return lo if lo == hi else rng.uniform(lo, hi)
        seconds = float(lat(rng, op))
        if not (seconds >= 0 and math.isfinite(seconds)):
            raise ConfigError(f"FaultPlan.latency returned {seconds!r} for {op!r}")
        return seconds
