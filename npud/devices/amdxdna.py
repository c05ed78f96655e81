"""The amdxdna adapter: AMD XDNA NPUs (Phoenix, Hawk Point, Strix, Krackan) via ``amdxdna``.

What the kernel offers (``include/uapi/drm/amdxdna_accel.h``, ``drivers/accel/amdxdna``):
queries through ``GET_INFO`` (AIE metadata: columns and rows; firmware version; resource info
with ``npu_task_max``, the device's hardware-context limit) and ``GET_ARRAY``; BOs of four types
(SHARE, DEV_HEAP, DEV carved from the heap, CMD); *hardware contexts* (``CREATE_HWCTX`` with a
``qos_info`` whose ``priority`` the firmware schedules by, a timeline syncobj per context;
``CONFIG_HWCTX`` loads the compute units of a program into it); ``EXEC_CMD`` of one ERT command
BO with its argument BOs, returning a sequence number; and ``WAIT_CMD``. drm_sched underneath,
with a 16 s job timeout.

How npud drives it:

- **hardware contexts are scarce** (6 on npu1, 16 on npu4+, for the whole machine) and slow to
  make, so they live in a :class:`~npud.devices.hwctx_pool.HwContextPool` keyed by
  ``(engine, native level)``: the QoS priority is fixed at creation
  (:data:`npud.devices.priority.AMDXDNA`). Work for a key without a context waits in the pool
  when none can be made, instead of failing as it does for applications today.
- each new context is configured with the device's program (``cu_configs``: PDI images from the
  xclbin the AMD toolchain compiled, loaded once into DEV BOs); the kernel runs nothing on a
  context without it.
- the command range is the ERT command packet (header + payload, as XRT builds it; opaque to
  npud) and is copied into a per-job CMD BO, whose header the kernel updates with the command's
  state; the argument BOs are the bindings, in order.
- completion without a thread: the context's syncobj point ``seq`` is exported as a sync_file
  (``SYNCOBJ_HANDLE_TO_FD`` with ``EXPORT_SYNC_FILE | TIMELINE``) and polled on the event loop;
  the ERT state in the CMD BO then says COMPLETED / ERROR / ABORT / TIMEOUT.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import mmap
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from npud.abi import amdxdna, drm
from npud.devices.accel.device import AccelDevice, InFlight
from npud.devices.accel.kernel import KernelFile, KernelHandle, pointer
from npud.devices.accel.slots import CommandSlot, CommandSlots
from npud.devices.base import BoHandle, Capabilities, CompletionStatus, EngineInfo
from npud.devices.hwctx_pool import ContextsExhausted, HwContextPool, PoolStatistics
from npud.devices.priority import AMDXDNA as PRIORITIES
from npud.errors import InvalidArgument, NpudError
from npud.vocab import MemoryTier

ERT_STATE_MASK = 0xF
ERT_CMD_STATE_COMPLETED = 4
ERT_CMD_STATE_ERROR = 5
ERT_CMD_STATE_ABORT = 6
ERT_CMD_STATE_TIMEOUT = 8
DEV_HEAP_SIZE = 64 << 20  # the 64 MiB device heap per client that XRT allocates as well
# CREATE_HWCTX fails with these when the device has no context or partition left.
_EXHAUSTED = frozenset({errno.ENODEV, errno.EBUSY, errno.ENOSPC, errno.EAGAIN})


@dataclass(frozen=True, slots=True)
class HwContext:
    """A live hardware context: its handle, its syncobj, its key."""

    handle: KernelHandle
    syncobj: KernelHandle
    engine: int
    level: int


class AmdxdnaDevice(AccelDevice):
    """An AMD XDNA NPU (``/dev/accel/accelN`` driven by ``amdxdna``)."""

    driver = "amdxdna_accel_driver"

    def __init__(
        self,
        opener: Callable[[], KernelFile] | str,
        *,
        name: str = "accel0",
        loop: asyncio.AbstractEventLoop | None = None,
        kernel_depth: int = 1,
        cu_configs: Sequence[tuple[bytes, int]] = (),
        engines: int = 4,
        max_contexts: int | None = None,
    ) -> None:
        super().__init__(opener, name=name, loop=loop, kernel_depth=kernel_depth)
        self._cu_configs = tuple(cu_configs)
        self._engines = engines
        self._max_contexts = max_contexts
        self._pool: HwContextPool[tuple[int, int], HwContext] | None = None
        self._slots: CommandSlots | None = None
        self._cu_bos: list[BoHandle] = []
        self._heap: BoHandle | None = None
        self.info: dict[str, int] = {}

    # -- capabilities -----------------------------------------------------------------------

    def get_info(self, param: amdxdna.GetParam, size: int) -> bytes:
        """``DRM_IOCTL_AMDXDNA_GET_INFO`` into a ``size``-byte buffer."""
        ffi = amdxdna.HEADER.ffi
        buf = ffi.new("uint8_t[]", size)
        arg = amdxdna.HEADER.new(
            "struct amdxdna_drm_get_info",
            param=int(param),
            buffer_size=size,
            buffer=pointer(ffi, buf),
        )
        self.call(amdxdna.GET_INFO, arg)
        return bytes(ffi.buffer(buf, size))

    def _probe(self) -> Capabilities:
        ffi = amdxdna.HEADER.ffi
        meta = self.get_info(
            amdxdna.GetParam.QUERY_AIE_METADATA,
            ffi.sizeof("struct amdxdna_drm_query_aie_metadata"),
        )
        _col_size, cols, rows = struct.unpack_from("<IHH", meta, 0)
        fw = self.get_info(amdxdna.GetParam.QUERY_FIRMWARE_VERSION, 16)
        res = self.get_info(
            amdxdna.GetParam.QUERY_RESOURCE_INFO,
            ffi.sizeof("struct amdxdna_drm_get_resource_info"),
        )
        _clk, tops, task_max, _tops_curr, task_curr = struct.unpack_from("<5Q", res, 0)
        self.info = {
            "cols": cols,
            "rows": rows,
            "firmware": struct.unpack_from("<I", fw, 0)[0],
            "tops_max": tops,
            "hwctx_limit": task_max,
            "hwctx_in_use_at_open": task_curr,
        }
        limit = int(task_max) or 6
        capacity = min(limit, self._max_contexts or limit)
        self._heap = self._create_bo(DEV_HEAP_SIZE, amdxdna.BoType.DEV_HEAP)[0]
        self._slots = CommandSlots(self._alloc_slot, self._gem_close)
        self._pool = HwContextPool(
            capacity=capacity,
            create=self._create_hwctx,
            destroy=self._destroy_hwctx,
            urgency=lambda key: key[1],
        )
        engines = min(self._engines, capacity)
        board = "strix" if cols >= 8 else "phoenix"
        return self._accel_capabilities(
            description=self.version[2] or "AMD XDNA NPU",
            board=board,
            engines=tuple(EngineInfo(i, f"hwctx lane {i}") for i in range(engines)),
            native_priorities=PRIORITIES.levels,
            has_syncobj=True,
            has_hw_contexts=True,
            max_hw_contexts=capacity,
        )

    def pool_statistics(self) -> PoolStatistics:
        """The hardware-context pool's counters (contexts live, waiting work, evictions)."""
        assert self._pool is not None
        return self._pool.statistics()

    # -- buffers ----------------------------------------------------------------------------

    def _create_bo(self, size: int, bo_type: amdxdna.BoType) -> tuple[BoHandle, int, int]:
        arg = amdxdna.HEADER.new("struct amdxdna_drm_create_bo", size=size, type=int(bo_type))
        self.call(amdxdna.CREATE_BO, arg)
        handle = BoHandle(int(arg.handle))
        info = amdxdna.HEADER.new("struct amdxdna_drm_get_bo_info", handle=handle)
        self.call(amdxdna.GET_BO_INFO, info)
        return handle, int(info.xdna_addr), int(info.map_offset)

    def _alloc(
        self, size: int, tier: MemoryTier, flags: int
    ) -> tuple[BoHandle, int, int | None, int]:
        if flags:
            raise InvalidArgument(f"{self.name}: amdxdna buffers take no flags")
        handle, address, offset = self._create_bo(size, amdxdna.BoType.SHARE)
        return handle, address, offset, (size + 4095) // 4096 * 4096

    def _alloc_slot(self, size: int) -> tuple[BoHandle, mmap.mmap | memoryview]:
        handle, _address, offset = self._create_bo(size, amdxdna.BoType.CMD)
        return handle, self.file.mmap(offset, size)

    # -- hardware contexts ------------------------------------------------------------------

    def _create_hwctx(self, key: tuple[int, int]) -> HwContext:
        engine, level = key
        ffi = amdxdna.HEADER.ffi
        qos = ffi.new("struct amdxdna_qos_info *", {"priority": PRIORITIES.value(level)})
        arg = amdxdna.HEADER.new(
            "struct amdxdna_drm_create_hwctx",
            qos_p=pointer(ffi, qos),
            max_opc=0x800,
            num_tiles=max(1, self.info["cols"] * self.info["rows"] // max(1, self._engines)),
        )
        try:
            self.file.ioctl(amdxdna.CREATE_HWCTX, arg)
        except OSError as exc:
            if exc.errno in _EXHAUSTED:
                raise ContextsExhausted(f"{self.name}: no hardware context left") from exc
            raise
        ctx = HwContext(
            KernelHandle(int(arg.handle)), KernelHandle(int(arg.syncobj_handle)), engine, level
        )
        try:
            self._configure(ctx)
        except BaseException:
            self._destroy_hwctx(ctx)
            raise
        return ctx

    def _configure(self, ctx: HwContext) -> None:
        """Load the device's program (CONFIG_HWCTX / CONFIG_CU) so the context becomes READY."""
        if not self._cu_configs:
            return
        if not self._cu_bos:
            for image, _func in self._cu_configs:
                handle, _addr, offset = self._create_bo(len(image), amdxdna.BoType.DEV)
                mapping = self.file.mmap(offset, len(image))
                view = memoryview(mapping)
                view[: len(image)] = image
                view.release()
                if isinstance(mapping, mmap.mmap):
                    mapping.close()
                self._cu_bos.append(handle)
        config = struct.pack("<H6x", len(self._cu_bos)) + b"".join(
            struct.pack("<IB3x", handle, func)
            for handle, (_image, func) in zip(self._cu_bos, self._cu_configs, strict=True)
        )
        ffi = amdxdna.HEADER.ffi
        buf = ffi.new("uint8_t[]", config)
        arg = amdxdna.HEADER.new(
            "struct amdxdna_drm_config_hwctx",
            handle=ctx.handle,
            param_type=int(amdxdna.HwctxConfig.CONFIG_CU),
            param_val=pointer(ffi, buf),
            param_val_size=len(config),
        )
        self.call(amdxdna.CONFIG_HWCTX, arg)

    def _destroy_hwctx(self, ctx: HwContext) -> None:
        arg = amdxdna.HEADER.new("struct amdxdna_drm_destroy_hwctx", handle=ctx.handle)
        with contextlib.suppress(NpudError):
            self.call(amdxdna.DESTROY_HWCTX, arg)

    # -- submission -------------------------------------------------------------------------

    def _submit(self, record: InFlight) -> None:
        assert self._pool is not None
        sub = record.submission
        key = (sub.engine, sub.priority)
        record.extra["key"] = key
        record.extra["in_submit"] = True
        try:
            record.extra["ticket"] = self._pool.acquire(key, lambda ctx: self._exec(record, ctx))
        finally:
            record.extra["in_submit"] = False

    def _abort_queued(self, record: InFlight) -> bool:
        ticket = record.extra.get("ticket")
        return ticket is not None and self._pool is not None and self._pool.cancel(ticket)

    def _exec(self, record: InFlight, ctx: HwContext) -> None:
        """Run one job on its granted context (now, or later from the pool's release)."""
        assert self._pool is not None
        assert self._slots is not None
        pool, key = self._pool, record.extra["key"]
        released = [False]

        def _release() -> None:
            # after a reset dropped the context, there is nothing to give back
            if not released[0] and pool.context(key) is ctx:
                released[0] = True
                pool.release(key)

        record.cleanup.append(_release)
        sub = record.submission
        data = self.read_bytes(sub.command, sub.command_offset, sub.command_size)
        slot = self._slots.take(data)
        slots = self._slots
        record.cleanup.append(lambda: slots.give(slot))
        record.extra["slot"] = slot
        args: list[int] = []
        for binding in sub.bindings:
            if binding.handle not in args:
                args.append(binding.handle)
        if not args:  # the kernel wants at least one argument BO
            args.append(sub.command)
        ffi = amdxdna.HEADER.ffi
        array = ffi.new("uint32_t[]", args)
        arg = amdxdna.HEADER.new(
            "struct amdxdna_drm_exec_cmd",
            hwctx=ctx.handle,
            type=int(amdxdna.CmdType.EXEC_BUF),
            cmd_handles=slot.handle,
            args=pointer(ffi, array),
            cmd_count=1,
            arg_count=len(args),
        )
        try:
            self.call(amdxdna.EXEC_CMD, arg)
            fd_arg = drm.HEADER.new(
                "struct drm_syncobj_handle",
                handle=ctx.syncobj,
                flags=int(
                    drm.SyncobjHandleToFdFlag.EXPORT_SYNC_FILE | drm.SyncobjHandleToFdFlag.TIMELINE
                ),
                point=int(arg.seq),
                fd=-1,
            )
            self.call(drm.SYNCOBJ_HANDLE_TO_FD, fd_arg)
        except NpudError as exc:
            if record.extra.get("in_submit"):
                raise  # submit() undoes the job and the caller sees the error
            # granted later, from another job's release: the failure travels on this job
            self._finish(record, CompletionStatus.ERROR, str(exc))
            return
        record.extra["seq"] = int(arg.seq)
        self._watch_fd(record, int(fd_arg.fd), self._on_signalled)

    def _on_signalled(self, record: InFlight) -> None:
        slot: CommandSlot = record.extra["slot"]
        view = memoryview(slot.mapping)
        try:
            state = struct.unpack_from("<I", view, 0)[0] & ERT_STATE_MASK
        finally:
            view.release()
        if state == ERT_CMD_STATE_COMPLETED:
            self._finish(record, CompletionStatus.OK, None)
        elif state == ERT_CMD_STATE_ABORT:
            self._finish(record, CompletionStatus.ABORTED, record.aborted_reason or "aborted")
        elif state == ERT_CMD_STATE_TIMEOUT:
            self._finish(record, CompletionStatus.ERROR, "command timed out in the kernel (16 s)")
        else:
            self._finish(record, CompletionStatus.ERROR, f"ERT command state {state}")

    # -- recovery and shutdown --------------------------------------------------------------

    def _reset(self, engine: int, reason: str) -> None:
        """Destroy the engine's contexts (the kernel aborts their commands); remade on use."""
        assert self._pool is not None
        for level in range(PRIORITIES.levels):
            ctx = self._pool.context((engine, level))
            if ctx is not None:
                self._destroy_hwctx(ctx)
                self._pool.drop((engine, level))

    def _shutdown(self) -> None:
        if self._pool is not None:
            self._pool.close()
        if self._slots is not None:
            self._slots.close()
            self._slots = None
        for handle in self._cu_bos:
            with contextlib.suppress(NpudError):
                self._gem_close(handle)
        self._cu_bos.clear()
        if self._heap is not None:
            with contextlib.suppress(NpudError):
                self._gem_close(self._heap)
            self._heap = None
