"""The daemon's local sockets: Unix sockets beside the gRPC one, bound for who may connect.

npud serves three of them next to its gRPC socket: the identity socket (a session token for
the kernel-vouched peer), the descriptor socket (buffers as file descriptors) and the submit
socket (the submit stream without gRPC). Each is a path in the file system whose mode and
group say which users may connect, and each is bound the same way: a stale socket left by a
daemon that died is replaced, and the mode and group are set before the socket listens, so no
connection is ever accepted under the process's umask.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path


def bind_local(path: Path, kind: int, mode: int, gid: int | None) -> socket.socket:
    """A non-blocking Unix socket of ``kind`` (``socket.SOCK_STREAM``, ``SOCK_SEQPACKET``)
    bound at ``path`` with ``mode`` and, when given, group ``gid``; not yet listening.

    A socket file already at ``path`` is removed first (a previous daemon's); any other file
    there is left alone and the bind fails. The caller owns the returned socket.

    Raises:
        OSError: the path cannot be bound, or its mode or group cannot be set (nothing is
            left open).
    """
    if path.is_socket():
        path.unlink()
    sock = socket.socket(socket.AF_UNIX, kind | socket.SOCK_CLOEXEC)
    try:
        sock.bind(str(path))
        os.chmod(path, mode)
        if gid is not None:
            os.chown(path, -1, gid)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


__all__ = ["bind_local"]
