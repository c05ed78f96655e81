"""Buffers as file descriptors, attacked from another uid.

The victim is root (the test process); the attacker is nobody, running
tests/reliability/descriptor_attacker.py. The module has a daemon of its own: the sealed
buffers it leaves in the warm pool hold descriptors, which would move the shared daemon's fd
baseline under the other modules' leak checks.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

import npud.client
from npud.client import Persistence
from npud.testing.daemon import DaemonProcess
from tests import ROOT
from tests.reliability.harness import NOBODY, fd_count, own_daemon, record
from tests.reliability.leaks import assert_back, baseline

pytestmark = pytest.mark.slow

MiB = 1 << 20


@pytest.fixture(scope="module")
def shared() -> Iterator[DaemonProcess]:
    """This module's daemon (sim, reachable by every uid)."""
    with own_daemon("npud-fds-") as daemon:
        yield daemon


@pytest.fixture(scope="module")
def root(shared: DaemonProcess) -> Iterator[npud.client.Client]:
    """A root (admin) client of this module's daemon."""
    with npud.client.connect(shared.socket) as client:
        yield client


def _attacker(socket: os.PathLike[str], scenario: str, **args: Any) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.reliability.descriptor_attacker",
            "--uid",
            str(NOBODY),
            "--gid",
            str(NOBODY),
            str(socket),
            scenario,
            json.dumps(args),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=str(ROOT),
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        text=True,
    )


def _attack(socket: os.PathLike[str], scenario: str, **args: Any) -> dict[str, Any]:
    proc = _attacker(socket, scenario, **args)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-3000:]
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


def test_no_descriptor_for_another_users_buffer(
    shared: DaemonProcess, root: npud.client.Client
) -> None:
    """Another user gets NOT_FOUND for the descriptor of root's buffer (read-only or
    writable), and root's token, leaked to that user, is refused on the descriptor socket
    because the kernel says the connection is not root's (UNAUTHENTICATED)."""
    ctx = root.create_context(label="victim")
    buf = root.create_buffer(ctx, MiB)
    root.write_buffer(ctx, buf, b"secret" * 1000)
    try:
        got = _attack(
            shared.socket,
            "steal",
            context_id=ctx.context_id,
            buffer_id=buf.buffer_id,
            token=root.identity.token,
        )
        assert got == {
            "own_token": "NotFound",
            "own_token_writable": "NotFound",
            "leaked_token": "Unauthenticated",
        }
        assert root.read_buffer(ctx, buf, size=6) == b"secret"
    finally:
        root.destroy_context(ctx)


def test_a_sealed_buffers_descriptor_cannot_be_written(
    shared: DaemonProcess, root: npud.client.Client
) -> None:
    """A sealed persistent buffer (another user's, content-addressed, so the attacker may open
    it) comes out read-only: a writable export is refused, a shared writable mapping fails
    (EACCES), write(2) fails (EBADF), re-opening it read-write via /proc still cannot write
    (EPERM: F_SEAL_FUTURE_WRITE) and ftruncate fails; the contents stay the owner's bytes."""
    data = hashlib.sha256(b"weights").digest() * (MiB // 32)
    key = "sha256:" + hashlib.sha256(data).hexdigest()
    ctx = root.create_context(label="owner")
    buf = root.upload(ctx, data, key=key)
    assert buf.sealed
    try:
        got = _attack(shared.socket, "sealed", key=key)
        assert got["writable_export"] == "FailedPrecondition"
        assert got["mmap_shared_writable"] == "EACCES"
        assert got["write"] == "EBADF"
        assert got["reopen_rdwr_write"] == "EPERM"
        assert got["reopen_rdwr_mmap"] == "EPERM"
        assert got["ftruncate"] in {"EINVAL", "EPERM", "EBADF"}
        assert got["head"] == data[:16].hex()
        assert root.read_buffer(ctx, buf) == data
        with root.map_buffer(ctx, buf) as mapped:
            assert bytes(mapped.view) == data
    finally:
        root.destroy_context(ctx)


def test_a_client_that_dies_while_mapping_buffers_leaks_nothing(
    shared: DaemonProcess, root: npud.client.Client
) -> None:
    """A client killed with buffers mapped and a descriptor connection open leaves the daemon
    with its baseline contexts, buffers and open fds: the leases end with the connection, the
    context with the session, and no descriptor stays behind in the daemon."""
    base = baseline(shared, root)
    proc = _attacker(shared.socket, "die", n=8)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    during = fd_count(shared.proc.pid)
    proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate(timeout=30)  # also closes our ends of its pipes
    assert line, err[-3000:]
    assert json.loads(line)["mapped"] == 8
    started = time.monotonic()
    after = assert_back(shared, root, base)
    record(
        "descriptors.kill_while_mapping",
        {
            "fds_during": during,
            "fds_after": after.fds,
            "fds_base": base.fds,
            "settle_s": round(time.monotonic() - started, 2),
        },
    )
    assert during > base.fds  # the connection (at least) was open while it mapped


def test_root_maps_its_own_buffers_both_ways(
    shared: DaemonProcess, root: npud.client.Client
) -> None:
    """The owner writes an EPHEMERAL buffer in place through its descriptor and reads the
    bytes back over gRPC (an independent path), and the buffer is pinned exactly while the
    mapping is open."""
    ctx = root.create_context(label="owner-maps")
    try:
        buf = root.create_buffer(ctx, 2 * MiB, persistence=Persistence.EPHEMERAL)
        pattern = bytes(range(256)) * (2 * MiB // 256)
        with root.map_buffer(ctx, buf, writable=True) as mapped:
            mapped.view[:] = pattern
            assert root.buffers(ctx)[0].pins == 1
        assert root.buffers(ctx)[0].pins == 0
        with npud.client.connect(shared.socket, descriptors=False) as plain:
            assert plain.read_buffer(ctx, buf) == pattern
    finally:
        root.destroy_context(ctx)
