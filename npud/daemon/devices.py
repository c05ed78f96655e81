"""Which devices the daemon serves: discovered NPUs, or the simulated one, loudly.

``device = "auto"`` asks discovery (:mod:`npud.devices.discovery`, pyudev with a sysfs
fallback) for accel nodes and opens each one a known adapter drives
(:mod:`npud.devices.accel_adapters`: driver name -> adapter class). With no NPU on the machine
the daemon serves the simulated NPU (:class:`npud.devices.sim.SimDevice` in process mode: a
device process on real time) and says so: a warning in the log, the systemd STATUS line, the
daemon statistics and ``simulated = true`` on every device record. ``device = "sim"`` asks for
the simulated NPU only; ``device = "vgem"`` the kernel's virtual GEM driver (real GEM buffers,
PRIME and fences, simulated execution: how the daemon runs on a real DRM kernel in the kernel
suite); a ``/dev/...`` path for that node only.

Finding and opening nodes goes through :class:`Nodes` (:class:`SystemNodes` here: discovery and
the adapters), so the daemon's device handling - start-up, recovery, hotplug - can be driven
over fake kernels in tests. The daemon remembers which node each real device was opened on
(:attr:`DeviceChoice.nodes`): recovery finds a lost device's node again by its path, and
hotplug matches a removed node to the device on it.

Some adapters need more than a node: an amdxdna NPU runs nothing without its program (the PDI
images of ``[amdxdna] cu_configs``), a qaic card nothing without its network activated on
npud's file (``[qaic] activate``, a hook). :func:`adapter_options` takes those from the
settings and names the missing setting in a :class:`~npud.errors.ConfigError` when one is not
there; such a node is not served, and when no other device is, the daemon does not start.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from npud.config import Settings
from npud.devices.accel.kernel import KernelFile
from npud.devices.accel_adapters import ADAPTERS, adapter_for
from npud.devices.base import Device
from npud.devices.discovery import NodeInfo, enumerate_nodes
from npud.errors import ConfigError, DeviceLost, NpudError, Unsupported


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


def _make_vgem(settings: Settings) -> Device:
    from npud.devices.vgem import VgemDevice

    return VgemDevice(name="vgem0", profile=settings.sim_profile)


def _slowdown_note(settings: Settings) -> str:
    return "" if settings.sim_slowdown == 1 else f", slowed down x{settings.sim_slowdown:g}"


def _discover(log: Any) -> list[NodeInfo]:
    """Nodes found by discovery, or [] when it fails (logged)."""
    try:
        return enumerate_nodes()
    except (OSError, NpudError) as exc:
        log.warning("devices.discovery_failed", error=str(exc))
        return []


def load_hook(spec: str, setting: str) -> Callable[..., Any]:
    """The callable named ``package.module:function`` by the setting ``setting``.

    Raises:
        ConfigError: it cannot be imported or is not callable (the message names the setting).
    """
    module_name, _, attr = spec.partition(":")
    try:
        hook = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"{setting}: cannot import {spec!r}: {exc}") from exc
    if not callable(hook):
        raise ConfigError(f"{setting}: {spec!r} is not callable")
    return hook  # type: ignore[no-any-return]


def adapter_options(settings: Settings, driver: str) -> dict[str, Any]:
    """What the adapter of ``driver`` (a DRM driver name) needs from the settings.

    Raises:
        ConfigError: the driver cannot run without a setting that is not set, or the setting
            cannot be used; the message names it and what it must hold.
    """
    if driver == "amdxdna_accel_driver":
        amd = settings.amdxdna
        if not amd.cu_configs:
            raise ConfigError(
                "amdxdna.cu_configs is not set: an AMD XDNA NPU runs nothing without its "
                "program; list the PDI images of your xclbin under [amdxdna] cu_configs in "
                "npud.toml (see systemd/npud.toml.example)"
            )
        images = []
        for cu in amd.cu_configs:
            try:
                images.append((cu.pdi.read_bytes(), cu.func))
            except OSError as exc:
                raise ConfigError(f"amdxdna.cu_configs: cannot read {cu.pdi}: {exc}") from exc
        return {"cu_configs": images, "engines": amd.engines}
    if driver == "qaic":
        qaic = settings.qaic
        if qaic.activate is None:
            raise ConfigError(
                "qaic.activate is not set: a Cloud AI 100 runs nothing until a network is "
                "activated on npud's own file; name the hook that does it (the Cloud AI SDK's "
                "activation, 'package.module:function') under [qaic] activate in npud.toml"
            )
        hook: Callable[[KernelFile], Any] = load_hook(qaic.activate, "qaic.activate")
        return {"activate": hook, "command_input": qaic.command_input}
    return {}


def build_adapter(
    node: NodeInfo, settings: Settings, *, opener: Callable[[], KernelFile] | None = None
) -> Device | None:
    """A new, unopened adapter for ``node`` configured from ``settings``; ``None`` when no
    adapter drives its driver. ``opener`` replaces opening the node (fake kernels in tests).

    Raises:
        ConfigError: the adapter needs a setting that is not set (see :func:`adapter_options`).
    """
    cls = adapter_for(node.driver or "")
    if cls is None:
        return None
    options = adapter_options(settings, cls.driver)
    target: Callable[[], KernelFile] | str = opener if opener is not None else node.path
    device: Device = cls(target, name=Path(node.path).name, **options)
    return device


def _open_node(node: NodeInfo, log: Any, settings: Settings) -> Device | None:
    """An adapter for a discovered node, or None when no adapter drives it (logged).

    Raises:
        ConfigError: the node's adapter needs a setting that is not set.
    """
    driver = node.driver or ""
    try:
        device = build_adapter(node, settings)
    except (NpudError, OSError, TypeError) as exc:
        if isinstance(exc, ConfigError):
            raise
        log.warning("devices.adapter_failed", node=node.path, driver=driver, error=str(exc))
        return None
    if device is None:
        log.warning("devices.no_adapter", node=node.path, driver=driver or "unknown")
    return device


class Nodes(Protocol):
    """How the daemon finds NPU nodes and puts an adapter on one."""

    def discover(self) -> list[NodeInfo]:
        """Every NPU node present now ([] when discovery is unavailable); never raises."""
        ...

    def open(self, node: NodeInfo) -> Device | None:
        """A new, unopened adapter for ``node``, or ``None`` when no adapter drives it.

        Raises:
            ConfigError: the adapter needs a setting that is not set.
        """
        ...


class SystemNodes:
    """The machine's nodes: :mod:`npud.devices.discovery` and the adapters, configured from
    ``settings`` (defaults when not given)."""

    def __init__(self, log: Any, settings: Settings | None = None) -> None:
        self._log = log
        self._settings = settings

    def discover(self) -> list[NodeInfo]:
        """Every NPU node discovery finds now (see :func:`_discover`)."""
        return _discover(self._log)

    def open(self, node: NodeInfo) -> Device | None:
        """The adapter for ``node`` (see :func:`_open_node`).

        Raises:
            ConfigError: the adapter needs a setting that is not set.
        """
        settings = self._settings if self._settings is not None else Settings()
        return _open_node(node, self._log, settings)


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
        ConfigError: NPUs were found but none could be served for want of a setting (each
            named); with at least one other device, such nodes are logged and skipped.
    """
    if settings.device == "vgem":
        return DeviceChoice(
            (_make_vgem(settings),),
            True,
            "vgem: real GEM buffers on the kernel's virtual GEM driver, execution SIMULATED "
            f"(profile {settings.sim_profile}); a test device, not an NPU",
        )
    if settings.device == "sim":
        return DeviceChoice(
            (_make_sim(settings),),
            True,
            f"simulated NPU (device = sim, profile {settings.sim_profile}"
            f"{_slowdown_note(settings)})",
        )
    access = nodes if nodes is not None else SystemNodes(log, settings)
    found_nodes = [n for n in access.discover() if wanted(settings, n)]
    if settings.device != "auto" and not found_nodes:
        raise Unsupported(f"device {settings.device}: not found by discovery or unsupported")
    found: list[Device] = []
    on_node: dict[str, NodeInfo] = {}
    unconfigured: list[str] = []
    for node in found_nodes:
        try:
            device = access.open(node)
        except ConfigError as exc:
            log.error("devices.not_configured", node=node.path, driver=node.driver, error=str(exc))
            unconfigured.append(f"{node.path} ({node.driver}): {exc}")
            continue
        if device is not None:
            found.append(device)
            on_node[device.name] = node
    if found:
        return DeviceChoice(tuple(found), False, f"{len(found)} NPU(s) discovered", on_node)
    if unconfigured:
        raise ConfigError("no NPU can be served: " + "; ".join(unconfigured))
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
