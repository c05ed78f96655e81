"""Driver-specific behaviour of the etnaviv and rknpu adapters against their fake kernels."""

from __future__ import annotations

import asyncio
import errno
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from npud.abi import drm, etnaviv, rknpu
from npud.devices.accel.device import AccelDevice
from npud.devices.base import Binding, BufferUse, Completion, Submission
from npud.devices.etnaviv import AddressRange, EtnavivDevice
from npud.devices.rknpu import RknpuDevice
from npud.errors import InvalidArgument, OutOfDeviceMemory, Unsupported
from npud.isa import Program
from npud.vocab import MemoryTier
from tests.devices.accel_harness import make
from tests.devices.contract import add_job, download, upload
from tests.devices.fakekernel.etnaviv import GC7000, VIPNANO_QI, FakeEtnaviv
from tests.devices.fakekernel.firmware import IsaFirmware
from tests.devices.fakekernel.rknpu import FakeRknpu


def run(coro: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(coro())


async def until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    """Let the loop run until ``predicate`` holds."""

    async def _wait() -> None:
        while not predicate():
            await asyncio.sleep(0.001)

    await asyncio.wait_for(_wait(), timeout)


def burn(device: AccelDevice, seconds: float, engine: int = 0, **kw: Any) -> Submission:
    """A job that holds ``engine`` for ``seconds`` on the stand-in firmware."""
    blob = Program().burn(seconds).encode()
    cmd = upload(device, blob)
    return Submission(cmd.handle, 0, len(blob), (), engine, **kw)


def with_firmware(driver: str, **fake_kwargs: Any) -> tuple[Any, Callable[..., AccelDevice]]:
    fake, build = make(driver, auto_complete=False, **fake_kwargs)
    fake.firmware = IsaFirmware(fake)
    return fake, build


# -- etnaviv ---------------------------------------------------------------------------------------


def test_etnaviv_serves_only_the_npu_core() -> None:
    """Of a GPU on pipe 0 and a VIPNano on pipe 1, only pipe 1 is an engine; jobs run there."""

    async def scenario() -> None:
        fake, build = with_firmware("etnaviv")
        device = build(name="renderD128")
        device.open()
        assert isinstance(device, EtnavivDevice)
        assert device.npu_pipes == (1,)
        assert set(device.cores) == {0, 1}
        caps = device.capabilities
        assert [e.name for e in caps.engines] == ["VIPNano-QI (A311D) (pipe 1)"]
        assert caps.driver == "etnaviv"
        assert caps.native_priorities == 1
        assert "8 NN cores" in caps.description
        job = add_job(device)
        box: list[Completion] = []
        device.submit(job.submission, box.append)
        await until(lambda: bool(box))
        assert box[0].status == "ok"
        assert [j.engine for j in fake.jobs] == [1]  # submitted to the NPU's pipe
        assert "DRM_IOCTL_ETNAVIV_GEM_SUBMIT" in fake.calls
        assert fake.fini_without_prep == 0  # every CPU_FINI had its CPU_PREP
        device.close()
        fake.firmware.stop()

    run(scenario)


def test_etnaviv_without_an_npu_core_is_refused() -> None:
    """A device with only a GPU is not served: open says which cores it found."""

    async def scenario() -> None:
        fake = FakeEtnaviv(cores=(GC7000,))
        device = EtnavivDevice(fake.open, name="renderD128")
        with pytest.raises(Unsupported, match=r"no NPU core.*pipe 0: GC7000 rev 0x6214"):
            device.open()
        assert all(f.closed for f in fake.files)  # nothing held

    run(scenario)


def test_etnaviv_two_npu_pipes_are_two_engines() -> None:
    """Each NPU pipe is an engine; a job on engine 1 goes to the second NPU pipe."""

    async def scenario() -> None:
        fake, _ = with_firmware("etnaviv", cores=(VIPNANO_QI, GC7000, VIPNANO_QI))
        device = EtnavivDevice(fake.open, name="renderD128")
        device.open()
        assert device.npu_pipes == (0, 2)
        box: list[Completion] = []
        device.submit(add_job(device, engine=1).submission, box.append)
        await until(lambda: bool(box))
        assert box[0].status == "ok"
        assert fake.jobs[-1].engine == 2
        device.close()
        fake.firmware.stop()

    run(scenario)


def test_etnaviv_softpin_addresses_and_mmuv1() -> None:
    """With MMUv2 BOs get distinct pinned addresses from 4 MiB, reused after free; with MMUv1
    there is no softpin and the address is 0 (the kernel picks it)."""

    async def scenario() -> None:
        fake, build = make("etnaviv")
        device = build(name="renderD128")
        device.open()
        a = device.create_buffer(5000, MemoryTier.DRAM)
        b = device.create_buffer(4096, MemoryTier.DRAM)
        assert a.device_address == 4 << 20
        assert b.device_address == a.device_address + 8192
        device.free_buffer(a.handle)
        c = device.create_buffer(4096, MemoryTier.DRAM)
        assert c.device_address == 4 << 20  # first fit: the freed range again
        box: list[Completion] = []
        device.submit(
            Submission(c.handle, 0, 64, (Binding(b.handle, BufferUse.WRITE),), 0), box.append
        )
        await until(lambda: bool(box))
        assert box[0].status == "ok"
        assert fake.files[0].bos[b.handle].extra["va"] == b.device_address  # pinned there
        device.close()

        v1 = FakeEtnaviv(mmu_v2=False)
        old = EtnavivDevice(v1.open, name="renderD128")
        old.open()
        assert not old.softpin
        assert old.create_buffer(64, MemoryTier.DRAM).device_address == 0
        old.close()

    run(scenario)


def test_etnaviv_address_range_merges_holes() -> None:
    """The softpin allocator merges returned ranges and reports a full space precisely."""
    space = AddressRange(0x1000, 0x5000)
    first, second = space.take(4096), space.take(8192)
    assert (first, second) == (0x1000, 0x2000)
    with pytest.raises(OutOfDeviceMemory):
        space.take(8192)
    space.give(first, 4096)
    space.give(second, 8192)
    assert space.take(16384) == 0x1000


def test_etnaviv_binding_twice_is_listed_once_and_fence_is_waitable() -> None:
    """A buffer bound twice is one BO table entry (the kernel says EALREADY otherwise); the
    job's fence number can be waited for with WAIT_FENCE; a number never issued is refused."""

    async def scenario() -> None:
        fake, build = make("etnaviv")
        device = build(name="renderD128")
        device.open()
        assert isinstance(device, EtnavivDevice)
        buf = device.create_buffer(4096, MemoryTier.DRAM)
        cmd = device.create_buffer(64, MemoryTier.DRAM)
        bindings = (Binding(buf.handle, BufferUse.READ), Binding(buf.handle, BufferUse.WRITE))
        box: list[Completion] = []
        device.submit(Submission(cmd.handle, 0, 64, bindings, 0), box.append)
        await until(lambda: bool(box))
        assert box[0].status == "ok"
        assert fake.jobs[-1].writes == [fake.files[0].bos[buf.handle]]
        assert device.wait_fence(0, fake.jobs[-1].extra["fence"], 1.0)
        with pytest.raises(InvalidArgument):
            device.wait_fence(0, 999, 0.1)
        device.close()

    run(scenario)


def test_etnaviv_reset_has_nothing_to_call() -> None:
    """reset_engine aborts the engine's job without an ioctl (only the kernel's timeout handler
    can recover a core); the engine takes the next job."""

    async def scenario() -> None:
        fake, build = with_firmware("etnaviv")
        device = build(name="renderD128")
        device.open()
        box: list[Completion] = []
        device.submit(burn(device, 5.0), box.append)
        await until(lambda: len(fake.pending()) == 1)
        calls = len(fake.calls)
        device.reset_engine(0, "watchdog: overran")
        assert [c.status for c in box] == ["aborted"]
        assert fake.calls[calls:] == []
        device.close()
        fake.firmware.stop()

    run(scenario)


def test_etnaviv_fake_kernel_checks() -> None:
    """The fake refuses what etnaviv refuses: two cache modes, an unaligned stream, a bad pipe."""
    fake = FakeEtnaviv()
    file = fake.open()
    both = etnaviv.HEADER.new(
        "struct drm_etnaviv_gem_new",
        size=4096,
        flags=int(etnaviv.BoFlag.WC | etnaviv.BoFlag.CACHED),
    )
    with pytest.raises(OSError) as err:
        file.ioctl(etnaviv.GEM_NEW, both)
    assert err.value.errno == errno.EINVAL
    bad = etnaviv.HEADER.new("struct drm_etnaviv_gem_submit", pipe=1, stream_size=6)
    with pytest.raises(OSError) as err:
        file.ioctl(etnaviv.GEM_SUBMIT, bad)
    assert err.value.errno == errno.EINVAL
    param = etnaviv.HEADER.new("struct drm_etnaviv_param", pipe=3, param=1)
    with pytest.raises(OSError) as err:
        file.ioctl(etnaviv.GET_PARAM, param)
    assert err.value.errno == errno.ENXIO


# -- rknpu -----------------------------------------------------------------------------------------


def test_rknpu_capabilities_cores_and_sram() -> None:
    """Three engines (one per core), the driver's version, SRAM as a tier of its real size."""

    async def scenario() -> None:
        _fake, build = make("rknpu")
        device = build(name="renderD129")
        device.open()
        caps = device.capabilities
        assert caps.driver == "rknpu"
        assert caps.driver_version == (0, 9, 8)
        assert [e.name for e in caps.engines] == ["core0", "core1", "core2"]
        assert caps.tier(MemoryTier.SRAM).capacity_bytes == 0xEF000
        assert caps.tier(MemoryTier.DRAM).capacity_bytes > 0
        assert caps.native_priorities == 1
        device.close()

    run(scenario)


def test_rknpu_sram_tier_allocates_in_sram_or_refuses() -> None:
    """An SRAM buffer takes the driver's SRAM (its free size drops), a buffer larger than what
    is free is refused with nothing left behind, and freeing gives the SRAM back."""

    async def scenario() -> None:
        fake, build = make("rknpu")
        device = build(name="renderD129")
        device.open()
        assert isinstance(device, RknpuDevice)
        free = device.action(rknpu.Action.GET_FREE_SRAM_SIZE)
        assert free == 0xEF000
        buf = device.create_buffer(256 << 10, MemoryTier.SRAM)
        assert device.action(rknpu.Action.GET_FREE_SRAM_SIZE) == free - (256 << 10)
        assert device.statistics().used_bytes[MemoryTier.SRAM] == 256 << 10
        view = device.map_buffer(buf.handle)
        view[:4] = b"sram"
        view.release()
        assert download(device, buf, 4) == b"sram"
        handles = len(fake.files[0].bos)
        with pytest.raises(OutOfDeviceMemory, match="SRAM"):
            device.create_buffer(1 << 20, MemoryTier.SRAM)
        assert len(fake.files[0].bos) == handles  # the partial object was destroyed
        device.free_buffer(buf.handle)
        assert device.action(rknpu.Action.GET_FREE_SRAM_SIZE) == free
        device.close()

        none = FakeRknpu(sram=0)
        plain = RknpuDevice(none.open, name="renderD129")
        plain.open()
        assert plain.capabilities.tier(MemoryTier.SRAM).capacity_bytes == 0
        with pytest.raises(InvalidArgument, match="sram"):
            plain.create_buffer(4096, MemoryTier.SRAM)
        plain.close()

    run(scenario)


def test_rknpu_engines_are_core_masks_and_caches_are_synced() -> None:
    """A job on engine i is submitted with core_mask 1 << i as a blocking PC job; its buffers
    are synced to the device before and its written ones from the device after."""

    async def scenario() -> None:
        fake, build = with_firmware("rknpu")
        device = build(name="renderD129")
        device.open()
        box: list[Completion] = []
        jobs = [add_job(device, engine=e, seed=e) for e in range(3)]
        for job in jobs:
            device.submit(job.submission, box.append)
        await until(lambda: len(box) == 3)
        assert [c.status for c in box] == ["ok"] * 3
        masks = sorted(s["core_mask"] for s in fake.submits)
        assert masks == [1, 2, 4]
        flags = {s["flags"] for s in fake.submits}
        assert flags == {int(rknpu.JobFlag.PC | rknpu.JobFlag.PINGPONG)}  # blocking
        assert {s["priority"] for s in fake.submits} == {0}
        out = fake.files[0].bos[jobs[0].out.handle].extra["obj_addr"]
        directions = [f for addr, f in fake.syncs if addr == out]
        assert directions == [int(rknpu.SyncFlag.TO_DEVICE), int(rknpu.SyncFlag.FROM_DEVICE)]
        device.close()
        fake.firmware.stop()

    run(scenario)


def test_rknpu_timeout_is_the_drivers_job_status() -> None:
    """A job running past its timeout fails with the driver's ETIMEDOUT (and the task count);
    the driver soft-reset the NPU and the next job runs."""

    async def scenario() -> None:
        fake, build = with_firmware("rknpu")
        device = build(name="renderD129")
        device.open()
        box: list[Completion] = []
        device.submit(burn(device, 5.0, timeout_s=0.05), box.append)  # npud's watchdog is off
        await until(lambda: bool(box))
        assert box[0].status == "error"
        assert box[0].error is not None
        assert "ETIMEDOUT" in box[0].error
        assert "0 of 1" in box[0].error
        assert fake.submits[-1]["timeout"] == 150  # 2 x 50 ms + 50: a backstop to npud's
        assert fake.resets == 1
        job = add_job(device, seed=4)
        device.submit(job.submission, box.append)
        await until(lambda: len(box) == 2)
        assert box[1].status == "ok"
        device.close()
        fake.firmware.stop()

    run(scenario)


def test_rknpu_reset_engine_soft_resets_and_says_so_elsewhere() -> None:
    """reset_engine issues RKNPU_ACT_RESET: the hung job is ABORTED with the watchdog's reason,
    a job on another core is cut short too and completes ABORTED saying why; then all serve."""

    async def scenario() -> None:
        fake, build = with_firmware("rknpu")
        device = build(name="renderD129", timeout_ms=30_000)
        device.open()
        hung: list[Completion] = []
        other: list[Completion] = []
        device.submit(burn(device, 10.0, engine=0), hung.append)
        device.submit(burn(device, 10.0, engine=1), other.append)
        await until(lambda: len(fake.pending()) == 2)
        device.reset_engine(0, "watchdog: core0 overran")
        assert [c.status for c in hung] == ["aborted"]
        assert hung[0].error == "watchdog: core0 overran"
        assert fake.resets == 1
        await until(lambda: bool(other))
        assert other[0].status == "aborted"
        assert other[0].error is not None
        assert "soft-reset" in other[0].error
        box: list[Completion] = []
        for engine in range(3):
            device.submit(add_job(device, engine=engine, seed=engine).submission, box.append)
        await until(lambda: len(box) == 3)
        assert [c.status for c in box] == ["ok"] * 3
        assert device.statistics().resets == 1
        device.close()
        fake.firmware.stop()

    run(scenario)


def test_rknpu_actions_the_driver_lacks_are_invalid() -> None:
    """POWER_ON is not an action this driver version handles (it powers around each ioctl)."""

    async def scenario() -> None:
        _fake, build = make("rknpu")
        device = build(name="renderD129")
        device.open()
        assert isinstance(device, RknpuDevice)
        with pytest.raises(InvalidArgument) as err:
            device.action(rknpu.Action.POWER_ON)
        assert err.value.errno == errno.EINVAL
        assert device.info["iommu"] == 1
        device.close()

    run(scenario)


def test_rknpu_holds_power_where_the_driver_has_the_action() -> None:
    """Where the driver handles RKNPU_POWER_ON the adapter holds one reference from open to
    close; where it refuses it (EINVAL) nothing is held and the device still serves."""

    async def scenario() -> None:
        for handles_power in (True, False):
            fake = FakeRknpu(power_actions=handles_power)
            device = RknpuDevice(fake.open, name="renderD129")
            device.open()
            assert fake.power_refs == (1 if handles_power else 0)
            assert device.info["power_held"] == (1 if handles_power else 0)
            device.close()
            assert fake.power_refs == 0

    run(scenario)


def test_new_adapters_use_only_declared_ioctls() -> None:
    """Every ioctl the etnaviv and rknpu adapters issue is declared (and conformance-checked)."""
    from npud.abi.header import all_specs

    declared = set(all_specs([drm.HEADER, etnaviv.HEADER, rknpu.HEADER]))

    async def scenario(driver: str) -> set[str]:
        fake, build = make(driver)
        device = build(name=f"{driver}0")
        device.open()
        box: list[Completion] = []
        job = add_job(device)
        device.submit(job.submission, box.append)
        await until(lambda: bool(box))
        device.export_buffer(device.create_buffer(64, MemoryTier.DRAM).handle)
        device.reset_engine(0, "test")
        device.close()
        return set(fake.calls)

    used = asyncio.run(scenario("etnaviv")) | asyncio.run(scenario("rknpu"))
    assert used <= declared, used - declared
    assert {"DRM_IOCTL_ETNAVIV_GEM_SUBMIT", "DRM_IOCTL_RKNPU_SUBMIT"} <= used
