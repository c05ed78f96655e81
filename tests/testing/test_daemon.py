"""The launcher tests and benchmarks start npud with: environment, readiness, failure, stop."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import pytest

from npud.testing.daemon import (
    SOURCE_ROOT,
    TEST_SETTINGS,
    DaemonDied,
    isolated_env,
    spawn_npud,
    start_daemon,
)

# Stand-ins for the daemon, run as ``python -c`` with the launcher's arguments after them: one
# that says READY=1 the way npud does and waits for a signal, one that fails before it is ready.
READY_THEN_WAIT = """
import os, signal, socket, sys
print("argv", sys.argv[1:], flush=True)
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.sendto(b"STATUS=starting", os.environ["NOTIFY_SOCKET"])
s.sendto(b"READY=1\\nSTATUS=serving", os.environ["NOTIFY_SOCKET"])
signal.pause()
"""
FAIL_AT_START = """
import sys
print("config: no such setting", file=sys.stderr)
sys.exit(3)
"""


def test_isolated_env_drops_inherited_npud_and_systemd_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A daemon started from a shell with npud or systemd variables set inherits none of them;
    it reads no config file, logs JSON, imports this checkout, and the overrides win."""
    monkeypatch.setenv("NPUD_POLICY", "fifo")
    monkeypatch.setenv("NOTIFY_SOCKET", "/run/systemd/notify")
    monkeypatch.setenv("WATCHDOG_USEC", "1000")
    monkeypatch.setenv("HOME_SOMETHING", "kept")
    env = isolated_env({"NPUD_LOG_LEVEL": "debug"})
    assert "NPUD_POLICY" not in env
    assert "NOTIFY_SOCKET" not in env
    assert "WATCHDOG_USEC" not in env
    assert env["HOME_SOMETHING"] == "kept"
    assert env["NPUD_CONFIG"] == "/dev/null"
    assert env["NPUD_LOG_FORMAT"] == "json"
    assert env["NPUD_LOG_LEVEL"] == "debug"
    assert env["PYTHONPATH"].split(":")[0] == str(SOURCE_ROOT)
    assert (SOURCE_ROOT / "npud" / "testing" / "daemon.py").is_file()


def test_readiness_is_the_notify_datagram_and_stop_returns_the_exit_status(
    tmp_path: Path,
) -> None:
    """wait_ready returns the datagram carrying READY=1 (not an earlier STATUS); the process got
    the socket, state directory and extra arguments; stop signals it and returns its status."""
    daemon = spawn_npud(
        tmp_path,
        isolated_env(),
        args=["--policy", "fifo"],
        command=(sys.executable, "-c", READY_THEN_WAIT),
    )
    try:
        assert daemon.wait_ready(timeout=60) == b"READY=1\nSTATUS=serving"
        assert daemon.messages == [b"STATUS=starting", b"READY=1\nSTATUS=serving"]
        daemon.check()
    finally:
        code = daemon.stop(signal.SIGTERM, timeout=60)
    assert code == -signal.SIGTERM
    argv = daemon.log().split("argv", 1)[1]
    for expected in (
        "--device",
        "sim",
        str(tmp_path / "npud.sock"),
        str(tmp_path / "state"),
        "fifo",
    ):
        assert expected in argv
    assert daemon.notify.fileno() == -1  # the launcher closed its end of the notify socket
    with pytest.raises(DaemonDied, match="exited with -15"):
        daemon.check()


def test_a_daemon_that_exits_before_ready_raises_with_its_log(tmp_path: Path) -> None:
    """A process that exits before READY=1 is DaemonDied carrying its exit status and output,
    not a hang until the timeout."""
    daemon = spawn_npud(tmp_path, isolated_env(), command=(sys.executable, "-c", FAIL_AT_START))
    try:
        with pytest.raises(DaemonDied, match=r"exited with 3:\n.*no such setting"):
            daemon.wait_ready(timeout=60)
    finally:
        assert daemon.stop(timeout=60) == 3


def test_start_daemon_serves_on_its_socket_until_stopped(tmp_path: Path) -> None:
    """The real daemon, started with the tests' settings, is ready with its gRPC socket in
    place and its settings in its log, and exits 0 on SIGTERM."""
    daemon = start_daemon(tmp_path)
    try:
        assert daemon.socket.exists()
        assert daemon.socket == tmp_path / "npud.sock"
        assert daemon.socket.stat().st_mode & 0o777 == int(TEST_SETTINGS["NPUD_SOCKET_MODE"], 8)
    finally:
        assert daemon.stop(signal.SIGTERM, timeout=60) == 0
