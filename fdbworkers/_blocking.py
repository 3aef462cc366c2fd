"""The blocking façade: a worker for threaded programs, with plain functions as handlers.

:class:`BlockingWorker` runs an ordinary worker (``open_worker`` + ``run_jobs``) on an
event loop of its own in a background thread (asyncio by default, or trio), and offers
blocking methods that any thread may call. A job handler is a plain function, run in a
thread of its own for as long as the job runs here; the :class:`BlockingJob` it gets
has the async ``Job``'s fields and blocking ``check()``, ``fence(tr)`` and
``db.transact(fn)``.

Every call crosses into the loop through an anyio ``BlockingPortal``: FoundationDB's
futures are still bridged into that loop (never waited on in a thread per call); the
calling thread only waits for the loop's answer. :class:`BlockingDatabase` and
:class:`BlockingTransaction` are in :mod:`fdbworkers._blocking_db` (exported here).

A thread cannot be cancelled. Where the async runner cancels a handler (its job moved
away after ``grace`` seconds, the worker fenced itself or left), the handler's
``job.stopping`` is set and ``job.check()`` raises :class:`FencedError`; the runner then
waits for the function to return before it releases the job, so a handler must return
soon after ``job.stopping`` is set. A handler that ignores it holds its job here (and the
worker's exit) until it returns; writes fenced with ``job.fence(tr)`` stay safe either
way (docs/asyncio.md).
"""

from __future__ import annotations

import atexit
import contextlib
import math
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future
from typing import Any

import anyio
import anyio.abc
import anyio.from_thread
import anyio.to_thread

from ._backends.connect import open_database
from ._blocking_db import BlockingDatabase, BlockingTransaction
from ._core.membership import Membership, MembershipChange
from ._core.states import WorkerState
from ._db import Database
from ._errors import ConfigError, FencedError
from ._runner.admin import add_job, add_jobs, remove_job
from ._runner.job import Job
from ._runner.runner import JobRunner
from ._store.bulk import AddJobsResult
from ._worker import Worker, WorkerStatistics, open_worker

__all__ = ["BlockingDatabase", "BlockingJob", "BlockingTransaction", "BlockingWorker"]

#: Marks the threads that run blocking handlers (``stop`` must not be called there).
_handler_thread = threading.local()

#: How long ``stop`` waits by default for the worker to leave (its jobs' handlers to
#: return, their claims to be released, the member record to be cleared).
DEFAULT_STOP_TIMEOUT = 60.0


class BlockingJob:
    """What a blocking handler gets: the job's fields, a ``threading.Event``
    :attr:`stopping`, and blocking forms of ``check()`` and ``fence(tr)``."""

    def __init__(self, job: Job, worker: BlockingWorker) -> None:
        self._job = job
        self._worker = worker
        self._portal = worker._portal_or_raise()
        self.id: str = job.id
        self.role: str = job.role
        self.partition: int = job.partition
        self.spec: Any = job.spec
        self.weight: float = job.weight
        #: The fencing token (the claim's commit versionstamp, 10 bytes).
        self.token: bytes = job.token
        #: Set when the handler must return: the job moves away, the worker fences
        #: itself or leaves. ``stopping.wait(seconds)`` is the handler's sleep.
        self.stopping = threading.Event()
        self._cancelled = False

    def __repr__(self) -> str:
        return f"<BlockingJob {self.id!r} role={self.role!r} token={self.token.hex()}>"

    @property
    def db(self) -> BlockingDatabase:
        """The worker's database, for blocking transactions."""
        return self._worker.db

    @property
    def job(self) -> Job:
        """The async job underneath (for use inside the worker's loop only)."""
        return self._job

    @property
    def parked(self) -> bool:
        return self._job.parked

    def check(self) -> None:
        """Raise :class:`FencedError` once this job is being stopped here or the worker
        lost its lease: call it before side effects outside FoundationDB."""
        if self._cancelled:
            raise FencedError(f"job {self.id!r} was stopped on this worker")
        self._call(self._job.check)

    def fence(self, tr: BlockingTransaction) -> None:
        """Add the claim check to ``tr`` (see :meth:`fdbworkers.Job.fence`): ``tr``
        commits only while this worker still holds the job with this token."""
        self._call(self._job.fence, tr.transaction)

    def report_failure(self, error: str) -> None:
        """See :meth:`fdbworkers.Job.report_failure`."""
        self._call(self._job.report_failure, error)

    def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return self._portal.call(fn, *args)
        except RuntimeError as e:
            if "portal is not running" in str(e):
                raise FencedError(f"job {self.id!r}: the worker has stopped") from None
            raise

    def _stop(self, *, cancelled: bool) -> None:
        if cancelled:
            self._cancelled = True
        self.stopping.set()


class BlockingWorker:
    """A worker in a background thread, for programs without an event loop::

        def replicate(job):                     # a plain function, in a thread of its own
            while not job.stopping.wait(1):
                ...

        with BlockingWorker("memory", "replicator", timeout=10) as worker:
            worker.add_job("db1-to-db2", {"source": "db1"})
            worker.run_jobs(replicate, grace=5)
            ...                                 # the program; the block's end stops it

    ``db`` is a cluster address for :func:`~fdbworkers.open_database` (then the worker
    opens and closes it) or a :class:`~fdbworkers.Database` not yet used by another
    loop. ``backend`` is the loop of the background thread: ``"asyncio"`` (default) or
    ``"trio"``; ``backend_options`` go to ``anyio.run``. Other keyword arguments are
    those of :func:`~fdbworkers.open_worker`.

    :meth:`start` returns once the worker registered; :meth:`stop` (or the end of the
    ``with`` block, or the interpreter's exit) makes it leave gracefully: its handlers
    are asked to stop (``job.stopping``), their jobs released, its member record
    cleared. If the worker ends by itself (drained, superseded, cluster unreachable with
    ``give_up_after``), :meth:`wait` and :meth:`stop` raise its error, if any.
    """

    def __init__(
        self,
        db: str | Database,
        role: str,
        *,
        backend: str = "asyncio",
        backend_options: dict[str, Any] | None = None,
        **worker_options: Any,
    ) -> None:
        if backend not in ("asyncio", "trio"):
            raise ConfigError(f"backend must be 'asyncio' or 'trio', not {backend!r}")
        if not isinstance(db, str | Database):
            raise ConfigError(
                f"db must be a cluster address or a Database, not {type(db).__name__}"
            )
        self._db_arg = db
        self.role = role
        self._backend = backend
        self._backend_options = dict(backend_options or {})
        self._worker_options = worker_options
        self._portal: anyio.from_thread.BlockingPortal | None = None
        self._thread: threading.Thread | None = None
        self._worker: Worker | None = None
        self._db: BlockingDatabase | None = None
        self._async_db: Database | None = None
        self._stop_requested: anyio.Event | None = None
        self._task_group: anyio.abc.TaskGroup | None = None
        self._ended = threading.Event()
        self._error: BaseException | None = None
        self._limiter: anyio.CapacityLimiter | None = None
        self._lock = threading.Lock()
        self._stopping = False

    # -- lifecycle -----------------------------------------------------------------------
    def start(self, timeout: float | None = 60.0) -> BlockingWorker:
        """Start the loop thread, open the database and register the worker; return
        once it registered (or raise why it could not, e.g. ``ConfigError``)."""
        with self._lock:
            if self._thread is not None:
                raise RuntimeError("this BlockingWorker was already started")
            ready: Future[None] = Future()
            self._thread = threading.Thread(
                target=self._thread_main,
                args=(ready,),
                name=f"fdbworkers-{self.role}",
                daemon=True,
            )
            self._thread.start()
        try:
            ready.result(timeout)
        except BaseException:
            self._join(timeout)
            raise
        atexit.register(self._stop_at_exit)
        return self

    def stop(self, timeout: float | None = DEFAULT_STOP_TIMEOUT) -> None:
        """Leave gracefully and end the loop thread; idempotent. Raises the worker's
        error if it ended with one, ``TimeoutError`` if it did not stop in time. Never
        call it from a handler: the worker waits for its handlers to return."""
        if getattr(_handler_thread, "active", False):
            raise RuntimeError("stop() called from a job handler, which the worker waits for")
        atexit.unregister(self._stop_at_exit)
        with self._lock:
            first = not self._stopping
            self._stopping = True
        portal, stop = self._portal, self._stop_requested
        if first and portal is not None and stop is not None and not self._ended.is_set():
            with contextlib.suppress(RuntimeError):  # the loop already ended
                portal.call(stop.set)
        self._join(timeout)
        self._raise_error()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the worker ends by itself or is stopped; True if it ended
        within ``timeout``. Raises the worker's error if it ended with one."""
        ended = self._ended.wait(timeout)
        if ended:
            self._join(None)
            self._raise_error()
        return ended

    def __enter__(self) -> BlockingWorker:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        """True between a successful start and the end of the worker."""
        return self._worker is not None and not self._ended.is_set()

    # -- the worker ------------------------------------------------------------------------
    @property
    def id(self) -> str:
        return self._worker_or_raise().id

    @property
    def db(self) -> BlockingDatabase:
        """The worker's database, for blocking transactions."""
        if self._db is None:
            raise RuntimeError("the worker has not started")
        return self._db

    @property
    def worker(self) -> Worker:
        """The async worker underneath (for use inside its loop only)."""
        return self._worker_or_raise()

    @property
    def state(self) -> WorkerState:
        return self._worker_or_raise().state

    @property
    def membership(self) -> Membership | None:
        """The latest settled membership (None before the first)."""
        return self._worker_or_raise().membership

    def statistics(self) -> WorkerStatistics:
        return self._portal_or_raise().call(self._worker_or_raise().statistics)

    def run_jobs(self, handler: Callable[[BlockingJob], None], **options: Any) -> JobRunner:
        """Run ``handler(job)`` in a thread of its own for every job this worker owns,
        in the background, until the worker stops. The options are those of
        ``Worker.run_jobs`` (``grace``, ``park_after``...). Returns the runner (read
        ``runner.statistics()`` through :meth:`call`)."""
        if not callable(handler):
            raise ConfigError(f"handler must be a function of a job, got {handler!r}")
        portal = self._portal_or_raise()
        return portal.call(self._start_runner, handler, options)

    def add_job(self, job_id: str, spec: Any = None, *, weight: float = 1.0, **kwargs: Any) -> bool:
        """Add or update a job of this worker's role (see :func:`fdbworkers.add_job`)."""
        worker = self._worker_or_raise()
        return self._portal_or_raise().call(
            lambda: add_job(
                worker.db,
                worker.role,
                job_id,
                spec,
                weight=weight,
                root=worker.layout.prefix,
                **kwargs,
            )
        )

    def add_jobs(
        self,
        jobs: Mapping[str, Any] | Iterable[tuple[str, Any] | tuple[str, Any, float]],
        **kwargs: Any,
    ) -> AddJobsResult:
        """Add or update many jobs of this worker's role at once, many per transaction
        (see :func:`fdbworkers.add_jobs`); returns how many were added, updated and left
        unchanged."""
        worker = self._worker_or_raise()
        return self._portal_or_raise().call(
            lambda: add_jobs(worker.db, worker.role, jobs, root=worker.layout.prefix, **kwargs)
        )

    def remove_job(self, job_id: str) -> bool:
        """Remove a job of this worker's role (see :func:`fdbworkers.remove_job`)."""
        worker = self._worker_or_raise()
        return self._portal_or_raise().call(
            lambda: remove_job(worker.db, worker.role, job_id, root=worker.layout.prefix)
        )

    @contextlib.contextmanager
    def changes(self, buffer: int = 64) -> Iterator[Iterator[MembershipChange]]:
        """``with worker.changes() as changes: for change in changes: ...``: the
        settled membership changes, as ``Worker.changes``; the iteration ends when the
        worker stops."""
        portal = self._portal_or_raise()
        worker = self._worker_or_raise()
        send, stream = portal.call(worker._subscribe, buffer)

        def iterate() -> Iterator[MembershipChange]:
            while True:
                try:
                    change = portal.call(self._next_change, stream)
                except RuntimeError:  # the loop ended
                    return
                if change is None:
                    return
                yield change

        try:
            yield iterate()
        finally:
            with contextlib.suppress(RuntimeError):  # the loop ended: nothing to undo
                portal.call(worker._unsubscribe, send)

    def drain(self) -> None:
        """Leave gracefully as a drain does (the worker then ends)."""
        self._portal_or_raise().call(self._worker_or_raise().drain)

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn(*args)`` (a plain or an async function) in the worker's loop and
        return its result: for anything the blocking methods do not cover."""
        return self._portal_or_raise().call(fn, *args)

    def __repr__(self) -> str:
        state = "running" if self.running else ("ended" if self._ended.is_set() else "idle")
        return f"<BlockingWorker role={self.role!r} backend={self._backend} {state}>"

    # -- inside the loop -----------------------------------------------------------------
    def _thread_main(self, ready: Future[None]) -> None:
        try:
            anyio.run(self._main, ready, backend=self._backend, **self._run_options())
        except BaseException as e:
            if not ready.done():
                ready.set_exception(_unwrap(e))
            else:
                self._error = _unwrap(e)
        finally:
            self._ended.set()
            if not ready.done():
                ready.set_exception(RuntimeError("the worker's loop ended before it started"))

    def _run_options(self) -> dict[str, Any]:
        return {"backend_options": self._backend_options} if self._backend_options else {}

    async def _main(self, ready: Future[None]) -> None:
        self._stop_requested = anyio.Event()
        self._limiter = anyio.CapacityLimiter(math.inf)
        db = open_database(self._db_arg) if isinstance(self._db_arg, str) else self._db_arg
        self._async_db = db
        try:
            async with anyio.from_thread.BlockingPortal() as portal:
                self._portal = portal
                try:
                    async with (
                        open_worker(db, self.role, **self._worker_options) as worker,
                        anyio.create_task_group() as tg,
                    ):
                        self._worker = worker
                        self._task_group = tg
                        self._db = BlockingDatabase(db, portal, self._limiter)
                        ready.set_result(None)
                        await self._stop_requested.wait()
                        tg.cancel_scope.cancel()
                finally:
                    # The worker has left (its handlers returned): calls still waiting
                    # from other threads (a changes() iteration) end now, new ones are
                    # refused.
                    self._stop_requested.set()
                    await portal.stop(cancel_remaining=True)
        finally:
            self._task_group = None
            if isinstance(self._db_arg, str):
                with anyio.CancelScope(shield=True):
                    await db.aclose()

    def _start_runner(
        self, handler: Callable[[BlockingJob], None], options: dict[str, Any]
    ) -> JobRunner:
        worker, tg = self._worker_or_raise(), self._task_group
        if tg is None:
            raise RuntimeError("the worker has stopped")
        runner = JobRunner(worker, self._adapt(handler), **options)
        tg.start_soon(runner.run, name=f"fdbworkers-jobs-{self.role}")
        return runner

    def _adapt(self, handler: Callable[[BlockingJob], None]) -> Callable[[Job], Any]:
        limiter = self._limiter

        def in_handler_thread(bjob: BlockingJob) -> None:
            _handler_thread.active = True
            try:
                handler(bjob)
            finally:
                _handler_thread.active = False

        async def run_in_thread(job: Job) -> None:
            bjob = BlockingJob(job, self)
            error: Exception | None = None
            async with anyio.create_task_group() as tg:

                async def relay_stop() -> None:
                    try:
                        await job.stopping.wait()
                        bjob._stop(cancelled=False)
                        await anyio.sleep_forever()
                    finally:  # cancelled: the runner cancels the handler (or it returned)
                        bjob._stop(cancelled=True)

                tg.start_soon(relay_stop)
                try:
                    # Not abandoned on cancellation: the runner waits for the function
                    # to return before it releases the job.
                    await anyio.to_thread.run_sync(in_handler_thread, bjob, limiter=limiter)
                except Exception as e:  # raised below, as it is, not in a group
                    error = e
                tg.cancel_scope.cancel()
            if error is not None:
                raise error

        run_in_thread.__name__ = getattr(handler, "__name__", "handler")
        return run_in_thread

    async def _next_change(self, stream: Any) -> MembershipChange | None:
        stop = self._stop_requested
        assert stop is not None
        result: list[MembershipChange] = []
        async with anyio.create_task_group() as tg:

            async def until_stop() -> None:
                await stop.wait()
                tg.cancel_scope.cancel()

            tg.start_soon(until_stop)
            with contextlib.suppress(anyio.EndOfStream, anyio.ClosedResourceError):
                result.append(await stream.receive())
            tg.cancel_scope.cancel()
        return result[0] if result else None

    # -- helpers -------------------------------------------------------------------------
    def _worker_or_raise(self) -> Worker:
        if self._worker is None:
            raise RuntimeError("the worker has not started")
        return self._worker

    def _portal_or_raise(self) -> anyio.from_thread.BlockingPortal:
        if self._portal is None or self._ended.is_set():
            raise RuntimeError("the worker is not running")
        return self._portal

    def _join(self, timeout: float | None) -> None:
        thread = self._thread
        if thread is None or thread is threading.current_thread():
            return
        thread.join(timeout)
        if thread.is_alive():
            raise TimeoutError(f"the worker did not stop within {timeout} s")

    def _raise_error(self) -> None:
        error, self._error = self._error, None
        if error is not None:
            raise error

    def _stop_at_exit(self) -> None:
        with contextlib.suppress(Exception):
            self.stop()


def _unwrap(e: BaseException) -> BaseException:
    """The one error inside nested exception groups, else the group itself."""
    while isinstance(e, BaseExceptionGroup) and len(e.exceptions) == 1:
        e = e.exceptions[0]
    return e
