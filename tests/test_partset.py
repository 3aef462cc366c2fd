"""PartitionSet (fdbworkers._core.partset) against frozenset, the set it stands for."""

from __future__ import annotations

from array import array

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fdbworkers._core.partset import PartitionSet

parts_st = st.frozensets(st.integers(0, 300), max_size=60)


@given(parts_st, parts_st, st.integers(-3, 310))
def test_behaves_as_the_frozenset_of_its_partitions(
    a: frozenset[int], b: frozenset[int], probe: int
) -> None:
    pa, pb = PartitionSet(a), PartitionSet(b)
    assert pa == a and a == pa and len(pa) == len(a)
    assert sorted(pa) == sorted(a) and list(pa) == sorted(a)
    assert (probe in pa) == (probe in a)
    assert hash(pa) == hash(a)
    for got, want in (
        (pa | pb, a | b),
        (pa & pb, a & b),
        (pa - pb, a - b),
        (pa | b, a | b),
        (a | pb, a | b),
        (pa - b, a - b),
        (set(b) & pa, b & a),
        (pa & set(b), a & b),
    ):
        assert isinstance(got, PartitionSet)
        assert got == want
    assert (a - pb) == a - b
    assert (pa <= pb) == (a <= b)
    assert bool(pa) == bool(a)


@given(st.lists(st.integers(0, 4), max_size=200), st.integers(0, 4))
def test_where_lists_the_indices_of_a_value(values: list[int], wanted: int) -> None:
    got = PartitionSet.where(array("i", values), wanted)
    assert got == frozenset(i for i, v in enumerate(values) if v == wanted)


def test_is_immutable_and_refuses_what_is_not_a_partition() -> None:
    s = PartitionSet([1, 2])
    with pytest.raises(AttributeError):
        s._bits = 0
    for bad in (-1, "3", 1.5):
        with pytest.raises(ValueError):
            PartitionSet([bad])  # type: ignore[list-item]
    assert "x" not in s and -1 not in s  # type: ignore[comparison-overlap]
    assert repr(PartitionSet(range(20))) == "PartitionSet(20 partitions)"
    assert repr(s) == "PartitionSet([1, 2])"


def test_a_whole_role_is_a_bitmap_of_its_size() -> None:
    every = PartitionSet.where(array("i", bytes(4 * 65536)), 0)
    assert len(every) == 65536 and 65535 in every and 65536 not in every
    assert len(every._map) == 8192  # one bit per partition


@given(st.frozensets(st.integers(0, 300), max_size=200))
def test_runs_from_the_bitmap_are_the_runs_of_the_sorted_partitions(a: frozenset[int]) -> None:
    from fdbworkers._core.share import runs

    want: list[tuple[int, int]] = []
    for p in sorted(a):
        if want and want[-1][1] == p - 1:
            want[-1] = (want[-1][0], p)
        else:
            want.append((p, p))
    assert PartitionSet(a).runs() == want
    assert runs(PartitionSet(a)) == runs(a) == want


def test_a_whole_role_is_one_run() -> None:
    assert PartitionSet(range(65_536)).runs() == [(0, 65_535)]
    assert PartitionSet([0, 2, 65_535]).runs() == [(0, 0), (2, 2), (65_535, 65_535)]
