"""The engine's versionstamp futures: what ``tr.get_versionstamp()`` hands out, resolved by
the transaction when its commit succeeds (the versionstamp) or fails (an error code:
1100 when the attempt is reset, 2020 after a failed commit, 2021 for a read-only one).
"""

from __future__ import annotations

from ..._db import VersionstampFuture
from ..._errors import FDBError
from ..._loop import Event, checkpoint, new_event

__all__ = ["EngineVersionstampFuture"]


class _VersionstampState:
    __slots__ = ("error", "event", "stamp")

    def __init__(self) -> None:
        self.stamp: bytes | None = None
        self.error: int | None = None
        self.event: Event | None = None

    @property
    def resolved(self) -> bool:
        return self.stamp is not None or self.error is not None

    def resolve(self, stamp: bytes | None, error: int | None = None) -> None:
        if self.resolved:
            return
        self.stamp = stamp
        self.error = error
        if self.event is not None:
            self.event.set()


class EngineVersionstampFuture(VersionstampFuture):
    def __init__(self, state: _VersionstampState) -> None:
        self._state = state

    async def get(self) -> bytes:
        st = self._state
        if not st.resolved:
            if st.event is None:
                st.event = new_event()
            await st.event.wait()
        else:
            await checkpoint()
        if st.error is not None:
            raise FDBError(st.error)
        assert st.stamp is not None
        return st.stamp

    def __repr__(self) -> str:
        st = self._state
        if st.error is not None:
            return f"<EngineVersionstampFuture error={st.error}>"
        if st.stamp is not None:
            return f"<EngineVersionstampFuture {st.stamp.hex()}>"
        return "<EngineVersionstampFuture pending>"
