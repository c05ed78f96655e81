"""Which devices the daemon serves: discovered NPUs, or the simulated one, loudly.

``device = "auto"`` asks discovery (:mod:`npud.devices.discovery`, pyudev with a sysfs
fallback) for accel nodes and opens each one a known adapter drives
(:mod:`npud.devices.accel_adapters`: driver name -> adapter class). With no NPU on the machine
the daemon serves the simulated NPU (:class:`npud.devices.sim.SimDevice` in process mode: a
device process on real time) and says so: a warning in the log, the systemd STATUS line, the
daemon statistics and ``simulated = true`` on every device record. ``device = "sim"`` asks for
the simulated NPU only; a ``/dev/...`` path for that node only.

Finding and opening nodes goes through :class:`Nodes` (:class:`SystemNodes` here: discovery and
the adapters), so the daemon's device handling - start-up, recovery, hotplug - can be driven
over fake kernels in tests. The daemon remembers which node each real device was opened on
(:attr:`DeviceChoice.nodes`): recovery finds a lost device's node again by its path, and
hotplug matches a removed node to the device on it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from npud.config import Settings
from npud.devices.accel_adapters import ADAPTERS, adapter_for
from npud.devices.base import Device
from npud.devices.discovery import NodeInfo, enumerate_nodes
from npud.errors import DeviceLost, NpudError, Unsupported


@dataclass(frozen=True, slots=True)
class DeviceChoice:
    """The devices the daemon opened and why."""

    devices: tuple[Device, ...]
    simulated: bool
    reason: str  # one line for the log and the systemd status
    nodes: Mapping[str, NodeInfo] = field(default_factory=dict)  # device name -> its node


def _make_sim(settings: Settings, name: str = "sim0") -> Device:
    from npud.devices.sim import SimDevice

    device: Device = SimDevice(
        settings.sim_profile, mode="process", name=name, slowdown=settings.sim_slowdown
    )
    return device


def _slowdown_note(settings: Settings) -> str:
    return "" if settings.sim_slowdown == 1 else f", slowed down x{settings.sim_slowdown:g}"


def _discover(log: Any) -> list[NodeInfo]:
    """Nodes found by discovery, or [] when it fails (logged)."""
    try:
        return enumerate_nodes()
    except (OSError, NpudError) as exc:
        log.warning("devices.discovery_failed", error=str(exc))
        return []


def _open_node(node: NodeInfo, log: Any) -> Device | None:
    """An adapter for a discovered node, or None when no adapter drives it (logged)."""
    driver = node.driver or ""
    cls = adapter_for(driver)
    if cls is None:
        log.warning("devices.no_adapter", node=node.path, driver=driver or "unknown")
        return None
    try:
        device: Device = cls(node.path, name=Path(node.path).name)
    except (NpudError, OSError, TypeError) as exc:
        log.warning("devices.adapter_failed", node=node.path, driver=driver, error=str(exc))
        return None
    return device


class Nodes(Protocol):
    """How the daemon finds NPU nodes and puts an adapter on one."""

    def discover(self) -> list[NodeInfo]:
        """Every NPU node present now ([] when discovery is unavailable); never raises."""
        ...

    def open(self, node: NodeInfo) -> Device | None:
        """A new, unopened adapter for ``node``, or ``None`` when no adapter drives it."""
        ...


class SystemNodes:
    """The machine's nodes: :mod:`npud.devices.discovery` and the accel adapters."""

    def __init__(self, log: Any) -> None:
        self._log = log

    def discover(self) -> list[NodeInfo]:
        """Every NPU node discovery finds now (see :func:`_discover`)."""
        return _discover(self._log)

    def open(self, node: NodeInfo) -> Device | None:
        """The adapter for ``node`` (see :func:`_open_node`)."""
        return _open_node(node, self._log)


def wanted(settings: Settings, node: NodeInfo) -> bool:
    """Whether the configuration lets the daemon serve ``node``: ``device = "auto"`` serves
    every node an adapter drives, a ``/dev/...`` path only that node, ``"sim"`` none."""
    if settings.device == "auto":
        return True
    return settings.device == node.path


def choose_devices(settings: Settings, log: Any, nodes: Nodes | None = None) -> DeviceChoice:
    """Create (not yet open) the devices the configuration asks for.

    ``nodes`` finds and opens nodes (default: :class:`SystemNodes`).

    Raises:
        Unsupported: ``device`` names a node discovery does not find, or one no adapter drives
            or can be set up for (the message names the node and its driver).
    """
    if settings.device == "sim":
        return DeviceChoice(
            (_make_sim(settings),),
            True,
            f"simulated NPU (device = sim, profile {settings.sim_profile}"
            f"{_slowdown_note(settings)})",
        )
    access = nodes if nodes is not None else SystemNodes(log)
    found_nodes = [n for n in access.discover() if wanted(settings, n)]
    if settings.device != "auto" and not found_nodes:
        raise Unsupported(f"device {settings.device}: not found by discovery or unsupported")
    found: list[Device] = []
    on_node: dict[str, NodeInfo] = {}
    for node in found_nodes:
        device = access.open(node)
        if device is not None:
            found.append(device)
            on_node[device.name] = node
    if found:
        return DeviceChoice(tuple(found), False, f"{len(found)} NPU(s) discovered", on_node)
    if settings.device != "auto":
        raise Unsupported(_unserved(found_nodes[0]))
    return DeviceChoice(
        (_make_sim(settings),),
        True,
        "no NPU found: serving the SIMULATED NPU "
        f"(profile {settings.sim_profile}{_slowdown_note(settings)}); jobs run on a model, "
        "not on hardware",
    )


def _unserved(node: NodeInfo) -> str:
    """Why a node named with ``device`` cannot be served, for the start-up error."""
    driver = node.driver or "unknown"
    if adapter_for(node.driver or "") is None:
        return (
            f"device {node.path}: its driver {driver!r} has no npud adapter (npud drives "
            f'{", ".join(sorted(ADAPTERS))}); use device = "sim" or "auto"'
        )
    return (
        f"device {node.path}: the {driver} adapter could not be set up for it; the "
        "devices.adapter_failed log line says why"
    )


def open_devices(choice: DeviceChoice, log: Any) -> list[Device]:
    """Open every chosen device; those that fail to open are logged and skipped.

    Raises:
        DeviceLost: none of the devices could be opened.
    """
    opened: list[Device] = []
    for device in choice.devices:
        try:
            device.open()
        except NpudError as exc:
            log.error("device.open_failed", device=device.name, error=str(exc))
            continue
        opened.append(device)
        caps = device.capabilities
        log.info(
            "device.opened",
            device=device.name,
            driver=caps.driver,
            board=caps.board,
            engines=len(caps.engines),
            simulated=caps.simulated,
        )
    if not opened:
        raise DeviceLost("no device could be opened; see the log above")
    return opened
