"""The engine's watches: :class:`EngineWatch`, from its transaction's commit to its fire.

A watch is pending until its transaction commits, then armed with the store's watch
registry (:class:`~._store.Store`), fired by a change of its key (or at once, by the
transaction's own write), or failed with an error code. Its faults are the engine's
(:class:`~._faults.FaultPlan`): a spurious fire, a delayed delivery, a fire held back
until the faults heal; a partitioned handle delivers no fire.
"""

from __future__ import annotations

import random
from typing import Final, Protocol

from ..._db import Watch
from ..._errors import FDBError
from ..._loop import Event, checkpoint, move_on_at, new_event
from ._faults import FaultPlan
from ._store import Store, StoreWatch

__all__ = ["EngineWatch"]


class _Engine(Protocol):
    """What a watch needs of its engine (:class:`~._database.Engine`)."""

    rng: random.Random
    store: Store
    _held_watches: list[EngineWatch]

    @property
    def faults(self) -> FaultPlan: ...

    def now(self) -> float: ...

    def loop_deadline(self, t: float) -> float: ...


class _Handle(Protocol):
    """What a watch needs of its database handle (:class:`~._database.EngineDatabase`)."""

    _unfired: int
    _watches: set[EngineWatch]
    _waiting_watches: set[EngineWatch]
    _partitioned: bool

    @property
    def engine(self) -> _Engine: ...

    def _count(self, name: str, n: int = 1) -> None: ...


_PENDING: Final = 0  # created, its transaction not committed yet
_ARMED: Final = 1  # registered with the store
_FIRED: Final = 2
_FAILED: Final = 3
_STATE_NAMES: Final = {_PENDING: "pending", _ARMED: "armed", _FIRED: "fired", _FAILED: "failed"}


class EngineWatch(Watch):
    """A watch of the engine; see :class:`fdbworkers.Watch`."""

    def __init__(self, db: _Handle, key: bytes) -> None:
        self._db = db
        self.key = key
        self._value: bytes | None = None
        self._state = _PENDING
        self._error: int | None = None
        self._counted = False
        self._event: Event | None = None
        self._deliver_at = 0.0
        self._spurious_at: float | None = None
        self._store_watch: StoreWatch | None = None

    # -- transitions (synchronous; called by the transaction and the store) ------------
    def _changed(self) -> None:
        ev = self._event
        if ev is not None:
            self._event = None
            ev.set()

    def _release(self) -> None:
        if self._counted:
            self._counted = False
            self._db._unfired -= 1
            self._db._watches.discard(self)

    def _arm(self) -> None:
        if self._state != _PENDING:
            return
        engine = self._db.engine
        faults = engine.faults
        now = engine.now()
        p = faults.spurious_watch_probability
        if p > 0 and engine.rng.random() < p:
            self._fire(now)
            return
        sw = engine.store.add_watch(self.key, self._value, self._on_store_fire)
        if sw is None:
            self._fire(now)
            return
        self._store_watch = sw
        self._state = _ARMED
        if faults.spurious_watch_rate > 0:
            self._spurious_at = now + engine.rng.expovariate(faults.spurious_watch_rate)

    def _on_store_fire(self, _sw: StoreWatch) -> None:
        self._store_watch = None
        self._fire(self._db.engine.now())

    def _fire(self, now: float, *, local: bool = False) -> None:
        if self._state in (_FIRED, _FAILED):
            return
        engine = self._db.engine
        p = engine.faults.lost_watch_probability
        if not local and p > 0 and engine.rng.random() < p:
            engine._held_watches.append(self)  # "never fires" until the engine heals
            self._spurious_at = None
            return
        delay = 0.0
        if not local and engine.faults.watch_delay_max > 0:
            delay = engine.rng.uniform(0.0, engine.faults.watch_delay_max)
        self._deliver_at = now + delay
        self._state = _FIRED
        self._spurious_at = None
        if self._store_watch is not None:
            engine.store.cancel_watch(self._store_watch)
            self._store_watch = None
        self._release()
        self._db._count("watches_fired")
        self._changed()

    def _fail(self, code: int) -> None:
        if self._state == _FAILED:
            return
        self._state = _FAILED
        self._error = code
        self._spurious_at = None
        if self._store_watch is not None:
            self._db.engine.store.cancel_watch(self._store_watch)
            self._store_watch = None
        self._release()
        self._changed()

    def _poll(self) -> None:
        """Promote a spurious fire whose time has come."""
        if self._state == _ARMED and self._spurious_at is not None:
            t = self._spurious_at
            if self._db.engine.now() >= t:
                self._fire(t, local=True)

    # -- the Watch API -----------------------------------------------------------------
    async def wait(self) -> None:
        db = self._db
        engine = db.engine
        while True:
            self._poll()
            st = self._state
            if st == _FAILED:
                await checkpoint()
                assert self._error is not None
                raise FDBError(self._error)
            if st == _FIRED and not db._partitioned and engine.now() >= self._deliver_at:
                await checkpoint()
                if self._state == _FAILED:
                    continue
                return
            ev = self._event
            if ev is None:
                ev = self._event = new_event()
            if st == _FIRED:
                if db._partitioned:
                    db._waiting_watches.add(self)
                    try:
                        await ev.wait()
                    finally:
                        db._waiting_watches.discard(self)
                else:
                    with move_on_at(engine.loop_deadline(self._deliver_at)):
                        await ev.wait()
            elif st == _ARMED and self._spurious_at is not None:
                with move_on_at(engine.loop_deadline(self._spurious_at)):
                    await ev.wait()
            else:
                await ev.wait()

    def cancel(self) -> None:
        if self._state == _FAILED:
            return
        if self._state == _FIRED and self.done:
            return
        self._fail(1101)

    @property
    def done(self) -> bool:
        self._poll()
        st = self._state
        if st == _FAILED:
            return True
        if st == _FIRED:
            return not self._db._partitioned and self._db.engine.now() >= self._deliver_at
        return False

    def __repr__(self) -> str:
        state = _STATE_NAMES[self._state]
        if self._error is not None:
            state += f" error={self._error}"
        return f"<EngineWatch key={self.key!r} {state}>"
