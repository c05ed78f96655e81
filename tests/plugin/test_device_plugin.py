"""npud-device-plugin end to end: a real npud, the plugin process, and a kubelet stand-in built
from Kubernetes' own proto."""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import npud.client
from npud.testing.daemon import DaemonProcess, isolated_env, start_daemon
from npud.v1 import admin_pb2, tenant_pb2
from tests import ROOT
from tests.plugin.kubernetes_proto import build_python
from tests.reliability.harness import Admin

pytestmark = pytest.mark.slow

SHARES = 4
RESOURCE = "npud.io/npu"


class Lines:
    """A process whose stdout is JSON lines, read on a thread so waits can time out."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path | None = None) -> None:
        self.log = log.open("wb") if log is not None else None
        self.proc = subprocess.Popen(
            args,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log if self.log is not None else None,
            env=env,
            cwd=str(ROOT),
            text=True,
        )
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.events.put(json.loads(line))

    def expect(self, event: str, timeout: float = 60.0, **match: Any) -> dict[str, Any]:
        """The next event named ``event`` (matching ``match``); earlier other events are
        skipped."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {event} {match} within {timeout} s")
            try:
                got = self.events.get(timeout=left)
            except queue.Empty:
                continue
            if got["event"] == event and all(got.get(k) == v for k, v in match.items()):
                return got

    def send(self, **cmd: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()

    def stop(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        if self.log is not None:
            self.log.close()


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    d = start_daemon(tmp_path_factory.mktemp("npud-plugin"), env={"NPUD_FAULT_INJECTION": "true"})
    yield d
    assert d.stop() == 0


@pytest.fixture(scope="module")
def rig(
    daemon: DaemonProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Lines, subprocess.Popen[bytes], Path, Path]]:
    tmp = tmp_path_factory.mktemp("kubelet")
    kubelet_dir = tmp / "device-plugins"
    kubelet_dir.mkdir()
    build = build_python(tmp / "k8s-build")
    kubelet = Lines(
        [sys.executable, "-m", "tests.plugin.kubelet_standin", str(build), str(kubelet_dir)],
        isolated_env(),
    )
    kubelet.expect("ready")
    state = tmp / "plugin-state"
    with (tmp / "plugin.log").open("wb") as log:
        plugin = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "npud.plugin",
                "--npud-socket",
                str(daemon.socket),
                "--kubelet-dir",
                str(kubelet_dir),
                "--shares",
                str(SHARES),
                "--state-dir",
                str(state),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=isolated_env({"NPUD_LOG_FORMAT": "json"}),
            cwd=str(ROOT),
        )
    try:
        yield kubelet, plugin, state, tmp / "plugin.log"
    finally:
        plugin.terminate()
        try:
            assert plugin.wait(30) == 0, (tmp / "plugin.log").read_text()
        finally:
            kubelet.stop()


def _shares(devices: list[list[str]]) -> dict[str, str]:
    return dict((i, h) for i, h in devices)  # noqa: C402


def test_registers_lists_follows_health_allocates_and_reregisters(
    daemon: DaemonProcess, rig: tuple[Lines, subprocess.Popen[bytes], Path, Path]
) -> None:
    """Registration with Kubernetes' own messages; the first list is N healthy shares per
    device; a lost device turns its shares Unhealthy and a rescan Healthy again; Allocate
    gives npud's socket directory and a tenant credential (mounts and environment, no device
    node) that joins an npud tenant of that share; after the kubelet's socket is recreated the
    plugin registers again and lists again."""
    kubelet, plugin, state, log = rig
    reg = kubelet.expect("register")
    assert reg["version"] == "v1beta1"
    assert reg["resource"] == RESOURCE
    assert reg["endpoint"] == "npud.sock"
    options = kubelet.expect("options")
    assert options == {"event": "options", "pre_start_required": False, "preferred": True}
    first = _shares(kubelet.expect("list")["devices"])
    assert first == {f"sim0-share-{i}": "Healthy" for i in range(SHARES)}

    with npud.client.connect(daemon.socket) as root:
        admin = Admin(root)
        try:
            admin.inject(admin_pb2.FAULT_KIND_DEVICE_LOSS, device="sim0", message="unplugged")
            lost = kubelet.expect("list", devices=[[s, "Unhealthy"] for s in first])
            assert len(lost["devices"]) == SHARES
            assert "sim0" in admin.rescan().reopened
            kubelet.expect("list", devices=[[s, "Healthy"] for s in first])
        finally:
            admin.close()

        kubelet.send(op="preferred", available=sorted(first), size=2)
        assert kubelet.expect("preferred")["ids"] == ["sim0-share-0", "sim0-share-1"]

        kubelet.send(op="allocate", ids=["sim0-share-0", "sim0-share-1"])
        alloc = kubelet.expect("allocate")
        assert alloc["devices"] == []  # never /dev/accel
        assert alloc["cdi"] == []
        env = alloc["envs"]
        assert env["NPUD_SOCKET"] == f"/run/npud/{daemon.socket.name}"
        assert env["NPUD_TENANT_FILE"] == "/run/npud-tenant/credential"
        mounts = {c: (h, ro) for c, h, ro in alloc["mounts"]}
        assert mounts["/run/npud"] == (str(daemon.socket.parent), False)
        host_dir, read_only = mounts["/run/npud-tenant"]
        assert read_only
        assert Path(host_dir).parent == state / "tenants"
        credential = (Path(host_dir) / "credential").read_text().strip()
        # The credential joins the tenant the plugin made, sized 2 shares of 4.
        with npud.client.connect(daemon.socket, tenant=credential) as pod:
            assert pod.tenant == env["NPUD_TENANT"]
            assert pod.owner is not None
            assert not pod.owner.admin
        listed = root.tenant_stub.ListTenants(
            tenant_pb2.ListTenantsRequest(), metadata=root.metadata
        )
        (tenant,) = [t for t in listed.tenants if t.name == env["NPUD_TENANT"]]
        assert (tenant.shares, tenant.total_shares) == (2, SHARES)

        # The same share allocated again: its old tenant is gone, credential and all.
        kubelet.send(op="allocate", ids=["sim0-share-1"])
        again = kubelet.expect("allocate")
        assert again["envs"]["NPUD_TENANT"] != env["NPUD_TENANT"]
        assert not Path(host_dir).exists()
        names = {
            t.name
            for t in root.tenant_stub.ListTenants(
                tenant_pb2.ListTenantsRequest(), metadata=root.metadata
            ).tenants
        }
        assert env["NPUD_TENANT"] not in names

        kubelet.send(op="allocate", ids=["gpu0-share-0"])
        refused = kubelet.expect("allocate_error")
        assert refused["code"] == "INVALID_ARGUMENT"
        assert "not shares of this plugin" in refused["details"]

    kubelet.send(op="restart")
    kubelet.expect("restarted")
    again_reg = kubelet.expect("register", timeout=60)
    assert again_reg["resource"] == RESOURCE
    kubelet.expect("options")
    relisted = _shares(kubelet.expect("list")["devices"])
    assert relisted == first
    assert plugin.poll() is None, log.read_text()


def test_the_plugin_says_so_when_npud_is_not_there(tmp_path: Path) -> None:
    """Without npud the plugin exits 1 at once with a message naming the socket."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "npud.plugin",
            "--npud-socket",
            str(tmp_path / "none.sock"),
            "--kubelet-dir",
            str(tmp_path / "kd"),
        ],
        capture_output=True,
        text=True,
        env=isolated_env(),
        cwd=str(ROOT),
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert f"npud is not reachable at {tmp_path / 'none.sock'}" in result.stderr
