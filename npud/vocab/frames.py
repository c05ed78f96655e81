"""Length-prefixed frames: how messages cross npud's submit socket.

A byte stream has no message boundaries, so each message travels as a *frame*: its length as
four bytes, little-endian, then that many bytes. The daemon and the client library cut the
stream with the same :class:`FrameReader`; each side names the largest frame it accepts, and a
header that announces more is refused before a byte of the body is buffered, so a peer cannot
make the other side hold more than one frame's worth of its data.

The first frame each way is a JSON object (the handshake), every later one a serialised
protobuf message (see :mod:`npud.api.submit_socket`).
"""

from __future__ import annotations

import struct
from typing import Final

HEADER: Final = struct.Struct("<I")
"""A frame's header: the body's length in bytes."""

PROTOCOL_VERSION: Final = 1
"""The submit socket's protocol, named in the handshake both ways."""

READ_CHUNK: Final = 1 << 16
"""Bytes read from the socket at a time. asyncio's transports read 256 KiB by default, and a
buffer that large is past malloc's mmap threshold: every read mapped and unmapped it, 20 us
a read against 3 us for this size (so the protocols lend asyncio their own buffer)."""


class FrameTooLarge(ValueError):
    """A header announced a frame larger than the reader accepts."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"a frame of {size} bytes was announced; the limit is {limit}")
        self.size = size
        self.limit = limit


def frame(body: bytes) -> bytes:
    """``body`` with its header in front."""
    return HEADER.pack(len(body)) + body


class FrameReader:
    """Cuts a byte stream into frame bodies, at most ``limit`` bytes each."""

    __slots__ = ("_buf", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._buf = bytearray()

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as a whole frame."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[bytes]:
        """The frames that ``data`` completes, in order (often none, often exactly one).

        Raises:
            FrameTooLarge: a header announced more than :attr:`limit` bytes; the reader is
                then unusable (the stream cannot be resynchronised).
        """
        buf = self._buf
        # Why a fast path: on a local socket almost every read is exactly one whole frame,
        # and cutting it from the bytes we were handed skips two copies.
        if not buf and len(data) >= HEADER.size:
            (size,) = HEADER.unpack_from(data)
            if size > self.limit:
                raise FrameTooLarge(size, self.limit)
            if len(data) == HEADER.size + size:
                return [data[HEADER.size :]]
        buf += data
        out: list[bytes] = []
        pos, end = 0, len(buf)
        while end - pos >= HEADER.size:
            (size,) = HEADER.unpack_from(buf, pos)
            if size > self.limit:
                raise FrameTooLarge(size, self.limit)
            stop = pos + HEADER.size + size
            if stop > end:
                break
            out.append(bytes(buf[pos + HEADER.size : stop]))
            pos = stop
        del buf[:pos]
        return out


__all__ = ["HEADER", "PROTOCOL_VERSION", "READ_CHUNK", "FrameReader", "FrameTooLarge", "frame"]
