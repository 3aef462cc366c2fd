"""The event loop under fdbworkers: asyncio or trio.

Everything async in the package runs unchanged inside ``asyncio.run`` and inside
``trio.run`` (docs/asyncio.md): it is written against anyio, and its hot paths against
the helpers below, which use the running loop's own primitives (:func:`checkpoint`,
:func:`current_time`, :func:`sleep`, :func:`new_event`, :func:`cancel_scope`,
:func:`move_on_at`, :func:`move_on_after`, :func:`open_task_group`). This module also
holds the few things anyio leaves to the loop itself, each done the loop's own way:

* :func:`current_token` and :meth:`LoopToken.run_sync_soon`: the running loop as a
  handle (the dev server client keys its per-loop state by it) that other threads can
  wake it through: ``TrioToken.run_sync_soon`` under trio, ``loop.call_soon_threadsafe``
  under asyncio. (The real backend bridges FoundationDB's futures with hubs of its
  own, one wake-up per batch of ready futures: ``fdbworkers._backends.fdb_bridge``.)
* :func:`spawn_system_task`: a task that belongs to the loop rather than to a task group
  (a database handle has no task group of its own: the dev server client's connection
  runs in one). Under trio ``trio.lowlevel.spawn_system_task``, under asyncio a task of
  the running loop, cancelled when the loop ends.

No I/O here, and no import of trio or asyncio before they are known to be running.
"""

from __future__ import annotations

import contextlib
import math
import sys
from collections.abc import Awaitable, Callable, Coroutine
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Protocol, TypeVarTuple, cast

import anyio
import sniffio

if TYPE_CHECKING:
    import asyncio

    import anyio.abc
    import trio

__all__ = [
    "CancelScope",
    "Event",
    "LoopToken",
    "TaskGroup",
    "cancel_scope",
    "checkpoint",
    "current_library",
    "current_time",
    "current_token",
    "in_trio",
    "move_on_after",
    "move_on_at",
    "new_event",
    "open_task_group",
    "sleep",
    "spawn_system_task",
]

_Args = TypeVarTuple("_Args")


def current_library() -> str:
    """``"asyncio"`` or ``"trio"``: the loop running the current task (raises
    ``sniffio.AsyncLibraryNotFoundError`` outside one)."""
    return sniffio.current_async_library()


class LoopToken:
    """The running loop, as a handle other threads can wake it through."""

    __slots__ = ("_call", "_key")

    def __init__(self, key: object, call: Callable[[Callable[[], None]], None]) -> None:
        self._key = key
        self._call = call

    def run_sync_soon(self, fn: Callable[[], None]) -> None:
        """Run ``fn()`` in the loop's thread soon; callable from any thread, and a no-op
        once the loop has finished. ``fn`` must not block."""
        self._call(fn)

    def is_current(self) -> bool:
        """True inside the loop this token is of (False outside any loop)."""
        try:
            return _current_key() is self._key
        except RuntimeError:
            return False

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LoopToken) and other._key is self._key

    def __hash__(self) -> int:
        return id(self._key)

    def __repr__(self) -> str:
        return f"<LoopToken {type(self._key).__name__} {id(self._key):#x}>"


def _current_key() -> object:
    """The running trio token or asyncio loop (RuntimeError outside a loop)."""
    try:
        library = current_library()
    except sniffio.AsyncLibraryNotFoundError:
        raise RuntimeError("not inside an asyncio or trio event loop") from None
    if library == "trio":
        import trio

        return trio.lowlevel.current_trio_token()
    import asyncio

    return asyncio.get_running_loop()


def current_token() -> LoopToken:
    """The running loop's token (raises RuntimeError outside a loop)."""
    try:
        library = current_library()
    except sniffio.AsyncLibraryNotFoundError:
        raise RuntimeError("not inside an asyncio or trio event loop") from None
    if library == "trio":
        import trio

        token = trio.lowlevel.current_trio_token()

        def call_trio(fn: Callable[[], None]) -> None:
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(fn)

        return LoopToken(token, call_trio)
    if library == "asyncio":
        import asyncio

        loop = asyncio.get_running_loop()

        def call_asyncio(fn: Callable[[], None]) -> None:
            with contextlib.suppress(RuntimeError):  # the loop is closed
                loop.call_soon_threadsafe(fn)

        return LoopToken(loop, call_asyncio)
    raise RuntimeError(f"fdbworkers runs under asyncio or trio, not {library}")


#: asyncio keeps only weak references to tasks: the system tasks are kept here.
_asyncio_tasks: set[Any] = set()


def spawn_system_task(fn: Callable[[], Awaitable[None]], *, name: str) -> None:
    """Run ``fn()`` as a task of the loop itself, outside any task group. ``fn`` must
    handle its own errors; it is cancelled when the loop ends."""
    library = current_library()
    if library == "trio":
        import trio

        trio.lowlevel.spawn_system_task(fn, name=name)
        return
    import asyncio

    async def main() -> None:
        await fn()

    task = asyncio.get_running_loop().create_task(main(), name=name)
    _asyncio_tasks.add(task)
    task.add_done_callback(_asyncio_tasks.discard)


# --- the running loop's own primitives, for hot paths ------------------------------------
#
# anyio looks its backend up at every call (``anyio.current_time()``, ``anyio.Event()``,
# ``anyio.lowlevel.checkpoint()``...) and wraps trio's objects in its own; since anyio
# 4.14 each task it starts also gets a handle (a task costs about four times a trio
# task). On paths taken per transaction, per engine operation or per job, that cost is
# measurable under trio: the simulation took about 20 % more CPU on anyio throughout.
# These helpers pick the loop's own primitive instead: trio's under trio, asyncio's (or
# anyio's, which is asyncio's with cancel scopes) under asyncio. Which loop runs the
# task is read from sniffio's thread marker, which trio sets while it runs a task: one
# attribute read. trio is only looked up once it is running (it is in ``sys.modules``
# then): an asyncio program does not import it. Objects that users see (the streams of
# ``changes()``) and code off the hot paths stay on anyio.

_running: Final = sniffio.thread_local
_modules: Final = sys.modules


class Event(Protocol):
    """A one-shot event of the running loop (``trio.Event`` or ``asyncio.Event``)."""

    def set(self) -> None: ...

    def is_set(self) -> bool: ...

    def wait(self) -> Awaitable[object]: ...


class CancelScope(Protocol):
    """What the helpers' cancel scopes offer (trio's, or anyio's under asyncio)."""

    deadline: float

    def __enter__(self, /) -> object: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
        /,
    ) -> bool | None: ...

    @property
    def cancel_called(self) -> bool: ...

    @property
    def cancelled_caught(self) -> bool: ...

    def cancel(self) -> None: ...


class TaskGroup(Protocol):
    """What the helpers' task groups offer (a trio nursery, or an anyio task group
    under asyncio): ``start_soon`` and the group's cancel scope."""

    @property
    def cancel_scope(self) -> CancelScope: ...

    def start_soon(
        self,
        func: Callable[[*_Args], Coroutine[Any, Any, Any]],
        *args: *_Args,
        name: object = None,
    ) -> object: ...


def in_trio() -> bool:
    """Whether trio runs the current task (else asyncio, or no loop)."""
    return _running.name == "trio"


async def checkpoint() -> None:
    """Let other tasks run, and take a pending cancellation."""
    if _running.name == "trio":
        await _modules["trio"].lowlevel.checkpoint()
    else:
        await _asyncio().sleep(0)


async def sleep(seconds: float) -> None:
    """Sleep ``seconds`` on the loop's clock."""
    if _running.name == "trio":
        await _modules["trio"].sleep(seconds)
    else:
        await anyio.sleep(seconds)


def current_time() -> float:
    """The running loop's clock (trio's, virtual under a MockClock; asyncio's loop time)."""
    if _running.name == "trio":
        now: float = _modules["trio"].current_time()
        return now
    return float(_asyncio().get_running_loop().time())


def new_event() -> Event:
    """A new event of the running loop. (Outside a loop: an asyncio event.)"""
    if _running.name == "trio":
        event: Event = _modules["trio"].Event()
        return event
    return cast(Event, _asyncio().Event())


def cancel_scope(deadline: float = math.inf) -> CancelScope:
    """A new cancel scope (enter it with ``with``), cancelled at ``deadline``."""
    if _running.name == "trio":
        scope: CancelScope = _modules["trio"].CancelScope(deadline=deadline)
        return scope
    return anyio.CancelScope(deadline=deadline)


def move_on_at(deadline: float) -> AbstractContextManager[CancelScope]:
    """A cancel scope that ends its block at ``deadline`` (the loop's clock)."""
    if _running.name == "trio":
        scope: AbstractContextManager[CancelScope] = _modules["trio"].move_on_at(deadline)
        return scope
    return anyio.move_on_at(deadline)


def move_on_after(seconds: float) -> AbstractContextManager[CancelScope]:
    """A cancel scope that ends its block ``seconds`` from now."""
    if _running.name == "trio":
        scope: AbstractContextManager[CancelScope] = _modules["trio"].move_on_after(seconds)
        return scope
    return anyio.move_on_after(seconds)


def open_task_group() -> AbstractAsyncContextManager[TaskGroup]:
    """A task group: a trio nursery under trio (a task costs a quarter of an anyio
    task's), anyio's task group under asyncio (anyio's cancel scopes need it)."""
    if _running.name == "trio":
        nursery: AbstractAsyncContextManager[TaskGroup] = _modules["trio"].open_nursery()
        return nursery
    return anyio.create_task_group()


def _asyncio() -> Any:
    asyncio = _modules.get("asyncio")
    if asyncio is None:
        import asyncio
    return asyncio


if TYPE_CHECKING:  # both loops' objects fit the protocols above

    def _fits(
        nursery: trio.Nursery,
        group: anyio.abc.TaskGroup,
        trio_scope: trio.CancelScope,
        anyio_scope: anyio.CancelScope,
        trio_event: trio.Event,
        asyncio_event: asyncio.Event,
    ) -> tuple[TaskGroup, TaskGroup, CancelScope, CancelScope, Event, Event]:
        return nursery, group, trio_scope, anyio_scope, trio_event, asyncio_event
