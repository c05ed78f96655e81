"""The qaic adapter: Qualcomm Cloud AI 100 cards through the mainline ``qaic`` accel driver.

What the kernel offers (``include/uapi/drm/qaic_accel.h``, ``drivers/accel/qaic``): ``MANAGE``
messages to the card's management processor (the NNC protocol: load a network, *activate* it on
a DMA Bridge Channel, deactivate; spoken by the Cloud AI SDK), BOs (``CREATE_BO``, ``MMAP_BO``),
*slicing* that ties a BO's ranges to device addresses, semaphores and doorbells of an activated
network (``ATTACH_SLICE_BO``/``DETACH_SLICE_BO``), ``EXECUTE_BO``/``PARTIAL_EXECUTE_BO`` of a set
of sliced BOs on a DBC (one inference request), ``WAIT_BO`` with a millisecond timeout and
``PERF_STATS_BO``. No drm_sched, no priority, no job status beyond completion; requests run in
order per DBC.

How npud drives it:

- **the program is the activated network**, not a command buffer: npud cannot load one (that
  needs the SDK's compiled program and the NNC protocol), so the adapter takes an ``activate``
  hook, run at open on npud's own file (DBCs belong to the file that activated them), returning
  the DBC ids; each DBC is one engine.
- each bound buffer is sliced on first use for its engine and direction (WRITE use -> from
  device, otherwise to device) with one slice covering the BO. Real networks need the slice
  layout of their IO descriptors (device addresses, semaphores, doorbells): that comes from the
  SDK's program metadata, which this version does not read, so only single-region IO programs
  work as is.
- the submission's command range is ignored unless ``command_input`` is set, in which case the
  command BO is sent as the request's first input (for programs that take a request descriptor;
  the device contract tests use this to run a stand-in firmware).
- completion: ``WAIT_BO`` blocks, so the device has ONE waiter thread waiting on each request's
  BOs in submission order; a request on one DBC can be reported late behind a slower request on
  another DBC (head-of-line in the waiter only, not on the card).
"""

from __future__ import annotations

import asyncio
import errno
from collections.abc import Callable, Sequence
from typing import Any

from npud.abi import qaic
from npud.devices.accel.device import BoRecord, InFlight
from npud.devices.accel.kernel import KernelFile, pointer
from npud.devices.accel.waiter import BlockingWaitDevice
from npud.devices.base import BoHandle, BufferUse, Capabilities, EngineInfo
from npud.devices.priority import QAIC as PRIORITIES
from npud.errors import DeviceError, DeviceLost, InvalidArgument
from npud.vocab import MemoryTier

TO_DEVICE = 1
FROM_DEVICE = 2
WAIT_SLICE_MS = 50  # bounds how long close() holds the loop joining the waiter (see ethosu)


class QaicDevice(BlockingWaitDevice):
    """A Cloud AI 100 (``/dev/accel/accelN`` driven by ``qaic``)."""

    driver = "qaic"
    wait_ioctl = qaic.WAIT_BO

    def __init__(
        self,
        opener: Callable[[], KernelFile] | str,
        *,
        name: str = "accel0",
        loop: asyncio.AbstractEventLoop | None = None,
        kernel_depth: int = 1,
        activate: Callable[[KernelFile], Sequence[int]] | None = None,
        command_input: bool = False,
    ) -> None:
        super().__init__(opener, name=name, loop=loop, kernel_depth=kernel_depth)
        self._activate = activate
        self._command_input = command_input
        self._dbcs: tuple[int, ...] = ()
        self._slicing: dict[BoHandle, tuple[int, int]] = {}

    def _probe(self) -> Capabilities:
        dbcs = tuple(self._activate(self.file)) if self._activate is not None else ()
        if not dbcs:
            raise DeviceError(
                f"{self.name}: no DMA bridge channel is activated; qaic runs networks that the "
                "Cloud AI SDK activated (MANAGE) on npud's file, so pass an activate hook"
            )
        self._dbcs = dbcs
        self._start_waiter()
        return self._accel_capabilities(
            description=self.version[2] or "Qualcomm Cloud AI 100",
            board="cloud-ai-100",
            engines=tuple(EngineInfo(i, f"dbc{d}") for i, d in enumerate(dbcs)),
            native_priorities=PRIORITIES.levels,
        )

    def _alloc(
        self, size: int, tier: MemoryTier, flags: int
    ) -> tuple[BoHandle, int, int | None, int]:
        if flags:
            raise InvalidArgument(f"{self.name}: qaic buffers take no flags")
        arg = qaic.HEADER.new("struct qaic_create_bo", size=size)
        self.call(qaic.CREATE_BO, arg)
        handle = BoHandle(int(arg.handle))
        off = qaic.HEADER.new("struct qaic_mmap_bo", handle=handle)
        self.call(qaic.MMAP_BO, off)
        return handle, 0, int(off.offset), (size + 4095) // 4096 * 4096

    def _release(self, record: BoRecord) -> None:
        self._slicing.pop(record.buffer.handle, None)

    def _slice(self, handle: BoHandle, dbc: int, direction: int) -> None:
        """Attach one whole-BO slice for ``dbc`` and ``direction`` (re-slicing if it changed)."""
        if self._slicing.get(handle) == (dbc, direction):
            return
        if handle in self._slicing:
            self.call(
                qaic.DETACH_SLICE_BO, qaic.HEADER.new("struct qaic_detach_slice", handle=handle)
            )
            del self._slicing[handle]
        size = self._bos[handle].buffer.size
        ffi = qaic.HEADER.ffi
        entry = ffi.new("struct qaic_attach_slice_entry *", {"size": size})
        arg = qaic.HEADER.new("struct qaic_attach_slice")
        arg.hdr.count, arg.hdr.dbc_id, arg.hdr.handle = 1, dbc, handle
        arg.hdr.dir, arg.hdr.size = direction, size
        arg.data = pointer(ffi, entry)
        self.call(qaic.ATTACH_SLICE_BO, arg)
        self._slicing[handle] = (dbc, direction)

    def _submit(self, record: InFlight) -> None:
        sub = record.submission
        dbc = self._dbcs[sub.engine]
        entries: list[tuple[BoHandle, int]] = []
        if self._command_input:
            entries.append((sub.command, TO_DEVICE))
        for binding in sub.bindings:
            direction = FROM_DEVICE if BufferUse.WRITE in binding.use else TO_DEVICE
            if any(h == binding.handle for h, _ in entries):
                raise InvalidArgument(
                    f"{self.name}: buffer {binding.handle} appears twice in one qaic request"
                )
            entries.append((binding.handle, direction))
        if not entries:
            raise InvalidArgument(f"{self.name}: a qaic request needs at least one buffer")
        for handle, direction in entries:
            self._slice(handle, dbc, direction)
        ffi = qaic.HEADER.ffi
        array = ffi.new(
            "struct qaic_execute_entry[]", [{"handle": h, "dir": d} for h, d in entries]
        )
        arg = qaic.HEADER.new("struct qaic_execute")
        arg.hdr.count, arg.hdr.dbc_id = len(entries), dbc
        arg.data = pointer(ffi, array)
        self.call(qaic.EXECUTE_BO, arg)
        token = record.token
        handles = [h for h, _ in entries]
        self._wait_in_thread(record, lambda: self._wait_all(handles, dbc, token))

    def _wait_all(self, handles: list[BoHandle], dbc: int, token: Any) -> object:
        """On the waiter thread: WAIT_BO every BO of the request, in slices, until done."""
        for handle in handles:
            while True:
                if not self._still_waiting(token):
                    return None
                arg = qaic.HEADER.new(
                    "struct qaic_wait", handle=handle, timeout=WAIT_SLICE_MS, dbc_id=dbc
                )
                try:
                    self.file.ioctl(qaic.WAIT_BO, arg)
                    break
                except OSError as exc:
                    if exc.errno != errno.ETIMEDOUT:
                        return exc
                except DeviceLost as exc:
                    return exc
        return None

    def _shutdown(self) -> None:
        super()._shutdown()
        self._slicing.clear()
