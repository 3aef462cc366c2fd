"""Rank rendezvous, the building blocks of the map (pure, deterministic, numpy).

Each member ranks all partitions by its own keyed permutation: a 4-round Feistel
network on ``[0, 4**k)`` (cycle-walked down to ``[0, P)``), round function SplitMix64,
keys from a BLAKE2b hash of the member id (:func:`_member_keys`, :class:`_Domain`). A
rank is scored as an exponential draw ``E(r) = -ln(1 - (r + 0.5)/P)`` (divided by the
member's weight: weighted rendezvous), with a log of IEEE basic operations only
(:func:`_ln`), so every machine orders pairs alike (G4). The solver
(:mod:`fdbworkers._core.matching`) lists and matches pairs with these; the map's API is
:mod:`fdbworkers._core.assign`; reasons and measurements in docs/assignment.md.

numpy is loaded with the first map, not on import (:func:`lazy_numpy`): a module that
computes with it binds a stand-in as ``np``; this module's uint64 constants are bound
with numpy.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray


def _load_numpy() -> Any:
    """Import numpy and bind it, and the constants made with it, as this module's
    globals. numpy (about 16 MB) is loaded when a map is first computed, not with the
    module: a process that never computes one (a library user adding jobs, most CLI
    commands) does without it. Until then ``np`` is a stand-in whose first attribute
    access calls this; every computation starts with such an access (arrays are made
    with ``np.*``), so the constants are bound before anything uses them."""
    import numpy

    u64 = numpy.uint64
    globals().update(
        np=numpy,
        _U64=u64,
        _M1=u64(0xBF58476D1CE4E5B9),
        _M2=u64(0x94D049BB133111EB),
        _GOLDEN=u64(0x9E3779B97F4A7C15),
        _S30=u64(30),
        _S27=u64(27),
        _S31=u64(31),
    )
    return numpy


class _LazyNumpy:
    """numpy's stand-in as ``np`` in a module's globals (``namespace``): its first
    attribute access loads numpy (:func:`_load_numpy`) and binds it there."""

    __slots__ = ("_namespace",)

    def __init__(self, namespace: dict[str, Any]) -> None:
        self._namespace = namespace

    def __getattr__(self, name: str) -> Any:
        numpy = _load_numpy()
        self._namespace["np"] = numpy
        return getattr(numpy, name)


def lazy_numpy(namespace: dict[str, Any]) -> Any:
    """The stand-in to bind as ``np`` in a module that computes with numpy but should
    not load it on import: ``np = lazy_numpy(globals())``."""
    return _LazyNumpy(namespace)


_NUMPY_CONSTANTS: Final = frozenset({"_U64", "_M1", "_M2", "_GOLDEN", "_S30", "_S27", "_S31"})


def __getattr__(name: str) -> Any:
    # ``from fdbworkers._core.assign import _M1`` before numpy was loaded.
    if name in _NUMPY_CONSTANTS:
        _load_numpy()
        return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if TYPE_CHECKING:
    _U64 = np.uint64
    _M1 = _M2 = _GOLDEN = _S30 = _S27 = _S31 = np.uint64(0)  # the values: _load_numpy
else:
    np = _LazyNumpy(globals())


_LN2 = 0.6931471805599453
_SQRT_HALF = 0.7071067811865476
#: 1/(2k+1), k = 0..12: the atanh series of ln(m) for m in [sqrt(1/2), sqrt(2)).
_ATANH_COEFFS: Final = tuple(1.0 / (2 * k + 1) for k in range(13))

if TYPE_CHECKING:
    U64Array = NDArray[np.uint64]
    I64Array = NDArray[np.int64]
    F64Array = NDArray[np.float64]


# --------------------------------------------------------------------------- hashing


def _mix64(x: U64Array) -> U64Array:
    """SplitMix64's finalizer, vectorized (a bijection of 64-bit words)."""
    x = x ^ (x >> _S30)
    x *= _M1
    x ^= x >> _S27
    x *= _M2
    x ^= x >> _S31
    return x


def _member_keys(ids: Iterable[str]) -> U64Array:
    """Per member: 4 Feistel round keys, a tie-break key and a dither key (n x 6)."""
    raw = b"".join(
        hashlib.blake2b(i.encode("utf-8"), digest_size=48, person=b"fdbw.member").digest()
        for i in ids
    )
    return np.frombuffer(raw, dtype="<u8").astype(np.uint64).reshape(-1, 6)


def _pair_ties(keys: U64Array, part: I64Array) -> U64Array:
    """Tie-break of (member, partition) pairs: SplitMix64 of the member's tie-break key
    (``_member_keys`` column 4) and the partition times the golden ratio."""
    return _mix64(keys ^ (part.astype(np.uint64) * _GOLDEN))


# ------------------------------------------------------------------ permutations


@dataclass(frozen=True, slots=True)
class _Domain:
    """Feistel domain ``[0, 4**k)`` covering ``[0, partitions)`` (cycle-walked)."""

    partitions: int
    half: int

    @classmethod
    def of(cls, partitions: int) -> _Domain:
        bits = max(2, (partitions - 1).bit_length())
        return cls(partitions, (bits + 1) // 2)

    @property
    def size(self) -> int:
        """The Feistel domain's size ``4**half`` (``>= partitions``)."""
        return 1 << (2 * self.half)

    def ranks(self, keys: U64Array) -> U64Array:
        """One member's rank of every partition (``keys``: its 4 round keys), the same
        values as ``unpermute(arange(P))``: one pass of the inverse network over the
        whole domain, then cycle walking by lookups in it (a step of a walk is a lookup,
        not a pass of the network: the walks cost ``size - P`` evaluations in all)."""
        table = self._feistel_inv(np.arange(self.size, dtype=np.uint64), keys[None, :4])
        if self.size == self.partitions:
            return table
        out = table[: self.partitions].copy()
        bad = np.flatnonzero(out >= self.partitions)
        while bad.size:
            out[bad] = table[out[bad]]
            bad = bad[out[bad] >= self.partitions]
        return out

    def permute(self, ranks: U64Array, keys: U64Array) -> U64Array:
        """Member permutation: rank -> partition (``keys``: n x 4 round keys per rank)."""
        out = self._feistel(ranks, keys)
        bad = np.flatnonzero(out >= self.partitions)
        while bad.size:  # cycle walking: stays a permutation of [0, partitions)
            out[bad] = self._feistel(out[bad], keys[bad])
            bad = bad[out[bad] >= self.partitions]
        return out

    def unpermute(self, parts: U64Array, keys: U64Array) -> U64Array:
        """The inverse: partition -> the member's rank of it."""
        out = self._feistel_inv(parts, keys)
        bad = np.flatnonzero(out >= self.partitions)
        while bad.size:
            out[bad] = self._feistel_inv(out[bad], keys[bad])
            bad = bad[out[bad] >= self.partitions]
        return out

    def _feistel_inv(self, x: U64Array, keys: U64Array) -> U64Array:
        half = _U64(self.half)
        mask = _U64((1 << self.half) - 1)
        top = _U64(64 - self.half)
        left = x >> half
        right = x & mask
        for r in (3, 2, 1, 0):
            f = _mix64(left ^ keys[:, r]) >> top
            left, right = right ^ f, left
        return (left << half) | right

    def _feistel(self, x: U64Array, keys: U64Array) -> U64Array:
        half = _U64(self.half)
        mask = _U64((1 << self.half) - 1)
        top = _U64(64 - self.half)
        left = x >> half
        right = x & mask
        for r in range(4):
            f = _mix64(right ^ keys[:, r]) >> top
            left, right = right, left ^ f
        return (left << half) | right


# ------------------------------------------------------------ deterministic math


def _ln(x: F64Array) -> F64Array:
    """Natural log with IEEE basic operations only (exact frexp, a fixed series).

    ``math.log``/``numpy.log`` may differ in the last bit between libms; comparisons of
    scores must not, or two machines would disagree about an owner.
    """
    m, e = np.frexp(x)
    low = m < _SQRT_HALF
    m = np.where(low, m * 2.0, m)
    e = np.where(low, e - 1, e).astype(np.float64)
    s = (m - 1.0) / (m + 1.0)
    z = s * s
    acc = np.full_like(s, _ATANH_COEFFS[-1])
    for c in reversed(_ATANH_COEFFS[:-1]):
        acc = acc * z + c
    return e * _LN2 + 2.0 * s * acc


def _exp_score(ranks: I64Array, partitions: int) -> F64Array:
    """``E(r) = -ln(1 - (r + 0.5) / P)``: a rank as a standard exponential draw."""
    u = (float(partitions) - ranks.astype(np.float64) - 0.5) / float(partitions)
    return -_ln(u)
