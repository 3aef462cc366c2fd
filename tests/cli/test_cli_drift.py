"""What a new user trips on (issue 17, point 7), through the real ``fdbworkers`` entry
point: defaults the docs state, help texts, a quiet ``watch`` in a pipe, Ctrl-C ending a
live view without an error, one hint per error, weights as floats, the demo's legend,
and the example replicator leaving on SIGTERM."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
from cli_util import Cli, clean_env, cli_on, started_devserver, wait_for

from fdbworkers._core.assign import DEFAULT_PARTITIONS

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def devserver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with started_devserver(tmp_path_factory.mktemp("devserver")) as address:
        yield address


@pytest.fixture
def cli(devserver: str, tmp_path: Path) -> Iterator[Cli]:
    with cli_on(["--cluster", devserver], tmp_path) as c:
        yield c


def bare(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fdbworkers", *args],
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


def test_the_docs_state_the_default_partitions_the_help_shows() -> None:
    r = bare("worker", "--help")
    assert r.returncode == 0
    assert re.search(rf"--partitions.*default:\s*{DEFAULT_PARTITIONS}", r.stdout, re.S)
    doc = (ROOT / "docs" / "cli.md").read_text()
    row = next(line for line in doc.splitlines() if line.startswith("| `--partitions N`"))
    assert f"| {DEFAULT_PARTITIONS} |" in row, row
    assert "4096" not in doc and "4,096" not in doc


def test_every_visible_option_has_help() -> None:
    from fdbworkers.cli._app import cli as group

    missing = []

    def walk(cmd: click.Command, path: list[str]) -> None:
        for p in cmd.params:
            visible = isinstance(p, click.Option) and not p.hidden and "--help" not in p.opts
            if visible and not getattr(p, "help", None):
                missing.append((" ".join(path), p.opts))
        if isinstance(cmd, click.Group):
            ctx = click.Context(cmd)
            for name in cmd.list_commands(ctx):  # the lazy group imports each command
                sub = cmd.get_command(ctx, name)
                assert sub is not None, name
                walked.append(" ".join([*path, name]))
                walk(sub, [*path, name])

    walked: list[str] = []
    walk(group, [])
    assert missing == []
    assert "worker" in walked and "job add" in walked, walked
    assert "share of the jobs" in bare("worker", "--help").stdout


def test_an_unreachable_dev_server_is_hinted_once() -> None:
    r = bare("--cluster", "sim://127.0.0.1:1", "members", "r")
    assert r.returncode == 3
    assert r.stderr.count("running?") == 1, r.stderr


def test_watch_in_a_pipe_prints_a_frame_only_on_change_and_ctrl_c_is_no_error(
    cli: Cli,
) -> None:
    assert cli("job", "add", "quiet", "j1", "--partitions", "16").returncode == 0
    p = cli.spawn("watch", "quiet", log="watch.log")
    wait_for(lambda: "role quiet" in cli.log("watch.log"), 20, "the first frame")
    # Nothing changes: after several re-reads (one a second), still one frame.
    with pytest.raises(AssertionError, match="timed out"):
        wait_for(lambda: cli.log("watch.log").count("role quiet") > 1, 3.5, "a second frame")
    # A change prints a new frame.
    assert cli("job", "add", "quiet", "j2").returncode == 0
    wait_for(lambda: cli.log("watch.log").count("role quiet") == 2, 20, "a second frame")
    p.send_signal(signal.SIGINT)
    assert p.wait(timeout=20) == 0
    assert "error" not in cli.log("watch.log"), cli.log("watch.log")


def test_weights_are_floats_in_json(cli: Cli) -> None:
    assert cli("job", "add", "wt", "j1", "--weight", "2", "--partitions", "16").returncode == 0
    cli.worker("wt", "w1", "--demo-handler", "--weight", "3")
    wait_for(lambda: "j1" in cli("jobs", "wt", "--owner", "w1").stdout, 30, "the job to run")
    job = json.loads(cli("jobs", "wt", "--json").stdout)["jobs"][0]
    member = json.loads(cli("members", "wt", "--json", "--observe", "0").stdout)["members"][0]
    assert isinstance(job["weight"], float) and job["weight"] == 2.0
    assert isinstance(member["weight"], float) and member["weight"] == 3.0


def test_the_demo_explains_its_progress_line() -> None:
    from fdbworkers.cli._demo import PLAIN_LEGEND

    assert "WORKER:STATE:JOBS" in PLAIN_LEGEND
    doc = (ROOT / "docs" / "demo.md").read_text()
    assert "WORKER:STATE:JOBS" in doc and "members w1:ok:9" in doc


def test_the_example_replicator_leaves_on_sigterm(cli: Cli, devserver: str) -> None:
    out = open(cli.tmp / "replicator.log", "wb")  # noqa: SIM115
    p = subprocess.Popen(
        [sys.executable, "-m", "examples.replicator", "--cluster", devserver, "--root",
         cli.root, "--data-root", "replicator-test", "worker", "--id", "rep1", "--timeout", "3"],
        cwd=ROOT, env=clean_env(), stdout=out, stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
    out.close()
    cli.procs.append(p)
    wait_for(lambda: "joined role" in cli.log("replicator.log"), 30, "the replicator to join")
    assert "rep1" in cli("members", "replicator", "--observe", "0").stdout
    p.send_signal(signal.SIGTERM)
    assert p.wait(timeout=30) == 0, cli.log("replicator.log")
    members = json.loads(cli("members", "replicator", "--json", "--observe", "0").stdout)
    assert members["members"] == [], members
