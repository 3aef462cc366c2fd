"""The generic ``--exec`` job handler: programs in any language as job runners.

``fdbworkers worker --role R --exec CMD`` runs CMD once per job this worker owns, with
the job in its environment:

==============================  ===============================================
``FDBWORKERS_JOB_ID``           the job id
``FDBWORKERS_JOB_SPEC``         the spec as JSON (bytes as ``{"$bytes": base64}``)
``FDBWORKERS_FENCING_TOKEN``    the claim's versionstamp, 20 hex digits; increases
                                with every new owner of the job
``FDBWORKERS_TOKEN_VERSION``    its commit version (an integer, same order)
``FDBWORKERS_ROLE``             the role
``FDBWORKERS_WORKER_ID``        this worker's id (``FDBWORKERS_INCARNATION`` too)
``FDBWORKERS_JOB_PARTITION``    the job's partition; ``FDBWORKERS_JOB_WEIGHT``
``FDBWORKERS_ATTEMPT``          0 for the first run, then 1, 2... after restarts
==============================  ===============================================

Each run is a new process group (its own session), so the whole tree is signalled. Its
stdout and stderr are copied to the worker's, each line prefixed with ``[JOB-ID] ``: in
the CLI worker by one task for all processes (:class:`OutputPump`, one epoll set of
their pipes), else by a task per stream.
When the job must stop (ownership moved, the job was removed, the worker leaves or fences
itself) the group gets SIGTERM, then SIGKILL after ``stop_grace`` seconds; if the job
runner's own grace runs out first (a fenced worker has only part of its fence margin)
the group is killed at once. The handler returns only after the process is gone, so the
claim is released (and a new owner starts) only after the old process ended.

A process that exits with a code other than 0 (or cannot start) counts as a failed run
of the job (``Job.report_failure``): the job shows as ``failing`` in ``jobs`` and
``status``, and the runner's ``park_after`` parks it (the process is not started again).
A process that exits by itself is started again after a backoff (doubling from
``backoff_initial`` to ``backoff_max``, with jitter; reset after a run of at least
``healthy_after`` seconds); with ``restart="on-failure"`` an exit code 0 means the job
is done and it is not restarted (the job stays owned until it moves).
"""

from __future__ import annotations

import errno
import json
import os
import random
import select
import shlex
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any, Final

import trio

from .._errors import ConfigError
from .._log import get_logger
from .._loop import Event
from .._runner.job import Job
from ._fdlimit import OpenFileLimit, hint

RESTART_MODES: Final = ("always", "on-failure")
#: Processes started at once (each start is a ``Popen`` in a worker thread). More
#: threads start them no sooner (the GIL: 200 processes in 0.14-0.20 s with 40 threads,
#: 0.15-0.17 s with 4), and each thread's malloc arena stays in the worker's memory
#: (0.7 MB of RSS in a worker with 200 processes; docs/benchmarks.md).
SPAWNS_AT_ONCE: Final = 4


def _jsonable(value: Any) -> Any:
    import base64

    if isinstance(value, bytes):
        return {"$bytes": base64.b64encode(value).decode("ascii")}
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def split_command(command: str | Sequence[str]) -> tuple[str, ...]:
    """CMD as an argv: a string is split like a POSIX shell would (no shell runs)."""
    if isinstance(command, str):
        try:
            argv = shlex.split(command)
        except ValueError as e:
            raise ConfigError(f"cannot split the command {command!r}: {e}") from e
    else:
        argv = list(command)
    if not argv or not argv[0]:
        raise ConfigError("the command to run is empty")
    return tuple(argv)


@dataclass(frozen=True)
class ExecOptions:
    argv: tuple[str, ...]
    stop_grace: float = 10.0
    restart: str = "always"
    backoff_initial: float = 1.0
    backoff_max: float = 30.0
    healthy_after: float = 30.0
    env: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.argv:
            raise ConfigError("the command to run is empty")
        if self.stop_grace < 0:
            raise ConfigError("stop grace must be >= 0 seconds")
        if self.restart not in RESTART_MODES:
            raise ConfigError(f"restart must be one of {', '.join(RESTART_MODES)}")
        if not 0 < self.backoff_initial <= self.backoff_max:
            raise ConfigError("backoff must be 0 < initial <= maximum")


@dataclass(frozen=True)
class ExecStatistics:
    running: int
    started: int
    exited: int
    terminated: int
    killed: int
    restarts: int
    spawn_failures: int


def job_environment(
    job: Job, *, worker_id: str, incarnation: str, attempt: int = 0
) -> dict[str, str]:
    """The ``FDBWORKERS_*`` variables of one run of ``job``."""
    return {
        "FDBWORKERS_JOB_ID": job.id,
        "FDBWORKERS_JOB_SPEC": json.dumps(_jsonable(job.spec), separators=(",", ":")),
        "FDBWORKERS_FENCING_TOKEN": job.token.hex(),
        "FDBWORKERS_TOKEN_VERSION": str(int.from_bytes(job.token[:8], "big")),
        "FDBWORKERS_ROLE": job.role,
        "FDBWORKERS_WORKER_ID": worker_id,
        "FDBWORKERS_INCARNATION": incarnation,
        "FDBWORKERS_JOB_PARTITION": str(job.partition),
        "FDBWORKERS_JOB_WEIGHT": f"{job.weight:g}",
        "FDBWORKERS_ATTEMPT": str(attempt),
    }


def describe_exit(code: int | None, command: str) -> str:
    """A process's end as a job's last error: ``exit code 3``, ``killed by SIGKILL``,
    or ``could not start CMD`` (code None)."""
    if code is None:
        return f"could not start {command}"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def _signal_group(pid: int, sig: int) -> bool:
    """Signal the process group led by ``pid``; False if it is gone."""
    try:
        os.killpg(pid, sig)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return False


#: How long a process's output is still copied once it is gone (a child that escaped
#: its group may hold the pipes open).
OUTPUT_LINGER: Final = 1.0

#: A line longer than this is written out in pieces, each with the prefix.
MAX_LINE: Final = 64 * 1024


def prefix_lines(prefix: bytes, pending: bytes, data: bytes) -> tuple[bytes, bytes]:
    """(complete prefixed lines to write, the unfinished rest) after ``data`` arrived
    (pure). At end of stream pass ``data=b"\n"`` if ``pending`` is not empty."""
    buf = pending + data
    out = []
    while True:
        nl = buf.find(b"\n")
        if nl < 0:
            if len(buf) < MAX_LINE:
                break
            nl = MAX_LINE - 1
        out.append(prefix + buf[: nl + 1] + (b"" if buf[nl : nl + 1] == b"\n" else b"\n"))
        buf = buf[nl + 1 :]
    return b"".join(out), buf


def last_line(prefix: bytes, pending: bytes) -> bytes:
    """The unfinished line left at the end of a stream, prefixed and ended (pure)."""
    return prefix_lines(prefix, pending, b"\n")[0]


def write_out(target: Any, chunk: bytes) -> None:
    """Write ``chunk`` to ``target`` (a text file, through its ``buffer`` when it has
    one); a closed or failing target loses the chunk, never the worker."""
    if not chunk:
        return
    out = getattr(target, "buffer", None)
    with suppress(OSError, ValueError):
        if out is not None:
            target.flush()
            out.write(chunk)
            out.flush()
        else:
            target.write(chunk.decode(errors="replace"))
            target.flush()


async def copy_lines(stream: Any, target: Any, prefix: bytes) -> None:
    """Copy ``stream`` (a trio receive stream) line by line to ``target`` (a text file
    with a ``buffer``), each line prefixed."""
    pending = b""
    try:
        while True:
            data = await stream.receive_some(65536)
            if not data:
                break
            lines, pending = prefix_lines(prefix, pending, data)
            write_out(target, lines)
    finally:
        if pending:
            write_out(target, last_line(prefix, pending))
        await trio.aclose_forcefully(stream)


class _PumpedStream:
    """One pipe the pump copies: its read end, where its lines go, and what is left
    of an unfinished line."""

    __slots__ = ("closed", "done", "fd", "pending", "prefix", "target")

    def __init__(self, fd: int, target: Any, prefix: bytes) -> None:
        self.fd = fd
        self.target = target
        self.prefix = prefix
        self.pending = b""
        self.closed = False
        #: Set once closed; made only when somebody waits for the end.
        self.done: trio.Event | None = None


class OutputPump:
    """Copies the stdout and stderr of every supervised process to the worker's, each
    line prefixed, with **one task** (:meth:`run`) and one epoll set of the pipes'
    read ends: a worker supervises hundreds of processes, and a task and a trio stream
    per pipe cost about 9 KB of memory per process (a CLI worker with 200 processes:
    64.4 MB with them, 62.8 MB with the pump; docs/benchmarks.md).

    The pipes are level-triggered; each pass reads at most 64 KB from each readable
    pipe, so one chatty process cannot starve the others. The end of a pipe (all its
    writers gone) flushes its unfinished line and closes it. Linux only (epoll);
    :meth:`available` says whether this platform has it."""

    def __init__(self) -> None:
        self._epoll: Any = None  # select.epoll while running
        self._streams: dict[int, _PumpedStream] = {}

    @staticmethod
    def available() -> bool:
        return hasattr(select, "epoll")

    @property
    def running(self) -> bool:
        return self._epoll is not None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Copy until cancelled; then every pipe still open is flushed and closed."""
        if self._epoll is not None:
            raise RuntimeError("this output pump is already running")
        epoll = self._epoll = select.epoll()
        try:
            task_status.started()
            while True:
                await trio.lowlevel.wait_readable(epoll.fileno())
                for fd, _events in epoll.poll(0):
                    stream = self._streams.get(fd)
                    if stream is not None:
                        self._read(stream)
        finally:
            for stream in list(self._streams.values()):
                self._close(stream)
            self._epoll = None
            epoll.close()

    def add(self, fd: int, target: Any, prefix: bytes) -> _PumpedStream:
        """Copy the pipe whose read end is ``fd`` (the pump owns it from now on). If
        the pump has stopped (the worker is on its way out) the pipe is closed at once
        and its output lost."""
        stream = _PumpedStream(fd, target, prefix)
        if self._epoll is None:
            self._close(stream)
            return stream
        os.set_blocking(fd, False)
        self._streams[fd] = stream
        self._epoll.register(fd, select.EPOLLIN)
        return stream

    async def finish(self, streams: Sequence[_PumpedStream], *, linger: float) -> None:
        """Wait up to ``linger`` seconds for ``streams`` to end (their last lines
        copied), then close what is still open: a process that escaped its group may
        hold a pipe open for ever. Cancelled, they are closed at once."""
        try:
            with trio.move_on_after(linger):
                for stream in streams:
                    if not stream.closed:
                        stream.done = stream.done or trio.Event()
                        await stream.done.wait()
        finally:
            self.close(streams)

    def close(self, streams: Sequence[_PumpedStream]) -> None:
        """Close ``streams`` now (their unfinished lines are written out)."""
        for stream in streams:
            self._close(stream)

    def _read(self, stream: _PumpedStream) -> None:
        try:
            data = os.read(stream.fd, 65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._close(stream)
            return
        lines, stream.pending = prefix_lines(stream.prefix, stream.pending, data)
        write_out(stream.target, lines)

    def _close(self, stream: _PumpedStream) -> None:
        if stream.closed:
            return
        stream.closed = True
        self._streams.pop(stream.fd, None)
        if self._epoll is not None:
            with suppress(OSError, ValueError):
                self._epoll.unregister(stream.fd)
        os.close(stream.fd)
        if stream.pending:
            write_out(stream.target, last_line(stream.prefix, stream.pending))
            stream.pending = b""
        if stream.done is not None:
            stream.done.set()


class ExecRunner:
    """A job handler that runs a command per job (see the module doc)."""

    def __init__(
        self,
        options: ExecOptions,
        *,
        rng: random.Random | None = None,
        prefix_output: bool = True,
    ) -> None:
        self.options = options
        #: Copy the processes' stdout/stderr with each line prefixed by ``[JOB-ID] ``
        #: (False: they write straight to the worker's own stdout/stderr).
        self.prefix_output = prefix_output
        self._rng = rng or random.Random()
        self._live: dict[int, trio.Process] = {}
        self._started = self._exited = self._terminated = self._killed = 0
        self._restarts = self._spawn_failures = 0
        #: Copies the processes' output while its task runs (:meth:`run_output`);
        #: otherwise each process's streams get a task of their own.
        self._pump = OutputPump()
        self.log = get_logger("fdbworkers").bind(component="exec")
        #: Raised as the processes need (module :mod:`fdbworkers.cli._fdlimit`).
        self._fd_limit = OpenFileLimit(self.log)
        self._runs = 0  # runs started and not ended (each holds descriptors)
        self._spawning = trio.CapacityLimiter(SPAWNS_AT_ONCE)

    async def run_output(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Copy every process's prefixed output with one task (run it beside the job
        runner, e.g. ``await nursery.start(runner.run_output)``, and let it outlive the
        jobs' graceful stop). Where there is no epoll it only waits."""
        if not self.prefix_output or not OutputPump.available():
            task_status.started()
            await trio.sleep_forever()
        await self._pump.run(task_status=task_status)

    def statistics(self) -> ExecStatistics:
        return ExecStatistics(
            running=len(self._live),
            started=self._started,
            exited=self._exited,
            terminated=self._terminated,
            killed=self._killed,
            restarts=self._restarts,
            spawn_failures=self._spawn_failures,
        )

    def kill_all(self) -> None:
        """SIGKILL every running process group (a hard exit of the worker)."""
        for pid in list(self._live):
            if _signal_group(pid, signal.SIGKILL):
                self._killed += 1

    async def __call__(self, job: Job) -> None:
        """The :class:`~fdbworkers.JobRunner` handler."""
        w = job._worker

        def env_for(attempt: int) -> dict[str, str]:
            return job_environment(job, worker_id=w.id, incarnation=w.incarnation, attempt=attempt)

        await self.run_job(
            env_for, job.stopping, label=job.id, log=w.log.bind(component="exec"), job=job
        )

    async def run_job(
        self,
        env_for: Any,
        stopping: Event,
        *,
        label: str,
        log: Any = None,
        job: Job | None = None,
    ) -> None:
        """Run the command until ``stopping`` is set (then stop it and return), restarting
        it with backoff when it exits by itself. ``env_for(attempt)`` gives the
        ``FDBWORKERS_*`` variables of each run."""
        o = self.options
        attempt = 0
        failures = 0
        log = (log or self.log).bind(job=label)
        while not stopping.is_set():
            started = trio.current_time()
            # A run holds descriptors from its start to its end: count every run, starts
            # still in flight too, before this one opens any (hundreds start at once).
            self._fd_limit.before_start(self._runs)
            self._runs += 1
            try:
                code, stopped = await self._run_once(
                    env_for(attempt), stopping, log, label, attempt
                )
            finally:
                self._runs -= 1
            if stopped:
                return
            ran = trio.current_time() - started
            if code != 0 and job is not None:
                job.report_failure(describe_exit(code, o.argv[0]))
                if job.parked:
                    log.error("job_process_parked", code=code, attempt=attempt)
                    await stopping.wait()
                    return
            if code == 0 and o.restart == "on-failure":
                log.info("job_process_finished", code=0, ran=round(ran, 3))
                await stopping.wait()
                return
            if ran >= o.healthy_after:
                failures = 0
            delay = min(o.backoff_max, o.backoff_initial * 2**failures)
            delay *= 0.75 + self._rng.random() / 2
            failures += 1
            attempt += 1
            self._restarts += 1
            log.warning(
                "job_process_exited", code=code, ran=round(ran, 3), restart_in=round(delay, 3)
            )
            with trio.move_on_after(delay):
                await stopping.wait()

    async def _run_once(
        self, extra_env: Mapping[str, str], stopping: Event, log: Any, label: str, attempt: int
    ) -> tuple[int | None, bool]:
        """Start the command once and supervise it: its exit code (None: it did not
        start), and whether ``stopping`` ended it. ``extra_env`` goes over our own
        environment; the whole environment is built for the start only (a copy of
        ``os.environ`` kept per running process would be kilobytes each)."""
        o = self.options
        pumped = self.prefix_output and self._pump.running
        pipes: list[tuple[int, int]] = []
        try:
            if pumped:
                pipes = [os.pipe(), os.pipe()]  # (read, write) for stdout and stderr
                out: Any = pipes[0][1]
                err: Any = pipes[1][1]
            elif self.prefix_output:
                out = err = subprocess.PIPE
            else:
                out = err = None
            async with self._spawning:
                proc = await trio.lowlevel.open_process(
                    list(o.argv),
                    env={**os.environ, **o.env, **extra_env},
                    start_new_session=True,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=err,
                )
        except BaseException as e:
            for r, w in pipes:
                os.close(r)
                os.close(w)
            if not isinstance(e, OSError):
                raise
            self._spawn_failures += 1
            more = {"hint": hint(*self._fd_limit.limits())} if e.errno == errno.EMFILE else {}
            log.error("job_process_spawn_failed", command=o.argv[0], error=str(e), **more)
            return None, False
        self._started += 1
        log.info("job_process_started", pid=proc.pid, attempt=attempt)
        if pumped:
            code = await self._supervise_pumped(proc, pipes, stopping, log, label)
        else:
            code = await self._supervise_with_output(proc, stopping, log, label)
        if stopping.is_set():
            return code, True
        self._exited += 1
        return code, False

    async def _supervise(self, proc: trio.Process, stopping: Event, log: Any) -> int | None:
        """Wait for the process; on ``stopping`` SIGTERM its group, then SIGKILL after the
        grace; on cancellation SIGKILL at once. Returns after the process is reaped.

        One task of its own per process (the waiter, which ends the wait for
        ``stopping`` when the process exits by itself): a worker supervises hundreds,
        and every task and nursery is kilobytes of memory each."""
        self._live[proc.pid] = proc
        try:
            async with trio.open_nursery() as n:

                async def waiter() -> None:
                    await proc.wait()
                    n.cancel_scope.cancel()

                n.start_soon(waiter)
                await stopping.wait()
                if proc.returncode is None and _signal_group(proc.pid, signal.SIGTERM):
                    self._terminated += 1
                    log.info("job_process_terminating", pid=proc.pid, grace=self.options.stop_grace)
                with trio.move_on_after(self.options.stop_grace):
                    await proc.wait()
                if proc.returncode is None:
                    self._kill(proc, log, "grace period over")
        except BaseException:
            # Cancelled (the runner's grace ran out, or a hard stop): kill and reap.
            with trio.CancelScope(shield=True):
                if proc.returncode is None:
                    self._kill(proc, log, "cancelled")
                with trio.move_on_after(5):
                    await proc.wait()
            raise
        finally:
            # Whatever is left of the group (children of a process that exited) goes too.
            _signal_group(proc.pid, signal.SIGKILL)
            self._live.pop(proc.pid, None)
        log.info("job_process_ended", pid=proc.pid, code=proc.returncode)
        return proc.returncode

    async def _supervise_with_output(
        self, proc: trio.Process, stopping: Event, log: Any, label: str
    ) -> int | None:
        """``_supervise``, with the process's stdout and stderr copied to ours, each line
        prefixed with ``[JOB-ID] `` (several jobs share the worker's output): a task per
        stream, in the same nursery as the supervision."""
        if proc.stdout is None and proc.stderr is None:
            return await self._supervise(proc, stopping, log)
        prefix = f"[{label}] ".encode()
        async with trio.open_nursery() as n:
            if proc.stdout is not None:
                n.start_soon(copy_lines, proc.stdout, sys.stdout, prefix)
            if proc.stderr is not None:
                n.start_soon(copy_lines, proc.stderr, sys.stderr, prefix)
            code = await self._supervise(proc, stopping, log)
            # A child that escaped the group may hold the pipes open: not for long (the
            # deadline cancels only the copies: the supervision has returned).
            n.cancel_scope.deadline = trio.current_time() + OUTPUT_LINGER
        return code

    async def _supervise_pumped(
        self,
        proc: trio.Process,
        pipes: list[tuple[int, int]],
        stopping: Event,
        log: Any,
        label: str,
    ) -> int | None:
        """``_supervise``, with the process's pipes copied by the runner's one
        :class:`OutputPump`: no task per stream."""
        prefix = f"[{label}] ".encode()
        streams = []
        for (r, w), target in zip(pipes, (sys.stdout, sys.stderr), strict=True):
            os.close(w)  # the child has its copy: the pipe ends when the child's ends
            streams.append(self._pump.add(r, target, prefix))
        try:
            code = await self._supervise(proc, stopping, log)
        except BaseException:
            self._pump.close(streams)  # cancelled: no waiting for the last lines
            raise
        # Its last lines: a process that escaped the group may hold the pipes open,
        # not for long.
        await self._pump.finish(streams, linger=OUTPUT_LINGER)
        return code

    def _kill(self, proc: trio.Process, log: Any, why: str) -> None:
        if _signal_group(proc.pid, signal.SIGKILL):
            self._killed += 1
            log.warning("job_process_killed", pid=proc.pid, reason=why)
