"""The ``--exec`` runner: one process per job with the job in its environment, stopped
with SIGTERM then SIGKILL, killed at once when cancelled, restarted with backoff when it
exits. Real processes on the real clock (short: about a second each); then the whole
``fdbworkers worker --exec`` against a dev server."""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import pytest
import trio
from cli_util import Cli, cli_on, started_devserver, wait_for
from hypothesis import given
from hypothesis import strategies as st

from fdbworkers._errors import ConfigError
from fdbworkers.cli._exec import (
    ExecOptions,
    ExecRunner,
    OutputPump,
    job_environment,
    split_command,
)
from fdbworkers.cli._fdlimit import DESCRIPTORS_PER_PROCESS, RESERVED_DESCRIPTORS, raised_limit

PY = sys.executable

#: A job program: records its pid and environment, says whether it got SIGTERM.
PROGRAM = r"""
import json, os, signal, sys, time
out = sys.argv[1]
mode = sys.argv[2] if len(sys.argv) > 2 else "wait"
def record(event):
    with open(out, "a") as f:
        f.write(json.dumps({"event": event, "pid": os.getpid(),
                            "attempt": os.environ.get("FDBWORKERS_ATTEMPT"),
                            "job": os.environ.get("FDBWORKERS_JOB_ID"),
                            "token": os.environ.get("FDBWORKERS_FENCING_TOKEN"),
                            "spec": os.environ.get("FDBWORKERS_JOB_SPEC"),
                            "role": os.environ.get("FDBWORKERS_ROLE"),
                            "worker": os.environ.get("FDBWORKERS_WORKER_ID")}) + "\n")
if mode == "ignore-term":
    signal.signal(signal.SIGTERM, lambda *a: record("term-ignored"))
else:
    signal.signal(signal.SIGTERM, lambda *a: (record("term"), sys.exit(0)))
record("start")
if mode == "exit":
    sys.exit(int(sys.argv[3]))
while True:
    time.sleep(0.05)
"""


@pytest.fixture(scope="module")
def devserver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with started_devserver(tmp_path_factory.mktemp("devserver")) as address:
        yield address


@pytest.fixture
def cli(devserver: str, tmp_path: Path) -> Iterator[Cli]:
    with cli_on(["--cluster", devserver], tmp_path) as c:
        yield c


def events(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def pid_alive(pid: int) -> bool:
    try:
        import os

        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def wait_until(cond: Any, limit: float = 10.0) -> None:
    """Wait for a file written by another process (nothing to wait on but time)."""
    with trio.fail_after(limit):
        while not cond():  # noqa: ASYNC110
            await trio.sleep(0.02)


def runner(tmp_path: Path, *args: str, **kw: Any) -> tuple[ExecRunner, Path]:
    prog = tmp_path / "prog.py"
    prog.write_text(PROGRAM)
    out = tmp_path / "out.jsonl"
    return ExecRunner(ExecOptions((PY, str(prog), str(out), *args), **kw)), out


def env_for(attempt: int) -> dict[str, str]:
    return {"FDBWORKERS_JOB_ID": "j1", "FDBWORKERS_ATTEMPT": str(attempt)}


async def test_stop_sends_sigterm_and_returns_after_the_process_ended(tmp_path: Path) -> None:
    r, out = runner(tmp_path, stop_grace=5.0)
    stopping = anyio.Event()
    async with trio.open_nursery() as n:
        n.start_soon(lambda: r.run_job(env_for, stopping, label="j1"))
        await wait_until(lambda: [e["event"] for e in events(out)] == ["start"])
        pid = events(out)[0]["pid"]
        stopping.set()
    assert [e["event"] for e in events(out)] == ["start", "term"]
    assert not pid_alive(pid)
    st = r.statistics()
    assert (st.started, st.terminated, st.killed, st.running, st.restarts) == (1, 1, 0, 0, 0)


async def test_a_process_ignoring_sigterm_is_killed_after_the_grace(tmp_path: Path) -> None:
    r, out = runner(tmp_path, "ignore-term", stop_grace=0.3)
    stopping = anyio.Event()
    async with trio.open_nursery() as n:
        n.start_soon(lambda: r.run_job(env_for, stopping, label="j1"))
        await wait_until(lambda: len(events(out)) == 1)
        pid = events(out)[0]["pid"]
        stopping.set()
    assert [e["event"] for e in events(out)] == ["start", "term-ignored"]
    assert not pid_alive(pid)
    assert r.statistics().killed == 1


async def test_cancellation_kills_at_once(tmp_path: Path) -> None:
    r, out = runner(tmp_path, "ignore-term", stop_grace=30.0)
    stopping = anyio.Event()
    with trio.CancelScope() as scope:
        async with trio.open_nursery() as n:
            n.start_soon(lambda: r.run_job(env_for, stopping, label="j1"))
            await wait_until(lambda: len(events(out)) == 1)
            pid = events(out)[0]["pid"]
            start = trio.current_time()
            scope.cancel()
    assert trio.current_time() - start < 5  # not the 30 s grace
    assert not pid_alive(pid)
    assert r.statistics().killed == 1


async def test_a_process_that_exits_is_restarted_with_backoff(tmp_path: Path) -> None:
    r, out = runner(tmp_path, "exit", "3", backoff_initial=0.05, backoff_max=0.2)
    stopping = anyio.Event()
    async with trio.open_nursery() as n:
        n.start_soon(lambda: r.run_job(env_for, stopping, label="j1"))
        await wait_until(lambda: len(events(out)) >= 4)
        stopping.set()
    attempts = [e["attempt"] for e in events(out)]
    assert attempts[:4] == ["0", "1", "2", "3"]
    assert r.statistics().restarts >= 3


async def test_on_failure_mode_does_not_restart_a_finished_job(tmp_path: Path) -> None:
    r, out = runner(tmp_path, "exit", "0", restart="on-failure", backoff_initial=0.05)
    stopping = anyio.Event()
    async with trio.open_nursery() as n:
        n.start_soon(lambda: r.run_job(env_for, stopping, label="j1"))
        await wait_until(lambda: r.statistics().exited == 1)
        await trio.sleep(0.3)
        stopping.set()
    assert len(events(out)) == 1 and r.statistics().restarts == 0


async def test_a_missing_program_is_retried_not_fatal(tmp_path: Path) -> None:
    r = ExecRunner(ExecOptions(("/no/such/program",), backoff_initial=0.05, backoff_max=0.1))
    stopping = anyio.Event()
    async with trio.open_nursery() as n:
        n.start_soon(lambda: r.run_job(env_for, stopping, label="j1"))
        await wait_until(lambda: r.statistics().spawn_failures >= 2)
        stopping.set()


def test_job_environment_and_options() -> None:
    from types import SimpleNamespace

    job = SimpleNamespace(
        id="j1", role="r", partition=7, spec={"a": b"\x01", "b": [1, 2]}, weight=2.0,
        token=(5).to_bytes(8, "big") + b"\x00\x01",
    )  # fmt: skip
    env = job_environment(job, worker_id="w", incarnation="inc", attempt=2)  # type: ignore[arg-type]
    assert env["FDBWORKERS_FENCING_TOKEN"] == "00000000000000050001"
    assert env["FDBWORKERS_TOKEN_VERSION"] == "5"
    assert json.loads(env["FDBWORKERS_JOB_SPEC"]) == {"a": {"$bytes": "AQ=="}, "b": [1, 2]}
    assert env["FDBWORKERS_ATTEMPT"] == "2" and env["FDBWORKERS_JOB_PARTITION"] == "7"
    assert split_command("python -c 'print(1)'") == ("python", "-c", "print(1)")
    with pytest.raises(ConfigError):
        split_command("  ")
    with pytest.raises(ConfigError):
        ExecOptions(("x",), restart="sometimes")


def test_worker_exec_runs_each_owned_job_and_stops_them_on_sigterm(
    cli: Cli, tmp_path: Path
) -> None:
    prog = tmp_path / "prog.py"
    prog.write_text(PROGRAM)
    out = tmp_path / "runs.jsonl"
    adds = cli.many(
        *[["job", "add", "ex", f"e{i}", "--spec", json.dumps({"i": i}), "--partitions", "16"]
          for i in range(3)]
    )  # fmt: skip
    assert all(r.returncode == 0 for r in adds), [r.stderr for r in adds]
    w = cli.worker("ex", "x1", "--exec", f"{PY} {prog} {out}", timeout=3.0)
    wait_for(lambda: len(events(out)) >= 3, 30, "three job processes")
    started = events(out)
    assert sorted(e["job"] for e in started) == ["e0", "e1", "e2"]
    assert {e["role"] for e in started} == {"ex"} and {e["worker"] for e in started} == {"x1"}
    assert all(len(e["token"]) == 20 for e in started)
    assert {json.loads(e["spec"])["i"] for e in started} == {0, 1, 2}
    jobs = json.loads(cli("jobs", "ex", "--json").stdout)["jobs"]
    assert {j["id"]: j["token"] for j in jobs} == {e["job"]: e["token"] for e in started}
    # Removing a job stops its process (SIGTERM); SIGTERM to the worker stops the rest.
    assert cli("job", "remove", "ex", "e1").returncode == 0
    wait_for(
        lambda: any(e["event"] == "term" and e["job"] == "e1" for e in events(out)),
        20,
        "e1 to stop",
    )
    w.send_signal(signal.SIGTERM)
    assert w.wait(timeout=20) == 0
    terms = {e["job"] for e in events(out) if e["event"] == "term"}
    assert terms == {"e0", "e1", "e2"}
    assert not any(pid_alive(e["pid"]) for e in started)


#: A job program that writes to stdout and stderr, then waits to be stopped.
CHATTY = r"""
import os, sys, time
job = os.environ["FDBWORKERS_JOB_ID"]
print("hello from", job, flush=True)
print("first half", end="", flush=True)
time.sleep(0.05)
print(" second half", flush=True)
print("oops from", job, file=sys.stderr, flush=True)
while True:
    time.sleep(0.05)
"""


def test_worker_exec_logs_follow_the_options_and_prefix_the_output(
    cli: Cli, tmp_path: Path
) -> None:
    prog = tmp_path / "chatty.py"
    prog.write_text(CHATTY)
    assert cli("job", "add", "chat", "c1", "--partitions", "16").returncode == 0
    # JSON: the exec runner's lines carry the role and the worker; output is prefixed.
    w = cli.worker("chat", "cw1", "--exec", f"{PY} {prog}")
    wait_for(lambda: "oops from c1" in cli.log("cw1.log"), 30, "the job's output")
    wait_for(lambda: "second half" in cli.log("cw1.log"), 10, "the whole line")
    w.send_signal(signal.SIGTERM)
    assert w.wait(timeout=20) == 0
    log = cli.log("cw1.log").splitlines()
    assert "[c1] hello from c1" in log and "[c1] oops from c1" in log, log
    assert "[c1] first half second half" in log, log
    started = [json.loads(x) for x in log if '"job_process_started"' in x]
    assert started and started[0]["role"] == "chat" and started[0]["worker"] == "cw1", log
    assert started[0]["job"] == "c1" and started[0]["timestamp"].endswith("Z"), started
    # console at warning: no info lines of the exec runner, and no JSON.
    w = cli.worker("chat", "cw2", "--exec", f"{PY} {prog}", "--log-format", "console",
                   "--log-level", "warning")  # fmt: skip
    wait_for(lambda: "oops from c1" in cli.log("cw2.log"), 30, "the job's output")
    w.send_signal(signal.SIGTERM)
    assert w.wait(timeout=20) == 0
    text = cli.log("cw2.log")
    assert "job_process_started" not in text and "{" not in text, text


def test_an_exec_program_that_keeps_failing_shows_failing_then_parked(
    cli: Cli, tmp_path: Path
) -> None:
    prog = tmp_path / "prog.py"
    prog.write_text(PROGRAM)
    out = tmp_path / "runs.jsonl"
    assert cli("job", "add", "fail", "f1", "--partitions", "16").returncode == 0
    cli.worker("fail", "fw1", "--exec", f"{PY} {prog} {out} exit 3", "--park-after", "2")

    def job() -> dict[str, Any]:
        r = cli("jobs", "fail", "--json")
        assert r.returncode == 0, r.stderr
        return dict(json.loads(r.stdout)["jobs"][0])

    wait_for(lambda: job()["health"] == "parked", 60, "the job to be parked")
    j = job()
    assert j["state"] == "owned" and j["failures"] == 2 and j["last_error"] == "exit code 3"
    assert len(events(out)) == 2  # parked: not started again
    table = cli("jobs", "fail", "--state", "parked")
    assert "f1" in table.stdout and "parked x2: exit code 3" in table.stdout, table.stdout
    status = cli("status", "fail", "--observe", "1")
    assert status.returncode == 1, status.stdout
    assert "jobs_running" in status.stdout and "f1 (parked on fw1" in status.stdout
    types = [
        e["type"] for e in json.loads(cli("events", "--role", "fail", "--json").stdout)["events"]
    ]
    assert "job_failing" in types and "job_parked" in types


# --- one task copies every process's output ------------------------------------------


class Collector:
    """A text target without a ``buffer``: what was written, as one string."""

    def __init__(self) -> None:
        self.parts: list[str] = []

    def write(self, text: str) -> None:
        self.parts.append(text)

    def flush(self) -> None:
        pass

    @property
    def lines(self) -> list[str]:
        return "".join(self.parts).splitlines()


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def all_tasks() -> int:
    """Tasks alive in this trio run."""
    root = trio.lowlevel.current_root_task()
    assert root is not None
    todo, count = [root], 0
    while todo:
        task = todo.pop()
        count += 1
        todo.extend(t for nursery in task.child_nurseries for t in nursery.child_tasks)
    return count


needs_epoll = pytest.mark.skipif(not OutputPump.available(), reason="no epoll on this platform")


@needs_epoll
async def test_the_output_pump_copies_many_pipes_line_by_line() -> None:
    pump, target = OutputPump(), Collector()
    async with trio.open_nursery() as n:
        await n.start(pump.run)
        pipes = [os.pipe() for _ in range(3)]
        streams = [pump.add(r, target, f"[p{i}] ".encode()) for i, (r, _) in enumerate(pipes)]
        for i, (_, w) in enumerate(pipes):
            os.write(w, f"one {i}\ntwo ".encode())
        await trio.sleep(0.05)
        for i, (_, w) in enumerate(pipes):
            os.write(w, f"halves {i}\nno newline {i}".encode())
            os.close(w)  # the end of the pipe: the unfinished line is written out
        await pump.finish(streams, linger=5)
        assert all(s.closed for s in streams)
        n.cancel_scope.cancel()
    for i in range(3):
        mine = [line for line in target.lines if line.startswith(f"[p{i}] ")]
        assert mine == [f"[p{i}] one {i}", f"[p{i}] two halves {i}", f"[p{i}] no newline {i}"]


@asynccontextmanager
async def one_pumped_pipe(prefix: bytes) -> AsyncIterator[tuple[OutputPump, Collector, Any, int]]:
    """A running pump copying one new pipe: (pump, target, its stream, the write end).
    The pump stops at the end of the block."""
    pump, target = OutputPump(), Collector()
    async with trio.open_nursery() as n:
        await n.start(pump.run)
        r, w = os.pipe()
        yield pump, target, pump.add(r, target, prefix), w
        n.cancel_scope.cancel()


@needs_epoll
async def test_the_pump_closes_a_pipe_still_held_open_after_the_linger() -> None:
    before = open_fds()
    async with one_pumped_pipe(b"[x] ") as (pump, target, stream, w):
        os.write(w, b"done\npartial")
        start = trio.current_time()
        await pump.finish([stream], linger=0.2)  # the writer (an escaped child) holds on
        assert 0.15 < trio.current_time() - start < 5
        assert stream.closed and target.lines == ["[x] done", "[x] partial"]
        os.close(w)
    assert open_fds() == before
    # Cancelled while it lingers: closed at once.
    async with one_pumped_pipe(b"[c] ") as (pump, target, stream, w):
        with trio.move_on_after(0.1):
            await pump.finish([stream], linger=60)
        assert stream.closed
        os.close(w)
    assert open_fds() == before


@needs_epoll
async def test_a_stopped_pump_closes_its_pipes_and_refuses_new_ones() -> None:
    before = open_fds()
    async with one_pumped_pipe(b"[y] ") as (pump, target, stream, w):
        os.write(w, b"cut short")
        await trio.sleep(0.05)
    assert not pump.running and stream.closed
    assert target.lines == ["[y] cut short"]
    r2, w2 = os.pipe()
    late = pump.add(r2, target, b"[z] ")  # the worker is on its way out: closed at once
    assert late.closed
    with pytest.raises(OSError):
        os.fstat(r2)
    os.close(w)
    os.close(w2)
    assert open_fds() == before


#: A job program that writes a line to each stream, then waits to be stopped.
TWO_STREAMS = r"""
import os, signal, sys, time
job = os.environ["FDBWORKERS_JOB_ID"]
signal.signal(signal.SIGTERM, lambda *a: (print("bye from", job, flush=True), sys.exit(0)))
print("out from", job, flush=True)
print("err from", job, file=sys.stderr, flush=True)
while True:
    time.sleep(0.05)
"""


@needs_epoll
async def test_exec_runner_copies_every_process_output_through_one_pump(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    prog = tmp_path / "two.py"
    prog.write_text(TWO_STREAMS)
    out, err = Collector(), Collector()
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setattr(sys, "stderr", err)
    r = ExecRunner(ExecOptions((PY, str(prog)), stop_grace=5.0))
    stopping = anyio.Event()
    before = open_fds()

    def job(j: str) -> Any:
        return lambda: r.run_job(lambda attempt: {"FDBWORKERS_JOB_ID": j}, stopping, label=j)

    async with trio.open_nursery() as n:
        await n.start(r.run_output)
        tasks_before = all_tasks()
        async with trio.open_nursery() as jobs:
            for j in ("a", "b", "c"):
                jobs.start_soon(job(j))
            with trio.fail_after(10):
                while len(err.lines) < 3:  # noqa: ASYNC110
                    await trio.sleep(0.02)
            # Per process: its handler's task and the one that waits for its exit; no
            # task per stream.
            assert all_tasks() == tasks_before + 3 * 2
            stopping.set()
        assert r.statistics().terminated == 3 and r.statistics().running == 0
        assert all_tasks() == tasks_before
        n.cancel_scope.cancel()
    for j in ("a", "b", "c"):
        assert f"[{j}] out from {j}" in out.lines and f"[{j}] bye from {j}" in out.lines
        assert f"[{j}] err from {j}" in err.lines
    assert open_fds() == before


# --- the open-file limit -----------------------------------------------------------------


@given(
    soft=st.one_of(st.none(), st.integers(1, 1 << 20)),
    hard=st.one_of(st.none(), st.integers(1, 1 << 21)),
    processes=st.integers(0, 100_000),
)
def test_the_limit_is_raised_to_what_the_processes_need_within_the_hard_limit(
    soft: int | None, hard: int | None, processes: int
) -> None:
    if soft is not None and hard is not None and soft > hard:
        soft, hard = hard, soft
    got = raised_limit(soft, hard, processes)
    need = RESERVED_DESCRIPTORS + DESCRIPTORS_PER_PROCESS * (processes + 1)
    if soft is None or soft >= need:
        assert got is None  # unlimited or enough: left alone
    elif got is None:
        assert hard is not None and hard <= soft  # at the hard limit: nothing to do
    else:
        assert got > soft  # never lowered
        assert hard is None or got <= hard
        assert got >= need or got == hard
        assert got >= min(2 * soft, hard if hard is not None else 2 * soft)  # few raises


@needs_epoll
@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc/self/fd")
async def test_a_runner_under_a_low_open_file_limit_starts_every_process() -> None:
    # A soft limit that leaves room for a few processes only (each holds up to four
    # descriptors): the runner raises it as its processes need, and none fails to start
    # (with the limit as it was, most of the 40 would fail with EMFILE).
    import resource

    soft0, hard0 = resource.getrlimit(resource.RLIMIT_NOFILE)
    low = len(os.listdir("/proc/self/fd")) + 24  # about 24 free descriptors
    if hard0 != resource.RLIM_INFINITY and hard0 < 4 * low + 1024:
        pytest.skip(f"the hard open-file limit ({hard0}) is too low for this test")
    r = ExecRunner(ExecOptions(("sleep", "3600"), stop_grace=5.0))
    stopping = anyio.Event()
    resource.setrlimit(resource.RLIMIT_NOFILE, (low, hard0))
    try:
        async with trio.open_nursery() as n:
            await n.start(r.run_output)
            async with trio.open_nursery() as jobs:
                for i in range(40):
                    jobs.start_soon(partial(r.run_job, lambda attempt: {}, stopping, label=f"j{i}"))
                with trio.fail_after(20):
                    while r.statistics().started < 40:
                        assert r.statistics().spawn_failures == 0
                        await trio.sleep(0.02)
                raised = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
                stopping.set()
            n.cancel_scope.cancel()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft0, hard0))
    assert r.statistics().spawn_failures == 0 and r.statistics().running == 0
    assert raised >= RESERVED_DESCRIPTORS + DESCRIPTORS_PER_PROCESS * 40
