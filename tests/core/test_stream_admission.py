"""A command stream the device reads is checked at submit, as the attacker sends it.

A malformed stream, or one whose operands run past a buffer's own size (into the padding of
its page-rounded allocation), is INVALID_ARGUMENT at submit naming the op and operand; nothing
is admitted and nothing reaches the device. A stream rewritten after admission is still held
to the buffer's own size by the device when it runs.
"""

from __future__ import annotations

import numpy as np
import pytest

from npud.core.context import Context
from npud.core.ids import BufferId
from npud.core.service import JobSpec
from npud.devices.base import BufferUse
from npud.errors import InvalidArgument
from npud.isa import Program, T
from npud.vocab import BufferUsage, JobState, SchedulingClass
from tests.core.harness import ALICE, Bed, make_bed

N = 64  # float32 elements: 256 bytes


def _buffer(
    bed: Bed, ctx: Context, data: bytes, usage: BufferUsage = BufferUsage.SCRATCH
) -> BufferId:
    buf = bed.core.create_buffer(ALICE, ctx.id, len(data), usage=usage)
    bed.core.write_buffer(ALICE, ctx.id, buf.id, 0, data)
    return buf.id


def _nothing_admitted(bed: Bed, ctx: Context) -> None:
    assert bed.core.jobs(ALICE, ctx.id) == []
    assert bed.device.statistics().submitted == 0


def test_a_malformed_stream_is_invalid_argument_at_submit() -> None:
    """64 bytes of garbage as a command stream: INVALID_ARGUMENT naming the header field."""
    bed = make_bed()
    ctx = bed.context()
    queue = bed.queue(ctx, SchedulingClass.LATENCY)
    junk = _buffer(bed, ctx, b"\xde\xad" * 32, BufferUsage.COMMAND)
    with pytest.raises(InvalidArgument, match=r"malformed command stream for sim0: .*magic"):
        bed.core.submit(ALICE, ctx.id, [JobSpec(queue.id, junk)])
    _nothing_admitted(bed, ctx)


def test_an_operand_past_a_buffers_own_size_is_refused_at_submit() -> None:
    """A 100-byte buffer (a 4 KiB allocation) read as 256 bytes: INVALID_ARGUMENT naming
    COPY's operand and the 100 bytes; with a 256-byte buffer the same stream copies exactly."""
    bed = make_bed()
    ctx = bed.context()
    queue = bed.queue(ctx, SchedulingClass.LATENCY)
    values = np.arange(N, dtype=np.float32)
    stream = _buffer(
        bed, ctx, Program().copy(T(1, 0, (N,)), T(0, 0, (N,))).encode(), BufferUsage.COMMAND
    )
    short = _buffer(bed, ctx, values.tobytes()[:100])
    out = _buffer(bed, ctx, bytes(4 * N))
    binds = ((short, BufferUse.READ), (out, BufferUse.WRITE))
    with pytest.raises(InvalidArgument, match=r"COPY.*run past the end of slot 0 \(100 bytes\)"):
        bed.core.submit(ALICE, ctx.id, [JobSpec(queue.id, stream, bindings=binds)])
    _nothing_admitted(bed, ctx)
    whole = _buffer(bed, ctx, values.tobytes())
    binds = ((whole, BufferUse.READ), (out, BufferUse.WRITE))
    [job] = bed.core.submit(ALICE, ctx.id, [JobSpec(queue.id, stream, bindings=binds)])
    bed.run()
    assert job.state is JobState.COMPLETED
    got = np.frombuffer(bed.core.read_buffer(ALICE, ctx.id, out, 0, 4 * N), np.float32)
    np.testing.assert_array_equal(got, values)


def test_a_stream_rewritten_after_admission_is_still_bounded_by_the_device() -> None:
    """Admitted behind a running job, then rewritten to read past its 100-byte buffer: the
    device refuses it when it runs (FAILED, naming the bound), and reads no padding."""
    bed = make_bed()
    ctx = bed.context()
    # in order (throughput): the second job stays QUEUED until the first has ended
    queue = bed.queue(ctx, SchedulingClass.THROUGHPUT)
    [first] = bed.burn(ctx, queue, 0.01)
    good = Program().copy(T(1, 0, (16,)), T(0, 0, (16,))).encode()
    bad = Program().copy(T(1, 0, (N,)), T(0, 0, (N,))).encode()
    assert len(good) == len(bad)
    stream = _buffer(bed, ctx, good, BufferUsage.COMMAND)
    short = _buffer(bed, ctx, bytes(100))
    out = _buffer(bed, ctx, bytes(4 * N))
    binds = ((short, BufferUse.READ), (out, BufferUse.WRITE))
    [job] = bed.core.submit(ALICE, ctx.id, [JobSpec(queue.id, stream, bindings=binds)])
    bed.core.write_buffer(ALICE, ctx.id, stream, 0, bad)
    bed.run()
    assert first.state is JobState.COMPLETED
    assert job.state is JobState.FAILED
    assert job.error is not None
    assert "run past the end of slot 0 (100 bytes)" in job.error.message
