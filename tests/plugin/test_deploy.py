"""The deployment files: the DaemonSet, the plugin's systemd unit and the image recipe."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import yaml

from npud.plugin.main import RESOURCE, parse_args
from tests import ROOT
from tests.tools import tool


def _docs() -> list[dict[str, Any]]:
    return list(yaml.safe_load_all((ROOT / "deploy" / "kubernetes" / "npud.yaml").read_text()))


def test_the_daemonset_runs_npud_and_the_plugin_side_by_side() -> None:
    """One pod per NPU node: npud with the accel nodes and the socket directory on the host,
    the plugin with the kubelet's device-plugins directory and the same socket directory,
    its arguments accepted by the plugin itself."""
    (ds,) = [d for d in _docs() if d["kind"] == "DaemonSet"]
    pod = ds["spec"]["template"]["spec"]
    containers = {c["name"]: c for c in pod["containers"]}
    volumes = {v["name"]: v for v in pod["volumes"]}

    def mounts(name: str) -> dict[str, str]:
        return {
            m["mountPath"]: volumes[m["name"]]["hostPath"]["path"]
            for m in containers[name]["volumeMounts"]
        }

    assert mounts("npud")["/dev/accel"] == "/dev/accel"
    assert mounts("npud")["/run/npud"] == mounts("device-plugin")["/run/npud"] == "/run/npud"
    assert mounts("device-plugin")["/var/lib/kubelet/device-plugins"] == (
        "/var/lib/kubelet/device-plugins"
    )
    plugin = containers["device-plugin"]
    assert plugin["command"] == ["npud-device-plugin"]
    opts = parse_args(plugin["args"])
    assert opts.npud_socket == Path("/run/npud/npud.sock")
    assert str(opts.state_dir) in mounts("device-plugin")
    assert opts.resource == RESOURCE


def test_the_example_pod_asks_for_shares_and_no_device() -> None:
    """The example workload requests npud.io/npu and mounts no device node of its own."""
    (pod,) = [d for d in _docs() if d["kind"] == "Pod"]
    (c,) = pod["spec"]["containers"]
    assert c["resources"]["limits"] == {RESOURCE: 1}
    assert "volumeMounts" not in c
    assert not c.get("securityContext", {}).get("privileged", False)


def test_systemd_analyze_verify_accepts_the_plugin_unit(tmp_path: Path) -> None:
    """`systemd-analyze verify` accepts systemd/npud-device-plugin.service."""
    analyze = tool("systemd-analyze", "systemd")
    unit = (ROOT / "systemd" / "npud-device-plugin.service").read_text()
    stub = tmp_path / "npud-device-plugin"
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    (tmp_path / "npud.service").write_text("[Service]\nExecStart=/bin/true\n")
    (tmp_path / "kubelet.service").write_text("[Service]\nExecStart=/bin/true\n")
    target = tmp_path / "npud-device-plugin.service"
    target.write_text(unit.replace("/usr/bin/npud-device-plugin", str(stub)))
    result = subprocess.run(
        [analyze, "verify", str(target)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "npud-device-plugin.service" not in result.stderr, result.stderr


def test_the_image_installs_both_entry_points() -> None:
    """The Containerfile installs the project (both entry points come with it)."""
    recipe = (ROOT / "deploy" / "Containerfile").read_text()
    assert "pip install" in recipe
    assert "COPY npud ./npud" in recipe
    scripts = (ROOT / "pyproject.toml").read_text()
    assert 'npud-device-plugin = "npud.plugin.main:main"' in scripts
    assert 'npud = "npud.daemon.main:main"' in scripts
