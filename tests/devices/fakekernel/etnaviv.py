"""Fake etnaviv (Vivante GPU and NPU cores), after drivers/gpu/drm/etnaviv/etnaviv_{drv,gem,
gem_submit,gpu,sched}.c.

One DRM device, several cores ("pipes"); by default pipe 0 is a GC7000 GPU and pipe 1 a
VIPNano-QI NPU (the A311D's), so adapters must tell them apart. Facts modelled:

- ``GET_PARAM`` (etnaviv_ioctl_get_param): ``pipe >= ETNA_MAX_PIPES`` -> EINVAL, a pipe without
  a core -> ENXIO; etnaviv_gpu_get_param answers the identity (model, revision, product id,
  customer id, ECO id), the 13 feature words, the shader core count and
  ``SOFTPIN_START_ADDR`` (4 MiB with MMUv2, ``~0`` without); any other param -> EINVAL.
- ``GEM_NEW`` (etnaviv_ioctl_gem_new, etnaviv_gem_new_impl): flags outside
  ``CACHED|WC|UNCACHED|FORCE_MMU`` -> EINVAL; the cache mode must be exactly one of the three ->
  EINVAL; the size is page-aligned, 0 -> EINVAL.
- ``GEM_INFO``: pad must be 0; unknown handle -> ENOENT; returns the mmap offset.
- ``GEM_CPU_PREP`` (etnaviv_gem_cpu_prep): op outside ``READ|WRITE|NOSYNC`` -> EINVAL; unknown
  handle -> ENOENT; with NOSYNC a busy BO -> EBUSY, else a wait until the absolute timespec,
  ETIMEDOUT when it passes; READ waits for writers, WRITE for every user.
- ``GEM_CPU_FINI``: flags must be 0; unknown handle -> ENOENT; a FINI without a PREP is counted
  (the kernel WARNs on it for cached BOs).
- ``GEM_SUBMIT`` (etnaviv_ioctl_gem_submit, submit_lookup_objects, submit_reloc,
  submit_pin_objects): pipe as in GET_PARAM (EINVAL/ENXIO); ``stream_size % 4`` -> EINVAL;
  ``exec_state`` not 3D/2D/VG -> EINVAL; flags outside ``ETNA_SUBMIT_FLAGS`` -> EINVAL; SOFTPIN
  without MMUv2 -> EINVAL; a BO flag other than READ/WRITE -> EINVAL; an unknown handle ->
  ENOENT; a handle listed twice -> EALREADY (the reservation ww-lock); relocs: a non-zero flag,
  an unaligned or out-of-stream offset, a bad index or an offset past the BO -> EINVAL, each
  patched with the BO's address; with SOFTPIN a ``presumed`` address below the softpin start or
  a BO moved from its earlier address -> EINVAL. It returns the fence number, and with
  FENCE_FD_OUT a sync_file of the job's fence.
- ``WAIT_FENCE`` (etnaviv_gpu_wait_fence_interruptible): flags outside NONBLOCK -> EINVAL; a
  fence number never handed out -> EINVAL; NONBLOCK and not signalled -> EBUSY; a timeout ->
  ETIMEDOUT.
- jobs of one pipe run in order (drm_sched); no priority; no job status (a job the firmware
  fails signals its fence like any other); a hung job is recovered by the kernel's own timeout
  handler (etnaviv_sched_timedout_job), which userspace cannot trigger.
"""

from __future__ import annotations

import errno
import itertools
import struct
from dataclasses import dataclass, field
from typing import Any

from tests.devices.fakekernel.base import (
    DIR_RW,
    DIR_WRITE,
    PAGE,
    FakeDevice,
    FakeFence,
    FakeFile,
    FakeJob,
    IoctlEntry,
    fail,
    fence_fd,
    layout,
    page_align,
    read_user,
    wait_fences,
)

PARAM = layout("IIQ", "pipe", "param", "value")
GEM_NEW = layout("QII", "size", "flags", "handle")
GEM_INFO = layout("IIQ", "handle", "pad", "offset")
CPU_PREP = layout("IIqq", "handle", "op", "tv_sec", "tv_nsec")
CPU_FINI = layout("II", "handle", "flags")
SUBMIT = layout(
    "IIIIIIQQQIiQII",
    "fence",
    "pipe",
    "exec_state",
    "nr_bos",
    "nr_relocs",
    "stream_size",
    "bos",
    "relocs",
    "stream",
    "flags",
    "fence_fd",
    "pmrs",
    "nr_pmrs",
    "pad",
)
SUBMIT_BO = layout("IIQ", "flags", "handle", "presumed")
RELOC = layout("IIQI4x", "submit_offset", "reloc_idx", "reloc_offset", "flags")
WAIT_FENCE = layout("IIIIqq", "pipe", "fence", "flags", "pad", "tv_sec", "tv_nsec")

MAX_PIPES = 4
BO_CACHED, BO_WC, BO_UNCACHED, BO_FORCE_MMU = 0x10000, 0x20000, 0x40000, 0x100000
PREP_READ, PREP_WRITE, PREP_NOSYNC = 1, 2, 4
SUBMIT_BO_READ, SUBMIT_BO_WRITE = 1, 2
SUBMIT_NO_IMPLICIT, SUBMIT_FENCE_FD_IN, SUBMIT_FENCE_FD_OUT, SUBMIT_SOFTPIN = 1, 2, 4, 8
WAIT_NONBLOCK = 1
SOFTPIN_START = 4 << 20  # ETNAVIV_SOFTPIN_START_ADDRESS (SZ_4M)
PARAM_SOFTPIN_START_ADDR = 0x1B


@dataclass(frozen=True, slots=True)
class Core:
    """One Vivante core's identity as GET_PARAM reports it."""

    model: int
    revision: int
    product_id: int
    customer_id: int
    eco_id: int
    features: tuple[int, ...]  # features, minor_features0..11
    shader_cores: int = 1

    def param(self, param: int) -> int | None:
        """etnaviv_gpu_get_param for the params this fake answers (None: EINVAL)."""
        table = {
            0x01: self.model,
            0x02: self.revision,
            0x14: self.shader_cores,
            0x1C: self.product_id,
            0x1D: self.customer_id,
            0x1E: self.eco_id,
        }
        if 0x03 <= param <= 0x0F:
            return self.features[param - 0x03]
        return table.get(param)


# The VIPNano-QI of the Amlogic A311D, as the kernel's etnaviv_hwdb.c lists it.
VIPNANO_QI = Core(
    0x8000,
    0x7120,
    0x45080009,
    0x88,
    0,
    (
        *(0xE0287CAC, 0xC1799EFF, 0xFEFBFADB, 0xEB9D6FBF, 0xEDFFFCED, 0xD30DAFC7, 0x7B5AC333),
        *(0xFC8EE200, 0x03FFFA6F, 0x00FE0EF0, 0x0088003C, 0, 0),
    ),
)
# A GC7000 GPU (hwdb entry 0x7000/0x6214): a core npud must not take for an NPU.
GC7000 = Core(
    0x7000,
    0x6214,
    0,
    0,
    0,
    (
        *(0xE0287CAD, 0xC1799EFF, 0xFEFBFAD9, 0xEB9D4FBF, 0xEDFFFCED, 0xDB0DAFC7, 0xBB5AC333),
        *(0xFC8EE200, 0x03FBFA6F, 0x00EF0EF0, 0x0EDBF03C, 0x90044250, 0x00000024),
    ),
    shader_cores=4,
)


@dataclass(slots=True, eq=False)
class PipeState:
    """One core's scheduler state: its fences by number."""

    core: Core
    fences: dict[int, FakeFence] = field(default_factory=dict)
    numbers: itertools.count[int] = field(default_factory=lambda: itertools.count(1))


class FakeEtnaviv(FakeDevice):
    """An etnaviv device with a GPU on pipe 0 and an NPU on pipe 1 (see the module)."""

    driver_name = "etnaviv"
    driver_desc = "etnaviv DRM"
    driver_version = (1, 4, 0)

    def __init__(
        self,
        *,
        auto_complete: bool = True,
        cores: tuple[Core | None, ...] = (GC7000, VIPNANO_QI),
        mmu_v2: bool = True,
    ) -> None:
        super().__init__(auto_complete=auto_complete)
        self.pipes = {i: PipeState(c) for i, c in enumerate(cores) if c is not None}
        self.mmu_v2 = mmu_v2
        self.fini_without_prep = 0

    def driver_ioctls(self) -> dict[int, IoctlEntry]:
        return {
            0x00: IoctlEntry("DRM_IOCTL_ETNAVIV_GET_PARAM", DIR_RW, PARAM, _get_param),
            0x02: IoctlEntry("DRM_IOCTL_ETNAVIV_GEM_NEW", DIR_RW, GEM_NEW, _gem_new),
            0x03: IoctlEntry("DRM_IOCTL_ETNAVIV_GEM_INFO", DIR_RW, GEM_INFO, _gem_info),
            0x04: IoctlEntry("DRM_IOCTL_ETNAVIV_GEM_CPU_PREP", DIR_WRITE, CPU_PREP, _cpu_prep),
            0x05: IoctlEntry("DRM_IOCTL_ETNAVIV_GEM_CPU_FINI", DIR_WRITE, CPU_FINI, _cpu_fini),
            0x06: IoctlEntry("DRM_IOCTL_ETNAVIV_GEM_SUBMIT", DIR_RW, SUBMIT, _submit),
            0x07: IoctlEntry("DRM_IOCTL_ETNAVIV_WAIT_FENCE", DIR_WRITE, WAIT_FENCE, _wait_fence),
        }

    def pipe(self, index: int) -> PipeState:
        """priv->gpu[pipe]: EINVAL beyond ETNA_MAX_PIPES, ENXIO for an empty slot."""
        if index >= MAX_PIPES:
            raise fail(errno.EINVAL)
        state = self.pipes.get(index)
        if state is None:
            raise fail(errno.ENXIO)
        return state


def _etnaviv(file: FakeFile) -> FakeEtnaviv:
    device = file.device
    assert isinstance(device, FakeEtnaviv)
    return device


def _timeout_s(sec: int, nsec: int) -> float:
    """etnaviv_timeout_to_jiffies: an absolute CLOCK_MONOTONIC timespec -> seconds from now."""
    import time

    return max(0.0, (sec * 1_000_000_000 + nsec - time.monotonic_ns()) / 1e9)


def _get_param(file: FakeFile, v: dict[str, Any]) -> None:
    device = _etnaviv(file)
    state = device.pipe(v["pipe"])
    if v["param"] == PARAM_SOFTPIN_START_ADDR:
        v["value"] = SOFTPIN_START if device.mmu_v2 else (1 << 64) - 1
        return
    value = state.core.param(v["param"])
    if value is None:
        raise fail(errno.EINVAL)
    v["value"] = value


def _gem_new(file: FakeFile, v: dict[str, Any]) -> None:
    flags = v["flags"]
    if flags & ~(BO_CACHED | BO_WC | BO_UNCACHED | BO_FORCE_MMU):
        raise fail(errno.EINVAL)
    if (flags & 0xF0000) not in (BO_CACHED, BO_WC, BO_UNCACHED):
        raise fail(errno.EINVAL)  # etnaviv_gem_new_impl: exactly one cache mode
    if v["size"] == 0:
        raise fail(errno.EINVAL)
    bo = file.device.new_bo(page_align(v["size"]))
    bo.extra["flags"] = flags
    v["handle"] = file.add_bo(bo)


def _gem_info(file: FakeFile, v: dict[str, Any]) -> None:
    if v["pad"]:
        raise fail(errno.EINVAL)
    v["offset"] = file.lookup(v["handle"]).mmap_offset


def _cpu_prep(file: FakeFile, v: dict[str, Any]) -> None:
    op = v["op"]
    if op & ~(PREP_READ | PREP_WRITE | PREP_NOSYNC):
        raise fail(errno.EINVAL)
    bo = file.lookup(v["handle"])
    fences = bo.busy_fences(include_reads=bool(op & PREP_WRITE))
    if op & PREP_NOSYNC:
        if fences:
            raise fail(errno.EBUSY)
    elif fences and not wait_fences(file.device, fences, _timeout_s(v["tv_sec"], v["tv_nsec"])):
        raise fail(errno.ETIMEDOUT)
    bo.extra["prepared"] = bo.extra.get("prepared", 0) + 1


def _cpu_fini(file: FakeFile, v: dict[str, Any]) -> None:
    if v["flags"]:
        raise fail(errno.EINVAL)
    bo = file.lookup(v["handle"])
    if not bo.extra.get("prepared"):
        _etnaviv(file).fini_without_prep += 1
        return
    bo.extra["prepared"] -= 1


def _submit(file: FakeFile, v: dict[str, Any]) -> None:
    device = _etnaviv(file)
    state = device.pipe(v["pipe"])
    if v["stream_size"] % 4:
        raise fail(errno.EINVAL)
    if v["exec_state"] not in (0, 1, 2):
        raise fail(errno.EINVAL)
    if v["flags"] & ~0xF:
        raise fail(errno.EINVAL)
    softpin = bool(v["flags"] & SUBMIT_SOFTPIN)
    if softpin and not device.mmu_v2:
        raise fail(errno.EINVAL)
    entries = [
        SUBMIT_BO.unpack(read_user(v["bos"] + i * SUBMIT_BO.size, SUBMIT_BO.size))
        for i in range(v["nr_bos"])
    ]
    relocs = [
        RELOC.unpack(read_user(v["relocs"] + i * RELOC.size, RELOC.size))
        for i in range(v["nr_relocs"])
    ]
    stream = bytearray(read_user(v["stream"], v["stream_size"]))
    bos = []
    for entry in entries:  # submit_lookup_objects
        if entry["flags"] & ~(SUBMIT_BO_READ | SUBMIT_BO_WRITE):
            raise fail(errno.EINVAL)
        bos.append(file.lookup(entry["handle"]))
    handles = [e["handle"] for e in entries]
    if len(set(handles)) != len(handles):
        raise fail(errno.EALREADY)  # submit_lock_objects: the ww-mutex is already held
    for entry, bo in zip(entries, bos, strict=True):  # submit_pin_objects
        if softpin:
            address = entry["presumed"]
            if address < SOFTPIN_START or bo.extra.get("va", address) != address:
                raise fail(errno.EINVAL)
            bo.extra["va"] = address
        else:
            bo.extra.setdefault("va", bo.device_address)
            entry["presumed"] = bo.extra["va"]
    for reloc in relocs:  # submit_reloc
        if reloc["flags"] or reloc["submit_offset"] % 4:
            raise fail(errno.EINVAL)
        if reloc["submit_offset"] // 4 >= v["stream_size"] // 4:
            raise fail(errno.EINVAL)
        if reloc["reloc_idx"] >= len(bos):
            raise fail(errno.EINVAL)
        target = bos[reloc["reloc_idx"]]
        if reloc["reloc_offset"] > target.size - 4:
            raise fail(errno.EINVAL)
        address = (target.extra["va"] + reloc["reloc_offset"]) & 0xFFFFFFFF
        struct.pack_into("<I", stream, reloc["submit_offset"], address)
    fence = FakeFence(device)
    reads = [b for b, e in zip(bos, entries, strict=True) if not e["flags"] & SUBMIT_BO_WRITE]
    writes = [b for b, e in zip(bos, entries, strict=True) if e["flags"] & SUBMIT_BO_WRITE]
    number = next(state.numbers)
    state.fences[number] = fence
    job = FakeJob(file, v["pipe"], fence, reads, writes, bos, command=bytes(stream))
    job.extra["fence"] = number
    v["fence"] = number
    if v["flags"] & SUBMIT_FENCE_FD_OUT:
        v["fence_fd"] = fence_fd([fence])
    device.queue_job(job)


def _wait_fence(file: FakeFile, v: dict[str, Any]) -> None:
    if v["flags"] & ~WAIT_NONBLOCK:
        raise fail(errno.EINVAL)
    state = _etnaviv(file).pipe(v["pipe"])
    fence = state.fences.get(v["fence"])
    if fence is None:
        raise fail(errno.EINVAL)  # a fence number after the last one handed out
    if fence.signaled:
        return
    if v["flags"] & WAIT_NONBLOCK:
        raise fail(errno.EBUSY)
    if not wait_fences(file.device, [fence], _timeout_s(v["tv_sec"], v["tv_nsec"])):
        raise fail(errno.ETIMEDOUT)


__all__ = ["GC7000", "PAGE", "VIPNANO_QI", "Core", "FakeEtnaviv"]
