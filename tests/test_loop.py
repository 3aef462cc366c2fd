"""fdbworkers/_loop.py: the running loop's own primitives, under trio and asyncio (each
on its virtual clock)."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import anyio
import anyio.abc
import pytest
import sniffio
import trio

from fdbworkers import Job, _loop

pytestmark = pytest.mark.anyio


async def test_the_helpers_use_the_running_loops_own_primitives() -> None:
    under_trio = sniffio.current_async_library() == "trio"
    assert _loop.in_trio() is under_trio
    event = _loop.new_event()
    assert type(event) is (trio.Event if under_trio else asyncio.Event)
    scope = _loop.cancel_scope()
    assert isinstance(scope, trio.CancelScope if under_trio else anyio.CancelScope)
    async with _loop.open_task_group() as group:
        assert isinstance(group, trio.Nursery if under_trio else anyio.abc.TaskGroup)

    start = _loop.current_time()
    assert start == anyio.current_time()
    await _loop.sleep(1.5)
    assert _loop.current_time() - start == pytest.approx(1.5)
    await _loop.checkpoint()


async def test_events_deadlines_and_task_groups() -> None:
    event = _loop.new_event()
    with _loop.move_on_after(2.0) as timer:
        await event.wait()
    assert timer.cancelled_caught and not event.is_set()

    async def set_later() -> None:
        await _loop.sleep(1.0)
        event.set()

    async with _loop.open_task_group() as group:
        group.start_soon(set_later)
        with _loop.move_on_at(_loop.current_time() + 10.0) as timer:
            await event.wait()
    assert not timer.cancelled_caught and event.is_set()

    scope = _loop.cancel_scope(deadline=_loop.current_time() + 1.0)
    with scope:
        await anyio.sleep_forever()
    assert scope.cancelled_caught and scope.cancel_called

    async with _loop.open_task_group() as group:
        group.start_soon(anyio.sleep_forever)
        group.cancel_scope.cancel()
    assert group.cancel_scope.cancel_called


async def test_a_jobs_stopping_event_is_the_loops_own() -> None:
    # trio programs keep the trio.Event they had; asyncio programs get asyncio's.
    job = Job("j", "r", 0, None, 1.0, b"\0" * 10, cast(Any, None))
    under_trio = sniffio.current_async_library() == "trio"
    assert type(job.stopping) is (trio.Event if under_trio else asyncio.Event)
    assert not job.stopping.is_set()
