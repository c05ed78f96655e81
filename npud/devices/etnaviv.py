"""The etnaviv adapter: Vivante NPU cores (VIPNano) through etnaviv's DRM render node.

What the kernel offers (``include/uapi/drm/etnaviv_drm.h``, ``drivers/gpu/drm/etnaviv``): one DRM
device for all the Vivante cores of a SoC, each a *pipe*; ``GET_PARAM`` (a pipe's identity,
feature words, limits, the softpin start address), ``GEM_NEW``/``GEM_INFO`` (BOs and their mmap
offsets), ``GEM_CPU_PREP``/``GEM_CPU_FINI`` (CPU access brackets), ``GEM_SUBMIT`` (a command
stream the kernel copies, a table of the BOs it uses, relocations or, with MMUv2, BOs pinned at
addresses userspace chose), a sync_file of the job's fence (``ETNA_SUBMIT_FENCE_FD_OUT``) and
``WAIT_FENCE``. One drm_sched scheduler per core with a 500 ms timeout whose handler recovers
the core; no priority, no job status.

**Only NPU cores are served.** A Vivante NPU (VIPNano on the Amlogic A311D, the NXP i.MX 8M
Plus, ...) and the SoC's GPU sit on the same etnaviv device, and ``GET_PARAM`` has no "is an
NPU" parameter: the kernel (``etnaviv_fill_identity_from_hwdb``, then ``etnaviv_gpu_init``'s
"etnaviv has been instantiated on a NPU" when ``identity.nn_core_count > 0``) and Mesa
(``etna_query_feature_db``: ``info->type = ETNA_CORE_NPU`` when the feature database's
``NNCoreCount`` is non-zero) both look the core's identity up in a hardware database keyed by
model, revision, product id, customer id and ECO id. npud does the same with :data:`NPU_CORES`,
the entries of the kernel's ``etnaviv_hwdb.c`` with NN cores; every pipe whose identity is not
there (the GPU, the 2D core) is left alone. A device with no NPU pipe is refused at open.

How npud drives it:

- each NPU pipe is one engine; the command range is the NPU command stream (as Mesa's etnaviv
  Teflon path builds it; opaque to npud), copied by the kernel at submit.
- BOs are write-combined (``ETNA_BO_WC``, as Mesa allocates its ML buffers). With MMUv2 the
  adapter pins every BO at an address it picks from the softpin range (``ETNA_SUBMIT_SOFTPIN``),
  so ``DeviceBuffer.device_address`` is where the NPU sees the buffer and a stream can refer to
  it without relocations; without softpin (MMUv1) the address is 0 and real streams would need
  relocations, which npud does not generate.
- the job's BO table lists the bindings once each, READ or WRITE as bound, in binding order.
- completion without a thread: the sync_file from ``FENCE_FD_OUT`` is polled on the event loop;
  then ``GEM_CPU_PREP(READ, NOSYNC)``/``GEM_CPU_FINI`` on each written BO makes the writes
  visible to the CPU. No job status: a job that faulted completes OK as far as npud can tell.
- reset: userspace cannot reset a core; the kernel's timeout handler recovers a hung one, and
  npud's watchdog fires earlier and reports the job ABORTED.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import NoReturn

from npud.abi import etnaviv
from npud.abi.header import IoctlSpec
from npud.devices.accel.device import AccelDevice, BoRecord, InFlight
from npud.devices.accel.kernel import KernelFile, pointer, translate
from npud.devices.base import BoHandle, BufferUse, Capabilities, CompletionStatus, EngineInfo
from npud.devices.priority import ETNAVIV as PRIORITIES
from npud.errors import DeviceLost, InvalidArgument, NpudError, OutOfDeviceMemory, Unsupported
from npud.vocab import MemoryTier

PAGE = 4096
NO_SOFTPIN = (1 << 64) - 1
VA_END = 1 << 32  # the NPU's MMUv2 address space is 32-bit


@dataclass(frozen=True, slots=True)
class CoreIdentity:
    """What GET_PARAM says a core is: the key of the hardware databases."""

    model: int
    revision: int
    product_id: int
    customer_id: int
    eco_id: int

    def __str__(self) -> str:
        return (
            f"GC{self.model:x} rev {self.revision:#x} product {self.product_id:#x} "
            f"customer {self.customer_id:#x} eco {self.eco_id:#x}"
        )


@dataclass(frozen=True, slots=True)
class NpuCore:
    """A known NPU core: its marketing name and how many NN cores it has."""

    name: str
    nn_cores: int


NPU_CORES: Mapping[CoreIdentity, NpuCore] = {
    # drivers/gpu/drm/etnaviv/etnaviv_hwdb.c: the VIPNano-QI.7120.0055 of the Amlogic A311D
    # ("drm/etnaviv: add HWDB entry for VIPNano-QI.7120.0055"), nn_core_count 8.
    CoreIdentity(0x8000, 0x7120, 0x45080009, 0x88, 0): NpuCore("VIPNano-QI (A311D)", 8),
}
"""Identities of Vivante NPU cores, from the kernel's hardware database (see the module)."""


class AddressRange:
    """First-fit allocator of page-aligned NPU virtual addresses for softpinned BOs."""

    def __init__(self, start: int, end: int) -> None:
        self._free: list[tuple[int, int]] = [(start, end)]  # sorted (start, end) holes

    def take(self, size: int) -> int:
        """The start of a free range of ``size`` bytes (page-aligned).

        Raises:
            OutOfDeviceMemory: no hole is large enough.
        """
        size = (size + PAGE - 1) // PAGE * PAGE
        for i, (start, end) in enumerate(self._free):
            if end - start >= size:
                if end - start == size:
                    del self._free[i]
                else:
                    self._free[i] = (start + size, end)
                return start
        raise OutOfDeviceMemory(f"no {size} B range left in the NPU's address space")

    def give(self, start: int, size: int) -> None:
        """Return a range (merging it with its neighbours)."""
        size = (size + PAGE - 1) // PAGE * PAGE
        self._free.append((start, start + size))
        self._free.sort()
        merged: list[tuple[int, int]] = []
        for lo, hi in self._free:
            if merged and merged[-1][1] == lo:
                merged[-1] = (merged[-1][0], hi)
            else:
                merged.append((lo, hi))
        self._free = merged


class EtnavivDevice(AccelDevice):
    """The NPU cores of an etnaviv device (``/dev/dri/renderD*`` driven by ``etnaviv``)."""

    driver = "etnaviv"

    def __init__(
        self,
        opener: Callable[[], KernelFile] | str,
        *,
        name: str = "renderD128",
        loop: asyncio.AbstractEventLoop | None = None,
        kernel_depth: int = 1,
        npu_cores: Mapping[CoreIdentity, NpuCore] = NPU_CORES,
    ) -> None:
        super().__init__(opener, name=name, loop=loop, kernel_depth=kernel_depth)
        self._known = dict(npu_cores)
        self.cores: dict[int, CoreIdentity] = {}  # every pipe with a core, NPU or not
        self.npu_pipes: tuple[int, ...] = ()
        self.features: dict[int, tuple[int, ...]] = {}
        self._addresses: AddressRange | None = None

    # -- identity ---------------------------------------------------------------------------

    def get_param(self, pipe: int, param: int) -> int | None:
        """``GET_PARAM`` of one pipe; ``None`` when the pipe has no core (ENXIO/EINVAL).

        Raises:
            NpudError: any other refusal (through the errno table; ENODEV loses the device).
        """
        arg = etnaviv.HEADER.new("struct drm_etnaviv_param", pipe=pipe, param=param)
        try:
            self.file.ioctl(etnaviv.GET_PARAM, arg)
        except OSError as exc:
            if exc.errno in (errno.ENXIO, errno.EINVAL):
                return None
            self._fail(exc, etnaviv.GET_PARAM)
        return int(arg.value)

    def _fail(self, exc: OSError, spec: IoctlSpec) -> NoReturn:
        """Raise the npud error for a failed ioctl (ENODEV also loses the device)."""
        error = translate(exc, spec, self.errno_overrides)
        if isinstance(error, DeviceLost):
            self._lose(f"{spec.name}: {error}")
        raise error from exc

    def _identity(self, pipe: int) -> CoreIdentity | None:
        model = self.get_param(pipe, etnaviv.Param.MODEL)
        if model is None:
            return None
        values = [
            self.get_param(pipe, p)
            for p in (
                etnaviv.Param.REVISION,
                etnaviv.Param.PRODUCT_ID,
                etnaviv.Param.CUSTOMER_ID,
                etnaviv.Param.ECO_ID,
            )
        ]
        return CoreIdentity(model, *(v or 0 for v in values))

    def _probe(self) -> Capabilities:
        self.cores = {}
        for pipe in range(etnaviv.ETNA_MAX_PIPES):
            identity = self._identity(pipe)
            if identity is not None:
                self.cores[pipe] = identity
        self.npu_pipes = tuple(p for p, ident in self.cores.items() if ident in self._known)
        if not self.npu_pipes:
            found = "; ".join(f"pipe {p}: {ident}" for p, ident in self.cores.items())
            raise Unsupported(
                f"{self.name}: no NPU core on this etnaviv device ({found or 'no cores'}); "
                "npud serves only cores whose identity the kernel's hardware database lists "
                "with NN cores"
            )
        for pipe in self.npu_pipes:
            self.features[pipe] = tuple(
                self.get_param(pipe, p) or 0 for p in etnaviv.FEATURE_PARAMS
            )
        start = self.get_param(self.npu_pipes[0], etnaviv.ETNAVIV_PARAM_SOFTPIN_START_ADDR)
        self._addresses = (
            AddressRange(start, VA_END) if start is not None and start != NO_SOFTPIN else None
        )
        first = self._known[self.cores[self.npu_pipes[0]]]
        return self._accel_capabilities(
            description=f"{self.version[2] or 'etnaviv'}: {first.name}, {first.nn_cores} NN cores",
            board=first.name,
            engines=tuple(
                EngineInfo(i, f"{self._known[self.cores[p]].name} (pipe {p})")
                for i, p in enumerate(self.npu_pipes)
            ),
            native_priorities=PRIORITIES.levels,
        )

    @property
    def softpin(self) -> bool:
        """Whether BOs are pinned at npud-chosen addresses (MMUv2)."""
        return self._addresses is not None

    # -- buffers ----------------------------------------------------------------------------

    def _alloc(
        self, size: int, tier: MemoryTier, flags: int
    ) -> tuple[BoHandle, int, int | None, int]:
        if flags & ~int(etnaviv.BoFlag.FORCE_MMU):
            raise InvalidArgument(f"{self.name}: only ETNA_BO_FORCE_MMU may be asked for")
        arg = etnaviv.HEADER.new(
            "struct drm_etnaviv_gem_new", size=size, flags=int(etnaviv.BoFlag.WC) | flags
        )
        self.call(etnaviv.GEM_NEW, arg)
        handle = BoHandle(int(arg.handle))
        aligned = (size + PAGE - 1) // PAGE * PAGE
        try:
            info = etnaviv.HEADER.new("struct drm_etnaviv_gem_info", handle=handle)
            self.call(etnaviv.GEM_INFO, info)
            address = self._addresses.take(aligned) if self._addresses is not None else 0
        except NpudError:
            with contextlib.suppress(NpudError):
                self._gem_close(handle)
            raise
        return handle, address, int(info.offset), aligned

    def _release(self, record: BoRecord) -> None:
        """Give the BO's pinned address back (the kernel unmaps it with the object)."""
        if self._addresses is not None:
            self._addresses.give(record.buffer.device_address, record.buffer.size)

    # -- jobs -------------------------------------------------------------------------------

    def _submit(self, record: InFlight) -> None:
        sub = record.submission
        if sub.command_size % 4 or sub.command_offset % 4:
            raise InvalidArgument(
                f"{self.name}: etnaviv command streams are 32-bit words; command range "
                f"{sub.command_offset}+{sub.command_size} is not aligned"
            )
        table: dict[BoHandle, int] = {}
        for binding in sub.bindings:  # each BO once (the kernel says EALREADY otherwise)
            use = int(etnaviv.SubmitBo.READ)
            if BufferUse.WRITE in binding.use:
                use = int(etnaviv.SubmitBo.WRITE)
            table[binding.handle] = table.get(binding.handle, 0) | use
        ffi = etnaviv.HEADER.ffi
        stream = ffi.new(
            "uint8_t[]", self.read_bytes(sub.command, sub.command_offset, sub.command_size)
        )
        entries = ffi.new("struct drm_etnaviv_gem_submit_bo[]", max(1, len(table)))
        for i, (handle, use) in enumerate(table.items()):
            entries[i].flags = use
            entries[i].handle = handle
            entries[i].presumed = self._bos[handle].buffer.device_address
        flags = int(etnaviv.SubmitFlag.FENCE_FD_OUT)
        if self.softpin:
            flags |= int(etnaviv.SubmitFlag.SOFTPIN)
        arg = etnaviv.HEADER.new(
            "struct drm_etnaviv_gem_submit",
            pipe=self.npu_pipes[sub.engine],
            exec_state=int(etnaviv.Pipe.P3D),
            nr_bos=len(table),
            stream_size=sub.command_size,
            bos=pointer(ffi, entries),
            stream=pointer(ffi, stream),
            flags=flags,
            fence_fd=-1,
        )
        self.call(etnaviv.GEM_SUBMIT, arg)
        record.extra["fence"] = int(arg.fence)
        record.extra["writes"] = [h for h, use in table.items() if use & etnaviv.SubmitBo.WRITE]
        self._watch_fd(record, int(arg.fence_fd), self._on_signalled)

    def _on_signalled(self, record: InFlight) -> None:
        """The job's fence signalled: bracket each written BO for the CPU, report OK."""
        for handle in record.extra["writes"]:
            if handle not in self._bos:
                continue
            prep = etnaviv.HEADER.new(
                "struct drm_etnaviv_gem_cpu_prep",
                handle=handle,
                op=int(etnaviv.Prep.READ | etnaviv.Prep.NOSYNC),
            )
            self.call(etnaviv.GEM_CPU_PREP, prep)
            fini = etnaviv.HEADER.new("struct drm_etnaviv_gem_cpu_fini", handle=handle)
            self.call(etnaviv.GEM_CPU_FINI, fini)
        # etnaviv reports no job status; a hung core was recovered by the kernel's timeout
        # handler and its fence signalled all the same. npud's watchdog fires earlier.
        self._finish(record, CompletionStatus.OK, None)

    def wait_fence(self, engine: int, fence: int, timeout_s: float) -> bool:
        """``WAIT_FENCE`` on an engine's fence number; ``False`` when it timed out.

        Raises:
            InvalidArgument: the fence number was never handed out on this core.
        """
        deadline = time.monotonic_ns() + int(timeout_s * 1e9)
        arg = etnaviv.HEADER.new(
            "struct drm_etnaviv_wait_fence", pipe=self.npu_pipes[engine], fence=fence
        )
        arg.timeout.tv_sec = deadline // 1_000_000_000
        arg.timeout.tv_nsec = deadline % 1_000_000_000
        try:
            self.file.ioctl(etnaviv.WAIT_FENCE, arg)
        except OSError as exc:
            if exc.errno == errno.ETIMEDOUT:
                return False
            self._fail(exc, etnaviv.WAIT_FENCE)
        return True
