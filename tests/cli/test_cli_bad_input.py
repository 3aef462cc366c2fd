"""Every bad input answered clearly (issue 17, point 4): exit 2 with a message naming
the option for usage and configuration errors, through the real ``fdbworkers`` entry
point; ConfigErrors naming the argument from the library; a worker on an unreachable
cluster says so and, if asked, gives up."""

from __future__ import annotations

import json
import math
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.lowlevel
from cli_util import clean_env

import fdbworkers
from fdbworkers import ConfigError, open_worker
from fdbworkers._backends.engine import Engine
from fdbworkers._backends.fdb import check_connection_string
from fdbworkers._core.records import MAX_SPEC_DEPTH, check_spec

SIM = ["--cluster", "sim://127.0.0.1:1"]
WORKER = [*SIM, "worker", "--role", "r", "--demo-handler"]


def bare(*args: str, timeout: float = 60, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fdbworkers", *args],
        env=clean_env(**env),
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def deep(n: int) -> str:
    return "[" * n + "]" * n


CASES: list[tuple[list[str], dict[str, str], str]] = [
    (["--timeout", "nan", "roles"], {}, "'--timeout': 'nan' is not a finite number"),
    (["roles"], {"FDBWORKERS_TIMEOUT": "nan"}, "'nan' is not a finite number"),
    ([*SIM, "members", "r", "--observe", "nan"], {}, "'--observe': 'nan'"),
    ([*WORKER, "--settle", "nan"], {}, "'--settle': 'nan'"),
    ([*WORKER, "--grace", "nan"], {}, "'--grace': 'nan'"),
    ([*WORKER, "--grace", "inf"], {}, "'--grace': 'inf'"),
    ([*WORKER, "--timeout", "-inf"], {}, "'--timeout': '-inf'"),
    ([*WORKER, "--weight", "nan"], {}, "'--weight': 'nan'"),
    ([*SIM, "status", "--wait", "nan"], {}, "'--wait': 'nan'"),
    ([*SIM, "job", "add", "r", "j", "--weight", "inf"], {}, "'--weight': 'inf'"),
    ([*SIM, "job", "add", "r", "j", "--spec", '{"a": NaN}'], {}, "NaN is not JSON"),
    ([*SIM, "job", "add", "r", "j", "--spec", "[Infinity]"], {}, "Infinity is not JSON"),
    ([*SIM, "job", "add", "r", "j", "--spec", deep(60_000)], {}, "limit is 100,000 bytes"),
    ([*SIM, "job", "add", "r", "j", "--spec", deep(20_000)], {}, "nested too deeply"),
    ([*SIM, "job", "add", "r", "j", "--spec", deep(MAX_SPEC_DEPTH + 1)], {}, "nested too"),
    (
        [*SIM, "job", "add", "r", "j", "--spec", json.dumps("x" * 100_001)],
        {},
        "limit is 100,000 bytes",
    ),
    ([*WORKER, "--give-up-after", "nan"], {}, "'--give-up-after': 'nan'"),
]


def test_bad_inputs_exit_2_naming_the_problem() -> None:
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda c: bare(*c[0], **c[1]), CASES))
    for (args, _, message), r in zip(CASES, results, strict=True):
        shown = [a if len(a) < 60 else a[:20] + "..." for a in args]
        assert r.returncode == 2, (shown, r.stderr[-500:])
        assert message in r.stderr, (shown, r.stderr[-500:])
        assert "Traceback" not in r.stderr, (shown, r.stderr[-2000:])


def test_a_spec_just_too_large_for_the_record_names_the_limit(tmp_path: Path) -> None:
    # Under 100,000 bytes of JSON, over 100,000 bytes as a record: the store says so.
    spec = json.dumps({"x": "a" * 99_990})
    r = bare("--cluster", "memory", "job", "add", "r", "j", "--spec", spec)
    assert r.returncode == 2, r.stderr
    assert "the job spec is too large" in r.stderr and "100,000 bytes" in r.stderr


@pytest.mark.parametrize(
    "content", ["garbage here\n", "", "# only a comment\n", "a:b@\n", "x@127.0.0.1:4500\n"]
)
def test_a_garbage_cluster_file_exits_2_with_a_plain_message(tmp_path: Path, content: str) -> None:
    path = tmp_path / "fdb.cluster"
    path.write_text(content)
    r = bare("--cluster-file", str(path), "roles")
    assert r.returncode == 2, r.stderr
    assert "cluster file" in r.stderr and "2104" not in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def test_connection_strings() -> None:
    good = [
        "docker:docker@127.0.0.1:4500",
        "local:3f2a9c@127.0.0.1:4689\n",
        "# a comment\nabc:XYZ123@10.0.0.1:4500,10.0.0.2:4500:tls\n",
        "d:i@fdb.example.com:4500",
        "d:i@[::1]:4500",
    ]
    for text in good:
        assert check_connection_string(text) is None, text
    for text in ["", "junk", "d:i@host", "d:i@h:port", "d@h:1", "d:i@h:1,", "d:i@h:1 x"]:
        assert check_connection_string(text) is not None, text


def test_spec_checks() -> None:
    check_spec({"a": [1, 2.5, "x", b"y", None, True, {"b": -1}]})
    for bad, what in [
        (math.nan, "nan"),
        ({"a": [math.inf]}, "inf"),
        (json.loads(deep(MAX_SPEC_DEPTH + 1)), "nested"),
        ({"a": {1, 2}}, "set"),
    ]:
        with pytest.raises(ConfigError, match=what):
            check_spec(bad)
    check_spec(json.loads(deep(MAX_SPEC_DEPTH)))


async def idle(job: Any) -> None:
    await trio.lowlevel.checkpoint()


async def test_library_calls_answer_bad_arguments_with_config_errors(engine: Engine) -> None:
    db = engine.open_database()
    tr = db.create_transaction()
    bad: list[tuple[Any, str]] = [
        (lambda: open_worker(db, "r", options="x"), "options"),  # type: ignore[arg-type]
        (lambda: open_worker(None, "r"), "db must be a Database"),  # type: ignore[arg-type]
        (lambda: open_worker(db, "r", timeout=True), "timeout"),
        (lambda: open_worker(db, "r", timeout=1e12), "timeout"),
        (lambda: open_worker(db, "r", timeout=math.nan), "timeout"),
        (lambda: open_worker(db, "r", settle=math.nan), "settle"),
        (lambda: open_worker(db, "r", weight=math.nan), "weight"),
        (lambda: open_worker(db, "r", give_up_after=math.nan), "give_up_after"),
    ]
    for make, what in bad:
        with pytest.raises(ConfigError, match=what):
            async with make():
                pass
    calls: list[tuple[Any, str]] = [
        (lambda: fdbworkers.add_job(None, "r", "j"), "db must be a Database"),  # type: ignore[arg-type]
        (lambda: fdbworkers.add_job(db, "r", "j", {"x": math.nan}), "nan"),
        (lambda: fdbworkers.remove_job(None, "r", "j"), "db must be a Database"),  # type: ignore[arg-type]
    ]
    for fn, what in calls:
        with pytest.raises(ConfigError, match=what):
            await fn()
    setters: list[tuple[Any, str]] = [
        (lambda: setattr(db, "default_timeout", "5"), "default_timeout"),
        (lambda: setattr(db, "default_timeout", math.inf), "default_timeout"),
        (lambda: setattr(db, "default_retry_limit", "3"), "default_retry_limit"),
        (lambda: tr.set_retry_limit("3"), "retry limit"),  # type: ignore[arg-type]
        (lambda: tr.set_retry_limit(True), "retry limit"),
        (lambda: tr.set_timeout(True), "timeout"),
        (lambda: tr.set_timeout(1e12), "timeout"),
    ]
    for set_it, what in setters:
        with pytest.raises(ConfigError, match=what):
            set_it()
    db.default_timeout = 5
    assert db.default_timeout == 5.0
    async with open_worker(db, "r", timeout=1) as w:
        runs: list[tuple[dict[str, Any], str]] = [
            ({"grace": math.nan}, "grace"),
            ({"restart_backoff": (1.0, math.inf)}, "restart_backoff"),
            ({"claim_poll": math.nan}, "claim_poll"),
        ]
        for opts, what in runs:
            with pytest.raises(ConfigError, match=what):
                await w.run_jobs(idle, **opts)
    await db.aclose()


async def test_a_worker_on_an_unreachable_cluster_says_so_and_gives_up(engine: Engine) -> None:
    from fdbworkers import ClusterUnreachableError

    db = engine.open_database()
    db.default_timeout = 1
    started = trio.current_time()
    with pytest.raises(BaseExceptionGroup) as info:
        clocks = (trio.current_time, trio.current_time)
        async with open_worker(db, "r", timeout=3, give_up_after=20, settle=0, clocks=clocks) as w:
            await trio.sleep(1)
            db.partitioned = True
            await trio.sleep(3600)
    group = info.value.subgroup(ClusterUnreachableError)
    assert group is not None, info.value
    error: BaseException = group
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    message = str(error)
    assert "has not answered for 2" in message and "giving up after 20 s" in message
    assert "since 20" in message and "Z;" in message  # since when, in UTC
    assert 20 <= trio.current_time() - started < 40
    del w


def test_the_worker_command_gives_up_on_an_unreachable_cluster() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))  # bound, not listening: connections are refused
        port = s.getsockname()[1]
        r = bare(
            "--cluster", f"sim://127.0.0.1:{port}", "worker", "--role", "r", "--demo-handler",
            "--timeout", "3", "--give-up-after", "2", "--log-format", "json",
        )  # fmt: skip
    assert r.returncode == 3, r.stderr
    assert "has not answered for" in r.stderr and "giving up after 2 s" in r.stderr
    lines = [json.loads(x) for x in r.stderr.splitlines() if x.startswith("{")]
    said = [x for x in lines if x["event"] == "cluster_unreachable"]
    assert said and said[0]["since"].endswith("Z"), lines
