"""Reads of one transaction issued together: ``gather`` runs a read per span, at most
64 at a time; ``read_keys`` reads sorted keys of a partitioned subspace in few requests
(neighbours by one range read), with the read conflicts asked for; ``keys_below`` builds
their keys. Used by the job reads, claims, releases, bulk adds and the share read."""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Sequence
from typing import Any

import anyio

from .._core.share import group_sorted
from .._core.tuples import pack_int_str
from .._db import Transaction
from .._errors import FDBError
from .._loop import open_task_group


async def gather(
    fn: Callable[[int, int], Coroutine[Any, Any, None]],
    spans: Sequence[tuple[int, int]],
    width: int = 64,
) -> None:
    """``fn(lo, hi)`` for every span, at most ``width`` at a time (reads of one
    transaction, issued together). An FDB error is raised as itself, not as an exception
    group: the retry loop (and the callers' ``except FDBError``) do not look into groups.
    A single span (a claim of one job) runs in the calling task; the others in the
    loop's own task group (``_loop.open_task_group``: a task per read, on the claim
    path)."""
    if len(spans) == 1:
        await fn(*spans[0])
        return
    try:
        for i in range(0, len(spans), width):
            async with open_task_group() as nursery:
                for lo, hi in spans[i : i + width]:
                    nursery.start_soon(fn, lo, hi)
    except BaseExceptionGroup as group:
        cancelled, _ = group.split(anyio.get_cancelled_exc_class())
        if cancelled is not None:
            # Being cancelled (a deadline, a stop): that is what must reach the cancel
            # scope; FDB errors of the reads it interrupted are moot.
            raise cancelled from None
        fdb_errors, rest = group.split(FDBError)
        if rest is not None or fdb_errors is None:
            raise
        first: BaseException = fdb_errors
        while isinstance(first, BaseExceptionGroup):
            first = first.exceptions[0]
        raise first from None


async def read_keys(
    tr: Transaction,
    keys: Sequence[bytes],
    partitions: Sequence[int],
    keys_per_partition: float = 0.0,
    *,
    conflicts: str = "keys",
) -> list[bytes | None]:
    """The values of ``keys`` (sorted, of one subspace keyed by partition first, with the
    partition of each), in few requests: neighbouring keys (see
    ``_core.share.group_sorted``) by one range read, a lone key by a ``get``.

    The read conflicts, from the tightest to the cheapest to add:

    * ``"keys"``: one per key, what a non-snapshot ``get`` of each key adds (the range
      is read as a snapshot: the keys in between add no conflict);
    * ``"runs"``: one range per run of keys whose partitions follow each other (equal
      or adjacent): a write between two keys of a run conflicts too, one in a gap
      between runs (another partition, read only because it was cheaper) does not;
    * ``"range"``: the whole range read (a non-snapshot read).

    Wider conflicts only add retries, never remove a conflict the per-key reads have."""
    out: list[bytes | None] = [None] * len(keys)

    async def one(lo: int, hi: int) -> None:
        if hi - lo == 1:
            out[lo] = await tr.get(keys[lo])
            return
        reader = tr if conflicts == "range" else tr.snapshot
        kvs = await reader.get_range(keys[lo], keys[hi - 1] + b"\x00")
        found = {kv.key: kv.value for kv in kvs}
        for i in range(lo, hi):
            out[i] = found.get(keys[i])
        if conflicts == "keys":
            for i in range(lo, hi):
                tr.add_read_conflict_key(keys[i])
        elif conflicts == "runs":
            start = lo
            for i in range(lo + 1, hi + 1):
                if i == hi or partitions[i] - partitions[i - 1] > 1:
                    tr.add_read_conflict_range(keys[start], keys[i - 1] + b"\x00")
                    start = i

    await gather(one, group_sorted(partitions, keys_per_partition))
    return out


def keys_below(head: bytes, partitions: Sequence[int], job_ids: Sequence[str]) -> list[bytes]:
    """``head + pack((partition, job_id))`` for each pair: the job or claim keys of
    jobs, with ``head`` the begin of ``Layout.jobs_range`` or ``Layout.claims_range``
    (the same bytes as ``Layout.job_key``, without packing the root and role again)."""
    return [head + pack_int_str(p, j) for p, j in zip(partitions, job_ids, strict=True)]
