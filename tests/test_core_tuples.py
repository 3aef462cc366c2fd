"""The pure tuple codec (fdbworkers._core.tuples): byte-for-byte the binding's
``fdb.tuple`` encoding, its order, ranges and versionstamps, without libfdb_c."""

from __future__ import annotations

import math
import struct
import uuid
from typing import Any

import fdb.tuple as fdb_tuple
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fdbworkers._core.tuples import (
    Versionstamp,
    pack,
    pack_int_str,
    pack_with_versionstamp,
    strinc,
    tuple_range,
    unpack,
)

SCALARS = st.one_of(
    st.none(),
    st.binary(max_size=20),
    st.text(max_size=20),
    st.integers(min_value=-(2**80), max_value=2**80),
    st.booleans(),
    st.floats(allow_nan=False),
    st.uuids(),
    st.builds(Versionstamp, st.binary(min_size=10, max_size=10), st.integers(0, 65535)),
)
ELEMENTS = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3).map(tuple), max_leaves=8)


class _BindingVersionstamp(fdb_tuple.Versionstamp):  # type: ignore[misc]
    """The binding's class looks up fdb.impl when packed (it loads libfdb_c); this one
    packs the same bytes without it."""

    def to_bytes(self) -> bytes:
        tr = self.tr_version if self.is_complete() else self._UNSET_TR_VERSION
        return struct.pack(self._STRUCT_FORMAT_STRING, tr, self.user_version)


def _to_binding(value: Any) -> Any:
    if isinstance(value, Versionstamp):
        return _BindingVersionstamp(value.tr_version, value.user_version)
    if isinstance(value, tuple):
        return tuple(_to_binding(v) for v in value)
    return value


@given(st.lists(ELEMENTS, max_size=6).map(tuple))
def test_pack_is_the_bindings_encoding(t: tuple[Any, ...]) -> None:
    packed = pack(t)
    assert packed == fdb_tuple.pack(_to_binding(t))
    assert unpack(packed) == t
    assert unpack(pack(t, prefix=b"p/"), prefix_len=2) == t


@given(
    st.lists(st.one_of(st.text(max_size=20), st.integers(-(2**80), 2**80)), max_size=6).map(tuple),
    st.binary(max_size=4),
)
def test_pack_of_strings_and_ints_is_the_bindings(t: tuple[Any, ...], prefix: bytes) -> None:
    # The fast path of the keys fdbworkers builds (str and int elements only).
    assert pack(t, prefix=prefix) == prefix + fdb_tuple.pack(t)
    assert unpack(pack(t)) == t


@given(st.lists(ELEMENTS, max_size=4).map(tuple), st.lists(ELEMENTS, max_size=4).map(tuple))
def test_order_is_the_bindings_order(a: tuple[Any, ...], b: tuple[Any, ...]) -> None:
    assert (pack(a) < pack(b)) == (fdb_tuple.pack(_to_binding(a)) < fdb_tuple.pack(_to_binding(b)))


@given(st.lists(st.integers(-(2**70), 2**70), min_size=2, max_size=2))
def test_integer_order_is_preserved(pair: list[int]) -> None:
    a, b = pair
    assert (pack((a,)) < pack((b,))) == (a < b)


@given(st.text(max_size=10), st.integers(0, 65535))
def test_pack_with_versionstamp_is_the_bindings(name: str, user: int) -> None:
    ours = pack_with_versionstamp((name, Versionstamp.incomplete(user)), prefix=b"x")
    theirs = fdb_tuple.pack_with_versionstamp((name, _BindingVersionstamp(None, user)), b"x")
    assert ours == theirs


def test_range_covers_extensions_only() -> None:
    begin, end = tuple_range(("a",))
    assert (begin, end) == (fdb_tuple.range(("a",)).start, fdb_tuple.range(("a",)).stop)
    assert begin < pack(("a", 1)) < end
    assert not begin <= pack(("b",)) < end
    assert not begin <= pack(("a",)) < end


def test_versionstamp_value_semantics() -> None:
    (vs,) = unpack(pack((Versionstamp(b"\x00" * 9 + b"\x01", 2),)))
    assert type(vs) is Versionstamp
    assert vs.to_bytes() == b"\x00" * 9 + b"\x01" + b"\x00\x02"
    assert Versionstamp.incomplete(5).completed(b"\x02" * 10) == Versionstamp(b"\x02" * 10, 5)
    assert repr(vs).startswith("Versionstamp(")
    with pytest.raises(RuntimeError):
        vs.completed(b"\x03" * 10)
    with pytest.raises(ValueError):
        Versionstamp(b"short")


def test_bad_input_is_refused_clearly() -> None:
    with pytest.raises(TypeError):
        pack(["a"])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="incomplete"):
        pack(("a", Versionstamp.incomplete()))
    with pytest.raises(ValueError, match="exactly one"):
        pack_with_versionstamp(("a",))
    with pytest.raises(ValueError, match="cannot pack"):
        pack((object(),))
    for garbage in (b"\x02abc", b"\x99", b"\x15", b"\x1d\x05\x01"):
        with pytest.raises(ValueError):
            unpack(garbage)


def test_special_floats_and_uuids() -> None:
    u = uuid.UUID(int=7)
    for value in (-0.0, 0.0, math.inf, -math.inf, 1e-300, u):
        assert pack((value,)) == fdb_tuple.pack((value,))
        assert unpack(pack((value,))) == (value,)


def test_strinc() -> None:
    assert strinc(b"a") == b"b"
    assert strinc(b"a\xff") == b"b"
    with pytest.raises(ValueError):
        strinc(b"\xff\xff")


@given(st.integers(min_value=0, max_value=2**70), st.text(max_size=30))
def test_pack_int_str_is_pack_of_the_pair(number: int, text: str) -> None:
    assert pack_int_str(number, text) == pack((number, text))
