"""The paged read of a worker's share of a role's jobs: the jobs of many partitions,
read in pages across transactions, with the version to follow the change log from
(see docs/architecture.md, "The paged share read")."""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from .._core.keys import RoleSpace
from .._core.partset import PartitionSet
from .._core.share import PAGE_KEYS, PAGE_REQUESTS, plan_ranges, request_limit
from .._db import KeyValue, Transaction
from .._errors import CorruptDataError
from .._log import Logger, get_logger
from .._loop import checkpoint
from .batch import gather
from .jobs import JobRecord

T = TypeVar("T")


class Transact(Protocol):
    """``db.transact`` or alike: run ``fn(tr, *args)`` in the retry loop."""

    def __call__(self, fn: Callable[..., Awaitable[T]], /, *args: Any) -> Awaitable[T]: ...


@dataclass
class ShareRead:
    """What a paged read of some partitions' jobs found (see :func:`read_share`)."""

    #: The jobs read (in key order, but for the ranges of a page read side by side), and
    #: their ids by partition (in key order).
    jobs: dict[str, JobRecord] = field(default_factory=dict)
    by_part: dict[int, list[str]] = field(default_factory=dict)
    #: The read version of the transaction before the first page: every change to the
    #: jobs committed after it is in the change log after this version (the cursor).
    version: int = 0
    #: The role's job counter at that version (J), and the density J / P used to plan.
    job_count: int = 0
    keys_per_partition: float = 0.0
    #: Keys returned, range requests, transactions (pages + the first one).
    keys: int = 0
    requests: int = 0
    transactions: int = 0


async def tx_read_ranges(
    tr: Transaction, ranges: Sequence[tuple[bytes, bytes]], limit: int
) -> list[list[KeyValue]]:
    """Snapshot range reads of ``ranges`` (at most ``limit`` keys each), issued together."""
    out: list[list[KeyValue]] = [[] for _ in ranges]

    async def one(lo: int, hi: int) -> None:
        b, e = ranges[lo]
        out[lo] = await tr.snapshot.get_range(b, e, limit=limit)

    await gather(one, [(i, i + 1) for i in range(len(ranges))])
    return out


async def tx_share_start(tr: Transaction, space: RoleSpace) -> tuple[int, int]:
    """(read version, the role's job counter): what a paged read starts from."""
    raw = await tr.snapshot.get(space.job_count_key)
    count = int.from_bytes(raw, "little", signed=True) if raw else 0
    return await tr.get_read_version(), max(0, count)


async def read_share(
    transact: Transact,
    space: RoleSpace,
    partitions: Iterable[int],
    partition_count: int,
    *,
    page_keys: int = PAGE_KEYS,
    page_requests: int = PAGE_REQUESTS,
) -> ShareRead:
    """The jobs of ``partitions`` (of ``partition_count``), read in pages: each page is
    its own transaction of at most ``page_requests`` range requests and about
    ``page_keys`` keys, so no read runs into FoundationDB's 5 s limit, whatever the
    share's size.

    The pages read at increasing versions, so the result is no snapshot: a job added or
    removed while the pages are read may be in it or not. What makes it usable is
    :attr:`ShareRead.version`, read *before* the first page: every change committed
    after it is in the change log after it, and marks its partition for a re-read
    (docs/architecture.md, "The paged share read"). The key ranges are planned by
    ``_core.share.plan_ranges`` (runs of adjacent partitions, merged across short gaps
    when reading the gap is cheaper than another request); keys of partitions outside
    ``partitions`` that a merged range returns are dropped."""
    wanted = partitions if isinstance(partitions, PartitionSet) else PartitionSet(partitions)
    out = ShareRead()
    out.version, out.job_count = await transact(tx_share_start, space)
    out.transactions = 1
    out.keys_per_partition = out.job_count / max(1, partition_count)
    if not wanted:
        return out
    log = get_logger("fdbworkers")
    jobs_begin = space.job_head
    queue: deque[tuple[bytes, bytes]] = deque()
    for first, last in plan_ranges(wanted, out.keys_per_partition):
        queue.append((space.partition_range(first)[0], space.partition_range(last)[1]))
    while queue:
        batch = [queue.popleft() for _ in range(min(page_requests, len(queue)))]
        limit = request_limit(len(batch), page_keys)
        results = await transact(tx_read_ranges, batch, limit)
        out.transactions += 1
        out.requests += len(batch)
        for (_, end), kvs in zip(batch, results, strict=True):
            out.keys += len(kvs)
            await _take_jobs(out, space, jobs_begin, wanted, kvs, log)
            if len(kvs) >= limit:
                # Maybe more: the rest of this range goes first in the next page.
                queue.appendleft((kvs[-1].key + b"\x00", end))
        await checkpoint()
    return out


async def _take_jobs(
    out: ShareRead,
    space: RoleSpace,
    jobs_begin: bytes,
    wanted: AbstractSet[int],
    kvs: Sequence[KeyValue],
    log: Logger,
) -> None:
    """The job records of one range read into ``out``: those of ``wanted`` partitions
    (a merged range returns others too), a checkpoint every 1,000 keys."""
    jobs, by_part = out.jobs, out.by_part
    for i, kv in enumerate(kvs):
        if i % 1000 == 999:
            await checkpoint()  # short steps: heartbeats go on
        try:
            t = space.unpack_below(jobs_begin, kv.key)
            p, jid = int(t[0]), str(t[1])
            if p in wanted:
                jobs[jid] = JobRecord.decode(jid, p, kv.key, kv.value)
                ids = by_part.get(p)
                if ids is None:
                    by_part[p] = [jid]
                else:
                    ids.append(jid)
        except (CorruptDataError, ValueError, IndexError) as e:
            log.error("corrupt_job_record", key=kv.key.hex(), error=str(e))
