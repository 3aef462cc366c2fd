"""The dev-server client's connection: one TCP connection and the answers it waits for.

A :class:`_Connection` sends the frames of :mod:`fdbworkers._backends.wire` in order
(one writer task), matches answers to requests by id (a reader task), and pings (a
keepalive task); losing it fails every pending answer with :class:`ConnectionLostError`
(1026, or 1021 for a commit in flight). Used by :mod:`fdbworkers._backends.remote`
(the database) and :mod:`fdbworkers._backends.remote_transaction`.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Awaitable, Callable
from typing import Any, Final

import anyio
import anyio.abc
import anyio.lowlevel

from .._errors import ConfigError, FDBError
from .._log import get_logger
from .._loop import current_token
from .wire import (
    _BATCH_BYTES,
    STATUS_EXCEPTION,
    STATUS_OK,
    STATUS_PROTOCOL_ERROR,
    FrameReader,
    ProtocolError,
    encode_frame,
)

__all__ = ["COMMIT_UNKNOWN_RESULT", "CONNECTION_FAILED", "ConnectionLostError"]

log = get_logger("fdbworkers.remote")

#: FDB's ``connection_failed``: the error of every operation on a lost connection.
CONNECTION_FAILED: Final = 1026
#: FDB's ``commit_unknown_result``: a commit in flight when the connection was lost.
COMMIT_UNKNOWN_RESULT: Final = 1021
#: How often the client pings (a connection silent for ``keepalive_timeout`` is lost).
KEEPALIVE_INTERVAL: Final = 1.0


# --------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------


class ConnectionLostError(FDBError):
    """An :class:`FDBError` (1026 ``connection_failed``, or 1021 for a commit in flight)
    caused by losing the connection to the dev server, not by the engine."""


_LOCAL_EXCEPTIONS: Final[dict[str, type[Exception]]] = {
    "ConfigError": ConfigError,
    "TypeError": TypeError,
    "ValueError": ValueError,
}


def _error_of(status: int, payload: Any) -> Exception:
    if status > 0:
        return FDBError(status, payload if isinstance(payload, str) and payload else None)
    if status == STATUS_EXCEPTION and isinstance(payload, list) and len(payload) == 2:
        kind = _LOCAL_EXCEPTIONS.get(str(payload[0]))
        if kind is not None:
            return kind(str(payload[1]))
        return FDBError(4100, f"dev server: {payload[0]}: {payload[1]}")
    return FDBError(4100, f"dev server: unexpected status {status}: {payload!r}")


# --------------------------------------------------------------------------------------
# The connection
# --------------------------------------------------------------------------------------


class _Slot:
    """The answer to one request (or a watch / versionstamp), set once."""

    __slots__ = ("commit", "error", "event", "value")

    def __init__(self, *, commit: bool = False) -> None:
        self.event = anyio.Event()
        self.value: Any = None
        self.error: BaseException | None = None
        self.commit = commit

    @property
    def done(self) -> bool:
        return self.event.is_set()

    def resolve(self, value: Any) -> None:
        if not self.event.is_set():
            self.value = value
            self.event.set()

    def fail(self, error: BaseException) -> None:
        if not self.event.is_set():
            self.error = error
            self.event.set()

    def result(self) -> Any:
        if self.error is not None:
            raise self.error
        return self.value


class _Connection:
    """One TCP connection to the server: a writer task sends queued frames in order, a
    reader task matches answers to requests by id, a keepalive task pings. The tasks
    run in a system task of the loop (a database handle has no task group of its own:
    ``fdbworkers._loop.spawn_system_task``); only the
    writer touches the sending side, so a cancelled caller never leaves half a frame."""

    def __init__(
        self,
        stream: anyio.abc.ByteStream,
        reader: FrameReader,
        address: str,
        keepalive_timeout: float,
    ) -> None:
        self._stream = stream
        self._reader = reader
        self.address = address
        self._keepalive_timeout = keepalive_timeout
        self._send_ch, self._recv_ch = anyio.create_memory_object_stream[bytes](math.inf)
        self._pending: dict[int, _Slot] = {}
        self._next_id = 1
        self._next_tid = 1
        self._dropped: list[int] = []
        self._last_rx = anyio.current_time()
        self._scope = anyio.CancelScope()
        self._token = current_token()
        self.error: ConnectionLostError | None = None

    # -- state ---------------------------------------------------------------------------
    @property
    def alive(self) -> bool:
        if self.error is not None:
            return False
        return self._token.is_current()

    def lost_error(self, *, commit: bool = False) -> ConnectionLostError:
        reason = self.error.description if self.error is not None else "closed"
        if commit:
            return ConnectionLostError(
                COMMIT_UNKNOWN_RESULT,
                f"Transaction may or may not have committed ({reason})",
            )
        return ConnectionLostError(CONNECTION_FAILED, reason)

    def fail(self, reason: str, *, expected: bool = False) -> None:
        """Declare the connection lost: every pending answer fails; idempotent."""
        if self.error is not None:
            return
        self.error = ConnectionLostError(
            CONNECTION_FAILED, f"Network connection failed: dev server {self.address}: {reason}"
        )
        pending, self._pending = self._pending, {}
        for slot in pending.values():
            slot.fail(self.lost_error(commit=slot.commit))
        self._send_ch.close()
        self._scope.cancel()
        if expected:
            log.debug("devserver_connection_closed", address=self.address, reason=reason)
        else:
            log.warning("devserver_connection_lost", address=self.address, reason=reason)

    # -- sending -------------------------------------------------------------------------
    def new_tid(self) -> int:
        tid = self._next_tid
        self._next_tid += 1
        return tid

    def send(self, *message: Any) -> None:
        """Queue a frame (never blocks; dropped silently once the connection is lost:
        the operation that waits next reports the loss)."""
        if self.error is not None:
            return
        with contextlib.suppress(anyio.ClosedResourceError, anyio.BrokenResourceError):
            self._send_ch.send_nowait(encode_frame(list(message)))

    def register(self, slot: _Slot) -> int:
        """A request id whose answer resolves ``slot``."""
        rid = self._next_id
        self._next_id += 1
        if self.error is not None:
            slot.fail(self.lost_error(commit=slot.commit))
        else:
            self._pending[rid] = slot
        return rid

    def forget(self, rid: int) -> None:
        """Stop waiting for ``rid`` and ask the server to cancel it."""
        if self._pending.pop(rid, None) is not None:
            self.send("cancel", rid)

    def drop_later(self, tid: int) -> None:
        """A client transaction was garbage-collected (called from a finalizer: only a
        list append here; the writer sends the ids with its next batch)."""
        self._dropped.append(tid)

    async def call(self, op: str, *args: Any, commit: bool = False, deadline: float) -> Any:
        """Send ``[op, id, *args]`` and wait for its answer. A cancelled or timed-out
        caller withdraws the request (the server cancels it); the connection stays
        usable. Past ``deadline`` raises 1031 transaction_timed_out."""
        if not self.alive:
            raise self.lost_error(commit=False)
        slot = _Slot(commit=commit)
        rid = self.register(slot)
        self.send(op, rid, *args)
        try:
            with anyio.move_on_at(deadline):
                await slot.event.wait()
        finally:
            if not slot.done:
                self.forget(rid)
        if not slot.done:
            raise FDBError(1031)
        return slot.result()

    # -- the tasks -----------------------------------------------------------------------
    async def run(self) -> None:
        try:
            with self._scope:
                async with anyio.create_task_group() as nursery:
                    nursery.start_soon(self._guard, self._read_loop)
                    nursery.start_soon(self._guard, self._write_loop)
                    nursery.start_soon(self._guard, self._keepalive_loop)
        finally:
            self.fail("the connection was closed", expected=True)
            await anyio.aclose_forcefully(self._stream)

    async def close(self) -> None:
        self.fail("the database handle was closed", expected=True)
        await anyio.lowlevel.checkpoint()

    async def _guard(self, fn: Callable[[], Awaitable[None]]) -> None:
        try:
            await fn()
        except ProtocolError as e:
            self.fail(f"protocol error: {e}")
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            self.fail("the connection was closed")
        except OSError as e:
            self.fail(f"{type(e).__name__}: {e}")
        except Exception as e:  # a bug: never let a system task crash the run
            log.exception("devserver_client_internal_error", address=self.address)
            self.fail(f"internal error: {e!r}")

    async def _read_loop(self) -> None:
        while True:
            message = await self._reader.receive()
            if message is None:
                self.fail("the server closed the connection")
                return
            self._last_rx = anyio.current_time()
            if len(message) != 3 or not isinstance(message[0], int):
                raise ProtocolError(f"bad answer {message!r:.200}")
            rid, status, payload = message
            if status == STATUS_PROTOCOL_ERROR:
                self.fail(f"the server reported a protocol error: {payload}")
                return
            slot = self._pending.pop(rid, None)
            if slot is None:
                continue  # a ping, or the answer to a withdrawn request
            if status == STATUS_OK:
                slot.resolve(payload)
            else:
                slot.fail(_error_of(int(status), payload))

    async def _write_loop(self) -> None:
        async for first in self._recv_ch:
            chunks = [first]
            size = len(first)
            while size < _BATCH_BYTES:
                try:
                    more = self._recv_ch.receive_nowait()
                except (anyio.WouldBlock, anyio.EndOfStream):
                    break
                chunks.append(more)
                size += len(more)
            if self._dropped:
                dropped, self._dropped = self._dropped, []
                chunks.append(encode_frame(["drop", dropped]))
            await self._stream.send(b"".join(chunks))

    async def _keepalive_loop(self) -> None:
        while True:
            await anyio.sleep(KEEPALIVE_INTERVAL)
            silent = anyio.current_time() - self._last_rx
            if silent > self._keepalive_timeout:
                self.fail(f"no answer from the server for {silent:.1f} s")
                return
            self.send("ping", 0)
