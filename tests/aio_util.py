"""asyncio on a virtual clock, for the tests that run under both event loops.

:class:`VirtualClockLoop` is asyncio's selector loop whose clock jumps to the next timer
whenever every task waits and no I/O is ready: what trio's
``MockClock(autojump_threshold=0)`` does for trio. A test that sleeps 60 s of protocol
time takes milliseconds, and the same test can compare both loops on equal terms.

Like trio's autojump clock, it also jumps while a thread works (an ``await`` of
``to_thread.run_sync`` is a wait like any other), so code on it must not race real
threads against virtual timeouts.
"""

from __future__ import annotations

import asyncio
import selectors
from typing import Any


class VirtualClockLoop(asyncio.SelectorEventLoop):
    """asyncio's loop on a virtual clock that starts at 0 and autojumps."""

    def __init__(self) -> None:
        super().__init__(selectors.DefaultSelector())
        self._virtual_now = 0.0
        selector: Any = self._selector  # type: ignore[attr-defined]
        real_select = selector.select

        def select(timeout: float | None = None) -> list[Any]:
            events: list[Any] = real_select(0)
            if events or timeout == 0:
                return events
            if timeout is None:  # no timer at all: wait for I/O (a thread, a socket)
                blocked: list[Any] = real_select(None)
                return blocked
            self._virtual_now += timeout  # every task waits: jump to the next timer
            return []

        selector.select = select

    def time(self) -> float:
        return self._virtual_now

    def jump(self, seconds: float) -> None:
        """Move the clock on without running anything (a process frozen, then resumed:
        ``MockClock.jump`` for asyncio)."""
        if seconds < 0:
            raise ValueError("time can't go backwards")
        self._virtual_now += seconds


def jump_clock(seconds: float) -> None:
    """Jump the running loop's virtual clock by ``seconds`` (trio or asyncio)."""
    import sniffio

    if sniffio.current_async_library() == "trio":
        import trio

        clock: Any = trio.lowlevel.current_clock()
        clock.jump(seconds)
        return
    loop = asyncio.get_running_loop()
    if not isinstance(loop, VirtualClockLoop):
        raise RuntimeError("not on a virtual clock")
    loop.jump(seconds)
