"""The gateway's systemd unit: valid, ordered after npud, hardened."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_systemd_analyze_verify_accepts_the_gateway_unit(tmp_path: Path) -> None:
    """`systemd-analyze verify` accepts systemd/npud-llm.service (ExecStart at a stub); it
    starts after npud.service and keeps npud.service's hardening."""
    analyze = "/usr/bin/systemd-analyze"
    if not Path(analyze).exists():
        pytest.fail("systemd-analyze is missing: apt-get install -y systemd")
    unit = (ROOT / "systemd" / "npud-llm.service").read_text()
    stub = tmp_path / "npud-llm"
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    (tmp_path / "npud-llm.service").write_text(unit.replace("/usr/bin/npud-llm", str(stub)))
    result = subprocess.run(
        [analyze, "verify", str(tmp_path / "npud-llm.service")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "npud-llm.service:" not in result.stderr, result.stderr
    for needed in (
        "After=npud.service",
        "Wants=npud.service",
        "ExecStart=/usr/bin/npud-llm serve",
        "DynamicUser=yes",
        "SupplementaryGroups=npu",
        "PrivateDevices=yes",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "CapabilityBoundingSet=\n",
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6",
        "SystemCallFilter=@system-service",
    ):
        assert needed in unit, needed
