"""The event loop under fdbworkers: asyncio or trio, through anyio.

Everything async in the package is written against anyio, so it runs unchanged inside
``asyncio.run`` and inside ``trio.run`` (docs/asyncio.md). anyio covers tasks, cancel
scopes, events, sleeps and sockets. This module holds the few things it leaves to the
loop itself, each done the loop's own way:

* :func:`current_token` and :meth:`LoopToken.run_sync_soon`: the running loop as a
  handle (the dev server client keys its per-loop state by it) that other threads can
  wake it through: ``TrioToken.run_sync_soon`` under trio, ``loop.call_soon_threadsafe``
  under asyncio. (The real backend bridges FoundationDB's futures with hubs of its
  own, one wake-up per batch of ready futures: ``fdbworkers._backends.fdb``.)
* :func:`spawn_system_task`: a task that belongs to the loop rather than to a task group
  (a database handle has no task group of its own: the dev server client's connection
  runs in one). Under trio ``trio.lowlevel.spawn_system_task``, under asyncio a task of
  the running loop, cancelled when the loop ends.

No I/O here, and no import of trio or asyncio before they are known to be running.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

import sniffio

__all__ = ["LoopToken", "current_library", "current_token", "spawn_system_task"]


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
