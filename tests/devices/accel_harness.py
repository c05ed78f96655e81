"""Harness: the accel adapters opened on their fake kernels, as contract-suite devices.

Each factory builds a fake kernel with the stand-in ISA firmware, opens the adapter on it with
a private asyncio loop, and yields a :class:`~tests.devices.contract.DeviceUnderTest` whose
``run_until`` runs that loop (completions arrive through fds on the loop or the adapter's
waiter thread, as in the daemon).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator
from typing import Any

from npud.devices.accel.device import AccelDevice
from npud.devices.accel.kernel import KernelFile
from npud.devices.amdxdna import AmdxdnaDevice
from npud.devices.ethosu import EthosuDevice
from npud.devices.etnaviv import EtnavivDevice
from npud.devices.ivpu import IvpuDevice
from npud.devices.qaic import QaicDevice
from npud.devices.rknpu import RknpuDevice
from npud.devices.rocket import RocketDevice
from tests.devices.contract import DeviceUnderTest
from tests.devices.fakekernel.amdxdna import FakeAmdxdna
from tests.devices.fakekernel.base import FakeDevice
from tests.devices.fakekernel.ethosu import FakeEthosu
from tests.devices.fakekernel.etnaviv import FakeEtnaviv
from tests.devices.fakekernel.firmware import IsaFirmware
from tests.devices.fakekernel.ivpu import FakeIvpu
from tests.devices.fakekernel.qaic import FakeQaic
from tests.devices.fakekernel.rknpu import FakeRknpu
from tests.devices.fakekernel.rocket import FakeRocket

# Drivers whose UAPI reports a per-job status (so a failed job completes ERROR). rknpu's is the
# blocking SUBMIT's outcome: a job the NPU never finishes times out in the driver.
REPORTS_JOB_ERRORS = {"intel_vpu", "amdxdna_accel_driver", "rknpu"}

ACCEL_DRIVERS = ("rocket", "ivpu", "amdxdna", "ethosu", "qaic", "etnaviv", "rknpu")
"""Every adapter with a fake kernel, as ``make`` names them."""

PDI = (b"\x00PDI" * 64, 0)  # a stand-in program image for amdxdna contexts


def _qaic_activate(fake: FakeQaic) -> Callable[[KernelFile], list[int]]:
    def activate(file: KernelFile) -> list[int]:
        return fake.activate(file, count=2)

    return activate


def make(driver: str, **fake_kwargs: Any) -> tuple[FakeDevice, Callable[..., AccelDevice]]:
    """A fake kernel for ``driver`` and a constructor of its adapter on it."""
    if driver == "rocket":
        fake: FakeDevice = FakeRocket(**fake_kwargs)
        return fake, lambda **kw: RocketDevice(fake.open, **kw)
    if driver == "ivpu":
        fake = FakeIvpu(**fake_kwargs)
        return fake, lambda **kw: IvpuDevice(fake.open, **kw)
    if driver == "amdxdna":
        fake = FakeAmdxdna(**fake_kwargs)
        return fake, lambda **kw: AmdxdnaDevice(fake.open, cu_configs=[PDI], **kw)
    if driver == "ethosu":
        fake = FakeEthosu(**fake_kwargs)
        return fake, lambda **kw: EthosuDevice(fake.open, **kw)
    if driver == "qaic":
        qfake = FakeQaic(**fake_kwargs)
        return qfake, lambda **kw: QaicDevice(
            qfake.open, activate=_qaic_activate(qfake), command_input=True, **kw
        )
    if driver == "etnaviv":
        efake = FakeEtnaviv(**fake_kwargs)
        return efake, lambda **kw: EtnavivDevice(efake.open, **kw)
    if driver == "rknpu":
        rfake = FakeRknpu(**fake_kwargs)
        # The stand-in firmware finds a job's buffers in the binding table; the timeout is the
        # driver's own, which ends a job the firmware failed (its interrupt never matches).
        return rfake, lambda **kw: RknpuDevice(
            rfake.open, describe_bindings=True, **{"timeout_ms": 300, **kw}
        )
    raise ValueError(driver)


@contextlib.contextmanager
def accel_dut(
    driver: str, *, fake_kwargs: dict[str, Any] | None = None, **adapter_kwargs: Any
) -> Iterator[DeviceUnderTest]:
    """The adapter for ``driver`` opened on its fake kernel (built with ``fake_kwargs``) with
    the ISA firmware."""
    fake, build = make(driver, auto_complete=False, **(fake_kwargs or {}))
    fake.firmware = IsaFirmware(fake)
    loop = asyncio.new_event_loop()
    device = build(name=f"{driver}0", loop=loop, **adapter_kwargs)
    device.open()

    def run_until(predicate: Callable[[], bool], timeout: float) -> None:
        async def _wait() -> None:
            while not predicate():
                await asyncio.sleep(0.001)  # the harness polls; the adapter does not

        loop.run_until_complete(asyncio.wait_for(_wait(), timeout))

    dut = DeviceUnderTest(device, run_until, simulated_time=False)
    try:
        yield dut
    finally:
        device.close()
        loop.run_until_complete(asyncio.sleep(0.01))
        fake.firmware.stop()
        loop.close()


def factory(
    driver: str, **fake_kwargs: Any
) -> Callable[[], contextlib.AbstractContextManager[DeviceUnderTest]]:
    """A contract-suite factory for ``driver`` (its fake kernel built with ``fake_kwargs``)."""

    def _factory() -> contextlib.AbstractContextManager[DeviceUnderTest]:
        return accel_dut(driver, fake_kwargs=fake_kwargs)

    _factory.__name__ = f"accel_{driver}"
    return _factory
