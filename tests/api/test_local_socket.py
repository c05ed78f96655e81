"""The daemon's local sockets are bound with their mode and group before anyone can connect,
replace a dead daemon's socket file, and never replace a file that is not a socket."""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

import pytest

from npud.api.local_socket import bind_local


def test_a_local_socket_has_its_mode_and_group_and_listens_only_when_told(tmp_path: Path) -> None:
    """The bound path is a socket with exactly the mode and group asked for; nobody can
    connect until the owner listens, then a client can."""
    path = tmp_path / "npud.sock.submit"
    sock = bind_local(path, socket.SOCK_STREAM, 0o640, os.getgid())
    try:
        st = path.stat()
        assert stat.S_ISSOCK(st.st_mode)
        assert stat.S_IMODE(st.st_mode) == 0o640
        assert st.st_gid == os.getgid()
        assert not sock.getblocking()
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            with pytest.raises(ConnectionRefusedError):
                client.connect(str(path))
        sock.listen(1)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.connect(str(path))
    finally:
        sock.close()


def test_a_dead_daemons_socket_is_replaced(tmp_path: Path) -> None:
    """A socket file left at the path (its daemon gone) is replaced by the new one, which
    takes connections."""
    path = tmp_path / "npud.sock.buffers"
    stale = bind_local(path, socket.SOCK_SEQPACKET, 0o660, None)
    stale.close()  # the file stays, as after a crash
    assert path.is_socket()
    sock = bind_local(path, socket.SOCK_SEQPACKET, 0o600, None)
    try:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        sock.listen(1)
        with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as client:
            client.connect(str(path))
    finally:
        sock.close()


def test_a_file_that_is_not_a_socket_is_left_alone(tmp_path: Path) -> None:
    """A regular file at the path is neither removed nor changed: the bind fails with
    EADDRINUSE and the file keeps its contents and mode."""
    path = tmp_path / "npud.sock.identity"
    path.write_text("keep me")
    path.chmod(0o644)
    with pytest.raises(OSError, match="in use"):
        bind_local(path, socket.SOCK_STREAM, 0o666, None)
    assert path.read_text() == "keep me"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
