"""explain and plan (fdbworkers._core.insight, fdbworkers.cli._insight).

* plan is exact: a plan is computed from the live membership and jobs, then the change
  is applied with real workers in a Fleet on the engine's virtual clock, and the set of
  jobs whose owner changed is compared with the plan's (join of a named id, crash,
  drain, reweight by restart).
* explain's replay rebuilds the membership recorded after each change, and says when
  history is older than the retained log or weights were not recorded.
"""

from __future__ import annotations

import json
import random
import sys
from collections.abc import Mapping
from pathlib import Path

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st
from trio.testing import MockClock

from fdbworkers import ConfigError, WorkerOptions, WorkerState, add_job
from fdbworkers._backends.engine import Engine
from fdbworkers._core.insight import (
    ClaimInfo,
    MemberState,
    RecordedEvent,
    explain_job,
    replay_membership,
)
from fdbworkers._core.insight_plan import (
    Change,
    apply_change,
    hypothetical_ids,
    plan_change,
)
from fdbworkers._core.keys import Layout
from fdbworkers._core.plan import make_plan
from fdbworkers._store.admin import RoleSnapshot, read_role_snapshot
from fdbworkers._store.members import tx_request_drain
from fdbworkers.cli._insight import member_states, read_history
from fdbworkers.testing import Fleet

ROOT = "fdbworkers-test"
ROLE = "sim"
P = 64
OPTS = WorkerOptions(timeout=3.0, settle=0.3, partitions=P)
LAYOUT = Layout.for_root(ROOT)
SPACE = LAYOUT.role(ROLE)


# --- plan is exact (real workers on the virtual clock) ------------------------------------


def converged(snap: RoleSnapshot) -> bool:
    members = member_states(snap.members)
    weights = {w: m.weight for w, m in members.items() if not m.drain} or {
        w: m.weight for w, m in members.items()
    }
    if snap.plan is None or not snap.plan.same_members(weights):
        return False  # the workers have not written the plan for these members yet
    a = snap.plan.map()
    for jid, j in snap.jobs.items():
        c = snap.claims.get(jid)
        if c is None or c.wid != a.owner(j.partition):
            return False
        if snap.members[c.wid].incarnation != c.incarnation:
            return False
    return True


async def settled(
    engine: Engine, expect: Mapping[str, float] | None = None, limit: float = 60.0
) -> RoleSnapshot:
    """The role once its members are ``expect`` (id -> weight) and every job is claimed
    by the member the assignment names."""
    db = engine.open_database("observer")
    with trio.fail_after(limit):
        while True:
            snap = await read_role_snapshot(db, SPACE)
            weights = {w: r.weight for w, r in snap.members.items()}
            if (expect is None or weights == dict(expect)) and converged(snap):
                return snap
            await trio.sleep(0.25)


async def stop_when_left(fleet: Fleet, wid: str) -> None:
    """A Fleet worker that was drained through its record has left but keeps its task
    group: end it as the process would (open_worker's block is cancelled on a drain)."""
    w = fleet.workers[wid].worker
    assert w is not None
    while w.state is not WorkerState.LEFT:
        await w.wait_state_change()
    fleet.workers[wid].crash()


def owners(snap: RoleSnapshot) -> dict[str, str]:
    return {j: c.wid for j, c in snap.claims.items()}


@pytest.mark.parametrize("kind", ["add", "crash", "drain", "weight", "remove_two"])
async def test_plan_matches_what_applying_the_change_moves(
    autojump_clock: MockClock, kind: str
) -> None:
    engine = Engine(rng=random.Random(11))
    app = engine.open_database("app")
    for i in range(120):
        await add_job(app, ROLE, f"job-{i:03}", {"n": i}, root=ROOT, partitions=P)
    async with trio.open_nursery() as n:
        fleet = Fleet(n, engine.open_database, role=ROLE, root=ROOT, options=OPTS)
        for i in range(5):
            await fleet.start(f"w{i}")
        before = await settled(engine)
        members = member_states(before.members)
        jobs = {j: r.partition for j, r in before.jobs.items()}
        change = {
            "add": Change(add_ids=("w-new",)),
            "crash": Change(remove=("w1",)),
            "drain": Change(drain=("w2",)),
            "weight": Change(weights={"w3": 2.5}),
            "remove_two": Change(remove=("w0", "w4")),
        }[kind]
        plan = plan_change(ROLE, members, jobs, P, change, owners(before), stored=before.plan)
        assert not plan.unsettled
        # Apply it for real.
        if kind == "add":
            await fleet.start("w-new")
        elif kind == "crash":
            fleet.workers["w1"].crash()
        elif kind == "drain":
            n.start_soon(stop_when_left, fleet, "w2")
            assert await app.transact(tx_request_drain, SPACE, "w2", "test") == "requested"
        elif kind == "weight":
            fleet.workers["w3"].crash()  # restarted at once with another weight
            await fleet.start(
                "w3", WorkerOptions(timeout=3.0, settle=0.3, partitions=P, weight=2.5)
            )
        else:
            await fleet.workers["w0"].stop()
            fleet.workers["w4"].crash()
        planned, _ = apply_change(members, change)
        expect = {w: m.weight for w, m in planned.items() if w not in change.drain}
        after = await settled(engine, expect)
        o0, o1 = owners(before), owners(after)
        actually_moved = {j for j in jobs if o0.get(j) != o1.get(j)}
        assert {m.job for m in plan.moves} == actually_moved
        loads = {x.worker: x.jobs_after for x in plan.loads if x.jobs_after}
        real: dict[str, int] = {}
        for w in o1.values():
            real[w] = real.get(w, 0) + 1
        if kind == "remove_two":
            # Two departures seen one after the other give two plans: the same jobs
            # move, from the same sources, to within one job of the planned loads.
            assert {(m.job, m.source) for m in plan.moves} == {(j, o0[j]) for j in actually_moved}
            assert all(abs(loads.get(w, 0) - real.get(w, 0)) <= 1 for w in real)
        else:
            for m in plan.moves:
                assert (m.source, m.target) == (o0[m.job], o1[m.job])
            assert loads == real
        assert plan.moves  # every change here moves something
        n.cancel_scope.cancel()


# --- explain: replay over real events ---------------------------------------------------


async def test_explain_replays_the_recorded_membership(autojump_clock: MockClock) -> None:
    engine = Engine(rng=random.Random(5))
    app = engine.open_database("app")
    for i in range(40):
        await add_job(app, ROLE, f"job-{i:02}", root=ROOT, partitions=P)
    seen: list[dict[str, MemberState]] = []
    async with trio.open_nursery() as n:
        fleet = Fleet(n, engine.open_database, role=ROLE, root=ROOT, options=OPTS)
        for i in range(3):
            await fleet.start(
                f"w{i}", WorkerOptions(timeout=3.0, settle=0.3, partitions=P, weight=1 + i)
            )
        seen.append(member_states((await settled(engine, {"w0": 1, "w1": 2, "w2": 3})).members))
        await fleet.start("w3")
        expect = {"w0": 1.0, "w1": 2.0, "w2": 3.0, "w3": 1.0}
        seen.append(member_states((await settled(engine, expect)).members))
        fleet.workers["w0"].crash()
        del expect["w0"]
        seen.append(member_states((await settled(engine, expect)).members))
        n.start_soon(stop_when_left, fleet, "w1")
        await app.transact(tx_request_drain, SPACE, "w1", "test")
        del expect["w1"]
        final = await settled(engine, expect)
        seen.append(member_states(final.members))
        h = await read_history(app, SPACE, "job-07")
        replay = replay_membership(h.events, h.members)
        assert replay.exact and not replay.start
        epochs = [dict(e.members) for e in replay.epochs]
        # Every settled membership we saw is one of the replayed ones, in order.
        pos = 0
        for m in seen:
            pos = epochs.index(m, pos)
        types = [e.event.type for e in replay.epochs]
        assert "evicted" in types and "drain_requested" in types and "drained" in types
        for jid, rec in final.jobs.items():
            h = await read_history(app, SPACE, jid)
            x = explain_job(
                ROLE,
                jid,
                P,
                replay_membership(h.events, h.members),
                h.members,
                h.claim,
                partition=h.job_partition,
                current_plan=h.plan,
            )
            assert x.complete and not x.warnings
            assert x.state == "owned"
            assert x.stints[-1].owner == final.claims[jid].wid
            assert x.stints[-1].token == final.claims[jid].token
            assert x.partition == rec.partition
            # Consecutive stints have different owners (or incarnations), and each
            # starts where the previous one ended.
            for a, b in zip(x.stints, x.stints[1:], strict=False):
                assert a.until is b.since
                assert (a.owner, a.incarnation) != (b.owner, b.incarnation)
        # A job that w0 held when it was evicted says so.
        evicted = [
            s
            for jid in final.jobs
            for s in explain_job(
                ROLE, jid, P, replay, h.members, None, partition=final.jobs[jid].partition
            ).stints
            if s.since is not None and s.since.type == "evicted"
        ]
        assert any("w0 was evicted by" in s.reason and "silence" in s.reason for s in evicted)
        n.cancel_scope.cancel()


# --- explain: pure replay ---------------------------------------------------------------


def ev(version: int, kind: str, worker: str, inc: str, **data: object) -> RecordedEvent:
    stamp = version.to_bytes(8, "big") + b"\0\0"
    return RecordedEvent(
        stamp, kind, 1000.0 + version, {"worker": worker, "incarnation": inc, **data}
    )


def test_replay_of_a_trimmed_log_says_history_is_older() -> None:
    current = {"a": MemberState("ia", 1.0), "c": MemberState("ic", 2.0)}
    # a and b joined before the log begins; the log holds c joining and b leaving.
    events = [
        ev(10, "joined", "c", "ic", weight=2.0),
        ev(20, "left", "b", "ib", weight=1.0),
    ]
    r = replay_membership(events, current)
    assert dict(r.start) == {"a": MemberState("ia", 1.0), "b": MemberState("ib", 1.0)}
    assert [dict(e.members) for e in r.epochs] == [
        {"a": MemberState("ia", 1.0), "b": MemberState("ib", 1.0), "c": MemberState("ic", 2.0)},
        {"a": MemberState("ia", 1.0), "c": MemberState("ic", 2.0)},
    ]
    assert r.exact
    x = explain_job("r", "job-1", 16, r, current, None)
    assert not x.complete
    assert x.stints[0].since is None
    assert "older history is no longer in the log" in x.stints[0].reason


def test_replay_without_recorded_weights_warns() -> None:
    # An older fdbworkers wrote no weight in "left": b's weight is unknown.
    current = {"a": MemberState("ia", 1.0)}
    r = replay_membership([ev(5, "left", "b", "ib")], current)
    assert r.unknown_weights == {("b", "ib")}
    x = explain_job("r", "job-1", 16, r, current, None)
    assert not x.complete
    assert any("were not recorded" in w for w in x.warnings)


def test_replay_restart_and_drain() -> None:
    current = {"a": MemberState("ia2", 3.0), "b": MemberState("ib", 1.0, drain=True)}
    events = [
        ev(1, "joined", "a", "ia", weight=1.0),
        ev(2, "joined", "b", "ib", weight=1.0),
        ev(3, "joined", "a", "ia2", weight=3.0, replaced="ia", replaced_weight=1.0),
        ev(4, "drain_requested", "b", "ib", by="op"),
        ev(5, "self_fenced", "a", "ia2"),
    ]
    r = replay_membership(events, current)
    assert not r.start and r.exact
    assert dict(r.epochs[1].members) == {"a": MemberState("ia", 1.0), "b": MemberState("ib", 1.0)}
    assert dict(r.epochs[2].members)["a"] == MemberState("ia2", 3.0)
    assert dict(r.epochs[3].members)["b"].drain
    x = explain_job("r", "j", 8, r, current, ClaimInfo("a", "ia2", b"\1" * 10))
    assert x.stints[-1].owner == "a" and x.stints[-1].token == b"\1" * 10
    assert x.state == "owned"
    assert any("fenced itself" in note for note in x.stints[-1].notes)


def test_replay_notices_missing_events() -> None:
    current = {"a": MemberState("ia", 1.0)}
    r = replay_membership([ev(1, "left", "a", "ia", weight=1.0)], current)
    assert r.warnings and not r.exact


def test_job_states() -> None:
    current = {"a": MemberState("ia"), "b": MemberState("ib")}
    r = replay_membership([], current)
    owner = explain_job("r", "j", 8, r, current, None).assigned_to
    assert owner in current
    other = "b" if owner == "a" else "a"
    cases = {
        None: "unclaimed",
        ClaimInfo(owner, current[owner].incarnation, b"\0" * 10): "owned",
        ClaimInfo(other, current[other].incarnation, b"\0" * 10): "moving",
        ClaimInfo("gone", "x", b"\0" * 10): "orphaned",
    }
    for claim, state in cases.items():
        assert explain_job("r", "j", 8, r, current, claim).state == state
    assert explain_job("r", "j", 8, r, current, None, exists=False).state == "missing"


# --- plan: pure ----------------------------------------------------------------------------


def test_hypothetical_ids_are_deterministic_and_free() -> None:
    assert hypothetical_ids(3, ["planned-2"]) == ["planned-1", "planned-3", "planned-4"]


def test_bad_changes_are_refused_clearly() -> None:
    members = {"a": MemberState("ia"), "b": MemberState("ib")}
    for change, match in [
        (Change(), "nothing to plan"),
        (Change(remove=("zz",)), "not a member"),
        (Change(drain=("zz",)), "not a member"),
        (Change(weights={"a": 0.0}), "weight of a"),
        (Change(weights={"a": float("nan")}), "number"),
        (Change(add_ids=("a",)), "already a member"),
        (Change(add=-1), "--add"),
        (Change(remove=("a",), drain=("a",)), "both"),
    ]:
        with pytest.raises(ConfigError, match=match):
            apply_change(members, change)


def test_plan_add_names_hypothetical_workers_and_warns() -> None:
    members = {f"w{i}": MemberState(f"i{i}") for i in range(4)}
    jobs = {f"j{i}": i % 256 for i in range(400)}
    p = plan_change("r", members, jobs, 256, Change(add=1))
    assert p.added == ("planned-1",)
    assert any("hypothetical" in w for w in p.warnings)
    assert {m.target for m in p.moves} == {"planned-1"}  # a join moves jobs to the newcomer
    assert p.optimum == pytest.approx(400 / 5)
    assert sum(x.jobs_after for x in p.loads) == 400
    assert p.to_json()["moves"] == len(p.moves)


def test_plan_drain_everyone_keeps_everything() -> None:
    members = {"a": MemberState("ia"), "b": MemberState("ib")}
    p = plan_change("r", members, {"j": 3}, 16, Change(drain=("a", "b")))
    assert not p.moves  # when every member drains, the runner assigns over all of them


@settings(max_examples=30, deadline=None)
@given(
    n=st.integers(1, 8),
    seed=st.integers(0, 10**6),
    op=st.sampled_from(["add", "remove", "drain", "weight"]),
)
def test_plan_is_the_assignment_diff(n: int, seed: int, op: str) -> None:
    rng = random.Random(seed)
    members = {f"w{i}": MemberState(f"i{i}", rng.choice([0.5, 1.0, 2.0])) for i in range(n)}
    jobs = {f"job-{k}": rng.randrange(128) for k in range(rng.randrange(0, 300))}
    victim = f"w{rng.randrange(n)}"
    change = {
        "add": Change(add_ids=("zz",)),
        "remove": Change(remove=(victim,)),
        "drain": Change(drain=(victim,)),
        "weight": Change(weights={victim: 3.0}),
    }[op]
    p = plan_change("r", members, jobs, 128, change)
    after, _ = apply_change(members, change)
    counts: dict[int, int] = {}
    for q in jobs.values():
        counts[q] = counts.get(q, 0) + 1

    def weights(m: Mapping[str, MemberState]) -> dict[str, float]:
        return {w: s.weight for w, s in m.items() if not s.drain} or {
            w: s.weight for w, s in m.items()
        }

    s0 = make_plan(None, weights(members), counts, 128, b"")
    s1 = make_plan(s0, weights(after), counts, 128, b"")
    m0, m1 = s0.map(), s1.map()
    parts = {q for q in counts if m0.owner(q) != m1.owner(q)}
    assert {m.job for m in p.moves} == {j for j, q in jobs.items() if q in parts}
    assert p.partitions_moved == len(parts)
    assert sum(x.jobs_after for x in p.loads) == (len(jobs) if weights(after) else 0)
    assert p.lower_bound <= len(p.moves)


# --- the CLI, as users run it ---------------------------------------------------------------


def test_cli_explain_and_plan_on_a_dev_server(tmp_path: Path) -> None:
    sys.path.insert(0, str(Path(__file__).parent / "cli"))
    from cli_util import cli_on, started_devserver, wait_for

    with started_devserver(tmp_path) as address, cli_on(["--cluster", address], tmp_path) as cli:
        cli.worker(ROLE, "a", "--exec", "sleep 600")
        cli.worker(ROLE, "b", "--exec", "sleep 600")
        for r in cli.many(
            *[["job", "add", ROLE, f"job-{i}", "--partitions", "64"] for i in range(8)]
        ):
            assert r.returncode == 0, r.stderr

        def all_owned() -> bool:
            r = cli("jobs", ROLE, "--json")
            return r.returncode == 0 and all(
                j["state"] == "owned" for j in json.loads(r.stdout)["jobs"]
            )

        try:
            wait_for(all_owned, 30, "jobs to be owned")
        except AssertionError:
            print(cli("jobs", ROLE).stdout, cli("members", ROLE, "--observe", "0").stdout)
            print(cli.log("a.log")[-3000:])
            raise
        r = cli("explain", ROLE, "job-3", "--json")
        assert r.returncode == 0, r.stderr
        doc = json.loads(r.stdout)
        assert doc["schema"] == "fdbworkers.explain/1"
        assert doc["current"]["state"] == "owned"
        assert doc["owners"][-1]["owner"] == doc["current"]["claimed_by"]
        assert doc["owners"][-1]["token"] == doc["current"]["token"]
        assert doc["log"]["complete"] is True
        text = cli("explain", ROLE, "job-3")
        assert "why:" in text.stdout and text.returncode == 0
        r = cli("plan", ROLE, "--add", "2", "--json")
        assert r.returncode == 0, r.stderr
        plan = json.loads(r.stdout)
        assert plan["schema"] == "fdbworkers.plan/1" and plan["added"] == ["planned-1", "planned-2"]
        assert plan["jobs"] == 8
        r = cli("plan", ROLE, "--remove", "nobody")
        assert r.returncode == 2 and "not a member" in r.stderr
        r = cli("plan", ROLE)
        assert r.returncode == 2 and "nothing to plan" in r.stderr
        r = cli("explain", "no-such-role", "job-1")
        assert r.returncode == 1 and "no role" in r.stderr
