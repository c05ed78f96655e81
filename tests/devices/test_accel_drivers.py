"""Driver-specific behaviour of the accel adapters against their fake kernels."""

from __future__ import annotations

import asyncio
import errno
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from npud.abi import drm, ethosu, ivpu, rocket
from npud.abi.header import IoctlSpec
from npud.abi.ioc import Direction, ioc
from npud.devices.accel.device import AccelDevice
from npud.devices.base import Binding, BufferUse, Completion, Submission
from npud.devices.qaic import QaicDevice
from npud.errors import DeviceError, DeviceLost, InvalidArgument, PermissionDenied
from npud.vocab import DeviceHealth, MemoryTier
from tests.devices.accel_harness import make
from tests.devices.fakekernel.base import AbiMismatch
from tests.devices.fakekernel.qaic import FakeQaic


def run(coro: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(coro())


async def until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """Let the loop run until ``predicate`` holds."""

    async def _wait() -> None:
        while not predicate():
            await asyncio.sleep(0.001)

    await asyncio.wait_for(_wait(), timeout)


def job(
    device: AccelDevice,
    *,
    use: BufferUse = BufferUse.WRITE,
    level: int = 0,
    engine: int = 0,
    extra: tuple[Binding, ...] = (),
) -> Submission:
    """A job writing (or reading) one fresh buffer, from a separate command buffer."""
    buf = device.create_buffer(4096, MemoryTier.DRAM)
    cmd = device.create_buffer(64, MemoryTier.DRAM)
    return Submission(cmd.handle, 0, 64, (Binding(buf.handle, use), *extra), engine, priority=level)


# -- ivpu ----------------------------------------------------------------------------------------


def test_ivpu_mmu_fault_makes_the_device_lost() -> None:
    """After an MMU fault the kernel answers EBADFD: in-flight jobs end, npud reports loss."""

    async def scenario() -> None:
        fake, build = make("ivpu", auto_complete=False)
        device = build(name="npu0")
        device.open()
        reasons: list[str] = []
        device.add_loss_listener(reasons.append)
        box: list[Completion] = []
        device.submit(job(device), box.append)
        fake.mmu_fault(fake.files[0])  # type: ignore[attr-defined]
        await until(lambda: bool(box))
        assert box[0].status == "aborted"
        with pytest.raises(DeviceLost, match="EBADFD"):
            device.submit(job(device), box.append)
        assert device.health() is DeviceHealth.LOST
        assert reasons
        assert "EBADFD" in reasons[0]
        with pytest.raises(DeviceLost):
            device.create_buffer(10, MemoryTier.DRAM)
        device.close()

    run(scenario)


def test_ivpu_reset_engine_destroys_queues_and_recovers() -> None:
    """reset_engine aborts the engine's job via CMDQ_DESTROY; the next job gets a new queue."""

    async def scenario() -> None:
        fake, build = make("ivpu", auto_complete=False)
        device = build(name="npu0")
        device.open()
        box: list[Completion] = []
        device.submit(job(device), box.append)
        device.reset_engine(0, "watchdog: decode step overran")
        assert box[0].status == "aborted"
        assert box[0].error == "watchdog: decode step overran"
        assert fake.files[0].state["cmdqs"] == {}
        assert "DRM_IOCTL_IVPU_CMDQ_DESTROY" in fake.calls
        fake.auto_complete = True
        again: list[Completion] = []
        device.submit(job(device), again.append)
        await until(lambda: bool(again))
        assert again[0].status == "ok"
        assert device.statistics().resets == 1
        device.close()

    run(scenario)


def test_ivpu_same_command_buffer_in_flight_twice() -> None:
    """Two jobs built from one command buffer run together: each gets its own command slot."""

    async def scenario() -> None:
        fake, build = make("ivpu", auto_complete=False)
        device = build(name="npu0", kernel_depth=2)
        device.open()
        sub = job(device)
        box: list[Completion] = []
        device.submit(sub, box.append)
        device.submit(sub, box.append)  # the kernel would say EBUSY for a shared buffer
        assert len(fake.pending()) == 2
        fake.complete()
        await until(lambda: len(box) == 2)
        assert [c.status for c in box] == ["ok", "ok"]
        slots = device.slot_statistics()  # type: ignore[attr-defined]
        assert (slots.slots, slots.idle) == (2, 2)
        device.close()

    run(scenario)


def test_ivpu_fake_refuses_a_busy_command_buffer() -> None:
    """The fake mirrors ivpu: resubmitting a command buffer still in use is EBUSY."""
    fake, _ = make("ivpu", auto_complete=False)
    file = fake.open()
    arg = ivpu.HEADER.new("struct drm_ivpu_bo_create", size=4096, flags=2)
    file.ioctl(ivpu.BO_CREATE, arg)
    q = ivpu.HEADER.new("struct drm_ivpu_cmdq_create", priority=2)
    file.ioctl(ivpu.CMDQ_CREATE, q)
    ffi = ivpu.HEADER.ffi
    handles = ffi.new("uint32_t[]", [arg.handle])
    submit = ivpu.HEADER.new(
        "struct drm_ivpu_cmdq_submit",
        buffers_ptr=int(ffi.cast("uintptr_t", handles)),
        buffer_count=1,
        cmdq_id=q.cmdq_id,
    )
    file.ioctl(ivpu.CMDQ_SUBMIT, submit)
    with pytest.raises(OSError) as info:
        file.ioctl(ivpu.CMDQ_SUBMIT, submit)
    assert info.value.errno == errno.EBUSY


# -- rocket --------------------------------------------------------------------------------------


def test_rocket_kernel_silently_drops_bad_jobs() -> None:
    """rocket's SUBMIT returns 0 even when a job names an unknown BO: the job just vanishes."""
    fake, _ = make("rocket")
    file = fake.open()
    ffi = rocket.HEADER.ffi
    ghost = ffi.new("uint32_t[]", [42])
    task = ffi.new("struct drm_rocket_task *", {"regcmd": 0x1000_0000, "regcmd_count": 1})
    one = ffi.new(
        "struct drm_rocket_job *",
        {
            "tasks": int(ffi.cast("uintptr_t", task)),
            "task_count": 1,
            "task_struct_size": 8,
            "in_bo_handles": int(ffi.cast("uintptr_t", ghost)),
            "in_bo_handle_count": 1,
        },
    )
    arg = rocket.HEADER.new(
        "struct drm_rocket_submit",
        jobs=int(ffi.cast("uintptr_t", one)),
        job_count=1,
        job_struct_size=ffi.sizeof("struct drm_rocket_job"),
    )
    file.ioctl(rocket.SUBMIT, arg)  # no error
    assert fake.jobs == []
    assert fake.dropped == ["unknown BO handle (ENOENT)"]  # type: ignore[attr-defined]


def test_rocket_adapter_never_lists_a_bo_twice() -> None:
    """A buffer bound for reading and writing, and as the command, is listed once (no EALREADY)."""

    async def scenario() -> None:
        fake, build = make("rocket")
        device = build(name="rk0")
        device.open()
        buf = device.create_buffer(4096, MemoryTier.DRAM)
        sub = Submission(
            buf.handle,
            0,
            64,
            (Binding(buf.handle, BufferUse.READ), Binding(buf.handle, BufferUse.WRITE)),
            0,
        )
        box: list[Completion] = []
        device.submit(sub, box.append)
        await until(lambda: bool(box))
        assert box[0].status == "ok"
        assert fake.dropped == []  # type: ignore[attr-defined]
        assert len(fake.jobs) == 1
        assert [b.size for b in fake.jobs[0].writes] == [4096]
        assert fake.jobs[0].reads == []
        device.close()

    run(scenario)


def test_rocket_read_only_job_still_has_a_fence() -> None:
    """A job writing nothing lists its command BO as written, so completion has a fence."""

    async def scenario() -> None:
        fake, build = make("rocket", auto_complete=False)
        device = build(name="rk0")
        device.open()
        box: list[Completion] = []
        device.submit(job(device, use=BufferUse.READ, extra=()), box.append)
        await asyncio.sleep(0.02)
        assert box == []  # not reported before the kernel signals
        fake.complete()
        await until(lambda: bool(box))
        assert box[0].status == "ok"
        assert "DRM_IOCTL_ROCKET_PREP_BO" in fake.calls
        device.close()

    run(scenario)


def test_rocket_misaligned_commands_are_refused() -> None:
    """Register commands are 64-bit words: a 12-byte command range is invalid."""

    async def scenario() -> None:
        _fake, build = make("rocket")
        device = build(name="rk0")
        device.open()
        buf = device.create_buffer(4096, MemoryTier.DRAM)
        with pytest.raises(InvalidArgument, match="8-byte"):
            device.submit(Submission(buf.handle, 0, 12, (), 0), lambda c: None)
        device.close()

    run(scenario)


# -- amdxdna -------------------------------------------------------------------------------------


def test_amdxdna_without_a_program_the_kernel_refuses() -> None:
    """A context without CONFIG_CU is not READY: EXEC_CMD is EINVAL, refused at submit."""

    async def scenario() -> None:
        from npud.devices.amdxdna import AmdxdnaDevice
        from tests.devices.fakekernel.amdxdna import FakeAmdxdna

        fake = FakeAmdxdna()
        device = AmdxdnaDevice(fake.open, name="xdna0")
        device.open()
        with pytest.raises(InvalidArgument, match="DRM_IOCTL_AMDXDNA_EXEC_CMD"):
            device.submit(job(device), lambda c: None)
        assert device.statistics().submitted == 0
        device.close()

    run(scenario)


def test_amdxdna_command_states_map_to_outcomes() -> None:
    """ERT ABORT -> ABORTED and TIMEOUT -> ERROR naming the kernel's 16 s timeout."""

    async def scenario() -> None:
        fake, build = make("amdxdna", auto_complete=False)
        device = build(name="xdna0")
        device.open()
        box: list[Completion] = []
        device.submit(job(device, engine=0), box.append)
        device.submit(job(device, engine=1), box.append)
        first, second = fake.pending()
        fake.finish(first, status=6)  # ERT_CMD_STATE_ABORT
        fake.finish(second, status=8)  # ERT_CMD_STATE_TIMEOUT
        await until(lambda: len(box) == 2)
        assert box[0].status == "aborted"
        assert box[1].status == "error"
        assert "16 s" in (box[1].error or "")
        device.close()

    run(scenario)


def test_amdxdna_reset_destroys_the_engines_contexts() -> None:
    """reset_engine destroys that engine's hardware contexts; the next job makes a new one."""

    async def scenario() -> None:
        fake, build = make("amdxdna", auto_complete=False)
        device = build(name="xdna0")
        device.open()
        box: list[Completion] = []
        device.submit(job(device, engine=1), box.append)
        assert fake.live_contexts() == 1
        device.reset_engine(1, "hung")
        assert box[0].status == "aborted"
        assert fake.live_contexts() == 0
        fake.auto_complete = True
        device.submit(job(device, engine=1), box.append)
        await until(lambda: len(box) == 2)
        assert box[1].status == "ok"
        assert fake.created_total == 2
        device.close()

    run(scenario)


# -- ethosu --------------------------------------------------------------------------------------


def test_ethosu_refuses_more_than_eight_regions() -> None:
    """An Ethos-U job addresses at most 8 regions."""

    async def scenario() -> None:
        _fake, build = make("ethosu")
        device = build(name="u85")
        device.open()
        bufs = [device.create_buffer(64, MemoryTier.DRAM) for _ in range(9)]
        sub = Submission(
            bufs[0].handle, 0, 64, tuple(Binding(b.handle, BufferUse.READ) for b in bufs), 0
        )
        with pytest.raises(InvalidArgument, match="at most 8"):
            device.submit(sub, lambda c: None)
        device.close()

    run(scenario)


def test_ethosu_command_stream_bos_do_not_leak() -> None:
    """Each job's command-stream BO is closed when the job completes."""

    async def scenario() -> None:
        fake, build = make("ethosu")
        device = build(name="u85")
        device.open()
        sub = job(device)
        handles_before = len(fake.files[0].bos)
        box: list[Completion] = []
        for _ in range(3):
            device.submit(sub, box.append)
        await until(lambda: len(box) == 3)
        assert [c.status for c in box] == ["ok"] * 3
        assert len(fake.files[0].bos) == handles_before
        assert fake.calls.count("DRM_IOCTL_ETHOSU_CMDSTREAM_BO_CREATE") == 3
        device.close()

    run(scenario)


# -- qaic ----------------------------------------------------------------------------------------


def test_qaic_needs_an_activated_network() -> None:
    """Without an activated DBC there is nothing to run: open fails, saying why."""

    async def scenario() -> None:
        fake = FakeQaic()
        device = QaicDevice(fake.open, name="aic0")
        with pytest.raises(DeviceError, match="activate"):
            device.open()

    run(scenario)


def test_qaic_foreign_channel_is_permission_denied() -> None:
    """A DBC activated by another file is EPERM, surfaced as PermissionDenied."""

    async def scenario() -> None:
        fake = FakeQaic()
        other = fake.open()
        stolen = fake.activate(other, count=1)
        device = QaicDevice(fake.open, name="aic0", activate=lambda _f: stolen)
        device.open()
        with pytest.raises(PermissionDenied):
            device.submit(job(device), lambda c: None)
        device.close()

    run(scenario)


def test_qaic_slices_once_per_channel_and_direction() -> None:
    """A buffer is sliced on first use and re-sliced only when its direction changes."""

    async def scenario() -> None:
        fake, build = make("qaic")
        device = build(name="aic0")
        device.open()
        buf = device.create_buffer(4096, MemoryTier.DRAM)
        box: list[Completion] = []
        for use in (BufferUse.WRITE, BufferUse.WRITE, BufferUse.READ):
            cmd = device.create_buffer(64, MemoryTier.DRAM)
            device.submit(Submission(cmd.handle, 0, 64, (Binding(buf.handle, use),), 0), box.append)
            want = len(box) + 1
            await until(lambda want=want: len(box) == want)
        assert [c.status for c in box] == ["ok"] * 3
        assert fake.calls.count("DRM_IOCTL_QAIC_DETACH_SLICE_BO") == 1
        device.close()

    run(scenario)


# -- the fake kernel's own checks ----------------------------------------------------------------


def test_fake_kernel_catches_a_wrong_struct_size() -> None:
    """A request whose encoded size differs from the kernel's struct is an ABI mismatch."""
    fake, _ = make("ethosu")
    file = fake.open()
    real = ethosu.BO_CREATE
    wrong = IoctlSpec(
        real.name,
        real.direction,
        real.type_,
        real.nr,
        real.struct,
        real.size + 8,
        ioc(Direction.READWRITE, real.type_, real.nr, real.size + 8),
        real.header,
    )
    with pytest.raises(AbiMismatch):
        file.ioctl(wrong, ethosu.HEADER.new("struct drm_ethosu_bo_create", size=64))


def test_unknown_handle_errnos_match_the_drivers() -> None:
    """GEM_CLOSE of an unknown handle is EINVAL (drm_gem_handle_delete), ivpu BO_WAIT EINVAL."""
    fake, _ = make("ivpu")
    file = fake.open()
    with pytest.raises(OSError) as closed:
        file.ioctl(drm.GEM_CLOSE, drm.HEADER.new("struct drm_gem_close", handle=77))
    assert closed.value.errno == errno.EINVAL
    with pytest.raises(OSError) as waited:
        file.ioctl(ivpu.BO_WAIT, ivpu.HEADER.new("struct drm_ivpu_bo_wait", handle=77))
    assert waited.value.errno == errno.EINVAL


def test_adapters_use_only_declared_ioctls() -> None:
    """Every ioctl the adapters issued in these scenarios is declared in npud.abi (and so is
    covered by the ABI conformance test against the kernel headers)."""
    from npud.abi import amdxdna, qaic
    from npud.abi.header import all_specs

    declared = set(
        all_specs(
            [drm.HEADER, rocket.HEADER, ivpu.HEADER, amdxdna.HEADER, ethosu.HEADER, qaic.HEADER]
        )
    )

    async def scenario(driver: str) -> set[str]:
        fake, build = make(driver)
        device = build(name=f"{driver}0")
        device.open()
        box: list[Completion] = []
        device.submit(job(device), box.append)
        await until(lambda: bool(box))
        device.export_buffer(device.create_buffer(64, MemoryTier.DRAM).handle)
        device.reset_engine(0, "test")
        device.close()
        return set(fake.calls)

    used: set[str] = set()
    for driver in ("rocket", "ivpu", "amdxdna", "ethosu", "qaic"):
        used |= asyncio.run(scenario(driver))
    assert used <= declared, used - declared
    assert len(used) >= 25
