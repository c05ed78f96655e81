"""The gateway's launcher: a gateway that cannot start is reported with its own words."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from npud.testing.gateway import GatewayDied, free_port, start_gateway


def test_a_gateway_that_exits_at_start_raises_with_its_log(tmp_path: Path) -> None:
    """``npud-llm serve`` refusing its arguments exits at once: GatewayDied carries the exit
    status and what it printed, rather than a wait until the deadline."""
    with pytest.raises(GatewayDied, match=r"exited with 2:(.|\n)*--no-such-option"):
        start_gateway(tmp_path / "npud.sock", tmp_path, "--no-such-option", timeout_s=120)


def test_free_port_is_a_loopback_port_nobody_holds() -> None:
    """The port it names can be bound on loopback right away."""
    port = free_port()
    assert 0 < port < 65536
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
