"""The submit socket: the submit stream for local clients, without gRPC.

A decode loop sends one small job per token and waits for it. Over gRPC each of those round
trips pays HTTP/2 framing, grpc's completion queue and grpc.aio's bridge into the event loop on
both ends: on this kind of machine more than the daemon's own work on the job. A client on the
same machine does not need any of it, so npud serves a fourth Unix socket beside the gRPC,
identity and descriptor sockets, ``<socket>.submit`` (``SOCK_STREAM``), which carries exactly
the ``SubmitStream`` rpc's messages as length-prefixed frames (:mod:`npud.vocab.frames`):

* the client's first frame is a JSON handshake, ``{"version": 1, "token": "<npud-token>"}``;
  the token must be live and issued to the uid the kernel reports for this connection
  (``SO_PEERCRED``), as on the descriptor socket, so a token that leaked to another user opens
  nothing here. The reply is ``{"ok": true, "version": 1, "max_request": <bytes>}``, or
  ``{"ok": false, "error": <npud.errors class>, "message": ...}`` and the connection closes;
* every later frame from the client is one serialised ``npud.v1.SubmitStreamRequest``, and
  every frame back one ``npud.v1.SubmitStreamResponse``: one per request, when its job has
  ended, exactly as the rpc answers (:class:`npud.api.submission.SubmitSession` serves both);
* a frame that is not a request (it does not parse, or it announces more than
  ``max_request`` bytes), or a token revoked since the handshake, is answered by one
  response with tag 0 and the error, and the connection closes: the stream cannot be trusted
  after it, as a gRPC stream ends INVALID_ARGUMENT on a message that does not decode.

What a connection may do is what the same token may do over gRPC: the same core calls, the
same ownership rules, bounds and quotas. It holds a connection's worth of memory at most: one
read's frames of at most ``max_request`` bytes each, and responses up to :data:`HIGH_WATER`
plus one request's readbacks, counting both those waiting to be written and those its jobs in
flight will carry. Past that the daemon stops reading the client's requests until it has read
its responses, so a client that never reads cannot make the daemon buffer without bound. A
uid holds at most :data:`MAX_CONNECTIONS_PER_USER` connections. When the client closes or dies
the stream ends as a cancelled rpc does: its jobs in flight run to their end, their responses
are dropped, and the stream's command buffers are released.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from google.protobuf.message import DecodeError

from npud.api.identity import TokenRegistry, peer_credentials
from npud.api.local_socket import bind_local
from npud.api.state import ApiState, Caller
from npud.api.submission import SubmitSession, Submitter, error_info
from npud.errors import InvalidArgument, NpudError, ResourceExhausted, Unauthenticated
from npud.v1 import job_pb2
from npud.vocab.frames import (
    HEADER,
    PROTOCOL_VERSION,
    READ_CHUNK,
    FrameReader,
    FrameTooLarge,
    frame,
)

MAX_HELLO: Final = 4096
"""The largest handshake frame (a token is a few dozen bytes)."""
MAX_REQUEST: Final = 4 << 20
"""The largest request frame. A decode step's inline command stream is a few hundred bytes;
a larger program belongs in a command buffer, uploaded once and named by each job."""
HIGH_WATER: Final = 4 << 20
"""Response bytes owed to a client (written but not yet read by it, or to come with the
readbacks of its jobs in flight) past which its requests are not read."""
MAX_CONNECTIONS_PER_USER: Final = 64
"""Open submit connections per uid (each is a descriptor in the daemon)."""

_log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SubmitSocketStatistics:
    """What the submit socket has done (a frozen snapshot)."""

    connections: int
    requests: int
    responses: int
    refused: int
    broken: int


class SubmitSocketServer:
    """Serves ``<socket>.submit`` on the running loop (module docstring)."""

    def __init__(
        self,
        state: ApiState,
        tokens: TokenRegistry,
        path: Path,
        *,
        mode: int = 0o660,
        gid: int | None = None,
    ) -> None:
        self._state = state
        self._submitter = Submitter(state)
        self._tokens = tokens
        self._path = path
        self._mode = mode
        self._gid = gid
        self._server: asyncio.AbstractServer | None = None
        self._connections: set[_Connection] = set()
        self.requests = 0
        self.responses = 0
        self.refused = 0
        self.broken = 0

    @property
    def path(self) -> Path:
        """Where the submit socket lives."""
        return self._path

    async def start(self) -> None:
        """Bind the socket (replacing a stale one) with the configured mode and group.

        Raises:
            OSError: the path cannot be bound.
        """
        sock = bind_local(self._path, socket.SOCK_STREAM, self._mode, self._gid)
        loop = asyncio.get_running_loop()
        try:
            self._server = await loop.create_unix_server(
                lambda: _Connection(self), sock=sock, backlog=128
            )
        except BaseException:
            sock.close()
            raise

    def stop_accepting(self) -> None:
        """Accept no more connections; those open go on (their jobs' responses still come)."""
        if self._server is not None:
            self._server.close()

    async def stop(self) -> None:
        """Stop accepting, end every connection, remove the socket file (idempotent)."""
        self.stop_accepting()
        for conn in list(self._connections):
            conn.abort()
        if self._server is not None:
            server, self._server = self._server, None
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 1.0)
        with contextlib.suppress(FileNotFoundError):
            if self._path.is_socket():
                self._path.unlink()

    def statistics(self) -> SubmitSocketStatistics:
        """A snapshot of the socket's counters."""
        return SubmitSocketStatistics(
            connections=len(self._connections),
            requests=self.requests,
            responses=self.responses,
            refused=self.refused,
            broken=self.broken,
        )

    # ---- used by connections ----------------------------------------------------------------

    def admit(self, conn: _Connection) -> bool:
        """Count a new connection in, unless its uid holds the most it may."""
        if sum(1 for c in self._connections if c.uid == conn.uid) >= MAX_CONNECTIONS_PER_USER:
            self.refused += 1
            return False
        self._connections.add(conn)
        return True

    def forget(self, conn: _Connection) -> None:
        """A connection has ended."""
        self._connections.discard(conn)

    def caller(self, uid: int, hello: bytes) -> Caller:
        """Whose stream a handshake opens.

        Raises:
            InvalidArgument: the handshake is not the JSON object described above, or names
                another protocol version.
            Unauthenticated: the token is not live, or was issued to another uid.
            Unavailable: the daemon is shutting down.
        """
        try:
            msg = json.loads(hello)
        except (ValueError, RecursionError):  # 4 KiB of "[" nest deeper than json recurses
            raise InvalidArgument("the handshake is one JSON object") from None
        if not isinstance(msg, dict):
            raise InvalidArgument("the handshake is one JSON object")
        version = msg.get("version")
        if version != PROTOCOL_VERSION:
            raise InvalidArgument(
                f"protocol version {str(version)[:20]!r} is not spoken here; npud speaks "
                f"{PROTOCOL_VERSION}"
            )
        token = msg.get("token")
        owner = self._tokens.owner(token) if isinstance(token, str) else None
        if owner is None:
            raise Unauthenticated(
                "no valid session token: connect to the identity socket first and pass its "
                "token (npud.client does this for you)"
            )
        if owner.uid != uid:
            raise Unauthenticated(
                f"this session token was not issued to uid {uid}, who is connected here"
            )
        self._state.require_serving()
        assert isinstance(token, str)
        return Caller(token, owner, self._state.core.is_admin(owner))

    def live(self, token: str) -> bool:
        """Whether ``token`` has not been revoked since its handshake."""
        return self._tokens.owner(token) is not None

    @property
    def submitter(self) -> Submitter:
        """What submits the connections' jobs."""
        return self._submitter

    @property
    def shutting_down(self) -> bool:
        """Whether the daemon is draining."""
        return self._state.shutting_down


class _Connection(asyncio.BufferedProtocol):
    """One client of the submit socket: its handshake, then its submit stream."""

    def __init__(self, server: SubmitSocketServer) -> None:
        self._server = server
        self._inbox = memoryview(bytearray(READ_CHUNK))
        self._transport: asyncio.Transport | None = None
        self._reader = FrameReader(MAX_HELLO)
        self._session: SubmitSession | None = None
        self._closing = False
        self._backlog: deque[bytes] = deque()
        self._serving = False
        self._writing_paused = False
        self._reading_paused = False
        self.uid = -1

    @property
    def closing(self) -> bool:
        """Whether the connection is ending (nothing more is read from it)."""
        return self._closing

    # ---- the transport's callbacks ----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        sock = transport.get_extra_info("socket")
        try:
            _pid, self.uid, _gid = peer_credentials(sock)
        except OSError:
            self._closing = True
            transport.abort()
            return
        if not self._server.admit(self):
            self._refuse(
                ResourceExhausted(
                    f"uid {self.uid} holds {MAX_CONNECTIONS_PER_USER} submit connections, the "
                    "limit; close some"
                ),
                counted=True,
            )
            return
        transport.set_write_buffer_limits(high=HIGH_WATER)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._inbox

    def buffer_updated(self, nbytes: int) -> None:
        self._received(bytes(self._inbox[:nbytes]))

    def _received(self, data: bytes) -> None:
        if self._closing:
            return
        try:
            frames = self._reader.feed(data)
        except FrameTooLarge as exc:
            what = "a handshake" if self._session is None else "a request"
            self._break(InvalidArgument(f"{what}: {exc}"))
            return
        self._backlog.extend(frames)
        self._serve()

    def eof_received(self) -> bool:
        return False  # the client is done sending: close (its jobs' responses are dropped)

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        if self._session is not None:
            self._session.close()
        self._server.forget(self)

    def pause_writing(self) -> None:
        self._writing_paused = True
        self._serve()

    def resume_writing(self) -> None:
        self._writing_paused = False
        self._serve()

    # ---- backpressure -----------------------------------------------------------------------

    # Why requests wait in a backlog: pausing the transport stops the next read, not the
    # frames of the read already made. A client sending without reading puts hundreds of
    # requests in one read; served at once, each job's readback would be owed to it (1 MiB
    # each made 256 MiB). So frames are served one at a time while the bytes owed (the
    # write buffer plus the readbacks of the jobs in flight) stay within HIGH_WATER; the
    # rest wait, reading pauses, and every response sent or buffer drained looks again.

    def _owed(self) -> int:
        session, transport = self._session, self._transport
        if session is None or transport is None:
            return 0
        return session.owed + transport.get_write_buffer_size()

    def _serve(self) -> None:
        """Serve waiting frames while the client may be owed more, then pause or resume
        reading to match."""
        if self._serving:  # a response sent while serving a frame: the loop goes on
            return
        self._serving = True
        try:
            while (
                self._backlog
                and not self._closing
                and not self._writing_paused
                and self._owed() <= HIGH_WATER
            ):
                body = self._backlog.popleft()
                if self._session is None:
                    self._hello(body)
                else:
                    self._request(body)
        finally:
            self._serving = False
        if self._closing:  # the frame ended the stream: the rest goes unread
            self._backlog.clear()
            return
        transport = self._transport
        if transport is None:
            return
        pause = bool(self._backlog) or self._writing_paused or self._owed() > HIGH_WATER
        if pause and not self._reading_paused:
            self._reading_paused = True
            transport.pause_reading()
        elif not pause and self._reading_paused:
            self._reading_paused = False
            transport.resume_reading()

    # ---- frames -----------------------------------------------------------------------------

    def _hello(self, body: bytes) -> None:
        try:
            caller = self._server.caller(self.uid, body)
        except NpudError as exc:
            self._refuse(exc)
            return
        self._session = SubmitSession(self._server.submitter, caller, self._send)
        self._reader.limit = MAX_REQUEST
        reply = {"ok": True, "version": PROTOCOL_VERSION, "max_request": MAX_REQUEST}
        self._write(json.dumps(reply, separators=(",", ":")).encode())

    def _request(self, body: bytes) -> None:
        session = self._session
        assert session is not None
        if not self._server.live(session.caller.token):
            self._break(
                Unauthenticated("the session token was revoked (its session ended); reconnect")
            )
            return
        req = job_pb2.SubmitStreamRequest()
        try:
            req.ParseFromString(body)
        except DecodeError:
            self._break(InvalidArgument("a request frame is not a SubmitStreamRequest"))
            return
        self._server.requests += 1
        try:
            session.request(req)
        except Exception as exc:  # a bug: say so, and end this stream only
            _log.exception("the submit socket failed on a request")
            self._break(NpudError(f"internal error in the submit socket: {exc!r}"))

    def _send(self, resp: job_pb2.SubmitStreamResponse) -> None:
        self._server.responses += 1
        self._write(resp.SerializeToString())
        if self._reading_paused or self._backlog:
            self._serve()  # a job's readbacks are no longer owed

    def _write(self, body: bytes) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        if len(body) <= 1 << 16:
            transport.write(frame(body))
        else:  # do not copy a large readback just to put four bytes in front of it
            transport.write(HEADER.pack(len(body)))
            transport.write(body)

    # ---- ending -----------------------------------------------------------------------------

    def _refuse(self, exc: NpudError, *, counted: bool = False) -> None:
        """Answer a handshake with ``exc`` and close."""
        if not counted:
            self._server.refused += 1
        reply = {"ok": False, "error": type(exc).__name__, "message": str(exc)[:1024]}
        self._write(json.dumps(reply, separators=(",", ":")).encode())
        self._close()

    def _break(self, exc: NpudError) -> None:
        """End the stream on a frame that cannot be served: one response with tag 0 and the
        error, then close."""
        self._server.broken += 1
        if self._session is None:
            self._refuse(exc, counted=True)
            return
        info = error_info(exc, shutting_down=self._server.shutting_down)
        self._write(job_pb2.SubmitStreamResponse(tag=0, error=info).SerializeToString())
        self._close()

    def _close(self) -> None:
        self._closing = True
        if self._session is not None:
            self._session.close()
        if self._transport is not None:
            self._transport.close()  # what is written still goes out

    def abort(self) -> None:
        """End the connection now (the daemon is stopping)."""
        self._closing = True
        if self._session is not None:
            self._session.close()
        if self._transport is not None:
            self._transport.abort()


__all__ = ["SubmitSocketServer", "SubmitSocketStatistics"]
