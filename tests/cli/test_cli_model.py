"""The CLI's pure parts: judgements, JSON forms, the live view rendered to a string, the
demo's checks. No database, no clock."""

from __future__ import annotations

import json
from typing import Any

import click
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fdbworkers._core.records import Claim, MemberRecord, RoleConfig, jsonable
from fdbworkers._store.admin import (
    JobInfoRecord,
    Observation,
    RoleSnapshot,
)
from fdbworkers._store.events import EventInfo
from fdbworkers._store.views import (
    JobView,
    MemberView,
    evaluate_role,
    job_state,
    member_state,
    member_views,
)
from fdbworkers.cli._common import plain_table, resolve_cluster
from fdbworkers.cli._demo_check import (
    Phase,
    Run,
    check_single_runner,
    count_moves,
    required_and_optimum,
)
from fdbworkers.cli._view import ViewSnapshot, render_plain, render_to_string


def rec(wid: str, *, timeout: float = 3.0, drain: bool = False, inc: str = "i1") -> MemberRecord:
    return MemberRecord(wid=wid, incarnation=inc, timeout=timeout, host="h", pid=7, drain=drain)


def obs(silent: float, changed: bool) -> Observation:
    return Observation("w", b"s" * 10, 1.0, anchor=10.0, changed=changed, last_seen=10.0 + silent)


# --- member and job states ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("silent", "changed", "drain", "state"),
    [
        (0.2, True, False, "ok"),
        (0.2, False, False, "unknown"),  # not observed for a heartbeat interval yet
        (1.6, False, False, "suspect"),  # missed a heartbeat (half the timeout)
        (3.0, False, False, "stale"),  # silent for its timeout
        (3.0, False, True, "stale"),  # stale wins over draining
        (0.1, True, True, "draining"),
    ],
)
def test_member_state(silent: float, changed: bool, drain: bool, state: str) -> None:
    assert member_state(rec("w", drain=drain), obs(silent, changed)) == state


def test_member_state_without_observation_is_unknown() -> None:
    assert member_state(rec("w"), None) == "unknown"


def test_job_state() -> None:
    members = {"a": rec("a"), "b": rec("b")}
    claim = Claim(b"t" * 10, "a", "i1")
    assert job_state(None, members, "a") == "unclaimed"
    assert job_state(claim, members, "a") == "owned"
    assert job_state(claim, members, "b") == "moving"
    assert job_state(Claim(b"t" * 10, "gone", "i1"), members, "a") == "orphaned"
    # Same id, another incarnation: the holder restarted, its claim is an orphan.
    assert job_state(Claim(b"t" * 10, "a", "old"), members, "a") == "orphaned"


def snapshot_with(
    members: dict[str, MemberRecord], jobs: dict[str, JobInfoRecord], claims: dict[str, Claim]
) -> RoleSnapshot:
    return RoleSnapshot("r", RoleConfig(16), b"e" * 10, members, [], jobs, claims)


def test_evaluate_role_healthy_and_each_failure() -> None:
    members = {"a": rec("a")}
    jobs = {"j1": JobInfoRecord("j1", 3, None, 1.0, 0.0)}
    claims = {"j1": Claim(b"t" * 10, "a", "i1")}
    snap = snapshot_with(members, jobs, claims)
    views = member_views(snap, {"a": obs(0.3, True)}, [_job("j1", "a", "a", "owned")])
    status = evaluate_role(snap, views, [_job("j1", "a", "a", "owned")])
    assert status.healthy, [c.detail for c in status.checks]
    assert [c.name for c in status.checks] == [
        "members_within_timeout",
        "jobs_owned_by_live_workers",
        "jobs_running",
        "agreement_at_rest",
        "records_readable",
    ]

    stale = member_views(snap, {"a": obs(3.5, False)}, [])
    s2 = evaluate_role(snap, stale, [_job("j1", "a", "a", "owned")])
    failed = {c.name for c in s2.checks if not c.ok}
    assert failed == {"members_within_timeout", "jobs_owned_by_live_workers"}

    s3 = evaluate_role(snap, views, [_job("j1", "a", "b", "moving")])
    assert {c.name for c in s3.checks if not c.ok} == {"agreement_at_rest"}

    s4 = evaluate_role(snap, views, [_job("j1", None, "a", "unclaimed")])
    assert {c.name for c in s4.checks if not c.ok} == {"jobs_owned_by_live_workers"}
    assert "j1 (unclaimed)" in s4.checks[1].items

    corrupt = RoleSnapshot("r", RoleConfig(16), b"", members, [b"k"], jobs, claims)
    s5 = evaluate_role(corrupt, views, [_job("j1", "a", "a", "owned")])
    assert {c.name for c in s5.checks if not c.ok} == {"records_readable"}

    json.dumps(s5.to_json())


def _job(jid: str, owner: str | None, assigned: str | None, state: str) -> JobView:
    return JobView(jid, 3, {"x": b"\x00"}, 1.0, 0.0, owner, "i1" if owner else None,
                   b"\x00" * 9 + b"\x01" if owner else None, assigned, state)  # fmt: skip


def test_member_views_count_held_and_assigned_jobs() -> None:
    snap = snapshot_with({"a": rec("a"), "b": rec("b")}, {}, {})
    jobs = [
        _job("j1", "a", "a", "owned"),
        _job("j2", "a", "b", "moving"),
        _job("j3", None, "b", "unclaimed"),
    ]
    views = {m.id: m for m in member_views(snap, {}, jobs)}
    assert (views["a"].jobs, views["a"].assigned) == (2, 1)
    assert (views["b"].jobs, views["b"].assigned) == (0, 2)
    assert views["a"].state == "unknown"


# --- JSON ------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text() | st.binary(),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(max_size=5) | st.binary(max_size=3), children, max_size=4)
    ),
    max_leaves=20,
)


@given(json_values)
def test_jsonable_always_serialises(value: Any) -> None:
    json.dumps(jsonable(value), allow_nan=False)


def test_jsonable_bytes_form() -> None:
    assert jsonable({"k": b"\x00\xff"}) == {"k": {"$bytes": "AP8="}}


def test_job_and_member_json_fields_are_the_documented_ones() -> None:
    j = _job("j1", "a", "a", "owned").to_json()
    assert set(j) == {
        "id", "partition", "spec", "weight", "added_at", "owner", "owner_incarnation",
        "token", "token_version", "assigned_to", "state", "health", "failures", "restarts",
        "last_error", "failing_since", "last_failure_at",
    }  # fmt: skip
    assert j["token"] == "00000000000000000001" and j["token_version"] == 0
    m = member_views(snapshot_with({"a": rec("a")}, {}, {}), {"a": obs(0.5, True)}, [])[0]
    assert set(m.to_json()) == {
        "id", "host", "pid", "incarnation", "weight", "timeout", "joined_at", "drain", "meta",
        "state", "silent_for", "silent_for_exact", "last_heartbeat_wall_time", "jobs",
        "assigned_jobs",
    }  # fmt: skip


def test_event_summary() -> None:
    ev = EventInfo(
        b"k", b"\x00" * 10, "evicted", "r", 1.0, {"worker": "w2", "by": "w1", "silent_for": 3.1}
    )
    assert ev.summary() == "evicted w2 by w1 (silent 3.1s)"
    assert ev.to_json()["type"] == "evicted"
    joined = EventInfo(
        b"k", b"\x00" * 10, "joined", "r", 1.0, {"worker": "w2", "host": "h", "pid": 4}
    )
    assert joined.summary() == "joined w2 on h pid 4"


# --- plumbing ----------------------------------------------------------------------------


def test_plain_table_aligns_without_truncating() -> None:
    out = plain_table(["A", "LONGER"], [["x" * 12, "1"], ["y", "22"]])
    lines = out.splitlines()
    assert lines[0] == "A             LONGER"
    assert lines[1] == "xxxxxxxxxxxx  1"
    assert lines[2] == "y             22"


def test_cluster_resolution_precedence(tmp_path: Any) -> None:
    cf = tmp_path / "fdb.cluster"
    cf.write_text("a:b@127.0.0.1:1\n")
    # The command line wins over the environment; --cluster over --cluster-file.
    assert resolve_cluster("sim://h:1", str(cf), True, False) == ("sim://h:1", "--cluster")
    assert resolve_cluster("sim://h:1", str(cf), False, True) == (f"fdb:{cf}", "--cluster-file")
    assert resolve_cluster("sim://h:1", str(cf), False, False) == (
        "sim://h:1",
        "FDBWORKERS_CLUSTER",
    )
    assert resolve_cluster(None, str(cf), False, False) == (f"fdb:{cf}", "FDB_CLUSTER_FILE")
    assert resolve_cluster(None, None, False, False) == (None, "none")
    with pytest.raises(click.UsageError):
        resolve_cluster("sim://h:1", str(cf), True, True)
    with pytest.raises(click.BadParameter):
        resolve_cluster(None, str(tmp_path / "missing"), False, True)


# --- the live view, rendered -------------------------------------------------------------


def view_snapshot(**kw: Any) -> ViewSnapshot:
    members = [
        MemberView(
            "w1", "host1", 11, "aaaa1111", 1.0, 3.0, 0.0, False, {}, "ok", 0.4, True, None, 3, 3
        ),
        MemberView(
            "w2", "host2", 22, "bbbb2222", 1.0, 3.0, 0.0, False, {}, "stale", 3.2, False, None, 1, 0
        ),
    ]
    jobs = [_job("j1", "w1", "w1", "owned"), _job("j2", "w2", "w1", "moving")]
    events = [EventInfo(b"k", b"\x00" * 10, "evicted", "demo", 1.7e9, {"worker": "w3", "by": "w1"})]
    return ViewSnapshot("demo", "sim://127.0.0.1:1", b"\x00" * 10, members, jobs, events, **kw)


def test_render_view_to_string() -> None:
    text = render_to_string(view_snapshot(notes=["[  1.0s] killed w3"], elapsed=12.5), width=110)
    assert "role demo" in text and "members 2" in text
    assert "jobs 2 (1 owned, 1 moving)" in text
    assert "rebalancing" in text
    lines = {line.split()[0]: line for line in text.splitlines() if line.strip()}
    assert "ok" in lines["w1"] and "0.4s" in lines["w1"]
    assert "stale" in lines["w2"] and ">=3.2s" in lines["w2"] and "1→0" in lines["w2"]
    assert "evicted w3 by w1" in text
    assert "timeline" in text and "killed w3" in text
    assert "\x1b[" not in text
    assert "\x1b[" in render_to_string(view_snapshot(), color=True)


def test_render_plain_and_rest() -> None:
    snap = view_snapshot()
    assert not snap.at_rest
    text = render_plain(snap)
    assert "member w2 state=stale silent=>=3.2s jobs=1 assigned=0" in text
    assert "silent=" not in render_plain(snap, with_ages=False)
    quiet = ViewSnapshot("demo", "c", b"", snap.members[:1], [_job("j1", "w1", "w1", "owned")], [])
    assert quiet.at_rest and "at rest" in render_to_string(quiet)
    assert "(no members)" in render_to_string(ViewSnapshot("demo", "c", b"", [], [], []))


# --- the demo's checks --------------------------------------------------------------------


def run(job: str, worker: str, token: int, start: float, stop: float | None) -> Run:
    return Run(job, worker, "i", token.to_bytes(10, "big"), start, stop, 1)


def test_single_runner_check() -> None:
    ok = [run("j", "a", 1, 0.0, 1.0), run("j", "b", 2, 1.5, 3.0), run("k", "a", 1, 0.0, None)]
    assert check_single_runner(ok) == (2, [])
    overlap = [run("j", "a", 1, 0.0, 2.0), run("j", "b", 2, 1.5, 3.0)]
    _, problems = check_single_runner(overlap)
    assert len(problems) == 1 and "0.500s before" in problems[0]
    regress = [run("j", "a", 5, 0.0, 1.0), run("j", "b", 2, 1.5, 3.0)]
    assert "not above" in check_single_runner(regress)[1][0]
    never_stopped = [run("j", "a", 1, 0.0, None), run("j", "b", 2, 1.5, None)]
    assert check_single_runner(never_stopped)[1]


def test_moves_counted_per_phase_against_required_and_optimum() -> None:
    runs = [
        run("j1", "a", 1, 0.0, 5.0), run("j1", "b", 2, 6.0, None),  # moved in (5, 10]
        run("j2", "a", 1, 0.0, 7.0), run("j2", "a", 2, 7.5, None),  # same worker: no move
        run("j3", "c", 1, 8.0, None),  # a new job: no move
    ]  # fmt: skip
    assert count_moves(runs, 5.0, 10.0) == 1
    assert count_moves(runs, 0.0, 5.0) == 0
    before = Phase("start", "start", owners={"j1": "a", "j2": "a", "j3": "c"})
    leave = Phase("a left", "leave", "a", owners={"j1": "b", "j2": "c", "j3": "c"})
    assert required_and_optimum(before, leave) == (2, 2)
    join = Phase("d joined", "join", "d", owners={"j1": "d", "j2": "a", "j3": "c"},
                 weights={"a": 1.0, "c": 1.0, "d": 1.0})  # fmt: skip
    assert required_and_optimum(before, join) == (1, 1)
