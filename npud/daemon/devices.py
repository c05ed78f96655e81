"""Which devices the daemon serves: discovered NPUs, or the simulated one, loudly.

``device = "auto"`` asks discovery (:mod:`npud.devices.discovery`, pyudev with a sysfs
fallback) for accel nodes and opens each one a known adapter drives
(:mod:`npud.devices.accel_adapters`: driver name -> adapter class). With no NPU on the machine
the daemon serves the simulated NPU (:class:`npud.devices.sim.SimDevice` in process mode: a
device process on real time) and says so: a warning in the log, the systemd STATUS line, the
daemon statistics and ``simulated = true`` on every device record. ``device = "sim"`` asks for
the simulated NPU only; a ``/dev/...`` path for that node only.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from npud.config import Settings
from npud.devices.base import Device
from npud.errors import DeviceLost, NpudError, Unsupported


@dataclass(frozen=True, slots=True)
class DeviceChoice:
    """The devices the daemon opened and why."""

    devices: tuple[Device, ...]
    simulated: bool
    reason: str  # one line for the log and the systemd status


def _make_sim(settings: Settings, name: str = "sim0") -> Device:
    from npud.devices.sim import SimDevice

    device: Device = SimDevice(settings.sim_profile, mode="process", name=name)
    return device


def _discover(log: Any) -> list[Any]:
    """Nodes found by discovery, or [] when discovery is unavailable (logged)."""
    try:
        discovery = importlib.import_module("npud.devices.discovery")
    except ImportError:
        log.info("devices.discovery_unavailable", detail="npud.devices.discovery not installed")
        return []
    finder: Callable[[], Any] | None = getattr(discovery, "enumerate_nodes", None) or getattr(
        discovery, "discover", None
    )
    if finder is None:
        log.info("devices.discovery_unavailable", detail="no enumerate function")
        return []
    try:
        return list(finder())
    except (OSError, NpudError) as exc:
        log.warning("devices.discovery_failed", error=str(exc))
        return []


def _open_node(node: Any, log: Any) -> Device | None:
    """An adapter for a discovered node, or None when no adapter drives it (logged)."""
    path = str(getattr(node, "path", node))
    driver = getattr(node, "driver", None) or ""
    try:
        from npud.devices.accel_adapters import adapter_for
    except ImportError as exc:  # the kernel ABI layer (cffi) is not installed
        log.warning("devices.no_adapter", node=path, driver=driver, detail=str(exc))
        return None
    cls = adapter_for(driver)
    if cls is None:
        log.warning("devices.no_adapter", node=path, driver=driver or "unknown")
        return None
    try:
        device: Device = cls(path, name=Path(path).name)
    except (NpudError, OSError, TypeError) as exc:
        log.warning("devices.adapter_failed", node=path, driver=driver, error=str(exc))
        return None
    return device


def choose_devices(settings: Settings, log: Any) -> DeviceChoice:
    """Create (not yet open) the devices the configuration asks for.

    Raises:
        Unsupported: ``device`` names a node no adapter drives.
    """
    if settings.device == "sim":
        return DeviceChoice((_make_sim(settings),), True, "simulated NPU (device = sim)")
    nodes = _discover(log)
    if settings.device != "auto":
        nodes = [n for n in nodes if str(getattr(n, "path", "")) == settings.device]
        if not nodes:
            raise Unsupported(f"device {settings.device}: not found by discovery or unsupported")
    found = [d for d in (_open_node(n, log) for n in nodes) if d is not None]
    if found:
        return DeviceChoice(tuple(found), False, f"{len(found)} NPU(s) discovered")
    return DeviceChoice(
        (_make_sim(settings),),
        True,
        "no NPU found: serving the SIMULATED NPU "
        f"(profile {settings.sim_profile}); jobs run on a model, not on hardware",
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
