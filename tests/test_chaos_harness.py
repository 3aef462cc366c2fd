"""The chaos soak's harness itself (fdbworkers/cli/_chaos.py), without a cluster: what it
records of a freeze must be what the process went through, or its checks judge runs
by a freeze that did not happen."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from fdbworkers.cli._chaos import Chaos, Proc, _parse, stopped

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="the harness reads process states in /proc"
)


@contextmanager
def harness_with_one_process() -> Iterator[tuple[Chaos, Proc]]:
    """A harness (no cluster: nothing here talks to one) holding one idle child process
    as its worker w0."""
    chaos = Chaos(_parse(["--seed", "1"]), "/nonexistent/fdb.cluster", None)
    popen = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    proc = Proc("w0", 3.0, popen, time.monotonic())
    chaos.procs["w0"] = proc
    try:
        yield chaos, proc
    finally:
        popen.send_signal(signal.SIGCONT)
        popen.kill()
        popen.wait()
        chaos.clean()


def test_a_freeze_that_holds_is_recorded_from_freeze_to_resume() -> None:
    with harness_with_one_process() as (chaos, proc):
        assert chaos.freeze("w0")
        began = proc.frozen_at
        assert began is not None
        chaos._due_timers()  # still stopped: the freeze goes on
        assert proc.frozen_at == began
        chaos.resume("w0")
        ((start, end),) = chaos.frozen[proc.popen.pid]
        assert start == began and end >= start
        assert chaos.counts["freeze_broken"] == 0


def test_a_freeze_undone_by_someone_else_ends_when_the_process_was_last_seen_stopped() -> None:
    """Seed 41 (10 minutes, on a shared machine): two workers ran again 1.5-1.7 s into
    freezes that /proc had confirmed, and were counted frozen for 6 s and 19.7 s; their
    handlers' checks after the "resume" were reported as passing past the lease."""
    with harness_with_one_process() as (chaos, proc):
        assert chaos.freeze("w0")
        chaos._due_timers()
        last_seen = proc.seen_stopped
        os.kill(proc.popen.pid, signal.SIGCONT)  # not the harness
        assert not stopped(proc.popen.pid, limit=0.0)
        chaos._due_timers()
        assert proc.frozen_at is None
        assert chaos.counts["freeze_broken"] == 1
        ((start, end),) = chaos.frozen[proc.popen.pid]
        assert end == last_seen and start <= end
        chaos.resume("w0")  # the timer that would have resumed it: nothing more recorded
        assert len(chaos.frozen[proc.popen.pid]) == 1
