"""A set of partitions held as a bitmap (pure, no I/O).

A worker's owned partitions can be all of a role's 65,536: as a ``frozenset`` that is
about 4 MB (a hash table of 65,536 entries, and 65,536 int objects beside it), and a
worker holds a few such sets at once (the map's, the step's, the previous step's). A
:class:`PartitionSet` holds one bit per partition of the role (8 KB at 65,536)
whatever it contains, answers ``p in s`` in O(1), and computes ``|``, ``&`` and ``-``
with another one as integer operations on the bitmaps. It is an immutable
``collections.abc.Set`` (hashable, and equal to a ``frozenset`` of the same
partitions), so code written for a frozenset reads it unchanged.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence, Set
from itertools import compress
from typing import Any


class PartitionSet(Set[int]):
    """An immutable set of non-negative partition numbers, stored as a bitmap."""

    __slots__ = ("_bits", "_len", "_map")

    _bits: int
    _len: int
    _map: bytes

    def __init__(self, partitions: Iterable[int] = ()) -> None:
        if isinstance(partitions, PartitionSet):
            self._set(partitions._bits)
            return
        got = list(partitions)
        for p in got:
            if not isinstance(p, int) or p < 0:
                raise ValueError(f"a partition is an int >= 0, not {p!r}")
        # One int built from a bytearray of bits, not one shift per element.
        buf = bytearray(max(got) // 8 + 1 if got else 0)
        for p in got:
            buf[p >> 3] |= 1 << (p & 7)
        self._set(int.from_bytes(buf, "little"))

    def _set(self, bits: int) -> None:
        object.__setattr__(self, "_bits", bits)
        object.__setattr__(self, "_len", bits.bit_count())
        object.__setattr__(self, "_map", bits.to_bytes((bits.bit_length() + 7) // 8, "little"))

    @classmethod
    def _of_bits(cls, bits: int) -> PartitionSet:
        out = cls.__new__(cls)
        out._set(bits)
        return out

    @classmethod
    def where(cls, values: Sequence[Any], wanted: Any) -> PartitionSet:
        """The indices ``p`` of ``values`` with ``values[p] == wanted``: the partitions of
        a member in a map of owner indices."""
        buf = bytearray((len(values) + 7) // 8)
        for p in compress(range(len(values)), map(wanted.__eq__, values)):
            buf[p >> 3] |= 1 << (p & 7)
        return cls._of_bits(int.from_bytes(buf, "little"))

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("PartitionSet is immutable")

    def __contains__(self, p: object) -> bool:
        if not isinstance(p, int) or p < 0:
            return False
        i = p >> 3
        return i < len(self._map) and bool(self._map[i] >> (p & 7) & 1)

    def __iter__(self) -> Iterator[int]:
        for i, byte in enumerate(self._map):
            if byte:
                base = i << 3
                for b in range(8):
                    if byte >> b & 1:
                        yield base + b

    def __len__(self) -> int:
        return self._len

    def runs(self) -> list[tuple[int, int]]:
        """Maximal runs ``(first, last)`` of adjacent partitions, in order, from the
        bitmap: the starts are the set bits whose lower neighbour is clear, the ends
        those whose upper neighbour is clear (no element is visited one by one: a whole
        role of 65,536 is one run, found in one pass over its 8 KB)."""
        bits = self._bits
        starts = PartitionSet._of_bits(bits & ~(bits << 1))
        ends = PartitionSet._of_bits(bits & ~(bits >> 1))
        return list(zip(starts, ends, strict=True))

    def __repr__(self) -> str:
        shown = sorted(self) if self._len <= 8 else f"{self._len} partitions"
        return f"PartitionSet({shown})"

    def _bits_of(self, other: object) -> int | None:
        if isinstance(other, PartitionSet):
            return other._bits
        if isinstance(other, Set):
            return (
                PartitionSet(other)._bits
                if all(isinstance(p, int) and p >= 0 for p in other)
                else None
            )
        return None

    def __or__(self, other: object) -> PartitionSet:
        bits = self._bits_of(other)
        if bits is None:
            return NotImplemented
        return PartitionSet._of_bits(self._bits | bits)

    __ror__ = __or__

    def __and__(self, other: object) -> PartitionSet:
        if isinstance(other, PartitionSet):
            return PartitionSet._of_bits(self._bits & other._bits)
        if isinstance(other, Iterable):
            return PartitionSet(p for p in other if p in self)
        return NotImplemented

    __rand__ = __and__

    def __sub__(self, other: object) -> PartitionSet:
        bits = self._bits_of(other)
        if bits is None:
            return NotImplemented
        return PartitionSet._of_bits(self._bits & ~bits)

    def __rsub__(self, other: object) -> frozenset[int]:
        if not isinstance(other, Iterable):
            return NotImplemented
        return frozenset(p for p in other if p not in self)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, PartitionSet):
            return self._bits == other._bits
        return super().__eq__(other)

    def __hash__(self) -> int:
        return self._hash()
