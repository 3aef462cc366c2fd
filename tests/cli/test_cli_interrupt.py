"""Ctrl-C ends a command even when it lands where Python ignores exceptions.

Found by sending SIGINT to ``events --follow`` and ``watch`` at random moments: now and
then the process printed ``Exception ignored in: <function _get_module_lock.<locals>.cb>
... KeyboardInterrupt`` and went on following forever. Trio's own SIGINT handler raises
``KeyboardInterrupt`` in whatever frame runs when the signal arrives; in a weakref
callback or a ``__del__`` that exception is printed and dropped, and the interrupt is
lost. The commands now receive SIGINT as a message (``trio.open_signal_receiver``) and
cancel themselves, so no frame can swallow it.
"""

from __future__ import annotations

import os
import signal
import weakref

import pytest
import trio

from fdbworkers._db import Database
from fdbworkers.cli._common import EXIT_INTERRUPTED, CliError, Settings, run


def _interrupt_inside_a_weakref_callback() -> None:
    """Deliver SIGINT while a weakref callback runs: an exception raised there is
    printed as 'Exception ignored' and dropped."""

    class Thing:
        pass

    def callback(_: object) -> None:
        os.kill(os.getpid(), signal.SIGINT)
        for _ in range(10_000):  # the eval loop runs the Python handler here
            pass

    thing = Thing()
    ref = weakref.ref(thing, callback)
    del thing
    assert ref() is None


def test_ctrl_c_inside_a_callback_that_swallows_exceptions_still_ends_the_command() -> None:
    settings = Settings(cluster="memory", cluster_source="--cluster", root=None, timeout=5.0)
    reached: list[str] = []

    async def follow(db: Database) -> str:
        _interrupt_inside_a_weakref_callback()
        with trio.move_on_after(10):  # before the fix: the interrupt was lost, we wait
            await trio.sleep_forever()
        reached.append("the interrupt was lost")
        return "done"

    with pytest.raises(CliError) as info:
        run(settings, follow, bounded=False)
    assert info.value.code == EXIT_INTERRUPTED
    assert reached == []


def test_ctrl_c_while_waiting_ends_the_command() -> None:
    settings = Settings(cluster="memory", cluster_source="--cluster", root=None, timeout=5.0)

    async def follow(db: Database) -> None:
        os.kill(os.getpid(), signal.SIGINT)
        with trio.move_on_after(10):
            await trio.sleep_forever()
        raise AssertionError("not interrupted")

    with pytest.raises(CliError) as info:
        run(settings, follow, bounded=False)
    assert info.value.code == EXIT_INTERRUPTED


def test_the_demo_loop_too() -> None:
    from fdbworkers.cli._common import interruptible

    async def demo() -> int:
        _interrupt_inside_a_weakref_callback()
        with trio.move_on_after(10):
            await trio.sleep_forever()
        return 0

    with pytest.raises(KeyboardInterrupt):
        trio.run(interruptible, demo)
