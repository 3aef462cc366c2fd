"""The memos of maps and decoded plans keep what is held, not the last few of everything:
a worker process keeps the map of its current plan, not the maps of plans gone by
(each 65,536 owners, about 0.3 MB), while workers simulated in one process still share
one map and one plan object per plan.

``gc.collect()`` only where a cycle must go (a plan and its map refer to each other): in
the whole suite's process it costs a fraction of a second each."""

from __future__ import annotations

import gc

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fdbworkers._core import assign as assign_module
from fdbworkers._core import plan as plan_module
from fdbworkers._core.assign import assign
from fdbworkers._core.memo import HeldMemo
from fdbworkers._core.plan import decode_plan, encode_plan, make_plan

P = 4096


class Box:
    """A value that supports weak references."""

    def __init__(self, n: int) -> None:
        self.n = n


@given(st.lists(st.tuples(st.integers(0, 7), st.booleans()), max_size=40))
def test_a_memo_keeps_exactly_what_is_held_and_the_last_when_asked(
    steps: list[tuple[int, bool]],
) -> None:
    for keep_last in (False, True):
        memo: HeldMemo[int, Box] = HeldMemo(keep_last=keep_last)
        held: dict[int, Box] = {}
        last: int | None = None
        for key, hold in steps:
            got = memo.get(key)
            if got is None:
                got = memo.put(key, Box(key))
            assert got.n == key
            if key in held:
                assert got is held[key]  # a held result is shared, never computed again
            if hold:
                held[key] = got
            else:
                held.pop(key, None)
            last = key
            del got  # a Box is in no cycle: the last reference gone, it is gone (no gc)
            alive = set(held) | ({last} if keep_last else set())
            assert len(memo) == len(alive)
            assert all(k in memo for k in alive)


@pytest.fixture
def fresh_memos() -> None:
    assign_module._MAPS.clear()
    plan_module._PLAN_MEMO.clear()


@pytest.mark.usefixtures("fresh_memos")
def test_maps_of_a_membership_are_shared_while_held_and_dropped_after() -> None:
    a = assign({"w1": 1.0, "w2": 1.0}, P, balance=None)
    assert assign({"w2": 1.0, "w1": 1.0}, P, balance=None) is a  # held: shared
    b = assign({"w1": 1.0, "w3": 1.0}, P, balance=None)
    assert len(assign_module._MAPS) == 2
    del a
    gc.collect()
    assert len(assign_module._MAPS) == 1  # not held, not the last: dropped
    # The last one asked for stays even when its caller let it go: computing a map
    # ahead (in a thread) and asking for it again a moment later is one computation.
    del b
    gc.collect()
    assert len(assign_module._MAPS) == 1
    assert (("w1", "w3"), (1.0, 1.0), P, 1, None) in assign_module._MAPS


@pytest.mark.usefixtures("fresh_memos")
def test_decoded_plans_are_shared_while_held_and_released_after() -> None:
    first = make_plan(None, {"w1": 1.0, "w2": 1.0}, {1: 3, 7: 2}, P, b"e1")
    second = make_plan(first, {"w1": 1.0, "w2": 1.0, "w3": 1.0}, {1: 3, 7: 2}, P, b"e2")
    old, new = encode_plan(first), encode_plan(second)
    a = decode_plan(old)
    assert decode_plan(old) is a  # two workers of one process: one plan, one map
    assert a.map() is decode_plan(old).map()
    b = decode_plan(new)
    del a
    gc.collect()
    assert len(plan_module._PLAN_MEMO) == 1  # the plan gone by is not kept
    assert decode_plan(new) is b
    del b
    gc.collect()
    assert len(plan_module._PLAN_MEMO) == 0
