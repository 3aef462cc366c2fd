"""The dev server's wire protocol, shared by the client (remote) and the server (devserver).

* frames: a 4-byte big-endian length, then a msgpack array; a frame is at most
  MAX_FRAME_SIZE bytes;
* client -> server: [op, ...]. Operations that answer carry a request id chosen by the
  client ([op, id, ...]); the others (set, clear, atomic ops, options...) are pipelined
  without waiting, since frames are processed in order;
* server -> client: [id, status, payload]: status 0 is success, a positive status is an
  FDB error code (payload: its description), -1 a local exception of the server (payload:
  [type name, message]) and -2 a protocol error after which the server closes the
  connection. Watches and versionstamps are requests whose answer comes when they fire or
  resolve. docs/devserver.md describes every operation."""

from __future__ import annotations

import struct
from typing import Any, Final

import anyio
import anyio.abc
import msgpack

#: Version of the wire protocol; client and server must agree (checked by ``hello``).
PROTOCOL_VERSION: Final = 1


#: The largest frame either side accepts (a range read answer is one frame).
MAX_FRAME_SIZE: Final = 128 * 1024 * 1024


#: Response statuses besides FDB error codes (> 0).
STATUS_OK: Final = 0


STATUS_EXCEPTION: Final = -1


STATUS_PROTOCOL_ERROR: Final = -2


_HEADER = struct.Struct(">I")


_BATCH_BYTES = 1 << 20


class ProtocolError(Exception):
    """The peer sent something that is not a valid frame or message."""


def encode_frame(message: list[Any]) -> bytes:
    """One frame: length prefix + msgpack body. Raises :class:`ProtocolError` when the
    message is larger than :data:`MAX_FRAME_SIZE`."""
    body: bytes = msgpack.packb(message, use_bin_type=True)
    if len(body) > MAX_FRAME_SIZE:
        raise ProtocolError(f"frame of {len(body)} bytes exceeds {MAX_FRAME_SIZE}")
    return _HEADER.pack(len(body)) + body


class FrameReader:
    """Reads whole frames from a byte stream (one reader task at a time)."""

    def __init__(self, stream: anyio.abc.ByteReceiveStream, max_size: int = MAX_FRAME_SIZE) -> None:
        self._stream = stream
        self._buf = bytearray()
        self._max = max_size

    @property
    def max_size(self) -> int:
        """The largest frame accepted; a longer one is a ProtocolError as soon as its
        length prefix arrives, so the buffer never holds more than this plus one read."""
        return self._max

    @max_size.setter
    def max_size(self, size: int) -> None:
        self._max = size

    async def receive(self) -> list[Any] | None:
        """The next message, or None at a clean end of stream (between frames)."""
        while True:
            if len(self._buf) >= _HEADER.size:
                (size,) = _HEADER.unpack_from(self._buf)
                if size == 0 or size > self._max:
                    raise ProtocolError(f"bad frame length {size} (at most {self._max} bytes)")
                end = _HEADER.size + size
                if len(self._buf) >= end:
                    body = bytes(self._buf[_HEADER.size : end])
                    del self._buf[:end]
                    return _decode(body)
            try:
                chunk = await self._stream.receive(max(65536, _HEADER.size))
            except anyio.EndOfStream:
                chunk = b""
            if not chunk:
                if self._buf:
                    raise ProtocolError("the stream ended in the middle of a frame")
                return None
            self._buf += chunk


def _decode(body: bytes) -> list[Any]:
    try:
        message = msgpack.unpackb(body, raw=False, strict_map_key=False)
    except Exception as e:
        raise ProtocolError(f"undecodable frame: {e}") from None
    if not isinstance(message, list) or not message:
        raise ProtocolError(f"a frame must hold a non-empty array, not {type(message).__name__}")
    return message
