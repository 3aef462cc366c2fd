"""FoundationDB's tuple layer, pure Python with no I/O and no ``fdb`` import.

Byte-for-byte the encoding of the binding's ``fdb.tuple`` (a differential property test
checks it), for the types fdbworkers and its users put in keys: ``None``, ``bytes``,
``str``, ``int`` of any size, ``bool``, ``float`` (as a double), ``uuid.UUID``, nested
tuples and the 96-bit :class:`Versionstamp`. The order of packed tuples is the order of
the tuples, which is what makes range reads over a prefix work.

It lives in the core (not in the fdb backend) so that the key layout, the admin read
model and the embedded engine use one codec without loading the binding.
"""

from __future__ import annotations

import struct
import uuid
from bisect import bisect_left
from typing import Any, Final

#: Versionstamp length in bytes (8-byte commit version + 2-byte batch order).
VERSIONSTAMP_SIZE: Final = 10

_NULL: Final = 0x00
_BYTES: Final = 0x01
_STRING: Final = 0x02
_NESTED: Final = 0x05
_NEG_INT_START: Final = 0x0B
_INT_ZERO: Final = 0x14
_POS_INT_END: Final = 0x1D
_DOUBLE: Final = 0x21
_FALSE: Final = 0x26
_TRUE: Final = 0x27
_UUID: Final = 0x30
_VERSIONSTAMP: Final = 0x33
_SIZE_LIMITS: Final = tuple((1 << (i * 8)) - 1 for i in range(9))
_UNSET_TR_VERSION: Final = b"\xff" * VERSIONSTAMP_SIZE


def strinc(key: bytes) -> bytes:
    """The first key after every key that starts with ``key`` (FDB's ``strinc``)."""
    stripped = key.rstrip(b"\xff")
    if not stripped:
        raise ValueError("a key of only 0xff bytes has no successor prefix")
    return stripped[:-1] + bytes([stripped[-1] + 1])


class Versionstamp:
    """The tuple layer's 96-bit versionstamp: a 10-byte transaction version (``None``
    while incomplete, to be filled in at commit) and a 2-byte user version."""

    __slots__ = ("tr_version", "user_version")

    def __init__(self, tr_version: bytes | None = None, user_version: int = 0) -> None:
        if tr_version is not None and (
            not isinstance(tr_version, bytes) or len(tr_version) != VERSIONSTAMP_SIZE
        ):
            raise ValueError(f"a transaction version is {VERSIONSTAMP_SIZE} bytes")
        if not isinstance(user_version, int) or not 0 <= user_version <= 0xFFFF:
            raise ValueError("the user version is an integer from 0 to 65535")
        self.tr_version = tr_version
        self.user_version = user_version

    @staticmethod
    def incomplete(user_version: int = 0) -> Versionstamp:
        return Versionstamp(None, user_version)

    @classmethod
    def from_bytes(cls, v: bytes, start: int = 0) -> Versionstamp:
        raw = v[start : start + VERSIONSTAMP_SIZE + 2]
        if len(raw) != VERSIONSTAMP_SIZE + 2:
            raise ValueError("a versionstamp is 12 bytes")
        tr = raw[:VERSIONSTAMP_SIZE]
        user = struct.unpack(">H", raw[VERSIONSTAMP_SIZE:])[0]
        return cls(None if tr == _UNSET_TR_VERSION else tr, user)

    def is_complete(self) -> bool:
        return self.tr_version is not None

    def completed(self, new_tr_version: bytes) -> Versionstamp:
        if self.is_complete():
            raise RuntimeError("Versionstamp already completed")
        return Versionstamp(new_tr_version, self.user_version)

    def to_bytes(self) -> bytes:
        return (self.tr_version or _UNSET_TR_VERSION) + struct.pack(">H", self.user_version)

    def _key(self) -> tuple[bytes, int]:
        return (self.tr_version or _UNSET_TR_VERSION, self.user_version)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Versionstamp):
            return NotImplemented
        return self._key() == other._key()

    def __lt__(self, other: Versionstamp) -> bool:
        return self._key() < other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return f"Versionstamp({self.tr_version!r}, {self.user_version!r})"

    __str__ = __repr__


def _escape(b: bytes) -> bytes:
    return b.replace(b"\x00", b"\x00\xff")


def _encode_int(value: int) -> bytes:
    if value == 0:
        return bytes([_INT_ZERO])
    if value > 0:
        if value > _SIZE_LIMITS[-1]:
            length = (value.bit_length() + 7) // 8
            return bytes([_POS_INT_END, length]) + value.to_bytes(length, "big")
        n = bisect_left(_SIZE_LIMITS, value)
        return bytes([_INT_ZERO + n]) + value.to_bytes(n, "big")
    if -value > _SIZE_LIMITS[-1]:
        length = ((-value).bit_length() + 7) // 8
        value += (1 << (length * 8)) - 1
        return bytes([_NEG_INT_START, length ^ 0xFF]) + value.to_bytes(length, "big")
    n = bisect_left(_SIZE_LIMITS, -value)
    return bytes([_INT_ZERO - n]) + (_SIZE_LIMITS[n] + value).to_bytes(n, "big")


def _encode_double(value: float) -> bytes:
    raw = bytearray(struct.pack(">d", value))
    if raw[0] & 0x80:
        raw = bytearray(b ^ 0xFF for b in raw)
    else:
        raw[0] ^= 0x80
    return bytes([_DOUBLE]) + bytes(raw)


def _encode(value: Any, nested: bool, out: list[bytes], stamps: list[int], pos: int) -> int:
    """Append ``value``'s encoding to ``out``; return the new length. Positions of
    incomplete versionstamps go into ``stamps``."""
    if value is None:
        piece = b"\x00\xff" if nested else b"\x00"
    elif isinstance(value, bool):  # before int: bool is an int subclass
        piece = bytes([_TRUE if value else _FALSE])
    elif isinstance(value, bytes):
        piece = bytes([_BYTES]) + _escape(value) + b"\x00"
    elif isinstance(value, str):
        piece = bytes([_STRING]) + _escape(value.encode("utf-8")) + b"\x00"
    elif isinstance(value, int):
        piece = _encode_int(value)
    elif isinstance(value, float):
        piece = _encode_double(value)
    elif isinstance(value, uuid.UUID):
        piece = bytes([_UUID]) + value.bytes
    elif isinstance(value, Versionstamp):
        if not value.is_complete():
            stamps.append(pos + 1)
        piece = bytes([_VERSIONSTAMP]) + value.to_bytes()
    elif isinstance(value, tuple | list):
        out.append(bytes([_NESTED]))
        pos += 1
        for item in value:
            pos = _encode(item, True, out, stamps, pos)
        out.append(b"\x00")
        return pos + 1
    else:
        raise ValueError(f"the tuple layer cannot pack {type(value).__name__}")
    out.append(piece)
    return pos + len(piece)


def _pack(t: tuple[Any, ...], prefix: bytes | None) -> tuple[bytes, list[int]]:
    if not isinstance(t, tuple):
        raise TypeError(f"the tuple layer packs tuples, not {type(t).__name__}")
    head = prefix or b""
    out = [head]
    stamps: list[int] = []
    pos = len(head)
    for item in t:
        pos = _encode(item, False, out, stamps, pos)
    return b"".join(out), stamps


#: Encoded str elements, kept for the first strings packed (the names in keys repeat:
#: "r", the role, "member", worker ids); bounded, never evicted.
_STR_PIECES: dict[str, bytes] = {}
_STR_PIECES_MAX: Final = 4096


def pack(t: tuple[Any, ...], prefix: bytes | None = None) -> bytes:
    """Pack ``t`` (order-preserving). Incomplete versionstamps are refused: use
    :func:`pack_with_versionstamp`."""
    if type(t) is tuple:
        # The keys fdbworkers builds hold only str and int: encode those without the
        # general path's type dispatch (same bytes; a property test compares them).
        pieces = [prefix] if prefix else []
        for item in t:
            kind = type(item)
            if kind is str:
                piece = _STR_PIECES.get(item)
                if piece is None:
                    piece = b"\x02" + _escape(item.encode("utf-8")) + b"\x00"
                    if len(_STR_PIECES) < _STR_PIECES_MAX:
                        _STR_PIECES[item] = piece
                pieces.append(piece)
            elif kind is int:
                pieces.append(_encode_int(item))
            else:
                break
        else:
            return b"".join(pieces)
    packed, stamps = _pack(t, prefix)
    if stamps:
        raise ValueError("incomplete versionstamp in a tuple for pack: use pack_with_versionstamp")
    return packed


def pack_int_str(number: int, text: str) -> bytes:
    """``pack((number, text))``, without the general dispatch: the tail of a job or claim
    key (partition, job id), built a million times by a bulk add or a share's claims."""
    return _encode_int(number) + b"\x02" + _escape(text.encode("utf-8")) + b"\x00"


def pack_with_versionstamp(t: tuple[Any, ...], prefix: bytes | None = None) -> bytes:
    """Pack a tuple holding exactly one incomplete :class:`Versionstamp`, followed by the
    4-byte little-endian offset that ``SET_VERSIONSTAMPED_KEY`` expects."""
    packed, stamps = _pack(t, prefix)
    if len(stamps) != 1:
        raise ValueError(
            f"pack_with_versionstamp needs exactly one incomplete versionstamp, got {len(stamps)}"
        )
    return packed + struct.pack("<L", stamps[0])


def _find_terminator(v: bytes, pos: int) -> int:
    while True:
        pos = v.find(b"\x00", pos)
        if pos < 0:
            return len(v)
        if pos + 1 == len(v) or v[pos + 1] != 0xFF:
            return pos
        pos += 2


def _decode(v: bytes, pos: int, nested: bool) -> tuple[Any, int]:
    code = v[pos]
    if code == _NULL:
        return None, pos + (2 if nested else 1)
    if code in (_BYTES, _STRING):
        end = _find_terminator(v, pos + 1)
        raw = v[pos + 1 : end].replace(b"\x00\xff", b"\x00")
        return (raw if code == _BYTES else raw.decode("utf-8")), end + 1
    if code == _NESTED:
        items: list[Any] = []
        pos += 1
        while True:
            if v[pos] == 0x00:
                if pos + 1 < len(v) and v[pos + 1] == 0xFF:
                    items.append(None)
                    pos += 2
                    continue
                return tuple(items), pos + 1
            item, pos = _decode(v, pos, True)
            items.append(item)
    if _INT_ZERO <= code < _POS_INT_END:
        n = code - _INT_ZERO
        return int.from_bytes(v[pos + 1 : pos + 1 + n], "big"), pos + 1 + n
    if _NEG_INT_START < code < _INT_ZERO:
        n = _INT_ZERO - code
        magnitude = int.from_bytes(v[pos + 1 : pos + 1 + n], "big")
        return magnitude - _SIZE_LIMITS[n], pos + 1 + n
    if code == _POS_INT_END:
        length = v[pos + 1]
        return int.from_bytes(v[pos + 2 : pos + 2 + length], "big"), pos + 2 + length
    if code == _NEG_INT_START:
        length = v[pos + 1] ^ 0xFF
        magnitude = int.from_bytes(v[pos + 2 : pos + 2 + length], "big")
        return magnitude - (1 << (length * 8)) + 1, pos + 2 + length
    if code == _DOUBLE:
        bits = bytearray(v[pos + 1 : pos + 9])
        if bits[0] & 0x80:
            bits[0] ^= 0x80
        else:
            bits = bytearray(b ^ 0xFF for b in bits)
        return struct.unpack(">d", bytes(bits))[0], pos + 9
    if code in (_FALSE, _TRUE):
        return code == _TRUE, pos + 1
    if code == _UUID:
        return uuid.UUID(bytes=bytes(v[pos + 1 : pos + 17])), pos + 17
    if code == _VERSIONSTAMP:
        return Versionstamp.from_bytes(v, pos + 1), pos + 1 + VERSIONSTAMP_SIZE + 2
    raise ValueError(f"unknown tuple-layer type code 0x{code:02x} at byte {pos}")


def unpack(key: bytes, prefix_len: int = 0) -> tuple[Any, ...]:
    """Unpack a packed tuple (from ``prefix_len`` on). Raises ValueError on bytes that
    are not a packed tuple."""
    items: list[Any] = []
    pos = prefix_len
    try:
        while pos < len(key):
            item, pos = _decode(key, pos, False)
            items.append(item)
    except (IndexError, struct.error, UnicodeDecodeError) as e:
        raise ValueError(f"not a packed tuple: {e}") from None
    if pos != len(key):
        raise ValueError("not a packed tuple: truncated element")
    return tuple(items)


def tuple_range(t: tuple[Any, ...]) -> tuple[bytes, bytes]:
    """The ``(begin, end)`` range of every key that extends the packed tuple ``t``."""
    p = pack(t)
    return (p + b"\x00", p + b"\xff")
