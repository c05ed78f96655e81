"""What the watchdog's reset (``Device.reset_engine``) does on each driver, against the fake
kernels: exactly what the driver lets userspace do, as the README's device table and
docs/design.md state it.

- ivpu destroys the engine's command queues, amdxdna its hardware contexts, rknpu soft-resets
  the NPU (``RKNPU_ACT_RESET``);
- rocket, ethosu, qaic and etnaviv offer no reset: no ioctl is issued, the job is reported
  ABORTED at once, and the engine's next job runs once the kernel is done with the hung one.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from npud.devices.base import Completion, Submission
from npud.isa import Program
from tests.devices.accel_harness import ACCEL_DRIVERS, make
from tests.devices.contract import add_job, upload
from tests.devices.fakekernel.firmware import IsaFirmware

RESET_IOCTLS = {
    "ivpu": {"DRM_IOCTL_IVPU_CMDQ_DESTROY"},
    "amdxdna": {"DRM_IOCTL_AMDXDNA_DESTROY_HWCTX"},
    "rknpu": {"DRM_IOCTL_RKNPU_ACTION"},
    "rocket": set(),
    "ethosu": set(),
    "qaic": set(),
    "etnaviv": set(),
}
"""The ioctls each driver's reset issues (none where the UAPI has no reset)."""

# Not a reset: the blocking waits the waiter threads of ethosu and qaic issue on their own
# schedule, and the aborted job's own cleanup (ethosu closes the job's command-stream BO; the
# kernel keeps its reference while the job runs).
_NOT_RESETS = {"DRM_IOCTL_ETHOSU_BO_WAIT", "DRM_IOCTL_QAIC_WAIT_BO", "DRM_IOCTL_GEM_CLOSE"}


def _burn(device: Any, seconds: float) -> Submission:
    blob = Program().burn(seconds).encode()
    cmd = upload(device, blob)
    return Submission(cmd.handle, 0, len(blob), (), 0)


@pytest.mark.parametrize("driver", ACCEL_DRIVERS)
def test_reset_engine_does_what_the_driver_allows(driver: str) -> None:
    """reset_engine aborts the engine's job with the watchdog's reason through the driver's own
    reset where it has one (and issues no ioctl where it has none); the engine then serves."""
    assert set(RESET_IOCTLS) == set(ACCEL_DRIVERS)

    async def scenario() -> None:
        fake, build = make(driver, auto_complete=False)
        fake.firmware = IsaFirmware(fake)
        kw = {"timeout_ms": 30_000} if driver == "rknpu" else {}
        device = build(name=f"{driver}0", **kw)
        device.open()
        hung: list[Completion] = []
        device.submit(_burn(device, 1.0), hung.append)
        async with asyncio.timeout(30):
            while len(fake.pending()) != 1:
                await asyncio.sleep(0.001)
        before = len(fake.calls)
        device.reset_engine(0, "watchdog: ran past its timeout")
        issued = set(fake.calls[before:]) - _NOT_RESETS
        assert RESET_IOCTLS[driver] <= issued
        if not RESET_IOCTLS[driver]:
            assert issued == set(), issued  # nothing userspace can call
        assert [c.status for c in hung] == ["aborted"]
        assert hung[0].error == "watchdog: ran past its timeout"
        assert device.statistics().resets == 1
        job = add_job(device, seed=7)
        done: list[Completion] = []
        device.submit(job.submission, done.append)
        async with asyncio.timeout(30):
            while not done:
                await asyncio.sleep(0.001)
        assert done[0].status == "ok", done[0].error
        device.close()
        fake.firmware.stop()

    asyncio.run(scenario())
