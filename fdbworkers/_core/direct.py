"""The map of a few equal-weight members without numpy (pure, deterministic, no I/O).

A worker that runs jobs needs the rendezvous map of its role's members (the plan's base,
:mod:`fdbworkers._core.plan`). numpy's import alone costs a process about 20 MB of
memory, more than the rest of a worker holds at rest, so the common case is computed
here with the standard library, **bit for bit the owners** of
:func:`fdbworkers._core.matching.direct_primaries` (tests compare the two):

* **which maps**: one member (everything is its own); or every member of the same
  weight, few enough that the direct path pays (:func:`~fdbworkers._core.matching.
  direct_pays`: up to 60 members at the default 65,536 partitions), and a Feistel half
  of at most 8 bits (at most 65,536 partitions). Other maps (weights that differ,
  larger fleets: the solver) load numpy, as before;
* **a member's rank of every partition**: the inverse Feistel network over the whole
  domain ``[0, 4**half)``. A round's function ``mix64(half-word ^ key) >> (64 - half)``
  takes one of at most 256 inputs, so it is a 256-byte table and a round over all
  65,536 entries is one ``bytes.translate`` and one XOR of two big integers;
* **the running best** (a member takes a partition when its rank is lower, or equal
  with a lower tie-break): every partition is a 32-bit lane of one big integer, and the
  comparison and the selection are a few integer operations over all lanes at once
  (a guard bit above each 16-bit rank catches the borrow of ``rank_b - rank_a``).
  Equal ranks, about one per member, are decided one by one with :func:`pair_tie`.

About 2 ms of CPU per member at 65,536 partitions (numpy's direct path: about 0.8 ms
with its allocations warm), once per membership change.
"""

from __future__ import annotations

import functools
import hashlib
from array import array
from collections.abc import Iterable, Sequence
from typing import Final

#: The widest Feistel half computed here: a half-word is one byte.
MAX_HALF: Final = 8

_M64: Final = (1 << 64) - 1
_GOLDEN: Final = 0x9E3779B97F4A7C15
_M1: Final = 0xBF58476D1CE4E5B9
_M2: Final = 0x94D049BB133111EB
#: Bits of one partition's lane: a rank (< 2**16), its guard bit, and room.
_LANE: Final = 32

if array("i").itemsize != 4 or array("I").itemsize != 4:  # pragma: no cover
    raise ImportError("fdbworkers needs a platform whose C int has 32 bits")
#: This machine stores an array's items big-endian (arrays are stored little-endian).
_BIG_ENDIAN: Final = array("H", [1]).tobytes() == b"\x00\x01"


def mix64(x: int) -> int:
    """SplitMix64's finalizer on one 64-bit word (:func:`~fdbworkers._core.rendezvous.
    _mix64`, scalar)."""
    x &= _M64
    x ^= x >> 30
    x = (x * _M1) & _M64
    x ^= x >> 27
    x = (x * _M2) & _M64
    return x ^ (x >> 31)


def member_keys(ids: Iterable[str]) -> list[tuple[int, int, int, int, int, int]]:
    """Per member: 4 Feistel round keys, a tie-break key and a dither key (the rows of
    :func:`~fdbworkers._core.rendezvous._member_keys`)."""
    out: list[tuple[int, int, int, int, int, int]] = []
    for i in ids:
        d = hashlib.blake2b(i.encode("utf-8"), digest_size=48, person=b"fdbw.member").digest()
        k = [int.from_bytes(d[j : j + 8], "little") for j in range(0, 48, 8)]
        out.append((k[0], k[1], k[2], k[3], k[4], k[5]))
    return out


def pair_tie(key: int, partition: int) -> int:
    """Tie-break of one (member, partition) pair (:func:`~fdbworkers._core.rendezvous.
    _pair_ties`, scalar): ``key`` is the member's tie-break key."""
    return mix64(key ^ ((partition * _GOLDEN) & _M64))


def half_of(partitions: int) -> int:
    """The Feistel half of ``partitions`` (``_Domain.of(partitions).half``)."""
    return (max(2, (partitions - 1).bit_length()) + 1) // 2


def computes(weights: Sequence[float], partitions: int, direct: bool) -> bool:
    """Whether :func:`primaries` computes this map (``direct``: the direct path pays)."""
    if len(weights) <= 1:
        return True
    return direct and half_of(partitions) <= MAX_HALF and all(w == weights[0] for w in weights)


@functools.lru_cache(maxsize=4)
def _domain_halves(half: int) -> tuple[bytes, bytes]:
    """The left and right half-words of every entry of the domain ``[0, 4**half)``."""
    size = 1 << (2 * half)
    mask = (1 << half) - 1
    return bytes(x >> half for x in range(size)), bytes(x & mask for x in range(size))


def _lanes_of(partitions: int) -> tuple[int, int]:
    """Lane constants for ``partitions`` lanes: a 1 in every lane, and the guard bit (bit
    16) of every lane (computed per map: 512 KB not kept at 65,536 partitions)."""
    one = int.from_bytes(b"\x01\x00\x00\x00" * partitions, "little")
    return one, one << 16


def _xor(a: bytes, b: bytes) -> bytes:
    return (int.from_bytes(a, "little") ^ int.from_bytes(b, "little")).to_bytes(len(a), "little")


def _spread(data: bytes, partitions: int) -> int:
    """``data`` (one byte per entry, first ``partitions``) as 32-bit lanes of an int."""
    lanes = bytearray(_LANE // 8 * partitions)
    lanes[0 :: _LANE // 8] = data[:partitions]
    return int.from_bytes(lanes, "little")


def ranks(keys: tuple[int, ...], partitions: int) -> int:
    """One member's rank of every partition (``keys``: its round keys first), as 32-bit
    lanes of one int: lane ``p`` holds the rank of partition ``p`` (the values of
    ``_Domain.ranks``, cycle walking included)."""
    half = half_of(partitions)
    if half > MAX_HALF:
        raise ValueError(f"a Feistel half of {half} bits is wider than {MAX_HALF}")
    top = 64 - half
    left, right = _domain_halves(half)
    for r in (3, 2, 1, 0):
        table = bytes(mix64(v ^ keys[r]) >> top for v in range(1 << half)).ljust(256, b"\0")
        left, right = _xor(right, left.translate(table)), left
    size = 1 << (2 * half)
    if size == partitions:
        return (_spread(left, partitions) << half) | _spread(right, partitions)
    # Cycle walking: an entry outside [0, P) steps through the table until it is inside
    # (a lookup per step, as _Domain.ranks does).
    table_all = [(a << half) | b for a, b in zip(left, right, strict=True)]
    out = table_all[:partitions]
    for p, v in enumerate(out):
        while v >= partitions:
            v = table_all[v]
        out[p] = v
    return int.from_bytes(to_le(array("I", out)), "little")


def to_le(a: array[int]) -> bytes:
    """An array's items as little-endian bytes (its machine order may differ)."""
    if _BIG_ENDIAN:
        a = array(a.typecode, a)
        a.byteswap()
    return a.tobytes()


def from_le(data: bytes, typecode: str) -> array[int]:
    """:func:`to_le`'s inverse (a ``ValueError`` when ``data`` is not whole items)."""
    out = array(typecode)
    out.frombytes(data)
    if _BIG_ENDIAN:
        out.byteswap()
    return out


def primaries(count: int, keys: Sequence[tuple[int, ...]], partitions: int) -> array[int]:
    """The owner (member index) of every partition of the map of ``count`` members of
    equal weight (``keys``: :func:`member_keys` of the sorted ids), as an ``array('i')``;
    the owners of ``direct_primaries``, bit for bit."""
    p = partitions
    if count <= 1:
        return array("i", bytes(4 * p))
    one, guard = _lanes_of(p)
    low = ranks(keys[0], p)
    best = 0
    for m in range(1, count):
        score = ranks(keys[m], p)
        # Lane by lane: the guard bit of (score | guard) - low is set iff score >= low,
        # that of (low | guard) - score iff low >= score (no borrow crosses a lane).
        ge = ((score | guard) - low) & guard
        le = ((low | guard) - score) & guard
        better = guard ^ ge  # score < low
        tied = ge & le
        while tied:
            bit = tied & -tied
            tied ^= bit
            q = (bit.bit_length() - 1) // _LANE
            holder = (best >> (_LANE * q)) & 0xFFFF
            if pair_tie(keys[m][4], q) < pair_tie(keys[holder][4], q):
                better |= bit
        sel = (better >> 16) * 0xFFFF  # 0xFFFF in the lanes m takes
        best ^= (best ^ (one * m)) & sel
        low ^= (low ^ score) & sel
        del ge, le, score
    return from_le(best.to_bytes(4 * p, "little"), "i")
