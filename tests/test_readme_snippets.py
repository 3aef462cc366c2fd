"""The README's worker snippets, run as they stand there (read from README.md here, so
they cannot drift): the trio membership worker, and the job worker in its three styles,
trio, asyncio and threads.

Each snippet ends by running its program for ever (``trio.run(main)``,
``asyncio.run(main())``, a ``time.sleep`` in the threaded program). That last line is
the one thing the test replaces, by a bounded run: the async snippets run on a virtual
clock until they printed what they print first (at most 600 virtual seconds), the
threaded one until its handler committed a checkpoint (real time, bounded). The id file
of the first snippet goes to a temporary folder. On the virtual clock the runner
computes the map of the default 65,536 partitions inline rather than in a thread: an
autojumping clock would run on while the thread works (``assign_in_thread``).
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
import trio
import trio.testing
from aio_util import VirtualClockLoop

README = Path(__file__).resolve().parent.parent / "README.md"

#: Virtual seconds an async snippet may run before its first line is printed.
RUN_FOR = 600.0
#: Wall-clock bound of the threaded snippet.
THREADS_DEADLINE = 60.0


def python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def block_after(text: str, marker: str) -> str:
    """The first python block after ``marker`` in the README."""
    at = text.index(marker)
    return python_blocks(text[at:])[0]


def split_last_line(code: str, expected: str) -> str:
    """The snippet without its last line, which must be ``expected``."""
    lines = code.rstrip().splitlines()
    assert lines[-1] == expected, f"the snippet should end with {expected!r}: {lines[-1]!r}"
    return "\n".join(lines[:-1]) + "\n"


class Printed:
    """A ``print`` for the snippet's namespace: records each line, and wakes waiters."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.changed = threading.Event()

    def __call__(self, *args: Any, **_: Any) -> None:
        self.lines.append(" ".join(str(a) for a in args))
        self.changed.set()

    def has(self, prefix: str) -> bool:
        return any(line.startswith(prefix) for line in self.lines)


def load(code: str, printed: Printed) -> dict[str, Any]:
    namespace: dict[str, Any] = {"__name__": "readme_snippet", "print": printed}
    exec(compile(code, str(README), "exec"), namespace)
    return namespace


async def run_bounded(main: Callable[[], Any], printed: Printed) -> None:
    """Run ``main()`` until it printed a line, then cancel it (its worker leaves)."""
    with anyio.fail_after(RUN_FOR):
        async with anyio.create_task_group() as tg:
            tg.start_soon(main)
            while not printed.lines:  # noqa: ASYNC110 - the snippet's own output
                await anyio.sleep(0.1)
            tg.cancel_scope.cancel()


@pytest.fixture
def inline_assignment(monkeypatch: pytest.MonkeyPatch) -> None:
    import fdbworkers._runner.planner

    monkeypatch.setattr(fdbworkers._runner.planner, "THREADED_ASSIGN_PARTITIONS", 1 << 30)


def test_the_readme_has_the_snippets() -> None:
    text = README.read_text()
    for marker in ("## A worker in ten lines", "**trio**", "**asyncio**", "**threads**"):
        assert marker in text, marker


def test_the_membership_worker_runs(tmp_path: Path, inline_assignment: None) -> None:
    text = README.read_text()
    code = block_after(text, "## A worker in ten lines")
    assert '"/var/lib/myapp/worker-id"' in code
    code = code.replace('"/var/lib/myapp/worker-id"', repr(str(tmp_path / "worker-id")))
    printed = Printed()
    ns = load(split_last_line(code, "trio.run(main)"), printed)
    trio.run(run_bounded, ns["main"], printed, clock=trio.testing.MockClock(autojump_threshold=0))
    worker_id = (tmp_path / "worker-id").read_text().strip()
    # The first settled membership: this worker added, nobody removed.
    assert printed.lines[0] == f"frozenset({{{worker_id!r}}}) frozenset() [{worker_id!r}]"


def test_the_trio_job_worker_runs(inline_assignment: None) -> None:
    code = block_after(README.read_text(), "**trio**")
    printed = Printed()
    ns = load(split_last_line(code, "trio.run(main)"), printed)
    trio.run(run_bounded, ns["main"], printed, clock=trio.testing.MockClock(autojump_threshold=0))
    assert printed.has("running db1-to-db2 {'source': 'db1', 'target': 'db2'} token ")


def test_the_asyncio_job_worker_runs(inline_assignment: None) -> None:
    code = block_after(README.read_text(), "**asyncio**")
    assert "import trio" not in code
    printed = Printed()
    ns = load(split_last_line(code, "asyncio.run(main())"), printed)
    with asyncio.Runner(loop_factory=VirtualClockLoop) as runner:
        runner.run(run_bounded(ns["main"], printed))
    assert printed.has("running db1-to-db2 {'source': 'db1', 'target': 'db2'} token ")


def test_the_threaded_job_worker_runs_and_stops_cleanly() -> None:
    code = block_after(README.read_text(), "**threads**")
    assert "import trio" not in code and "async " not in code
    program = "    time.sleep(60)                         # your program; leaving the block stops the worker cleanly\n"  # noqa: E501
    assert code.count(program) == 1, "the threaded snippet's program line changed"
    code = code.replace(program, "    wait_for_checkpoint(worker)\n")
    printed = Printed()
    seen: list[bytes | None] = []
    left: list[Any] = []

    def wait_for_checkpoint(worker: Any) -> None:
        """The program: wait (bounded) until the handler committed a checkpoint."""
        deadline = time.monotonic() + THREADS_DEADLINE
        while time.monotonic() < deadline:
            value = worker.db.transact(lambda tr: tr.get(b"checkpoint/db1-to-db2"))
            if value is not None:
                seen.append(value)
                left.append(worker)
                return
            printed.changed.wait(0.1)
            printed.changed.clear()
        pytest.fail(f"no checkpoint within {THREADS_DEADLINE} s; printed {printed.lines}")

    namespace: dict[str, Any] = {
        "__name__": "readme_snippet",
        "print": printed,
        "wait_for_checkpoint": wait_for_checkpoint,
    }
    exec(compile(code, str(README), "exec"), namespace)
    assert seen == [b"..."]
    assert printed.has("running db1-to-db2 {'source': 'db1', 'target': 'db2'} token ")
    (worker,) = left
    assert not worker.running  # the block's end stopped it: left, loop thread ended
