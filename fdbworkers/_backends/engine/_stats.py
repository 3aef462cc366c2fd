"""The engine's counters: :class:`EngineStatistics`, one per database handle
(``db.engine_stats``), summed over an engine's handles (``engine.stats``).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

__all__ = ["EngineStatistics"]


@dataclass
class EngineStatistics:
    """Counters of an engine (``engine.stats``) or of one handle (``db.engine_stats``)."""

    transactions_committed: int = 0
    read_only_commits: int = 0
    conflicts: int = 0
    too_old: int = 0
    unknown_results: int = 0
    keys_read: int = 0
    keys_written: int = 0
    bytes_read: int = 0
    bytes_written: int = 0
    watches_set: int = 0
    watches_fired: int = 0
    reads_by_op: dict[str, int] = field(default_factory=dict)

    def add(self, other: EngineStatistics) -> None:
        """Add ``other``'s counters to these."""
        for f in fields(self):
            if f.name != "reads_by_op":
                setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))
        for op, n in other.reads_by_op.items():
            self.reads_by_op[op] = self.reads_by_op.get(op, 0) + n

    def snapshot(self) -> EngineStatistics:
        copy = EngineStatistics(
            **{f.name: getattr(self, f.name) for f in fields(self) if f.name != "reads_by_op"}
        )
        copy.reads_by_op = dict(self.reads_by_op)
        return copy
