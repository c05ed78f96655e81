"""The submit stream over npud's submit socket: the decode fast path without gRPC.

When npud runs on this machine it serves ``<socket>.submit`` beside its gRPC socket, which
carries the ``SubmitStream`` rpc's very messages as length-prefixed frames (see docs/api.md):
no HTTP/2, no grpc completion queue, so a decode step's round trip costs about half. The
client libraries' ``submit_stream`` uses it when it is there and falls back to the rpc when
it is not (a daemon elsewhere, an older daemon, a socket this user may not open); results,
errors and ordering are the rpc's.

Two lines live here, one per client library: :class:`SocketLine` (blocking, for
:class:`npud.client.SubmitStream`) and :class:`AsyncSocketLine` (a protocol on the event
loop, for :class:`npud.client.aio.AsyncSubmitStream`). Each sends requests and hands back
responses; the streams above them match responses to requests by tag.
"""

from __future__ import annotations

import asyncio
import errno
import json
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

from npud import errors
from npud.client.errors import error_class
from npud.config import submit_socket_for
from npud.v1 import job_pb2
from npud.vocab.frames import PROTOCOL_VERSION, READ_CHUNK, FrameReader, FrameTooLarge, frame

MAX_RESPONSE: Final = 128 << 20
"""The largest response frame accepted (the daemon's readbacks are at most 64 MiB)."""
MAX_HELLO_REPLY: Final = 4096
_ABSENT: Final = frozenset({errno.ENOENT, errno.ECONNREFUSED, errno.EACCES, errno.ENOTSOCK})
"""connect(2) failures that mean "no submit socket for us here": use the rpc instead."""


def _hello(token: str) -> bytes:
    return frame(json.dumps({"version": PROTOCOL_VERSION, "token": token}).encode())


def _check_hello(body: bytes) -> None:
    """Raises the daemon's error when its handshake reply refuses us."""
    try:
        reply = json.loads(body)
    except ValueError:
        raise errors.Unavailable("the submit socket answered the handshake with garbage") from None
    if not isinstance(reply, dict) or reply.get("ok") is not True:
        kind = str(reply.get("error", "")) if isinstance(reply, dict) else ""
        message = reply.get("message", "refused") if isinstance(reply, dict) else "refused"
        raise error_class(kind, None)(f"the submit socket refused the stream: {message}")


def broken_stream(msg: job_pb2.SubmitStreamResponse) -> errors.NpudError | None:
    """The error a tag-0 response carries: the daemon ended the stream for it."""
    if msg.tag != 0 or not msg.HasField("error"):
        return None
    return error_class(msg.error.kind, None)(msg.error.message)


def _absent(exc: OSError) -> bool:
    return exc.errno in _ABSENT or isinstance(exc, (FileNotFoundError, ConnectionRefusedError))


class SocketLine:
    """A blocking submit stream over the submit socket (one thread at a time)."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._reader = FrameReader(MAX_RESPONSE)
        self._frames: list[bytes] = []

    @classmethod
    def connect(cls, socket_path: Path, token: str) -> SocketLine | None:
        """A stream over the submit socket beside ``socket_path``; ``None`` when there is
        no submit socket this process may use (then the rpc serves).

        Raises:
            Unauthenticated, Unavailable, ...: the daemon refused the handshake.
        """
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            sock.connect(str(submit_socket_for(socket_path)))
        except OSError as exc:
            sock.close()
            if _absent(exc):
                return None
            raise errors.Unavailable(f"the submit socket: {exc}") from None
        line = cls(sock)
        try:
            sock.sendall(_hello(token))
            line._reader.limit = MAX_HELLO_REPLY
            _check_hello(line._next_frame())
            line._reader.limit = MAX_RESPONSE
        except BaseException:
            sock.close()
            raise
        return line

    def send(self, req: job_pb2.SubmitStreamRequest) -> None:
        """Send one request.

        Raises:
            Unavailable: the daemon closed the stream.
        """
        try:
            self._sock.sendall(frame(req.SerializeToString()))
        except OSError as exc:
            raise errors.Unavailable(f"the submit stream ended: {exc}") from None

    def receive(self) -> job_pb2.SubmitStreamResponse:
        """The next response, waiting for it.

        Raises:
            Unavailable: the stream ended (the daemon went away or shut down).
            NpudError: the daemon ended the stream for a request it could not serve.
        """
        msg = job_pb2.SubmitStreamResponse()
        msg.ParseFromString(self._next_frame())
        failure = broken_stream(msg)
        if failure is not None:
            raise failure
        return msg

    def _next_frame(self) -> bytes:
        while not self._frames:
            try:
                data = self._sock.recv(READ_CHUNK)
            except OSError as exc:
                raise errors.Unavailable(f"the submit stream ended: {exc}") from None
            if not data:
                raise errors.Unavailable("the submit stream ended (daemon shutting down?)")
            try:
                self._frames.extend(self._reader.feed(data))
            except FrameTooLarge as exc:
                raise errors.Unavailable(f"the submit stream broke: {exc}") from None
        return self._frames.pop(0)

    def close(self) -> None:
        """End the stream (jobs already sent still run; their results are dropped)."""
        self._sock.close()


class AsyncSocketLine(asyncio.BufferedProtocol):
    """The submit stream over the submit socket, on the event loop.

    Each response goes to ``deliver`` as it arrives; when the stream ends or breaks,
    ``fail`` gets the error once (and nothing more is delivered).
    """

    def __init__(
        self,
        deliver: Callable[[job_pb2.SubmitStreamResponse], None],
        fail: Callable[[BaseException], None],
    ) -> None:
        self._deliver = deliver
        self._fail = fail
        self._reader = FrameReader(MAX_HELLO_REPLY)
        self._inbox = memoryview(bytearray(READ_CHUNK))
        self._transport: asyncio.Transport | None = None
        self._hello: asyncio.Future[None] | None = None
        self._can_write: asyncio.Event = asyncio.Event()
        self._can_write.set()
        self._ended = False

    @classmethod
    async def open(
        cls,
        socket_path: Path,
        token: str,
        deliver: Callable[[job_pb2.SubmitStreamResponse], None],
        fail: Callable[[BaseException], None],
    ) -> AsyncSocketLine | None:
        """A stream over the submit socket beside ``socket_path``, handshake done; ``None``
        when there is no submit socket this process may use (then the rpc serves).

        Raises:
            Unauthenticated, Unavailable, ...: the daemon refused the handshake.
        """
        loop = asyncio.get_running_loop()
        line = cls(deliver, fail)
        line._hello = loop.create_future()
        try:
            await loop.create_unix_connection(lambda: line, str(submit_socket_for(socket_path)))
        except OSError as exc:
            if _absent(exc):
                return None
            raise errors.Unavailable(f"the submit socket: {exc}") from None
        assert line._transport is not None
        line._transport.write(_hello(token))
        try:
            await line._hello
        except BaseException:
            line._transport.abort()
            raise
        return line

    async def write(self, req: job_pb2.SubmitStreamRequest) -> None:
        """Send one request (waiting while the daemon is not reading).

        Raises:
            Unavailable: the stream has ended.
        """
        if not self._can_write.is_set():
            await self._can_write.wait()
        transport = self._transport
        if self._ended or transport is None or transport.is_closing():
            raise errors.Unavailable("the submit stream ended (daemon shutting down?)")
        transport.write(frame(req.SerializeToString()))

    def close(self) -> None:
        """End the stream (jobs already sent still run; their results are dropped)."""
        self._ended = True
        if self._transport is not None:
            self._transport.abort()

    # ---- the transport's callbacks ----------------------------------------------------------

    def connection_made(self, transport: Any) -> None:
        self._transport = transport

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._inbox

    def buffer_updated(self, nbytes: int) -> None:
        try:
            bodies = self._reader.feed(bytes(self._inbox[:nbytes]))
        except FrameTooLarge as exc:
            self._end(errors.Unavailable(f"the submit stream broke: {exc}"))
            return
        for body in bodies:
            if self._ended:
                return
            hello = self._hello
            if hello is not None:
                self._hello = None
                try:
                    _check_hello(body)
                except errors.NpudError as exc:
                    self._ended = True
                    hello.set_exception(exc)
                    return
                self._reader.limit = MAX_RESPONSE
                hello.set_result(None)
                continue
            msg = job_pb2.SubmitStreamResponse()
            try:
                msg.ParseFromString(body)
            except Exception:
                self._end(errors.Unavailable("the submit stream sent a response I cannot parse"))
                return
            failure = broken_stream(msg)
            if failure is not None:
                self._end(failure)
                return
            self._deliver(msg)

    def connection_lost(self, exc: Exception | None) -> None:
        self._can_write.set()
        self._end(errors.Unavailable("the submit stream ended (daemon shutting down?)"))

    def pause_writing(self) -> None:
        self._can_write.clear()

    def resume_writing(self) -> None:
        self._can_write.set()

    def _end(self, exc: BaseException) -> None:
        if self._hello is not None and not self._hello.done():
            self._hello.set_exception(exc)
            self._hello = None
        if not self._ended:
            self._ended = True
            self._fail(exc)
        if self._transport is not None:
            self._transport.abort()


__all__ = ["AsyncSocketLine", "SocketLine", "broken_stream"]
