"""FoundationDB's atomic operations and versionstamp placement, as pure functions.

Each function follows ``fdbclient/include/fdbclient/Atomic.h`` of FoundationDB 7.3
byte for byte, with the API-version rules of the client (API >= 510: ``BIT_AND`` is
``AndV2`` and ``MIN`` is ``MinV2``, which treat a missing value as "take the operand";
API >= 520: versionstamp offsets are 4 little-endian bytes).

Integers are little-endian and as long as the operand: the existing value is truncated
or zero-extended to the operand's length before ``ADD``/``MAX``/``MIN``/bitwise ops.
"""

from __future__ import annotations

from typing import Final

from ..._db import MAX_VALUE_SIZE, VERSIONSTAMP_SIZE, MutationType
from ..._errors import FDBError

# Mutation codes of the engine's commit requests, beside FDB's atomic op codes (all of
# which are >= 2).
SET: Final = -1
CLEAR: Final = -2
CLEAR_RANGE: Final = -3

ADD: Final = int(MutationType.ADD)
BIT_AND: Final = int(MutationType.BIT_AND)
BIT_OR: Final = int(MutationType.BIT_OR)
BIT_XOR: Final = int(MutationType.BIT_XOR)
APPEND_IF_FITS: Final = int(MutationType.APPEND_IF_FITS)
MAX: Final = int(MutationType.MAX)
MIN: Final = int(MutationType.MIN)
SET_VERSIONSTAMPED_KEY: Final = int(MutationType.SET_VERSIONSTAMPED_KEY)
SET_VERSIONSTAMPED_VALUE: Final = int(MutationType.SET_VERSIONSTAMPED_VALUE)
BYTE_MIN: Final = int(MutationType.BYTE_MIN)
BYTE_MAX: Final = int(MutationType.BYTE_MAX)
COMPARE_AND_CLEAR: Final = int(MutationType.COMPARE_AND_CLEAR)


def _le(b: bytes) -> int:
    return int.from_bytes(b, "little")


def apply_atomic(op: int, existing: bytes | None, param: bytes) -> bytes | None:
    """The value after atomic ``op`` with ``param`` on ``existing`` (None = absent).
    Versionstamp operations are not handled here (they need the commit version)."""
    n = len(param)
    if op == ADD:
        if not existing or not param:
            return param
        return ((_le(existing[:n]) + _le(param)) & ((1 << (8 * n)) - 1)).to_bytes(n, "little")
    if op == BIT_AND:  # AndV2
        if existing is None or not param:
            return param
        return (_le(existing[:n]) & _le(param)).to_bytes(n, "little")
    if op == BIT_OR:
        if not existing or not param:
            return param
        return (_le(existing[:n]) | _le(param)).to_bytes(n, "little")
    if op == BIT_XOR:
        if not existing or not param:
            return param
        return (_le(existing[:n]) ^ _le(param)).to_bytes(n, "little")
    if op == APPEND_IF_FITS:
        if not existing:
            return param
        if not param:
            return existing
        if len(existing) + n > MAX_VALUE_SIZE:
            return existing
        return existing + param
    if op == MAX:
        if not existing or not param:
            return param
        old = _le(existing[:n])
        if _le(param) >= old:
            return param
        return old.to_bytes(n, "little")
    if op == MIN:  # MinV2
        if existing is None or not param:
            return param
        old = _le(existing[:n])
        if _le(param) > old:
            return old.to_bytes(n, "little")
        return param
    if op == BYTE_MAX:
        if existing is None:
            return param
        return existing if existing > param else param
    if op == BYTE_MIN:
        if existing is None:
            return param
        return existing if existing < param else param
    if op == COMPARE_AND_CLEAR:
        if existing is None or existing == param:
            return None
        return existing
    raise FDBError(2018)  # invalid_mutation_type


def versionstamp(version: int, batch_order: int = 0) -> bytes:
    """The 10-byte versionstamp: 8-byte big-endian version, 2-byte big-endian order."""
    return version.to_bytes(8, "big") + batch_order.to_bytes(2, "big")


def versionstamp_offset(data: bytes) -> int:
    """The placeholder offset of a versionstamped key or value (its last 4 bytes,
    little-endian), validated like the client does: 2000 client_invalid_operation."""
    if len(data) < 4:
        raise FDBError(2000)
    pos = int.from_bytes(data[-4:], "little", signed=True)
    if pos < 0 or pos + VERSIONSTAMP_SIZE > len(data) - 4:
        raise FDBError(2000)
    return pos


def place_versionstamp(data: bytes, stamp: bytes) -> bytes:
    """``data`` without its 4-byte offset suffix, with ``stamp`` at the offset."""
    pos = versionstamp_offset(data)
    return data[:pos] + stamp + data[pos + VERSIONSTAMP_SIZE : -4]


def versionstamp_key_range(key: bytes, read_version: int | None) -> tuple[bytes, bytes]:
    """The keys a ``SET_VERSIONSTAMPED_KEY`` of ``key`` may write, which its own
    transaction may not read (FDB's ``getVersionstampKeyRange``): from the placeholder
    filled with the read version (or zeros) to the placeholder filled with 0xff, capped
    at the end of the normal key space."""
    pos = versionstamp_offset(key)
    body = key[:-4]
    low = versionstamp(read_version or 0)
    begin = body[:pos] + low + body[pos + VERSIONSTAMP_SIZE :]
    end = body[:pos] + b"\xff" * VERSIONSTAMP_SIZE + body[pos + VERSIONSTAMP_SIZE :] + b"\x00"
    return begin, min(end, b"\xff")
