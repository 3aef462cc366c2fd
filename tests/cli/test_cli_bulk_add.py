"""``fdbworkers job add ROLE --from-file FILE`` (issue 18): JSON lines, ``-`` for stdin;
every line is checked before anything is written, bad lines are named by number, and a
failure part-way says how many jobs were written."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_util import Cli, clean_env, cli_on, started_devserver


@pytest.fixture(scope="module")
def devserver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with started_devserver(tmp_path_factory.mktemp("devserver")) as address:
        yield address


@pytest.fixture
def cli(devserver: str, tmp_path: Path) -> Iterator[Cli]:
    with cli_on(["--cluster", devserver], tmp_path) as c:
        yield c


def with_stdin(cli: Cli, text: str, *args: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "fdbworkers", *cli.cluster_args, "--root", cli.root, *args]
    return subprocess.run(argv, env=cli.env, input=text, capture_output=True, text=True, timeout=60)


def listed(cli: Cli, role: str) -> dict[str, dict[str, object]]:
    r = cli("jobs", role, "--json")
    assert r.returncode == 0, r.stderr
    return {j["id"]: j for j in json.loads(r.stdout)["jobs"]}


def test_a_file_of_jobs_is_added_and_adding_it_again_changes_nothing(
    cli: Cli, tmp_path: Path
) -> None:
    lines = [json.dumps({"id": f"job-{i:03d}", "data": {"n": i}}) for i in range(250)]
    lines.insert(7, "")  # blank lines are skipped
    lines.append(json.dumps({"id": "heavy", "spec": [1, 2], "weight": 3}))
    f = tmp_path / "jobs.jsonl"
    f.write_text("\n".join(lines) + "\n")
    r = cli("job", "add", "bulk", "--from-file", str(f), "--partitions", "64")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("added 251 jobs, updated 0, unchanged 0 in role 'bulk'")
    jobs = listed(cli, "bulk")
    assert len(jobs) == 251
    assert jobs["job-042"]["spec"] == {"n": 42} and jobs["heavy"]["weight"] == 3.0
    again = cli("job", "add", "bulk", "--from-file", str(f))
    assert again.returncode == 0 and "added 0 jobs, updated 0, unchanged 251" in again.stdout
    # The same from stdin, with one spec changed.
    lines[2] = json.dumps({"id": "job-002", "data": "changed"})
    r = with_stdin(cli, "\n".join(lines), "job", "add", "bulk", "--from-file", "-")
    assert r.returncode == 0 and "added 0 jobs, updated 1, unchanged 250" in r.stdout, r.stderr
    assert listed(cli, "bulk")["job-002"]["spec"] == "changed"


def test_bad_lines_are_named_and_nothing_is_written(cli: Cli, tmp_path: Path) -> None:
    f = tmp_path / "bad.jsonl"
    f.write_text(
        "\n".join(
            [
                '{"id": "a"}',
                "not json",
                '{"id": ""}',
                '{"id": "a"}',
                '{"id": "z", "data": NaN}',
                '{"idx": 1}',
                "[1]",
                '{"id": "q", "weight": 0}',
                '{"id": "ok-too"}',
            ]
        )
        + "\n"
    )
    r = cli("job", "add", "badrole", "--from-file", str(f))
    assert r.returncode == 2, (r.stdout, r.stderr)
    for n, what in [
        (2, "not valid JSON"),
        (3, "job id must be 1 to 200 characters"),
        (4, "job id 'a' is also on line 1"),
        (5, "NaN is not JSON"),
        (6, "unknown field 'idx'"),
        (7, "expected an object"),
        (8, "job weight must be a positive number"),
    ]:
        assert f"bad.jsonl, line {n}: {what}" in r.stderr, r.stderr
    assert "nothing was added (7 bad line(s))" in r.stderr
    assert cli("jobs", "badrole").returncode == 1  # the role was not even created


def test_job_and_file_are_exclusive_and_one_is_needed(cli: Cli, tmp_path: Path) -> None:
    f = tmp_path / "one.jsonl"
    f.write_text('{"id": "x"}\n')
    both = cli("job", "add", "r", "x", "--from-file", str(f))
    assert both.returncode == 2 and "not both" in both.stderr
    neither = cli("job", "add", "r")
    assert neither.returncode == 2 and "missing JOB (or --from-file FILE)" in neither.stderr
    missing = cli("job", "add", "r", "--from-file", str(tmp_path / "nope.jsonl"))
    assert missing.returncode == 2 and "nope.jsonl" in missing.stderr


def test_an_unreachable_cluster_says_how_much_was_written(tmp_path: Path) -> None:
    f = tmp_path / "jobs.jsonl"
    f.write_text("".join(json.dumps({"id": f"j{i}"}) + "\n" for i in range(10)))
    r = subprocess.run(
        [sys.executable, "-m", "fdbworkers", "--cluster", "sim://127.0.0.1:1", "--timeout", "1",
         "job", "add", "r", "--from-file", str(f)],
        env=clean_env(), capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert r.returncode == 3, (r.stdout, r.stderr)
    assert "0 of 10 jobs were written before the error" in r.stderr, r.stderr
