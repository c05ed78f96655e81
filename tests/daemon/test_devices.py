"""Which devices the daemon serves when the configuration names one node."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from npud.config import load_settings
from npud.daemon.devices import choose_devices
from npud.devices.base import Device
from npud.devices.discovery import NodeInfo
from npud.errors import Unsupported


def _node(path: str, driver: str | None) -> NodeInfo:
    return NodeInfo(
        path=path,
        subsystem="accel",
        driver=driver,
        bus_id="platform-fdab0000.npu",
        major=261,
        minor=0,
        sys_path="/sys/class/accel/accel0",
        parent=None,
    )


@dataclass
class _Nodes:
    """A machine whose nodes are found but none of which an adapter can drive."""

    nodes: list[NodeInfo]
    opened: list[str] = field(default_factory=list)

    def discover(self) -> list[NodeInfo]:
        return list(self.nodes)

    def open(self, node: NodeInfo) -> Device | None:
        self.opened.append(node.path)
        return None


def test_a_named_node_whose_driver_has_no_adapter_is_an_error_naming_node_and_driver() -> None:
    """``device = /dev/accel/accel0`` on a driver npud does not drive refuses to start with the
    node and the driver named, instead of quietly serving the simulated NPU."""
    settings = load_settings(None, env={"NPUD_DEVICE": "/dev/accel/accel0"})
    nodes = _Nodes([_node("/dev/accel/accel0", "habanalabs")])
    with pytest.raises(Unsupported) as info:
        choose_devices(settings, log=None, nodes=nodes)
    message = str(info.value)
    assert "/dev/accel/accel0" in message
    assert "'habanalabs'" in message
    assert "no npud adapter" in message
    assert "rocket" in message  # what npud does drive


def test_a_named_node_whose_adapter_fails_is_an_error_pointing_at_the_log() -> None:
    """A node of a driver npud drives whose adapter cannot be set up is an error naming the
    node and the driver, not a fall back to the simulated NPU."""
    settings = load_settings(None, env={"NPUD_DEVICE": "/dev/accel/accel0"})
    nodes = _Nodes([_node("/dev/accel/accel0", "rocket")])
    with pytest.raises(Unsupported, match=r"/dev/accel/accel0: the rocket adapter"):
        choose_devices(settings, log=None, nodes=nodes)
    assert nodes.opened == ["/dev/accel/accel0"]


def test_auto_with_only_undriven_nodes_still_serves_the_simulated_npu() -> None:
    """With ``device = auto`` a machine whose NPU nodes no adapter drives gets the simulated
    NPU, said loudly, as a machine with no NPU does."""
    settings = load_settings(None, env={"NPUD_DEVICE": "auto"})
    choice = choose_devices(settings, log=None, nodes=_Nodes([_node("/dev/accel/accel0", None)]))
    assert choice.simulated
    assert "SIMULATED" in choice.reason
    for device in choice.devices:
        device.close()
