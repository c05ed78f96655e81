"""A job inside the simulated NPU: its record while queued and running, how it ended, and
the body of an execution unit that runs it.

:func:`run_job` is what every execution unit of the simulated NPU runs (the in-process mode's
clock timer, the device process's executor threads, and the vgem adapter's simulated
execution): decode the command stream against the job's bindings, cost it with the board's
model, execute it on the buffers' memory. A bad job never raises: it becomes an ERROR outcome
whose message names the op and the field.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from npud.clock import TimerHandle
from npud.devices.base import (
    BufferUse,
    CompletionCallback,
    CompletionStatus,
    Submission,
    SubmitToken,
)
from npud.devices.sim.cost import estimate
from npud.devices.sim.executor import JobCancelled, decode_job, execute
from npud.devices.sim.memory import SimBuffer
from npud.devices.sim.profiles import BoardProfile
from npud.isa import CommandStreamError
from npud.vocab import MemoryTier

__all__ = ["JobOutcome", "SimJob", "run_job"]


@dataclass(frozen=True, slots=True)
class JobOutcome:
    """How a job ended on the execution unit, before the device turns it into a Completion."""

    status: CompletionStatus
    error: str | None
    modelled_s: float
    bytes_read: int = 0
    bytes_written: int = 0


@dataclass(slots=True, eq=False)
class SimJob:
    """One submission inside the simulated device (an identity object)."""

    token: SubmitToken
    submission: Submission
    on_done: CompletionCallback
    command: SimBuffer
    buffers: tuple[SimBuffer, ...]  # by binding slot
    state: Literal["queued", "running", "done"] = "queued"
    started_at: float = 0.0
    timer: TimerHandle | None = None
    hung: bool = False

    @property
    def engine(self) -> int:
        """The engine the job was submitted to."""
        return self.submission.engine

    def command_bytes(self) -> bytes:
        """The command stream, read from the command buffer now."""
        s = self.submission
        return bytes(self.command.memory.data[s.command_offset : s.command_offset + s.command_size])

    @property
    def sizes(self) -> list[int]:
        """Per slot, the bytes the job may touch: the size its binding states, else the whole
        allocation."""
        return [
            buf.size if b.size is None else b.size
            for b, buf in zip(self.submission.bindings, self.buffers, strict=True)
        ]

    @property
    def writable(self) -> tuple[bool, ...]:
        """Per slot, whether the job bound the buffer for writing."""
        return tuple(bool(b.use & BufferUse.WRITE) for b in self.submission.bindings)


def run_job(
    command: bytes,
    *,
    memories: Sequence[object],
    sizes: Sequence[int],
    tiers: Sequence[MemoryTier],
    writable: Sequence[bool],
    profile: BoardProfile,
    cancelled: Callable[[], bool] | None = None,
) -> JobOutcome:
    """Decode, cost and execute one job (the body of the device's execution unit).

    Never raises for a bad job: a malformed stream or a fault becomes an ERROR outcome whose
    error names the op and the field. A malformed stream is modelled as costing the launch
    overhead (the device needs that long to find out). ``cancelled`` (process mode) is polled
    between ops; a job cancelled mid-way ends ABORTED.
    """
    try:
        instructions = decode_job(command, sizes, writable)
    except CommandStreamError as exc:
        return JobOutcome(CompletionStatus.ERROR, str(exc), profile.launch_overhead_s)
    modelled = estimate(instructions, tiers, profile)
    try:
        stats = execute(instructions, memories, cancelled=cancelled)
    except JobCancelled as exc:
        return JobOutcome(CompletionStatus.ABORTED, str(exc), modelled)
    except CommandStreamError as exc:
        return JobOutcome(CompletionStatus.ERROR, str(exc), modelled)
    except Exception as exc:  # a bug in a kernel must fail the job, not the device
        return JobOutcome(CompletionStatus.ERROR, f"internal fault: {exc!r}", modelled)
    return JobOutcome(CompletionStatus.OK, None, modelled, stats.bytes_read, stats.bytes_written)
