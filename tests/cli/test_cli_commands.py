"""The CLI as users run it: ``python -m fdbworkers`` subprocesses against a dev server
subprocess, with worker processes. Exit codes, --json schemas, plain output, every error
path (bad arguments exit 2, an unreachable cluster exits 3 within a few seconds)."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from cli_util import Cli, clean_env, cli_on, real_cli_on, started_devserver, wait_for

SCHEMAS = {
    "roles": "fdbworkers.roles/1",
    "members": "fdbworkers.members/1",
    "jobs": "fdbworkers.jobs/1",
    "job": "fdbworkers.job/1",
    "events": "fdbworkers.events/1",
    "event": "fdbworkers.event/1",
    "status": "fdbworkers.status/1",
    "doctor": "fdbworkers.doctor/1",
}


@pytest.fixture(scope="module")
def devserver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with started_devserver(tmp_path_factory.mktemp("devserver")) as address:
        yield address


@pytest.fixture
def cli(devserver: str, tmp_path: Path) -> Iterator[Cli]:
    with cli_on(["--cluster", devserver], tmp_path) as c:
        yield c


@pytest.fixture
def real_cli(tmp_path: Path) -> Iterator[Cli]:
    with real_cli_on(tmp_path) as c:
        yield c


def bare(*args: str, timeout: float = 30, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fdbworkers", *args],
        env=clean_env(**env),
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def as_json(r: subprocess.CompletedProcess[str], schema: str) -> Any:
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["schema"] == SCHEMAS[schema]
    return doc


# --- no cluster needed -------------------------------------------------------------------


def test_help_version_and_examples() -> None:
    r = bare("--help")
    assert r.returncode == 0
    assert "Examples:" in r.stdout and "Exit codes" in r.stdout
    for command in (
        "members",
        "jobs",
        "events",
        "watch",
        "evict",
        "drain",
        "status",
        "doctor",
        "worker",
        "devserver",
        "demo",
    ):
        assert command in r.stdout
    assert bare("--version").stdout.startswith("fdbworkers")
    w = bare("worker", "--help")
    assert "FDBWORKERS_FENCING_TOKEN" in w.stdout and "--exec" in w.stdout


BAD_ARGUMENTS = [
    (["no-such-command"], "No such command"),
    (["--cluster", "sim://127.0.0.1:1", "members"], "Missing argument 'ROLE'"),
    (
        ["--cluster", "sim://127.0.0.1:1", "job", "add", "r", "j", "--spec", "{bad"],
        "not valid JSON",
    ),
    (["--timeout", "-1", "roles"], "--timeout"),
    (["--cluster", "bogus://x", "roles"], "unknown cluster address scheme"),
    (["--cluster", "sim://h:1", "--cluster-file", "/etc/hostname", "roles"], "not both"),
    (["roles"], "no cluster given"),
    (["--cluster-file", "/no/such/file", "roles"], "does not exist"),
    (["--cluster", "sim://127.0.0.1:1", "worker", "--role", "r"], "exactly one of --exec"),
    (
        [
            "--cluster",
            "sim://127.0.0.1:1",
            "worker",
            "--role",
            "r",
            "--exec",
            "x",
            "--demo-handler",
        ],
        "exactly one",
    ),
    (
        ["--cluster", "sim://127.0.0.1:1", "worker", "--role", "r", "--exec", "'unbalanced"],
        "cannot split",
    ),
    (["--cluster", "sim://127.0.0.1:1", "members", "bad\nrole"], "printable"),
    (["--cluster", "sim://127.0.0.1:1", "--root", "/", "roles"], "empty"),
    (["--cluster", "sim://127.0.0.1:1", "jobs", "r", "--state", "weird"], "Invalid value"),
    (["--cluster", "sim://127.0.0.1:1", "evict", "r"], "Missing argument 'WORKER'"),
    (["--cluster", "sim://127.0.0.1:1", "events", "--limit", "0"], "--limit"),
]


def run_main(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """``fdbworkers ARGV`` in this process (argument errors never reach a cluster)."""
    import structlog

    from fdbworkers.cli import main

    try:
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
    finally:
        structlog.reset_defaults()  # the CLI configures logging for its process
    out = capsys.readouterr()
    return int(exit_info.value.code or 0), out.out, out.err


@pytest.mark.parametrize(("args", "message"), BAD_ARGUMENTS)
def test_bad_arguments_exit_2_with_a_useful_message(
    args: list[str],
    message: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("FDBWORKERS_CLUSTER", "FDB_CLUSTER_FILE", "FDBWORKERS_ROOT", "FDBWORKERS_TIMEOUT"):
        monkeypatch.delenv(name, raising=False)
    code, out, err = run_main(args, capsys)
    assert code == 2, (out, err)
    assert message in err, err


def test_bad_arguments_exit_2_from_the_console_script_too() -> None:
    cases = [BAD_ARGUMENTS[2], BAD_ARGUMENTS[6], BAD_ARGUMENTS[8]]
    with ThreadPoolExecutor(max_workers=len(cases)) as pool:
        results = list(pool.map(lambda case: bare(*case[0]), cases))
    for (args, message), r in zip(cases, results, strict=True):
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        assert message in r.stderr and "Usage:" in r.stderr, (args, r.stderr)


def test_a_refused_connection_exits_3_at_once() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: connections are refused
        start = time.monotonic()
        r = bare("--cluster", f"sim://127.0.0.1:{port}", "members", "r")
    assert r.returncode == 3, r.stderr
    assert "cannot connect" in r.stderr or "did not answer" in r.stderr
    assert time.monotonic() - start < 10


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A TCP server that accepts connections and never answers."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        srv.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
                held.append(conn)
            except OSError:
                continue

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    try:
        yield srv.getsockname()[1]
    finally:
        stop.set()
        t.join()
        for c in held:
            c.close()
        srv.close()


def test_a_silent_cluster_fails_within_a_few_seconds(silent_server: int) -> None:
    commands = [
        ["members", "r"],
        ["status"],
        ["events", "--follow"],
        ["watch", "r"],
        ["job", "add", "r", "j"],
    ]
    address = f"sim://127.0.0.1:{silent_server}"

    def one(command: list[str]) -> tuple[subprocess.CompletedProcess[str], float]:
        start = time.monotonic()
        r = bare("--cluster", address, "--timeout", "1", *command, timeout=30)
        return r, time.monotonic() - start

    with ThreadPoolExecutor(max_workers=len(commands)) as pool:
        results = list(pool.map(one, commands))
    for command, (r, took) in zip(commands, results, strict=True):
        assert r.returncode == 3, (command, r.stdout, r.stderr)
        assert "did not answer within 1s" in r.stderr or "cannot connect" in r.stderr, r.stderr
        assert took < 8, (command, took)


# --- against a dev server ----------------------------------------------------------------


def test_jobs_lifecycle_and_errors(cli: Cli) -> None:
    assert (
        cli(
            "job", "add", "jr", "a", "--spec", '{"src": "db1", "n": [1, 2]}', "--partitions", "64"
        ).returncode
        == 0
    )
    r = cli("job", "add", "jr", "a", "--spec", '{"src": "db1", "n": [1, 2]}')
    assert r.returncode == 0 and "unchanged" in r.stdout
    assert "updated" in cli("job", "add", "jr", "a", "--weight", "2").stdout
    shown = as_json(cli("job", "show", "jr", "a", "--json"), "job")
    assert shown["role"] == "jr"
    job = shown["job"]
    assert job["id"] == "a" and job["weight"] == 2.0 and job["state"] == "unclaimed"
    assert job["owner"] is None and job["token"] is None and job["assigned_to"] is None
    assert 0 <= job["partition"] < 64
    plain = cli("job", "show", "jr", "a")
    assert "state" in plain.stdout and "unclaimed" in plain.stdout
    listed = as_json(cli("jobs", "jr", "--json"), "jobs")
    assert [j["id"] for j in listed["jobs"]] == ["a"]
    table = cli("jobs", "jr")
    assert table.stdout.splitlines()[0].split()[:3] == ["JOB", "STATE", "OWNER"]
    roles = as_json(cli("roles", "--json"), "roles")
    assert roles["roles"] == [
        {
            "role": "jr",
            "partitions": 64,
            "created_at": roles["roles"][0]["created_at"],
            "members": 0,
            "jobs": 1,
        }
    ]
    # A role with jobs and nobody to run them is unhealthy.
    st = cli("status", "jr", "--json")
    assert st.returncode == 1
    doc = json.loads(st.stdout)
    assert doc["schema"] == SCHEMAS["status"] and doc["healthy"] is False
    assert {c["name"]: c["ok"] for c in doc["roles"][0]["checks"]}[
        "jobs_owned_by_live_workers"
    ] is False
    assert cli("job", "remove", "jr", "a").returncode == 0
    missing = cli("job", "remove", "jr", "a")
    assert missing.returncode == 1 and "no job 'a'" in missing.stderr
    assert cli("job", "remove", "jr", "a", "--missing-ok").returncode == 0
    assert cli("job", "show", "jr", "a").returncode == 1
    gone = cli("members", "nosuchrole")
    assert gone.returncode == 1 and "no role 'nosuchrole'" in gone.stderr and "jr" in gone.stderr


def test_workers_members_status_watch_drain_and_events(cli: Cli) -> None:
    adds = cli.many(
        *[["job", "add", "demo", f"job-{i}", "--spec", json.dumps({"n": i}), "--partitions", "64"]
          for i in range(6)]
    )  # fmt: skip
    assert all(r.returncode == 0 for r in adds), [r.stderr for r in adds]
    w1 = cli.worker("demo", "w1", "--demo-handler")
    w2 = cli.worker("demo", "w2", "--demo-handler")
    follow = subprocess.Popen(
        [sys.executable, "-m", "fdbworkers", *cli.cluster_args, "--root", cli.root,
         "events", "--follow", "--json", "--role", "demo"],
        env=cli.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
    cli.procs.append(follow)  # type: ignore[arg-type]
    try:

        def member_ids() -> set[str]:
            r = cli("members", "demo", "--json", "--observe", "0")
            return (
                {m["id"] for m in json.loads(r.stdout)["members"]} if r.returncode == 0 else set()
            )

        wait_for(lambda: member_ids() == {"w1", "w2"}, 30, "both workers to register")
        r = cli("status", "demo", "--wait", "30")
        assert r.returncode == 0, r.stdout + r.stderr + cli.log("w1.log")[-3000:]
        assert "healthy" in r.stdout

        rm, rj, rmine, rtable, once, rdoctor, refused = cli.many(
            ["members", "demo", "--json"],
            ["jobs", "demo", "--json"],
            ["jobs", "demo", "--owner", "w1", "--json"],
            ["members", "demo"],
            ["watch", "demo", "--once"],
            ["doctor", "--json"],
            ["evict", "demo", "w1", "--yes"],
        )
        members = as_json(rm, "members")
        assert members["role"] == "demo" and len(members["epoch"]) == 20
        by_id = {m["id"]: m for m in members["members"]}
        assert set(by_id) == {"w1", "w2"}
        for m in by_id.values():
            assert m["state"] == "ok" and m["silent_for_exact"] is True
            assert 0 <= m["silent_for"] < 3.0
            assert m["timeout"] == 3.0 and m["pid"] > 0 and m["incarnation"]
            assert isinstance(m["last_heartbeat_wall_time"], float)
        assert sum(m["jobs"] for m in by_id.values()) == 6
        assert sum(m["assigned_jobs"] for m in by_id.values()) == 6

        jobs = as_json(rj, "jobs")["jobs"]
        assert len(jobs) == 6 and all(
            j["state"] == "owned" and j["owner"] == j["assigned_to"] for j in jobs
        )
        assert all(len(j["token"]) == 20 for j in jobs)
        mine = as_json(rmine, "jobs")["jobs"]
        assert {j["id"] for j in mine} == {j["id"] for j in jobs if j["owner"] == "w1"}

        table = rtable.stdout.splitlines()
        assert table[0].split()[:3] == ["WORKER", "STATE", "SILENT"]
        assert len(table) == 3

        assert once.returncode == 0, once.stderr
        assert "member w1 state=ok" in once.stdout and "member w2 state=ok" in once.stdout
        assert "jobs 6 (6 owned)" in once.stdout

        doctor = as_json(rdoctor, "doctor")
        assert doctor["ok"] is True
        assert [c["name"] for c in doctor["checks"]] == [
            "cluster_reachable", "backend", "layout_version", "roles_readable", "commit",
            "watch", "watch_capacity",
        ]  # fmt: skip

        # A live worker is not evicted; without --yes and without a terminal, nothing is asked.
        assert refused.returncode == 1 and "heartbeating" in refused.stderr

        drained = cli("drain", "demo", "w2", "--wait", "20")
        assert drained.returncode == 0, drained.stderr
        assert "w2 has left" in drained.stdout
        assert w2.wait(timeout=15) == 0
        r = cli("status", "demo", "--wait", "20", "--json")
        assert r.returncode == 0, r.stdout
        assert json.loads(r.stdout)["roles"][0]["members"] == 1
        assert cli("drain", "demo", "w2").returncode == 1

        revents, rlast2, rplain = cli.many(
            ["events", "--role", "demo", "--json"], ["events", "--json", "-n", "2"], ["events"]
        )
        events = as_json(revents, "events")["events"]
        kinds = [(e["type"], e["data"].get("worker")) for e in events]
        assert (
            ("joined", "w1") in kinds
            and ("drain_requested", "w2") in kinds
            and ("drained", "w2") in kinds
        )
        assert all(len(e["stamp"]) == 20 and isinstance(e["version"], int) for e in events)
        assert events == sorted(events, key=lambda e: e["stamp"])
        assert len(as_json(rlast2, "events")["events"]) == 2
        assert "drained" in rplain.stdout

        # events --follow saw them as they were committed.
        follow.send_signal(signal.SIGINT)
        out, _ = follow.communicate(timeout=10)
        followed = [json.loads(line) for line in out.splitlines()]
        assert all(e["schema"] == SCHEMAS["event"] for e in followed)
        assert ("drained", "w2") in [(e["type"], e["data"].get("worker")) for e in followed]
    finally:
        w1.send_signal(signal.SIGTERM)
        assert w1.wait(timeout=15) == 0
    assert "left" in [e["type"] for e in as_json(cli("events", "--json"), "events")["events"]]
    assert as_json(cli("members", "demo", "--json"), "members")["members"] == []


def test_a_crashed_single_worker_is_evicted_by_the_operator(cli: Cli) -> None:
    solo = cli.worker("solo", "lonely", "--demo-handler", timeout=2.0)
    wait_for(lambda: "worker_running" in cli.log("lonely.log"), 20, "the worker to start")
    assert cli("status", "solo", "--wait", "20").returncode == 0
    solo.send_signal(signal.SIGKILL)
    solo.wait()
    # Nobody is left to evict it: the operator does, after watching it stay silent.
    r = cli("evict", "solo", "lonely", "--yes")
    assert r.returncode == 0, r.stderr
    assert "watching the heartbeat" in r.stderr and "evicted lonely" in r.stdout
    assert as_json(cli("members", "solo", "--json"), "members")["members"] == []
    ev = [e for e in as_json(cli("events", "--json"), "events")["events"] if e["type"] == "evicted"]
    assert ev and ev[-1]["data"]["by"].startswith("cli:") and ev[-1]["data"]["silent_for"] >= 1.0
    assert cli("evict", "solo", "lonely", "--yes").returncode == 1


def test_force_evicting_a_live_worker_makes_it_rejoin(cli: Cli) -> None:
    cli.worker("forced", "f1", "--demo-handler")

    def incarnations() -> list[str]:
        r = cli("members", "forced", "--json")
        return (
            [m["incarnation"] for m in json.loads(r.stdout)["members"]] if r.returncode == 0 else []
        )

    wait_for(lambda: len(incarnations()) == 1, 20, "the worker to register")
    before = incarnations()[0]
    r = cli("evict", "forced", "f1", "--yes", "--force")
    assert r.returncode == 0, r.stderr
    wait_for(lambda: incarnations() not in ([], [before]), 20, "the worker to rejoin")


@pytest.mark.real_fdb
def test_cli_read_commands_on_the_real_cluster(real_cli: Cli) -> None:
    adds = real_cli.many(*[["job", "add", "rr", f"j{i}", "--partitions", "64"] for i in range(4)])
    assert all(r.returncode == 0 for r in adds), [r.stderr for r in adds]
    real_cli.worker("rr", "r1", "--demo-handler")
    real_cli.worker("rr", "r2", "--demo-handler")
    r = real_cli("status", "rr", "--wait", "30")
    assert r.returncode == 0, r.stdout + r.stderr
    members = as_json(real_cli("members", "rr", "--json"), "members")["members"]
    assert {m["id"] for m in members} == {"r1", "r2"} and all(m["state"] == "ok" for m in members)
    jobs = as_json(real_cli("jobs", "rr", "--json"), "jobs")["jobs"]
    assert len(jobs) == 4 and all(j["state"] == "owned" for j in jobs)
    assert as_json(real_cli("doctor", "--json"), "doctor")["ok"] is True
    assert "joined" in real_cli("events").stdout
