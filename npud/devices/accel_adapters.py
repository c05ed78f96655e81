"""Which adapter drives which NPU node: the DRM driver name (``DRM_IOCTL_VERSION``) -> class.

Discovery (``npud/devices/discovery.py``) reports each node's driver name; the daemon picks the
adapter here and constructs it with the node path, e.g. ``IvpuDevice("/dev/accel/accel0")``;
etnaviv and rknpu are DRM render nodes (``/dev/dri/renderD*``), the rest accel nodes.
amdxdna additionally needs its program (``cu_configs``) and qaic an ``activate`` hook; see
``docs/drivers.md``.
"""

from __future__ import annotations

from npud.devices.accel.device import AccelDevice
from npud.devices.amdxdna import AmdxdnaDevice
from npud.devices.ethosu import EthosuDevice
from npud.devices.etnaviv import EtnavivDevice
from npud.devices.ivpu import IvpuDevice
from npud.devices.qaic import QaicDevice
from npud.devices.rknpu import RknpuDevice
from npud.devices.rocket import RocketDevice

ADAPTERS: dict[str, type[AccelDevice]] = {
    cls.driver: cls
    for cls in (
        RocketDevice,
        IvpuDevice,
        AmdxdnaDevice,
        EthosuDevice,
        QaicDevice,
        EtnavivDevice,
        RknpuDevice,
    )
}
"""DRM driver name -> adapter class (``"intel_vpu"`` -> :class:`IvpuDevice`, ...)."""

# Kernel module and platform-driver names as discovery may report them (the ``driver`` link of
# the node's parent device in sysfs).
MODULE_ALIASES = {
    "intel_vpu": "intel_vpu",
    "ivpu": "intel_vpu",
    "amdxdna": "amdxdna_accel_driver",
    "RKNPU": "rknpu",  # the vendor rknpu's platform driver name, as sysfs reports it
}


def adapter_for(driver: str) -> type[AccelDevice] | None:
    """The adapter class for a DRM driver or kernel module name, or ``None`` if npud has none."""
    return ADAPTERS.get(MODULE_ALIASES.get(driver, driver))
