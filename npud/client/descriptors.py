"""Buffers as file descriptors: the local fast path for bulk data.

Over gRPC a buffer's bytes are copied through the socket, protobuf and the daemon. When npud
runs on this machine, its descriptor socket (``<socket>.buffers``, see docs/api.md) hands out
the buffer's memory itself, so a client

* uploads a model by writing it once into a memfd of its own, sealing it (no writes, no
  resizing) and handing it over (:meth:`DescriptorChannel.import_sealed`): the device maps
  those pages, and the daemon copies nothing;
* maps a buffer (:meth:`DescriptorChannel.map`) and reads or writes it in place: writable for
  its EPHEMERAL buffers, read-only for sealed persistent ones (the kernel refuses a writable
  mapping). The buffer stays pinned while the :class:`MappedBuffer` is open.

:class:`~npud.client.client.Client` uses this automatically for large uploads and read-backs
when the socket is there, and falls back to gRPC bytes (the portable path) when it is not or
the daemon cannot hand out a descriptor for that buffer.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import mmap
import os
import socket
import threading
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self

from npud import errors
from npud.config import descriptor_socket_for
from npud.v1 import buffer_pb2

MAX_REPLY: Final = 1 << 16
PAGE: Final = 4096
UPLOAD_SEALS: Final = fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW
_WRITE_CHUNK: Final = 8 << 20


def _raise(reply: dict[str, Any]) -> None:
    kind = str(reply.get("error", ""))
    cls = getattr(errors, kind, None)
    if not (isinstance(cls, type) and issubclass(cls, errors.NpudError)):
        cls = errors.NpudError
    raise cls(str(reply.get("message", "the descriptor socket refused the request")))


def sealed_memfd(data: bytes | memoryview, *, name: str = "npud-upload") -> int:
    """A memfd holding ``data`` (page-rounded, zero-padded), sealed against writes and
    resizing; the caller owns the descriptor.

    Raises:
        OSError: memfd_create or the seals failed.
    """
    view = memoryview(data).cast("B")
    size = max(PAGE, -(-view.nbytes // PAGE) * PAGE)
    fd = os.memfd_create(name, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        os.ftruncate(fd, size)
        done = 0
        while done < view.nbytes:  # write(2) fills shmem faster than faulting a mapping in
            done += os.pwrite(fd, view[done : done + _WRITE_CHUNK], done)
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, UPLOAD_SEALS)
    except BaseException:
        os.close(fd)
        raise
    return fd


class MappedBuffer:
    """A buffer's memory mapped into this process, while npud keeps it pinned.

    ``view`` is a memoryview over the buffer's bytes (read-only unless mapped writable),
    ``buffer`` the buffer's wire record. :meth:`close` unmaps it and ends the lease.
    """

    def __init__(
        self,
        channel: DescriptorChannel,
        lease: int,
        fd: int,
        buffer: buffer_pb2.Buffer,
        *,
        writable: bool,
    ) -> None:
        self._channel = channel
        self._lease = lease
        self.writable = writable
        self.buffer = buffer
        size = self.size = buffer.size
        length = max(PAGE, -(-size // PAGE) * PAGE)
        try:
            self._mmap = mmap.mmap(
                fd, length, access=mmap.ACCESS_WRITE if writable else mmap.ACCESS_READ
            )
        finally:
            os.close(fd)
        self.view = memoryview(self._mmap)[:size]

    def close(self) -> None:
        """Unmap and release the lease (idempotent)."""
        if self._lease < 0:
            return
        self.view.release()
        with contextlib.suppress(BufferError):  # slices still held: unmapped when they go
            self._mmap.close()
        lease, self._lease = self._lease, -1
        with contextlib.suppress(errors.NpudError):
            self._channel.release(lease)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class DescriptorChannel:
    """One connection to npud's descriptor socket (thread-safe: one request at a time)."""

    def __init__(self, socket_path: Path | str, token: str, *, timeout_s: float = 30.0) -> None:
        """Connect to the descriptor socket beside the gRPC socket ``socket_path``.

        Raises:
            Unavailable: no descriptor socket there (an older or remote npud), or refused.
        """
        self.path = descriptor_socket_for(Path(socket_path))
        self._token = token
        self._lock = threading.Lock()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        sock.settimeout(timeout_s)
        try:
            sock.connect(str(self.path))
        except OSError as exc:
            sock.close()
            raise errors.Unavailable(
                f"no descriptor socket at {self.path}: {exc.strerror or exc}"
            ) from None
        self._sock = sock

    def request(
        self, message: dict[str, Any], fd: int | None = None
    ) -> tuple[dict[str, Any], int | None]:
        """Send one request (with ``fd`` attached, if any) and return the reply and the
        descriptor it carries (the caller owns it).

        Raises:
            the npud error the daemon names; Unavailable when the connection broke.
        """
        payload = json.dumps({**message, "token": self._token}).encode()
        with self._lock:
            try:
                if fd is None:
                    self._sock.send(payload)
                else:
                    socket.send_fds(self._sock, [payload], [fd])
                data, fds, _flags, _ = socket.recv_fds(self._sock, MAX_REPLY, 1)
            except OSError as exc:
                raise errors.Unavailable(
                    f"the descriptor socket connection broke: {exc.strerror or exc}"
                ) from None
        if not data:
            for extra in fds:
                os.close(extra)
            raise errors.Unavailable("npud closed the descriptor socket connection")
        reply = json.loads(data)
        if not reply.get("ok"):
            for extra in fds:
                os.close(extra)
            _raise(reply)
        return reply, (fds[0] if fds else None)

    def map(self, context_id: str, buffer_id: str, *, writable: bool = False) -> MappedBuffer:
        """Map a buffer of a context (see the module docstring).

        Raises:
            NotFound, FailedPrecondition (writable asked of a persistent buffer, or an
            unsealed one read-only), OutOfDeviceMemory, Unsupported, Unauthenticated.
        """
        reply, fd = self.request(
            {
                "op": "export",
                "context_id": context_id,
                "buffer_id": buffer_id,
                "writable": writable,
            }
        )
        if fd is None:
            raise errors.NpudError("npud answered an export without a descriptor")
        wire = buffer_pb2.Buffer.FromString(base64.b64decode(reply["buffer"]))
        return MappedBuffer(self, int(reply["lease"]), fd, wire, writable=writable)

    def import_sealed(
        self, context_id: str, fd: int, size: int, *, usage: int, tier: int = 0, key: str = ""
    ) -> buffer_pb2.Buffer:
        """Hand a sealed memfd (:func:`sealed_memfd`) over as a new sealed persistent buffer
        of ``size`` bytes; the caller still owns and closes ``fd``.

        Raises:
            InvalidArgument (not sealed, too small), AlreadyExists, QuotaExceeded,
            OutOfDeviceMemory, Unsupported, NotFound.
        """
        reply, extra = self.request(
            {
                "op": "import",
                "context_id": context_id,
                "size": size,
                "usage": usage,
                "tier": tier,
                "key": key,
            },
            fd,
        )
        if extra is not None:
            os.close(extra)
        return buffer_pb2.Buffer.FromString(base64.b64decode(reply["buffer"]))

    def release(self, lease: int) -> None:
        """End a lease (the buffer is no longer pinned for it)."""
        self.request({"op": "release", "lease": lease})

    def close(self) -> None:
        """Close the connection: npud releases every lease it holds."""
        self._sock.close()
