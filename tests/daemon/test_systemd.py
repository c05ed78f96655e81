"""sd_notify in plain Python: path and abstract sockets, watchdog interval."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from npud.daemon.systemd import Notifier


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = tmp_path / "notify"
    sock.bind(str(path))
    sock.settimeout(5)
    yield sock, str(path)
    sock.close()


def test_ready_and_status_arrive_in_one_datagram(receiver: tuple[socket.socket, str]) -> None:
    """READY=1 and STATUS= share one datagram on a path socket."""
    sock, path = receiver
    n = Notifier.from_environment({"NOTIFY_SOCKET": path})
    assert n.ready("serving 1 device")
    assert sock.recv(4096) == b"READY=1\nSTATUS=serving 1 device"
    assert n.statistics().sent == 1
    n.close()


def test_abstract_address_uses_nul_prefix() -> None:
    """'@name' is the abstract namespace: the @ becomes NUL (a literal path would fail)."""
    name = f"npud-test-{os.getpid()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(5)
    try:
        n = Notifier.from_environment({"NOTIFY_SOCKET": "@" + name})
        assert n.watchdog()
        assert sock.recv(4096) == b"WATCHDOG=1"
        assert n.statistics().watchdog_pings == 1
        n.close()
    finally:
        sock.close()


def test_no_socket_is_a_silent_no_op() -> None:
    """Without NOTIFY_SOCKET nothing is sent and nothing fails."""
    n = Notifier.from_environment({})
    assert not n.enabled
    assert not n.ready("x")
    assert n.statistics().sent == 0


def test_unreachable_socket_counts_a_failure(tmp_path: Path) -> None:
    """A vanished notify socket is counted, never raised."""
    n = Notifier.from_environment({"NOTIFY_SOCKET": str(tmp_path / "gone")})
    assert not n.status("x")
    assert n.statistics().failed == 1
    n.close()


def test_watchdog_interval_is_half_and_respects_pid() -> None:
    """WATCHDOG_USEC/2, only when WATCHDOG_PID is unset or ours."""
    n = Notifier.from_environment({"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "2000000"})
    assert n.watchdog_interval_s == 1.0
    other = Notifier.from_environment(
        {"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "1"}
    )
    assert other.watchdog_interval_s is None or os.getpid() == 1
    assert Notifier.from_environment({"WATCHDOG_USEC": "junk"}).watchdog_interval_s is None
