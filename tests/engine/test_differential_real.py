"""Differential test: seeded random scripts of interleaved transactions run on the
embedded engine and on a real FoundationDB cluster; every read result, error code and
commit outcome must be the same. Runs only with a real cluster (``real_fdb``).

The scripts interleave up to three open transactions (so conflicts are exercised in a
fixed program order), and use sets, clears, range clears, atomic ops, conflict ranges,
point/range/selector reads (plain and snapshot), oversized and system keys, and commits.
Keys live under the test's prefix between sentinel keys, so selectors never resolve to
other tests' data on the shared cluster.
"""

from __future__ import annotations

import random
from typing import Any

import pytest

from fdbworkers._backends.engine import Engine
from fdbworkers._db import Database, KeySelector, MutationType, Transaction, strinc
from fdbworkers._errors import FDBError

SEEDS = [1, 2, 3, 4, 5, 6]
STEPS = 70
NAMES = [b"a", b"b", b"b\x00", b"c", b"d", b"e"]
OPS = [
    MutationType.ADD,
    MutationType.BIT_AND,
    MutationType.BIT_OR,
    MutationType.BIT_XOR,
    MutationType.APPEND_IF_FITS,
    MutationType.MAX,
    MutationType.MIN,
    MutationType.BYTE_MIN,
    MutationType.BYTE_MAX,
    MutationType.COMPARE_AND_CLEAR,
]


def make_script(seed: int) -> list[tuple[Any, ...]]:
    rng = random.Random(seed)
    script: list[tuple[Any, ...]] = []
    for _ in range(STEPS):
        t = rng.randrange(3)
        r = rng.random()
        k = rng.choice(NAMES)
        k2 = rng.choice(NAMES)
        v = bytes(rng.randrange(4) for _ in range(rng.randrange(4)))
        if r < 0.14:
            script.append(("set", t, k, v))
        elif r < 0.19:
            script.append(("clear", t, k))
        elif r < 0.23:
            script.append(("clear_range", t, min(k, k2), max(k, k2)))
        elif r < 0.33:
            script.append(("atomic", t, rng.choice(OPS), k, v))
        elif r < 0.45:
            script.append(("get", t, k, rng.random() < 0.3))
        elif r < 0.57:
            script.append(
                (
                    "range",
                    t,
                    min(k, k2),
                    max(k, k2),
                    rng.randrange(4),
                    rng.random() < 0.4,
                    rng.random() < 0.3,
                )
            )
        elif r < 0.64:
            script.append(("get_key", t, k, rng.random() < 0.5, rng.randrange(-2, 4)))
        elif r < 0.67:
            script.append(("read_conflict", t, min(k, k2), max(k, k2)))
        elif r < 0.70:
            script.append(("write_conflict", t, min(k, k2), max(k, k2)))
        elif r < 0.72:
            script.append(("bad", t, rng.choice(["big_key", "big_value", "system", "inverted"])))
        elif r < 0.74:
            script.append(("watch", t, k))
        else:
            script.append(("commit", t))
    script.extend(("commit", t) for t in range(3))
    return script


async def run_script(db: Database, prefix: bytes, script: list[tuple[Any, ...]]) -> list[Any]:
    lo, hi = prefix + b"\x00", prefix + b"\xfe"  # sentinels around the test keys

    async def sentinels(tr: Transaction) -> None:
        tr.set(lo, b"lo")
        tr.set(hi, b"hi")

    await db.transact(sentinels)

    def pk(name: bytes) -> bytes:
        return prefix + b"k" + name

    def out(key: bytes) -> Any:
        return key[len(prefix) :] if key.startswith(prefix) else "outside"

    trs: list[Transaction] = [db.create_transaction() for _ in range(3)]
    trace: list[Any] = []
    watches = []
    for step in script:
        kind, t = step[0], step[1]
        tr = trs[t]
        try:
            if kind == "set":
                tr.set(pk(step[2]), step[3])
                res: Any = None
            elif kind == "clear":
                tr.clear(pk(step[2]))
                res = None
            elif kind == "clear_range":
                tr.clear_range(pk(step[2]), pk(step[3]))
                res = None
            elif kind == "atomic":
                tr.atomic_op(step[2], pk(step[3]), step[4])
                res = None
            elif kind == "get":
                reader = tr.snapshot if step[3] else tr
                res = await reader.get(pk(step[2]))
            elif kind == "range":
                _, _, b, e, limit, reverse, snap = step
                reader = tr.snapshot if snap else tr
                rows = await reader.get_range(pk(b), pk(e), limit=limit, reverse=reverse)
                res = [(out(kv.key), kv.value) for kv in rows]
            elif kind == "get_key":
                sel = KeySelector(pk(step[2]), step[3], step[4])
                res = out(await tr.get_key(sel))
            elif kind == "read_conflict":
                tr.add_read_conflict_range(pk(step[2]), pk(step[3]))
                res = None
            elif kind == "write_conflict":
                tr.add_write_conflict_range(pk(step[2]), pk(step[3]))
                res = None
            elif kind == "watch":
                watches.append(tr.watch(pk(step[2])))
                res = None
            elif kind == "bad":
                what = step[2]
                if what == "big_key":
                    tr.set(prefix + b"x" * 10_001, b"v")
                elif what == "big_value":
                    tr.set(pk(b"a"), b"v" * 100_001)
                elif what == "system":
                    tr.set(b"\xff/fdbworkers-test", b"v")
                else:
                    tr.clear_range(pk(b"d"), pk(b"a"))
                res = None
            else:  # commit
                await tr.commit()
                res = ("committed", tr.get_committed_version() >= 0)
                trs[t] = db.create_transaction()
        except FDBError as e:
            res = ("error", e.code)
            if kind == "commit" or e.code in (2017, 1025):
                trs[t] = db.create_transaction()
        trace.append((step, res))
    for w in watches:
        w.cancel()
    for tr in trs:
        tr.cancel()

    async def everything(tr: Transaction) -> list[Any]:
        return [(out(kv.key), kv.value) for kv in await tr.get_range(prefix, strinc(prefix))]

    trace.append(("final", await db.transact(everything)))
    return trace


@pytest.mark.parametrize("seed", SEEDS)
async def test_engine_and_real_cluster_agree(real_db: Database, prefix: bytes, seed: int) -> None:
    script = make_script(seed)
    engine_db = Engine(rng=random.Random(seed)).open_database()
    try:
        expected = await run_script(real_db, prefix, script)
        got = await run_script(engine_db, prefix, script)
    finally:
        await engine_db.aclose()
    for i, (want, have) in enumerate(zip(expected, got, strict=True)):
        assert have == want, f"seed {seed}, step {i}: real cluster {want!r}, engine {have!r}"
