"""The simulated NPU bounds a job's operands by each buffer's own size, not its allocation.

A buffer of 100 bytes sits in a 4 KiB allocation; a job bound to it with ``Binding.size`` 100
may not read or write the padding past byte 100, in-process and in the device process alike.
"""

from __future__ import annotations

import numpy as np
import pytest

from npud.devices.base import (
    Binding,
    BufferUse,
    CompletionStatus,
    Device,
    DeviceBuffer,
    Submission,
)
from npud.errors import InvalidArgument
from npud.isa import Program, T
from tests.devices.contract import AdapterFactory, download, sim_process, sim_virtual, upload

N = 64  # float32 elements the job copies: 256 bytes


def _copy_job(device: Device, *, src_size: int | None) -> tuple[Submission, DeviceBuffer, bytes]:
    """COPY 64 floats from a buffer holding 256 real bytes (stated as ``src_size``)."""
    values = np.arange(N, dtype=np.float32).tobytes()
    src = upload(device, values)
    out = upload(device, bytes(4 * N))
    blob = Program().copy(T(1, 0, (N,)), T(0, 0, (N,))).encode()
    cmd = upload(device, blob)
    sub = Submission(
        cmd.handle,
        0,
        len(blob),
        (
            Binding(src.handle, BufferUse.READ, src_size),
            Binding(out.handle, BufferUse.WRITE, 4 * N),
        ),
        engine=0,
    )
    return sub, out, values


@pytest.mark.parametrize("adapter", [sim_virtual, sim_process], ids=["virtual", "process"])
def test_an_operand_past_the_buffers_own_size_fails_the_job(adapter: AdapterFactory) -> None:
    """Bound as 100 bytes, a 256-byte read fails the job naming the operand (the allocation
    behind it is 4 KiB); bound as 256 bytes the same job copies the right values."""
    with adapter() as dut:
        short, _, _ = _copy_job(dut.device, src_size=100)
        failed = dut.run(short)
        assert failed.status is CompletionStatus.ERROR
        assert failed.error is not None
        assert "COPY" in failed.error
        assert "run past the end of slot 0 (100 bytes)" in failed.error
        whole, out, values = _copy_job(dut.device, src_size=4 * N)
        ok = dut.run(whole)
        assert ok.status is CompletionStatus.OK, ok.error
        assert download(dut.device, out, 4 * N) == values


def test_a_binding_larger_than_its_allocation_is_refused_at_submit() -> None:
    """A stated size beyond the allocation is INVALID_ARGUMENT; nothing is queued."""
    with sim_virtual() as dut:
        sub, _, _ = _copy_job(dut.device, src_size=1 << 20)
        with pytest.raises(InvalidArgument, match="binding 0: size 1048576 outside"):
            dut.device.submit(sub, lambda c: None)
        assert dut.device.statistics().submitted == 0
