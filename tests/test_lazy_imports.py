"""A library user who never touches the CLI, and a worker that runs jobs, load neither
numpy nor rich nor click nor structlog (issue 18, goal 5: memory): numpy comes only with
a map the standard library does not compute (weights that differ, or more than 60
members: module fdbworkers._core.direct), rich with the first table printed to a
terminal, click and structlog with the CLI. Each check runs in a fresh interpreter."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

HEAVY = ("numpy", "rich", "click", "structlog")


def _loaded_after(code: str) -> list[str]:
    """The HEAVY modules loaded once ``code`` ran in a fresh interpreter."""
    probe = textwrap.dedent(code) + textwrap.dedent(
        f"""
        import json, sys
        print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stderr
    loaded: list[str] = json.loads(proc.stdout.strip().splitlines()[-1])
    return loaded


def test_importing_fdbworkers_loads_none_of_them() -> None:
    assert _loaded_after("import fdbworkers") == []


def test_a_worker_on_the_engine_loads_none_of_them() -> None:
    code = """
        import trio, trio.testing
        import fdbworkers

        async def main():
            db = fdbworkers.open_database("memory")
            await fdbworkers.add_job(db, "lazy", "job-1", {"n": 1})
            async with fdbworkers.open_worker(db, "lazy", timeout=1, settle=0) as w:
                await trio.sleep(5)  # registered, heartbeating, membership read
                assert w.id in w.membership.members
            await fdbworkers.remove_job(db, "lazy", "job-1")
            await db.aclose()

        trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    """
    assert _loaded_after(code) == []


def test_an_asyncio_worker_imports_no_trio_either() -> None:
    # The library's hot paths use the running loop's own primitives (fdbworkers/_loop.py)
    # and look trio up only once trio runs: an asyncio program does not load it.
    code = """
        import asyncio, sys
        import fdbworkers

        async def main():
            db = fdbworkers.open_database("memory")
            await fdbworkers.add_job(db, "lazy", "job-1", {"n": 1})
            async with fdbworkers.open_worker(db, "lazy", timeout=1, settle=0) as w:
                for _ in range(400):  # real time: at most 20 s
                    if w.membership is not None and w.id in w.membership.members:
                        break
                    await asyncio.sleep(0.05)
                assert w.id in w.membership.members
            await db.aclose()

        asyncio.run(main())
        assert "trio" not in sys.modules, "trio was imported"
    """
    assert _loaded_after(code) == []


def test_workers_that_run_jobs_and_write_plans_load_none_of_them() -> None:
    # Three workers of one weight: each computes the plan's map, one writes the plan,
    # all run jobs, one leaves and the plan is written again.
    code = """
        import trio, trio.testing
        import fdbworkers

        live = {}

        async def handler(job):
            live[job.id] = live.get(job.id, 0) + 1
            try:
                await job.stopping.wait()
            finally:
                live[job.id] -= 1

        async def main():
            db = fdbworkers.open_database("memory")
            await fdbworkers.add_jobs(db, "lazy", {f"job-{i}": None for i in range(300)})
            async with trio.open_nursery() as n:
                scopes = []
                for k in range(3):
                    async def one(k=k, task_status=trio.TASK_STATUS_IGNORED):
                        with trio.CancelScope() as scope:
                            task_status.started(scope)
                            async with fdbworkers.open_worker(
                                db, "lazy", timeout=1, settle=0.5, worker_id=f"w{k}"
                            ) as w:
                                await w.run_jobs(handler)
                    scopes.append(await n.start(one))
                await trio.sleep(20)
                assert sorted(set(live.values())) == [1] and len(live) == 300, live
                scopes[0].cancel()
                await trio.sleep(20)
                assert sorted(set(live.values())) == [1] and len(live) == 300, live
                n.cancel_scope.cancel()
            await db.aclose()

        trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    """
    assert _loaded_after(code) == []


def test_numpy_comes_only_with_a_map_the_standard_library_does_not_compute() -> None:
    code = """
        import sys
        from fdbworkers._core.assign import assign, job_partition
        assert job_partition("job-1", 1024) == job_partition("job-1", 1024)
        a = assign({"a": 1.0, "b": 1.0}, 1024, balance=None)
        one = assign({"a": 2.0}, 1024)
        assert "numpy" not in sys.modules
        assert len(a.partitions_of("a")) + len(a.partitions_of("b")) == 1024
        assert len(one.partitions_of("a")) == 1024
        w = assign({"a": 1.0, "b": 2.0}, 1024)  # weights that differ: numpy
        assert "numpy" in sys.modules
        assert len(w.partitions_of("a")) + len(w.partitions_of("b")) == 1024
        sys.modules.pop("numpy")  # only the answer below matters
    """
    assert _loaded_after(code) == []


def test_the_cli_logs_without_rich_and_still_prints_rich_tables() -> None:
    code = """
        import sys
        from fdbworkers.cli._common import configure_logging
        configure_logging("info", "json")
        assert "structlog" in sys.modules and "rich" not in sys.modules
        from rich.console import Console  # a table on a terminal still gets rich
        for name in ("structlog", "click"):
            sys.modules.pop(name)
        sys.modules.pop("rich")
    """
    assert _loaded_after(code) == []


def test_the_cli_imports_a_commands_module_when_the_command_runs() -> None:
    # Every command is in LAZY_COMMANDS under the module that defines it, and a worker
    # command's process does not import the read, write, health and insight commands.
    code = """
        import importlib, sys
        from fdbworkers.cli._app import LAZY_COMMANDS, cli
        assert not any(f"fdbworkers.cli.{m}" in sys.modules for m in set(LAZY_COMMANDS.values()))
        import click
        ctx = click.Context(cli)
        assert cli.get_command(ctx, "worker").name == "worker"
        for m in ("_read", "_health", "_write", "_insight"):
            assert f"fdbworkers.cli.{m}" not in sys.modules, m
        assert cli.get_command(ctx, "no-such-command") is None
        defined = {}
        for m in set(LAZY_COMMANDS.values()):
            for c in importlib.import_module(f"fdbworkers.cli.{m}").COMMANDS:
                defined[c.name] = m
        assert defined == LAZY_COMMANDS
        assert cli.list_commands(ctx) == sorted(defined)
        for name in ("click", "structlog"):
            sys.modules.pop(name, None)
    """
    assert _loaded_after(code) == []
