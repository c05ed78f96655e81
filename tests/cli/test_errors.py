"""npuctl's failure paths: one line on stderr naming the socket or id, and a distinct status."""

from __future__ import annotations

import os
import pwd
import socket
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from npud.cli.exit_codes import ExitCode
from tests.cli.conftest import Live
from tests.cli.harness import ROOT, npuctl, npuctl_json

pytestmark = pytest.mark.slow


def one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("npuctl: ")
    return lines[0]


def test_no_daemon_is_cannot_connect_with_the_path_and_a_hint(tmp_path: Path) -> None:
    """No socket at the path: exit 3, the path, and how to check on the daemon."""
    sock = tmp_path / "nowhere" / "npud.sock"
    res = npuctl("devices", "list", socket_path=sock, subprocess_=True)  # the real process
    assert res.returncode == ExitCode.CANNOT_CONNECT
    line = one_line(res.stderr)
    assert str(sock) in line
    assert "no such socket" in line
    assert "systemctl status npud" in line
    assert res.stdout == ""


def test_stale_socket_is_cannot_connect(tmp_path: Path) -> None:
    """A socket file nobody listens on (npud died): exit 3, 'nobody is listening'."""
    sock = tmp_path / "npud.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(sock))
    s.close()  # the file stays, the listener is gone
    res = npuctl(socket_path=sock)
    assert res.returncode == ExitCode.CANNOT_CONNECT
    assert "nobody is listening" in one_line(res.stderr)


def test_socket_flag_overrides_the_environment(tmp_path: Path, live: Live) -> None:
    """--socket wins over NPUD_SOCKET (which points nowhere here)."""
    res = npuctl("-s", str(live.socket), "devices", "list", socket_path=tmp_path / "x.sock")
    assert res.returncode == 0, res.stderr
    assert "sim0" in res.stdout


@pytest.fixture
def listening_dir() -> Iterator[Path]:
    """A world-traversable directory (pytest's tmp is 0700) for sockets another uid may try."""
    path = Path(tempfile.mkdtemp(prefix="npuctl-perm-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        for child in path.iterdir():
            child.unlink()
        path.rmdir()


def _interpreter_for(uid: int) -> str | None:
    """This Python, or the system's of the same version, whichever ``uid`` may execute.

    The venv's interpreter may live under a 0700 home (pyenv under /root); the system's
    same-version one runs the venv's packages through PYTHONPATH.
    """
    candidates = [
        os.path.realpath(sys.executable),
        f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}",
    ]
    probe = "import grpc, rich, npud.cli.main"
    for exe in candidates:
        if not os.path.exists(exe):
            continue
        try:
            res = subprocess.run(
                [exe, "-c", probe],
                env=_nobody_env(),
                cwd=ROOT,
                **_as(uid),
                capture_output=True,
                check=False,
            )
        except PermissionError:  # exec refused: a directory on its path is closed to uid
            continue
        if res.returncode == 0:
            return exe
    return None


def _nobody_env() -> dict[str, str]:
    return {
        "PATH": "/usr/bin:/bin",
        "HOME": "/nonexistent",
        "PYTHONPATH": os.pathsep.join([str(ROOT), sysconfig.get_paths()["purelib"]]),
        "COLUMNS": "200",
    }


def _as(uid: int) -> dict[str, Any]:
    """subprocess arguments that run the child as ``uid`` with its primary group and no
    supplementary groups. The switch happens in C between fork and exec: a ``preexec_fn`` would
    run Python in the child of a test process whose gRPC threads may hold locks, which crashed
    the child once."""
    return {"user": uid, "group": pwd.getpwuid(uid).pw_gid, "extra_groups": []}


def _run_as_nobody(sock: Path) -> subprocess.CompletedProcess[str]:
    uid = pwd.getpwnam("nobody").pw_uid
    exe = _interpreter_for(uid)
    if exe is None:
        pytest.skip("no Python interpreter the nobody user may execute with npud importable")
    return subprocess.run(
        [exe, "-m", "npud.cli", "jobs", "list"],
        capture_output=True,
        text=True,
        env={**_nobody_env(), "NPUD_SOCKET": str(sock)},
        cwd=ROOT,
        **_as(uid),
        timeout=60,
        check=False,
    )


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a child as nobody")
@pytest.mark.parametrize("mode", [0o000, 0o660])
def test_permission_denied_as_another_user(listening_dir: Path, mode: int) -> None:
    """nobody on a root socket (mode 000, or 0660 root:root): exit 4, owner/mode and a hint."""
    sock = listening_dir / "npud.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(sock))
    server.listen()
    try:
        sock.chmod(mode)
        res = _run_as_nobody(sock)
    finally:
        server.close()
    assert res.returncode == ExitCode.PERMISSION_DENIED, res.stderr
    line = one_line(res.stderr)
    assert "permission denied" in line
    assert str(sock) in line
    assert f"root:root mode {mode:04o}" in line
    assert "ask to be added to group 'root'" in line


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("jobs", "show", "job-0000000000000000"), "no job 'job-0000000000000000'"),
        (("jobs", "cancel", "job-0000000000000000"), "no job 'job-0000000000000000'"),
        (("queues", "show", "q-0000000000000000"), "no queue 'q-0000000000000000'"),
        (("buffers", "show", "buf-0000000000000000"), "no buffer 'buf-0000000000000000'"),
        (("contexts", "show", "ctx-0000000000000000"), "ctx-0000000000000000"),
        (("devices", "show", "npu9"), "npu9"),
        (("jobs", "list", "--context", "ctx-0000000000000000"), "ctx-0000000000000000"),
    ],
)
def test_unknown_ids_are_not_found(live: Live, args: tuple[str, ...], needle: str) -> None:
    """An id no visible context has: exit 5 and a message naming it."""
    res = npuctl(*args, socket_path=live.socket)
    assert res.returncode == ExitCode.NOT_FOUND, res.stderr
    assert needle in one_line(res.stderr)
    assert res.stdout == ""


@pytest.mark.parametrize(
    "args",
    [
        ("jobs",),
        ("jobs", "list", "--state", "sleeping"),
        ("queues", "cancel", "q-1"),
        ("-l", "0", "jobs", "list"),
        ("frobnicate",),
    ],
)
def test_usage_errors_exit_2(tmp_path: Path, args: tuple[str, ...]) -> None:
    """Bad commands or flags fail before connecting, with argparse's status 2."""
    res = npuctl(*args, socket_path=tmp_path / "never-used.sock")
    assert res.returncode == ExitCode.USAGE
    assert "usage: npuctl" in res.stderr


def test_cancel_a_queued_job_and_cancel_again(busy: Live) -> None:
    """jobs cancel ends the queued step (CANCELLED); cancelling it again changes nothing."""
    w = busy.workload
    doc = npuctl_json("jobs", "cancel", w.waiting, socket_path=busy.socket)
    assert doc["job"]["job_id"] == w.waiting
    assert doc["job"]["state"] == "JOB_STATE_CANCELLED"
    assert doc["job"]["error"]["kind"] == "Cancelled"
    listed = npuctl_json("jobs", "list", "--state", "cancelled", socket_path=busy.socket)
    assert [j["job_id"] for j in listed["jobs"]] == [w.waiting]
    again = npuctl_json("jobs", "cancel", w.waiting, socket_path=busy.socket)
    assert again["job"]["state"] == "JOB_STATE_CANCELLED"
    queues = npuctl_json("queues", "list", "--class", "latency", socket_path=busy.socket)
    assert [q["depth"] for q in queues["queues"]] == [1]  # only the hog is left


def test_cancel_a_running_job_aborts_it(busy: Live) -> None:
    """jobs cancel on the running hog aborts it on the sim: it ends CANCELLED, engine freed."""
    w = busy.workload
    res = npuctl("jobs", "cancel", w.blocker, socket_path=busy.socket)
    assert res.returncode == 0, res.stderr
    assert w.blocker in res.stdout
    job = w.client.wait(w.decode_ctx, w.blocker, timeout_s=30)
    assert job.state.name == "CANCELLED"
    running = npuctl_json("jobs", "list", "--state", "running", socket_path=busy.socket)
    assert running["jobs"] == []
