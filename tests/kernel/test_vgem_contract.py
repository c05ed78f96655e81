"""The device contract suite (tests/devices/test_contract.py) against the vgem adapter.

Real GEM buffers and vgem fences on the guest's kernel, the simulated NPU's execution on the
mmapped GEM memory, time on a VirtualClock (so durations are exact and nothing sleeps).
"""

from __future__ import annotations

import contextlib
import mmap
import os
import select
from collections.abc import Iterator

import pytest

from npud.clock import VirtualClock
from npud.devices.base import Device
from npud.devices.vgem import VgemDevice
from npud.errors import InvalidArgument, NotFound
from npud.vocab import MemoryTier
from tests.devices import test_contract as _suite
from tests.devices.contract import (
    DeviceUnderTest,
    add_job,
    burn_job,
    check_add,
    on_virtual_clock,
    upload,
)

pytestmark = pytest.mark.kernel

# Every contract test runs here, collected into this module with this module's `dut`.
for _name in dir(_suite):
    if _name.startswith("test_"):
        globals()[_name] = getattr(_suite, _name)


@contextlib.contextmanager
def vgem_virtual() -> Iterator[DeviceUnderTest]:
    """The vgem adapter on a VirtualClock."""
    clock = VirtualClock()
    with on_virtual_clock(VgemDevice(clock=clock), clock) as dut:
        yield dut


@pytest.fixture
def dut() -> Iterator[DeviceUnderTest]:
    with vgem_virtual() as under_test:
        yield under_test


def test_vgem_reports_itself_honestly(dut: DeviceUnderTest) -> None:
    """Driver and version come from the kernel; no SRAM, no syncobj, exports allowed."""
    caps = dut.device.capabilities
    assert isinstance(dut.device, Device)
    assert caps.driver == "vgem"
    assert caps.tier(MemoryTier.SRAM).capacity_bytes == 0
    assert not caps.has_syncobj
    assert caps.can_export
    with pytest.raises(InvalidArgument):
        dut.device.create_buffer(4096, MemoryTier.SRAM)


def _busy(fd: int) -> bool:
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return not poller.poll(0)


def test_a_running_job_fences_its_output_buffer_in_the_kernel(dut: DeviceUnderTest) -> None:
    """While a job runs, its output's dma-buf is busy for the kernel; after completion, idle."""
    job = add_job(dut.device)
    out_fd = dut.device.export_buffer(job.out.handle)
    try:
        blocker, first = dut.submit(burn_job(dut.device, 0.05))
        _, second = dut.submit(job.submission)
        assert not _busy(out_fd)  # queued behind the burn: not started, not fenced
        dut.run_until(lambda: bool(first), 1.0)
        assert _busy(out_fd)  # the ADD job started: its write fence is pending
        dut.run_until(lambda: bool(second), 1.0)
        assert not _busy(out_fd)
        check_add(dut, job, second[0])
        assert blocker == first[0].token
    finally:
        os.close(out_fd)


def test_the_gem_memory_is_what_the_job_computed_on(dut: DeviceUnderTest) -> None:
    """Bytes uploaded via map_buffer are visible through the exported dma-buf (same pages)."""
    data = bytes(range(200))
    buf = upload(dut.device, data)
    fd = dut.device.export_buffer(buf.handle)
    try:
        shared = mmap.mmap(fd, buf.size, mmap.MAP_SHARED, mmap.PROT_READ)
        assert shared[: len(data)] == data
        shared.close()
    finally:
        os.close(fd)
    dut.device.free_buffer(buf.handle)
    with pytest.raises(NotFound):
        dut.device.export_buffer(buf.handle)
