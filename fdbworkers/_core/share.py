"""Which key ranges to read for a set of partitions, and how to cut a long read into
pages (pure: no I/O).

A role's jobs are keyed ``(..., "job", partition, job_id)`` and its claims
``(..., "claim", partition, job_id)``, so the jobs of a set of partitions are the union
of one key range per partition, and adjacent partitions make one range. A worker's
partitions are scattered over the role (the assignment hashes), so its share is made of
many runs of adjacent partitions with other workers' partitions in between.

Two costs compete: every range request costs about :data:`REQUEST_COST` keys read (on
the local cluster, a range request through the seam takes about 150 us, a key about
5 us), and reading a gap between two runs costs the keys stored there (other workers'
jobs: about ``J / P`` per partition). :func:`plan_ranges` merges two neighbouring runs
exactly when the gap's expected keys cost less than the request it saves. The total
``keys + REQUEST_COST * requests`` is additive over the gaps, so deciding each gap on
its own is optimal; it is never more than the cheaper of "one range per run" and "one
scan of the whole role" (the two ends of the scale: no gap merged, every gap merged).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Final

from .partset import PartitionSet

#: A range request costs about as much as reading this many keys (measured on the local
#: FoundationDB through the seam: ~150 us per request, ~5 us per key, both in Python).
REQUEST_COST: Final = 32.0


def runs(partitions: Iterable[int]) -> list[tuple[int, int]]:
    """Maximal runs ``(first, last)`` of adjacent partitions, in order."""
    if isinstance(partitions, PartitionSet):
        return partitions.runs()  # from the bitmap, no set or sorted list of ints
    out: list[tuple[int, int]] = []
    for p in sorted(set(partitions)):
        if out and out[-1][1] == p - 1:
            out[-1] = (out[-1][0], p)
        else:
            out.append((p, p))
    return out


def max_gap(keys_per_partition: float, request_cost: float = REQUEST_COST) -> float:
    """The longest gap (in partitions) worth reading through rather than paying for
    another request: its expected keys are at most one request's cost."""
    if not keys_per_partition > 0:
        return math.inf
    return request_cost / keys_per_partition


def plan_ranges(
    partitions: Iterable[int],
    keys_per_partition: float,
    request_cost: float = REQUEST_COST,
) -> list[tuple[int, int]]:
    """Partition ranges ``(first, last)`` (both included) that cover ``partitions`` at
    the least expected ``keys + request_cost * requests``: neighbouring runs are merged
    when the partitions between them hold at most ``request_cost`` keys on average.
    ``keys_per_partition`` is the role's density, ``J / P`` (0: merge everything)."""
    limit = max_gap(keys_per_partition, request_cost)
    out: list[tuple[int, int]] = []
    for first, last in runs(partitions):
        if out and first - out[-1][1] - 1 <= limit:
            out[-1] = (out[-1][0], last)
        else:
            out.append((first, last))
    return out


def plan_cost(
    ranges: Sequence[tuple[int, int]],
    keys_per_partition: float,
    request_cost: float = REQUEST_COST,
) -> float:
    """Expected cost (in keys) of reading ``ranges`` once, one request each."""
    covered = sum(last - first + 1 for first, last in ranges)
    return covered * max(0.0, keys_per_partition) + request_cost * len(ranges)


def group_sorted(
    partitions: Sequence[int],
    keys_per_partition: float,
    request_cost: float = REQUEST_COST,
) -> list[tuple[int, int]]:
    """Cut a sorted sequence of partitions (one entry per item, repeats allowed: the
    jobs of a claim batch) into groups ``[start, end)`` of neighbouring items that one
    range request should cover: a new group starts where the gap to the previous
    item's partition is longer than :func:`max_gap`."""
    limit = max_gap(keys_per_partition, request_cost)
    out: list[tuple[int, int]] = []
    start = 0
    for i in range(1, len(partitions)):
        if partitions[i] - partitions[i - 1] - 1 > limit:
            out.append((start, i))
            start = i
    if partitions:
        out.append((start, len(partitions)))
    return out


#: A page of a paged read: at most this many keys ...
PAGE_KEYS: Final = 5000
#: ... in at most this many range requests (issued concurrently in one transaction).
PAGE_REQUESTS: Final = 128
#: A range request of a page asks for at least this many keys.
MIN_REQUEST_KEYS: Final = 64


def request_limit(requests: int, page_keys: int = PAGE_KEYS) -> int:
    """The row limit of each of ``requests`` range requests of one page."""
    return max(MIN_REQUEST_KEYS, page_keys // max(1, requests))
