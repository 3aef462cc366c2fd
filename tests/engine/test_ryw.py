"""Read-your-writes (pure): a transaction's view equals a dict model of its snapshot plus
its writes, for any interleaving of writes and reads, and its commit applies exactly
that view. Also: which read conflict ranges its reads add."""

from __future__ import annotations

from bisect import bisect_left
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from fdbworkers._backends.engine import Store
from fdbworkers._backends.engine._mutations import (
    ADD,
    BYTE_MAX,
    COMPARE_AND_CLEAR,
    SET,
    apply_atomic,
)
from fdbworkers._backends.engine._ryw import WriteMap
from fdbworkers._backends.engine._store import merge_ranges
from fdbworkers._db import KeySelector

KEYS = [b"a", b"b", b"b\x00", b"c", b"d", b"e"]
BOUNDS = [b"", *KEYS, b"f"]
values = st.binary(min_size=0, max_size=3)


class Clock:
    t = 0.0

    def __call__(self) -> float:
        return self.t


class Reader:
    def __init__(self, store: Store, version: int) -> None:
        self.store, self.version = store, version

    def get(self, key: bytes) -> bytes | None:
        return self.store.get(key, self.version)

    def iter_range(self, b: bytes, e: bytes, reverse: bool) -> Any:
        return self.store.iter_range(b, e, self.version, reverse)

    def get_range(self, b: bytes, e: bytes, limit: int, reverse: bool) -> Any:
        return self.store.get_range(b, e, self.version, limit, reverse)


def model_get_key(
    model: dict[bytes, bytes], sel: KeySelector, phantoms: frozenset[bytes] = frozenset()
) -> bytes:
    """FDB 7.3's read-your-writes get_key: a key that a pending COMPARE_AND_CLEAR of the
    transaction cleared (a phantom) still counts as a position; landing on it yields the
    next present key in the walking direction (checked on a real cluster)."""
    keys = sorted(set(model) | phantoms)
    nk = sel.key + b"\x00" if sel.or_equal else sel.key
    i = bisect_left(keys, nk)  # index of the first key >= nk
    j = i + sel.offset - 1
    step = 1 if sel.offset > 0 else -1
    while 0 <= j < len(keys) and keys[j] in phantoms:
        j += step
    if j < 0:
        return b""
    if j >= len(keys):
        return b"\xff"
    return keys[j]


ops = st.one_of(
    st.tuples(st.just("set"), st.sampled_from(KEYS), values),
    st.tuples(st.just("clear"), st.sampled_from(KEYS)),
    st.tuples(st.just("clear_range"), st.sampled_from(BOUNDS), st.sampled_from(BOUNDS)),
    st.tuples(
        st.just("atomic"),
        st.sampled_from([ADD, BYTE_MAX, COMPARE_AND_CLEAR]),
        st.sampled_from(KEYS),
        values,
    ),
    st.tuples(st.just("get"), st.sampled_from(KEYS), st.booleans()),
    st.tuples(
        st.just("range"),
        st.sampled_from(BOUNDS),
        st.sampled_from(BOUNDS),
        st.integers(0, 3),
        st.booleans(),
    ),
    st.tuples(st.just("get_key"), st.sampled_from(BOUNDS), st.booleans(), st.integers(-2, 3)),
)


@settings(max_examples=300, deadline=None)
@given(
    initial=st.dictionaries(st.sampled_from(KEYS), values),
    script=st.lists(ops, max_size=20),
)
def test_transaction_view_matches_a_dict_model(
    initial: dict[bytes, bytes], script: list[tuple[Any, ...]]
) -> None:
    store = Store(Clock())
    store.commit(None, [], [], [(SET, k, v) for k, v in initial.items()])
    reader = Reader(store, store.read_version())
    rw = WriteMap()
    model = dict(initial)
    # Keys a pending COMPARE_AND_CLEAR cleared on top of the stored value (an atomic op
    # on a key this transaction set or cleared is evaluated at once: no phantom).
    phantoms: set[bytes] = set()
    local: set[bytes] = set()
    for op in script:
        kind = op[0]
        if kind == "set":
            rw.set(op[1], op[2])
            model[op[1]] = op[2]
            phantoms.discard(op[1])
            local.add(op[1])
        elif kind == "clear":
            rw.clear(op[1])
            model.pop(op[1], None)
            phantoms.discard(op[1])
            local.add(op[1])
        elif kind == "clear_range":
            b, e = op[1], op[2]
            if b < e:
                rw.clear_range(b, e)
                for k in [k for k in model if b <= k < e]:
                    del model[k]
                phantoms -= {k for k in phantoms if b <= k < e}
                local |= {k for k in KEYS if b <= k < e}
        elif kind == "atomic":
            rw.atomic(op[1], op[2], op[3])
            new = apply_atomic(op[1], model.get(op[2]), op[3])
            if new is None:
                model.pop(op[2], None)
                if op[2] not in local:
                    phantoms.add(op[2])
            else:
                model[op[2]] = new
                phantoms.discard(op[2])
        elif kind == "get":
            assert rw.get(reader, op[1], op[2]) == model.get(op[1])
        elif kind == "range":
            b, e, limit, reverse = op[1:]
            got = rw.get_range(
                reader, KeySelector(b, False, 1), KeySelector(e, False, 1), limit, reverse, False
            )
            want = sorted((k, v) for k, v in model.items() if b <= k < e)
            if reverse:
                want.reverse()
            if limit:
                want = want[:limit]
            assert [tuple(kv) for kv in got] == want
        elif kind == "get_key":
            sel = KeySelector(op[1], op[2], op[3])
            assert rw.get_key(reader, sel, False) == model_get_key(model, sel, frozenset(phantoms))
    mutations, writes, reads, _ = rw.commit_request()
    store.commit(reader.version, reads, writes, mutations)
    after = store.read_version()
    assert {kv.key: kv.value for kv in store.get_range(b"", b"\xff", after)} == model


def test_own_independent_writes_add_no_read_conflict() -> None:
    store = Store(Clock())
    store.commit(None, [], [], [(SET, k, b"v") for k in KEYS])
    reader = Reader(store, store.read_version())
    rw = WriteMap()
    rw.set(b"a", b"mine")
    rw.clear_range(b"c", b"e")
    rw.atomic(ADD, b"e", b"\x01")  # dependent: reading it conflicts
    assert rw.get(reader, b"a", False) == b"mine"
    assert rw.get(reader, b"c", False) is None
    assert rw.read_conflicts == []
    rw.get_range(reader, KeySelector(b"", False, 1), KeySelector(b"f", False, 1), 0, False, False)
    assert merge_ranges(rw.read_conflicts) == [(b"", b"a"), (b"a\x00", b"c"), (b"e", b"f")]
    rw2 = WriteMap()
    rw2.add_read_conflict(b"a", b"c")
    rw2.set(b"b", b"x")  # a conflict range added before the write stays
    rw2.add_read_conflict(b"a", b"c")  # ... one added after skips the written key
    assert rw2.read_conflicts == [(b"a", b"c"), (b"a", b"b"), (b"b\x00", b"c")]


def test_limited_range_reads_conflict_only_up_to_where_they_stopped() -> None:
    store = Store(Clock())
    store.commit(None, [], [], [(SET, k, b"v") for k in KEYS])
    reader = Reader(store, store.read_version())
    b, e = KeySelector(b"a", False, 1), KeySelector(b"f", False, 1)
    rw = WriteMap()
    rw.get_range(reader, b, e, 2, False, False)
    assert rw.read_conflicts == [(b"a", b"b\x00")]
    rw = WriteMap()
    rw.get_range(reader, b, e, 2, True, False)
    assert rw.read_conflicts == [(b"d", b"f")]
    rw = WriteMap()
    rw.get_range(reader, b, e, 10, False, False)
    assert rw.read_conflicts == [(b"a", b"f")]
    rw = WriteMap()
    rw.get_range(reader, e, b, 0, False, False)  # inverted: nothing read, nothing added
    assert rw.read_conflicts == []
