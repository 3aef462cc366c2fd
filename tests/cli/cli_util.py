"""Helpers of the CLI tests: a dev server and worker processes (real OS processes, as
users run them), and a runner for ``python -m fdbworkers``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

#: Variables that would point a CLI at another cluster or key space.
_SCRUBBED = ("FDBWORKERS_CLUSTER", "FDB_CLUSTER_FILE", "FDBWORKERS_ROOT", "FDBWORKERS_TIMEOUT")


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _SCRUBBED}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def wait_for(predicate: object, limit: float, what: str) -> None:
    """Wait (wall clock: these are real processes) until ``predicate()`` holds."""
    deadline = time.monotonic() + limit
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {limit}s waiting for {what}")
        time.sleep(0.05)


@dataclass
class Cli:
    """Runs ``python -m fdbworkers`` against one cluster and root."""

    cluster_args: list[str]
    root: str
    env: dict[str, str]
    tmp: Path
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def __call__(
        self, *args: str, timeout: float = 60, root: bool = True
    ) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "fdbworkers", *self.cluster_args]
        if root:
            argv += ["--root", self.root]
        return subprocess.run(
            [*argv, *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )

    def many(self, *commands: list[str]) -> list[subprocess.CompletedProcess[str]]:
        """Several independent invocations at once (each is mostly process start-up)."""
        with ThreadPoolExecutor(max_workers=len(commands)) as pool:
            return list(pool.map(lambda args: self(*args), commands))

    def spawn(self, *args: str, log: str) -> subprocess.Popen[bytes]:
        argv = [sys.executable, "-m", "fdbworkers", *self.cluster_args, "--root", self.root, *args]
        out = open(self.tmp / log, "wb")  # noqa: SIM115
        p = subprocess.Popen(
            argv, env=self.env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        out.close()
        self.procs.append(p)
        return p

    def worker(
        self, role: str, wid: str, *extra: str, timeout: float = 3.0
    ) -> subprocess.Popen[bytes]:
        return self.spawn(
            "worker", "--role", role, "--id", wid, "--timeout", str(timeout), "--settle", "0.3",
            "--grace", "1", "--partitions", "64", "--log-format", "json", *extra,
            log=f"{wid}.log",
        )  # fmt: skip

    def log(self, name: str) -> str:
        return (self.tmp / name).read_text(errors="replace")

    def stop_all(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        for p in self.procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


@contextmanager
def started_devserver(folder: Path) -> Iterator[str]:
    """A dev server subprocess; its address."""
    ready = folder / "addr"
    log = open(folder / "devserver.log", "wb")  # noqa: SIM115
    p = subprocess.Popen(
        [sys.executable, "-m", "fdbworkers", "devserver", "--port", "0", "--ready-file", str(ready),
         "--log-level", "warning"],
        env=clean_env(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    log.close()
    try:
        wait_for(lambda: ready.exists() or p.poll() is not None, 20, "the dev server")
        assert p.poll() is None, (folder / "devserver.log").read_text()
        yield ready.read_text().strip()
    finally:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


@contextmanager
def cli_on(cluster_args: list[str], tmp_path: Path) -> Iterator[Cli]:
    """The CLI on a cluster, under a root of its own; worker processes stopped after."""
    c = Cli(cluster_args, f"clitest/{uuid.uuid4().hex[:8]}", clean_env(), tmp_path)
    try:
        yield c
    finally:
        c.stop_all()


@contextmanager
def real_cli_on(tmp_path: Path) -> Iterator[Cli]:
    """The CLI on the real cluster of FDB_CLUSTER_FILE; its root is cleared after."""
    cluster_file = os.environ.get("FDB_CLUSTER_FILE")
    if not cluster_file:  # (tests using it are marked real_fdb: skipped before this)
        pytest.skip("no real FoundationDB cluster: FDB_CLUSTER_FILE is not set")
    with cli_on(["--cluster-file", cluster_file], tmp_path) as c:
        try:
            yield c
        finally:
            c.stop_all()
            clear = (
                "import trio\n"
                "from fdbworkers._backends.fdb import open_fdb\n"
                "from fdbworkers._core.keys import Layout\n"
                f"p = Layout.for_root({c.root!r}).prefix\n"
                "async def main():\n"
                "    db = open_fdb(); db.default_timeout = 10\n"
                "    async def clear(tr):\n"
                "        tr.clear_range(p, p + b'\\xff')\n"
                "    await db.transact(clear); await db.aclose()\n"
                "trio.run(main)\n"
            )
            subprocess.run(
                [sys.executable, "-c", clear], env=os.environ.copy(), timeout=30, check=False
            )
