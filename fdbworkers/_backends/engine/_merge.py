"""The merge walk of read-your-writes: a transaction's own keys and the store's rows in
key order (pure, sync).

:meth:`~fdbworkers._backends.engine._ryw.WriteMap.iter_merged` cuts ``[lo, hi)`` into
the segments outside the transaction's cleared ranges and walks them in order, forward
(:func:`walk_forward`) or reverse (:func:`walk_reverse`). A walk yields the
transaction's own keys (``pk``, from position ``pi``) where they fall among the store's
rows, and reads the store lazily, only past its own keys at the cursor, like FDB's RYW
iterator; it returns the position in ``pk`` where the next segment goes on.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator

from ..._db import KeyValue

#: One of the transaction's own keys as it reads it (None: not present).
Point = Callable[[bytes], KeyValue | None]
#: The store's rows of ``[begin, end)`` in order (``reverse``: last first).
RangeReader = Callable[[bytes, bytes, bool], Iterator[KeyValue]]


def walk_forward(
    iter_range: RangeReader, pk: list[bytes], pi: int, sb: bytes, se: bytes, point: Point
) -> Generator[KeyValue, None, int]:
    """The segment ``[sb, se)`` in key order; ``pk`` ascending."""
    np = len(pk)
    while pi < np and pk[pi] < sb:  # own keys inside a cleared range
        kv = point(pk[pi])
        pi += 1
        if kv is not None:
            yield kv
    cursor = sb
    while pi < np and pk[pi] == cursor:  # own keys right at the cursor
        kv = point(cursor)
        pi += 1
        cursor = cursor + b"\x00"
        if kv is not None:
            yield kv
    if cursor >= se:
        return pi
    for skv in iter_range(cursor, se, False):
        k = skv[0]
        while pi < np and pk[pi] < k:
            kv = point(pk[pi])
            pi += 1
            if kv is not None:
                yield kv
        if pi < np and pk[pi] == k:
            kv = point(k)
            pi += 1
            if kv is not None:
                yield kv
            continue
        yield skv
    while pi < np and pk[pi] < se:
        kv = point(pk[pi])
        pi += 1
        if kv is not None:
            yield kv
    return pi


def walk_reverse(
    iter_range: RangeReader, pk: list[bytes], pi: int, sb: bytes, se: bytes, point: Point
) -> Generator[KeyValue, None, int]:
    """The segment ``[sb, se)`` in reverse key order; ``pk`` descending."""
    np = len(pk)
    while pi < np and pk[pi] >= se:
        kv = point(pk[pi])
        pi += 1
        if kv is not None:
            yield kv
    cursor = se
    while pi < np and pk[pi] >= sb and pk[pi] + b"\x00" == cursor:
        cursor = pk[pi]
        kv = point(cursor)
        pi += 1
        if kv is not None:
            yield kv
    if cursor <= sb:
        return pi
    for skv in iter_range(sb, cursor, True):
        k = skv[0]
        while pi < np and pk[pi] > k:
            kv = point(pk[pi])
            pi += 1
            if kv is not None:
                yield kv
        if pi < np and pk[pi] == k:
            kv = point(k)
            pi += 1
            if kv is not None:
                yield kv
            continue
        yield skv
    while pi < np and pk[pi] >= sb:
        kv = point(pk[pi])
        pi += 1
        if kv is not None:
            yield kv
    return pi
