"""A test rig: one tensor per binding slot on an in-process SimDevice, run and read back."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from npud.clock import VirtualClock
from npud.devices.base import Binding, BufferUse, Completion, DeviceBuffer, Submission
from npud.devices.sim import SimDevice
from npud.isa import DType, Program, Tensor
from npud.vocab import MemoryTier

NP = {DType.F32: np.float32, DType.F16: np.float16, DType.I8: np.int8, DType.I32: np.int32}


@dataclass
class Rig:
    """Allocates one buffer per tensor, in order, so a tensor's slot is its index."""

    device: SimDevice = field(default_factory=lambda: _opened(SimDevice()))
    buffers: list[DeviceBuffer] = field(default_factory=list)
    uses: list[BufferUse] = field(default_factory=list)

    def _new(self, raw: bytes, use: BufferUse, tier: MemoryTier) -> int:
        buf = self.device.create_buffer(max(1, len(raw)), tier)
        view = self.device.map_buffer(buf.handle)
        view[: len(raw)] = raw
        view.release()
        self.buffers.append(buf)
        self.uses.append(use)
        return len(self.buffers) - 1

    def input(
        self,
        values: np.ndarray,
        dtype: DType = DType.F32,
        scale: float = 0.0,
        tier: MemoryTier = MemoryTier.DRAM,
    ) -> Tensor:
        """A read-only tensor holding ``values`` stored as ``dtype`` (I8: values are q)."""
        arr = np.ascontiguousarray(values, dtype=NP[dtype])
        slot = self._new(arr.tobytes(), BufferUse.READ, tier)
        return Tensor(slot, 0, arr.shape, dtype, scale)

    def blocks(self, raw: np.ndarray, dtype: DType, shape: tuple[int, ...]) -> Tensor:
        """A read-only block-quantised tensor (Q8_0/Q4_1) of ``shape`` from its raw bytes."""
        slot = self._new(
            np.ascontiguousarray(raw, np.uint8).tobytes(), BufferUse.READ, MemoryTier.DRAM
        )
        return Tensor(slot, 0, shape, dtype)

    def output(
        self,
        shape: tuple[int, ...],
        dtype: DType = DType.F32,
        scale: float = 0.0,
        init: np.ndarray | None = None,
        tier: MemoryTier = MemoryTier.DRAM,
    ) -> Tensor:
        """A writable tensor, zeroed or holding ``init``."""
        raw = np.zeros(shape, NP[dtype]) if init is None else np.ascontiguousarray(init, NP[dtype])
        slot = self._new(raw.tobytes(), BufferUse.READWRITE, tier)
        return Tensor(slot, 0, shape, dtype, scale)

    def read(self, t: Tensor) -> np.ndarray:
        """The raw stored values of ``t`` (I8 as q, not dequantised)."""
        view = self.device.map_buffer(self.buffers[t.slot].handle)
        arr = np.frombuffer(view, NP[t.dtype], t.numel, t.offset).reshape(t.shape).copy()
        view.release()
        return arr

    def submission(self, blob: bytes, engine: int = 0) -> Submission:
        """Upload ``blob`` and bind every tensor buffer by slot."""
        cmd = self.device.create_buffer(len(blob), MemoryTier.DRAM)
        view = self.device.map_buffer(cmd.handle)
        view[: len(blob)] = blob
        view.release()
        bindings = tuple(Binding(b.handle, u) for b, u in zip(self.buffers, self.uses, strict=True))
        return Submission(cmd.handle, 0, len(blob), bindings, engine)

    def run_blob(self, blob: bytes, engine: int = 0) -> Completion:
        """Run a raw command stream and return its completion."""
        box: list[Completion] = []
        self.device.submit(self.submission(blob, engine), box.append)
        clock = self.device.clock
        assert isinstance(clock, VirtualClock)
        clock.run_until_idle()
        assert len(box) == 1
        return box[0]

    def run(self, program: Program) -> Completion:
        """Run a program and insist that it succeeded."""
        completion = self.run_blob(program.encode())
        assert completion.status == "ok", completion.error
        return completion


def _opened(device: SimDevice) -> SimDevice:
    device.open()
    return device
