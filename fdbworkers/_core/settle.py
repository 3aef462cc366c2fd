"""The settle window (pure): report a membership change once it has been quiet.

The seed's "cluster stability" logic. Each change restarts the quiet period of
``window`` seconds, but a report is never delayed more than ``max_delay`` after the first
unreported change, so a flapping cluster still converges. Rolling restarts and cluster
start-up thus cause one rebalance per burst, not one per worker.

With ``leading=True`` the first change after ``window`` seconds without any change is
reported at once (a lone join or leave is not delayed), and the rest of its burst is
coalesced as above: a burst then costs at most two reports, the first at once.
"""

from __future__ import annotations

from dataclasses import dataclass

from .._errors import ConfigError


@dataclass
class Settler:
    window: float
    max_delay: float
    leading: bool = False
    _first_change: float | None = None
    _last_change: float | None = None
    #: The last change ever seen (not reset by a report): what "quiet" is measured from.
    _previous_change: float | None = None
    _at_once: bool = False

    def __post_init__(self) -> None:
        if self.window < 0:
            raise ConfigError(f"settle window must be >= 0 seconds, got {self.window}")
        if self.max_delay < self.window:
            raise ConfigError(
                f"settle max delay ({self.max_delay}) must be >= the window ({self.window})"
            )

    @property
    def pending(self) -> bool:
        return self._first_change is not None

    def changed(self, now: float) -> None:
        """Record a change seen at ``now``."""
        if self._first_change is None:
            self._first_change = now
            quiet = self._previous_change is None or now - self._previous_change >= self.window
            self._at_once = self.leading and quiet
        self._last_change = now
        self._previous_change = now

    def deadline(self) -> float | None:
        """When the pending change may be reported (None: nothing pending)."""
        if self._first_change is None or self._last_change is None:
            return None
        if self._at_once:
            return self._first_change
        return min(self._last_change + self.window, self._first_change + self.max_delay)

    def due(self, now: float) -> bool:
        d = self.deadline()
        return d is not None and now >= d

    def restart(self) -> None:
        """Forget every change seen, as if just created: the next change is reported as
        a first start's is (at once if ``leading``). A worker calls it when it registers
        anew: the new incarnation runs nothing yet, so its own arrival is no churn to
        settle, whatever it read just before (the view it was evicted from)."""
        self._first_change = None
        self._last_change = None
        self._previous_change = None
        self._at_once = False

    def reported(self) -> None:
        self._first_change = None
        self._last_change = None
        self._at_once = False
