"""The descriptor socket: buffers handed to local clients as file descriptors.

grpcio cannot carry a file descriptor, so bulk data in gRPC is bytes copied through the
socket, the protobuf codec and the daemon. A local client does better with the buffer's
memory itself: npud serves a third Unix socket beside the gRPC and identity sockets,
``<socket>.buffers`` (``SOCK_SEQPACKET``: one JSON request per packet, one reply per
request, descriptors as ``SCM_RIGHTS`` ancillary data), where a client

* **exports** a buffer of one of its contexts: the reply carries a descriptor of the buffer's
  device memory (a memfd on the simulated NPU, a dma-buf where a driver exports one) that the
  client maps and reads or writes in place. Writable for EPHEMERAL buffers; a sealed
  persistent buffer's is read-only (memfd seals, :mod:`npud.core.memfd`). The buffer stays
  pinned (resident, unmoved) for that context while the *lease* lasts: until the client
  releases it, closes the connection or dies, or the context releases the buffer;
* **imports** its own memory as a new sealed PERSISTENT buffer: it sends a memfd it has
  sealed against writes and resizing, and the device maps those very pages (nothing is
  copied, and no one can change them any more).

Every request carries the session token (``npud-token`` of the identity handshake), and the
token's kernel-verified uid must be the uid the kernel reports for this connection
(``SO_PEERCRED``): a token that leaked to another user opens nothing here. Beyond that, a
request reaches exactly what the same token reaches over gRPC (core's ownership rules, quotas
and NOT_FOUND for other owners' ids). Requests are served on the event loop, like rpcs.

Wire, requests (``token`` in each)::

    {"op": "export", "token", "context_id", "buffer_id", "writable": bool}
    {"op": "import", "token", "context_id", "size", "usage", "tier", "key"}  + one memfd
    {"op": "release", "lease"}

replies ``{"ok": true, "lease"?, "buffer"?}`` (``buffer``: the ``npud.v1.Buffer`` message,
base64) with the descriptor attached to an export's reply, or ``{"ok": false, "error":
<npud.errors class>, "message"}``. ``usage`` and ``tier`` are the wire enums' numbers.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from npud.api.convert import buffer_to_wire, preference_from_wire, usage_from_wire
from npud.api.identity import TokenRegistry, peer_credentials
from npud.api.local_socket import bind_local
from npud.core.ids import BufferId, ContextId
from npud.core.owner import Owner
from npud.core.service import Core
from npud.errors import InvalidArgument, NpudError, ResourceExhausted, Unauthenticated

MAX_REQUEST: Final = 4096
"""Largest request packet (a key is at most a few hundred bytes)."""
MAX_LEASES: Final = 4096
"""Leases one connection may hold at once."""
MAX_CONNECTIONS_PER_USER: Final = 64
"""Open descriptor connections per uid (each is a descriptor in the daemon)."""


@dataclass(frozen=True, slots=True)
class DescriptorStatistics:
    """What the descriptor socket has done (a frozen snapshot)."""

    connections: int
    leases: int
    exported: int
    exported_bytes: int
    imported: int
    imported_bytes: int
    refused: int
    backing_pending: int
    backing_errors: int


@dataclass(frozen=True, slots=True)
class _Lease:
    owner: Owner
    context_id: ContextId
    buffer_id: BufferId


@dataclass(slots=True, eq=False)
class _Peer:
    """One client connection and the leases it holds."""

    sock: socket.socket
    pid: int
    uid: int
    leases: dict[int, _Lease] = field(default_factory=dict)


class DescriptorServer:
    """Serves ``<socket>.buffers`` on the running loop (module docstring)."""

    def __init__(
        self,
        core: Core,
        tokens: TokenRegistry,
        path: Path,
        *,
        mode: int = 0o660,
        gid: int | None = None,
        serving: Any = None,
    ) -> None:
        """``serving()`` (optional) raises Unavailable while the daemon drains."""
        self._core = core
        self._tokens = tokens
        self._path = path
        self._mode = mode
        self._gid = gid
        self._serving = serving
        self._listener: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._peers: dict[int, _Peer] = {}
        self._lease_ids = itertools.count(1)
        self._exported = self._exported_bytes = 0
        self._imported = self._imported_bytes = 0
        self._refused = 0
        self._backing_errors = 0
        self._behind: set[asyncio.Future[Callable[[], None]]] = set()

    @property
    def path(self) -> Path:
        """Where the descriptor socket lives."""
        return self._path

    async def start(self) -> None:
        """Bind the socket (replacing a stale one) with the configured mode and group.

        Raises:
            OSError: the path cannot be bound.
        """
        sock = bind_local(self._path, socket.SOCK_SEQPACKET, self._mode, self._gid)
        try:
            sock.listen(64)
        except BaseException:
            sock.close()
            raise
        self._listener = sock
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(sock.fileno(), self._accept)

    async def stop(self) -> None:
        """Stop accepting, end every connection (releasing its leases), remove the socket
        file (idempotent)."""
        if self._listener is not None and self._loop is not None:
            self._loop.remove_reader(self._listener.fileno())
            self._listener.close()
            self._listener = None
        for peer in list(self._peers.values()):
            self._close(peer)
        if self._behind:  # let backing copies in progress finish (they name their blobs)
            await asyncio.gather(*self._behind, return_exceptions=True)
        with contextlib.suppress(FileNotFoundError):
            self._path.unlink()

    def statistics(self) -> DescriptorStatistics:
        """A snapshot of the socket's counters."""
        return DescriptorStatistics(
            connections=len(self._peers),
            leases=sum(len(p.leases) for p in self._peers.values()),
            exported=self._exported,
            exported_bytes=self._exported_bytes,
            imported=self._imported,
            imported_bytes=self._imported_bytes,
            refused=self._refused,
            backing_pending=len(self._behind),
            backing_errors=self._backing_errors,
        )

    # ---- connections ------------------------------------------------------------------------

    def _accept(self) -> None:
        assert self._listener is not None
        assert self._loop is not None
        while True:
            try:
                conn, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return  # out of descriptors or the like: the client sees its connect fail
            try:
                pid, uid, _gid = peer_credentials(conn)
            except OSError:
                conn.close()
                continue
            if sum(1 for p in self._peers.values() if p.uid == uid) >= MAX_CONNECTIONS_PER_USER:
                self._refused += 1
                conn.close()
                continue
            conn.setblocking(False)
            peer = _Peer(conn, pid, uid)
            self._peers[conn.fileno()] = peer
            self._loop.add_reader(conn.fileno(), self._readable, peer)

    def _close(self, peer: _Peer) -> None:
        """End a connection: every lease it holds is released (the client's mappings stay
        valid memory for it, but the buffers are pinned no more)."""
        if self._peers.pop(peer.sock.fileno(), None) is None:
            return
        assert self._loop is not None
        self._loop.remove_reader(peer.sock.fileno())
        for lease in peer.leases.values():
            self._unpin(lease)
        peer.leases.clear()
        peer.sock.close()

    def _unpin(self, lease: _Lease) -> None:
        # The context may have released the buffer or closed already: its pins went with it.
        with contextlib.suppress(NpudError):
            self._core.unpin_buffer(lease.owner, lease.context_id, lease.buffer_id)

    def _readable(self, peer: _Peer) -> None:
        while True:
            try:
                data, fds, flags, _ = socket.recv_fds(peer.sock, MAX_REQUEST, 1)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self._close(peer)
                return
            if not data and not fds:
                self._close(peer)  # end of file: the client closed or died
                return
            try:
                reply, out = self._serve(peer, data, fds, flags)
            finally:
                for fd in fds:
                    os.close(fd)
            try:
                payload = json.dumps(reply, separators=(",", ":")).encode()
                if out is not None:
                    socket.send_fds(peer.sock, [payload], [out])
                else:
                    peer.sock.send(payload)
            except OSError:
                self._close(peer)  # the client is gone (or not reading): drop its leases
                return
            finally:
                if out is not None:
                    os.close(out)

    # ---- requests ---------------------------------------------------------------------------

    def _serve(
        self, peer: _Peer, data: bytes, fds: list[int], flags: int
    ) -> tuple[dict[str, Any], int | None]:
        try:
            if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
                raise InvalidArgument(
                    f"a request is one packet of at most {MAX_REQUEST} bytes and one descriptor"
                )
            try:
                request = json.loads(data)
            except (ValueError, RecursionError):  # 4 KiB of "[" nest deeper than json recurses
                raise InvalidArgument("a request is one JSON object") from None
            if not isinstance(request, dict):
                raise InvalidArgument("a request is one JSON object")
            op = request.get("op")
            if op == "release":
                lease = peer.leases.pop(_integer(request, "lease"), None)
                if lease is not None:
                    self._unpin(lease)
                return {"ok": True}, None
            owner = self._owner(peer, request)
            if self._serving is not None:
                self._serving()
            if op == "export":
                return self._export(peer, owner, request)
            if op == "import":
                if len(fds) != 1:
                    raise InvalidArgument("an import carries exactly one descriptor (a memfd)")
                return self._import(owner, request, fds[0]), None
            raise InvalidArgument(f"unknown op {str(op)[:40]!r}: export, import or release")
        except NpudError as exc:
            self._refused += 1
            return {"ok": False, "error": type(exc).__name__, "message": str(exc)}, None

    def _owner(self, peer: _Peer, request: dict[str, Any]) -> Owner:
        token = request.get("token")
        owner = self._tokens.owner(token) if isinstance(token, str) else None
        if owner is None:
            raise Unauthenticated(
                "no valid session token: connect to the identity socket first and pass its "
                "token (npud.client does this for you)"
            )
        if owner.uid != peer.uid:
            raise Unauthenticated(
                f"this session token was not issued to uid {peer.uid}, who is connected here"
            )
        return owner

    def _export(
        self, peer: _Peer, owner: Owner, request: dict[str, Any]
    ) -> tuple[dict[str, Any], int]:
        if len(peer.leases) >= MAX_LEASES:
            raise ResourceExhausted(
                f"this connection holds {len(peer.leases)} buffer leases, the limit; release "
                "some (or open another connection)"
            )
        ctx_id = ContextId(_text(request, "context_id"))
        buf_id = BufferId(_text(request, "buffer_id"))
        writable = request.get("writable", False)
        if not isinstance(writable, bool):
            raise InvalidArgument("writable: true or false")
        fd, buf = self._core.export_buffer(owner, ctx_id, buf_id, writable=writable)
        lease = next(self._lease_ids)
        peer.leases[lease] = _Lease(owner, ctx_id, buf.id)
        self._exported += 1
        self._exported_bytes += buf.size
        return {
            "ok": True,
            "lease": lease,
            "writable": writable,
            "buffer": _wire(buf_to_message(buf, ctx_id)),
        }, fd

    def _import(self, owner: Owner, request: dict[str, Any], fd: int) -> dict[str, Any]:
        ctx_id = ContextId(_text(request, "context_id"))
        size = _integer(request, "size")
        key = request.get("key") or None
        if key is not None and not isinstance(key, str):
            raise InvalidArgument("key: a string")
        buf = self._core.import_buffer(
            owner,
            ctx_id,
            fd,
            size,
            usage=usage_from_wire(_integer(request, "usage", 0)),
            tier=preference_from_wire(_integer(request, "tier", 0)),
            key=key,
        )
        self._imported += 1
        self._imported_bytes += buf.size
        self._record_behind(owner, ctx_id, buf.id, fd)
        return {"ok": True, "buffer": _wire(buf_to_message(buf, ctx_id))}

    def _record_behind(self, owner: Owner, ctx_id: ContextId, buf_id: BufferId, fd: int) -> None:
        """Write the state directory's backing copy after the reply, on a worker thread: the
        contents are a write-sealed memfd, so they cannot change meanwhile, and hashing and
        writing 100 MB would otherwise hold the loop (and the client) for most of a second."""
        work = self._core.deferred_backing(owner, ctx_id, buf_id, fd)
        if work is None or self._loop is None:
            return
        loop = self._loop
        future = loop.run_in_executor(None, work)
        self._behind.add(future)

        def _done(f: asyncio.Future[Callable[[], None]]) -> None:
            self._behind.discard(f)
            if f.cancelled():
                return
            if f.exception() is not None:
                self._backing_errors += 1
                return
            f.result()()

        future.add_done_callback(_done)


def buf_to_message(buf: Any, ctx_id: str) -> bytes:
    """The ``npud.v1.Buffer`` message of ``buf`` as context ``ctx_id`` sees it, serialised."""
    return bytes(buffer_to_wire(buf, ctx_id).SerializeToString())


def _wire(message: bytes) -> str:
    return base64.b64encode(message).decode()


def _text(request: dict[str, Any], name: str) -> str:
    value = request.get(name)
    if not isinstance(value, str) or not value:
        raise InvalidArgument(f"{name}: a non-empty string is required")
    return value


def _integer(request: dict[str, Any], name: str, default: int | None = None) -> int:
    value = request.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgument(f"{name}: an integer is required")
    if value < 0:
        raise InvalidArgument(f"{name}: must be >= 0, got {value}")
    return value


__all__ = ["DescriptorServer", "DescriptorStatistics"]
