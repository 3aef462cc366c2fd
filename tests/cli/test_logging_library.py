"""fdbworkers logs like a library (issue 17, point 2): with no logging set up by the
application nothing is printed; with stdlib ``logging`` set up, the application's
handlers, levels and formats apply; an application that configured structlog keeps its
structlog output."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest
from cli_util import clean_env, started_devserver

#: A worker on the dev server that runs one job for a moment, then leaves.
APP = r"""
import sys, trio
{setup}
import fdbworkers

async def main():
    db = fdbworkers.open_database(sys.argv[1])
    db.default_timeout = 5
    await fdbworkers.add_job(db, "logs", "j1", {{"x": 1}}, root="logtest")
    ran = trio.Event()
    async def handler(job):
        ran.set()
        await job.stopping.wait()
    async with fdbworkers.open_worker(db, "logs", root="logtest", timeout=1, settle=0) as w:
        async with trio.open_nursery() as n:
            n.start_soon(w.run_jobs, handler)
            await ran.wait()
            n.cancel_scope.cancel()
    await db.aclose()

trio.run(main)
"""


@pytest.fixture(scope="module")
def devserver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with started_devserver(tmp_path_factory.mktemp("devserver")) as address:
        yield address


def run_app(address: str, setup: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", APP.format(setup=setup), address],
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


def test_with_no_logging_set_up_nothing_is_printed(devserver: str) -> None:
    r = run_app(devserver, "")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "" and r.stderr == ""


def test_stdlib_logging_of_the_application_applies(devserver: str) -> None:
    setup = (
        "import logging\n"
        "logging.basicConfig(level=logging.INFO, stream=sys.stdout,"
        " format='APP %(levelname)s %(name)s %(message)s')\n"
    )
    r = run_app(devserver, setup)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines and all(line.startswith("APP ") for line in lines), r.stdout
    assert any("fdbworkers registered" in line and "role='logs'" in line for line in lines)
    assert any("job_started" in line and "job='j1'" in line for line in lines), r.stdout
    # debug lines (devserver_connected) stay below the application's level
    assert "devserver_connected" not in r.stdout
    r = run_app(devserver, setup.replace("INFO", "DEBUG"))
    assert "fdbworkers.remote devserver_connected" in r.stdout, r.stdout
    # a level set on the package's logger applies too
    r = run_app(devserver, setup + "logging.getLogger('fdbworkers').setLevel(logging.ERROR)\n")
    assert r.returncode == 0 and r.stdout == "", r.stdout


def test_an_application_that_configured_structlog_gets_structlog_output(devserver: str) -> None:
    setup = (
        "import structlog\n"
        "structlog.configure(processors=[structlog.processors.JSONRenderer()],"
        " logger_factory=structlog.PrintLoggerFactory(sys.stderr))\n"
    )
    r = run_app(devserver, setup)
    assert r.returncode == 0, r.stderr
    assert r.stdout == ""
    assert '"event": "registered"' in r.stderr and '"worker":' in r.stderr, r.stderr


def test_the_stdlib_record_carries_the_fields() -> None:
    import logging

    from fdbworkers._log import get_logger

    seen: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record)

    logger = logging.getLogger("fdbworkers.test")
    handler = Keep()
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        log = get_logger("fdbworkers.test").bind(role="r")
        log.debug("hidden")
        log.info("shown", n=3, what="x")
    finally:
        logger.removeHandler(handler)
    assert [r.getMessage() for r in seen] == ["shown role='r' n=3 what='x'"]
    assert seen[0].pathname == __file__  # the record points at the line that logged
    assert seen[0].fdbworkers == {"event": "shown", "role": "r", "n": 3, "what": "x"}  # type: ignore[attr-defined]
