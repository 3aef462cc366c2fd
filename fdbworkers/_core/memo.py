"""A memo of immutable results that lives as long as they are used.

Workers simulated in one process share what they compute from the same inputs (a map,
a decoded plan); a real worker process holds one of each. A bounded LRU memo keeps its
last few results whoever holds them: in a worker process, old maps of 65,536 owners
that nothing uses any more (about 0.3 MB each). This memo keeps a result while some
caller still holds it (a weak reference) and, if asked to, strongly the last one used
(so that computing a result and asking for it again a moment later, after the first
caller let it go, is still one computation).
"""

from __future__ import annotations

import weakref
from collections.abc import Hashable
from typing import Generic, TypeVar

__all__ = ["HeldMemo"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class HeldMemo(Generic[K, V]):
    """Results by key while they are held, and the last one used when ``keep_last``.
    Values must support weak references (a class with ``__slots__`` lists
    ``"__weakref__"``)."""

    __slots__ = ("_keep_last", "_last", "_table")

    def __init__(self, *, keep_last: bool) -> None:
        self._table: weakref.WeakValueDictionary[K, V] = weakref.WeakValueDictionary()
        self._keep_last = keep_last
        self._last: V | None = None

    def get(self, key: K) -> V | None:
        got = self._table.get(key)
        if got is not None and self._keep_last:
            self._last = got
        return got

    def put(self, key: K, value: V) -> V:
        self._table[key] = value
        if self._keep_last:
            self._last = value
        return value

    def clear(self) -> None:
        self._table.clear()
        self._last = None

    def __len__(self) -> int:
        return len(self._table)

    def __contains__(self, key: K) -> bool:
        """Whether ``key``'s result is kept (without making it the last one used)."""
        return key in self._table
