"""The direct backend: compiled steps on a :class:`~npud.devices.base.Device` in this process.

No daemon, no scheduler: the backend allocates the plan's buffers on the device itself, submits
each step to one engine (the device runs one engine's jobs in submission order, so steps need
no fences between them) and waits for the completion callbacks. It is what the tests use to
check the compiled model against the numpy reference, and the baseline of the
direct-vs-daemon benchmark.

Waiting without threads
-----------------------
The Device contract delivers completions as callbacks on the core thread. On a
:class:`~npud.clock.VirtualClock` (the simulated NPU in virtual mode) they fire from the
clock's timers, so :meth:`DirectBackend.wait` advances the clock to the next timer until the
step it waits for has completed; the figures are then the device's *modelled* times,
deterministic to the bit. A device that completes from an event loop (the simulated NPU in
process mode, real drivers) needs that loop run: :meth:`DirectBackend.wait` runs the given loop
until the callback fires, so the figures are real time.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from npud.clock import VirtualClock
from npud.devices.base import (
    Binding,
    BoHandle,
    BufferUse,
    Completion,
    CompletionStatus,
    Device,
    DeviceBuffer,
    Submission,
    SubmitToken,
)
from npud.errors import (
    DeviceLost,
    FailedPrecondition,
    InvalidArgument,
    JobFailed,
    NotFound,
    Unavailable,
)
from npud.llm.backend import JOB_TIMES_KEPT, BackendStatistics, JobTimes
from npud.llm.compiler import Access, Step
from npud.llm.plan import MemoryPlan
from npud.vocab import MemoryTier

_USE = {Access.READ: BufferUse.READ, Access.WRITE: BufferUse.WRITE}


def _use(access: Access) -> BufferUse:
    return _USE.get(access, BufferUse.READWRITE)


@dataclass(slots=True, eq=False)
class DirectTicket:
    """Steps submitted together; complete when every one of their callbacks has run."""

    steps: tuple[Step, ...]
    commands: list[DeviceBuffer]
    completions: list[Completion] = field(default_factory=list)
    tokens: list[SubmitToken] = field(default_factory=list)  # the device's, for abort
    waker: asyncio.Future[None] | None = None

    def is_done(self) -> bool:
        """Whether every step has completed."""
        return len(self.completions) == len(self.steps)


class DirectBackend:
    """Runs steps on ``device`` directly (see the module docstring for how it waits).

    Args:
        device: an opened device; the caller keeps owning it (and closes it after
            :meth:`close`).
        clock: the device's :class:`VirtualClock` when it runs on one.
        loop: the event loop the device completes on, when it needs one run (process mode).
        engine: the engine every step runs on.
        tier: where the plan's buffers are allocated.

    ``job_times`` keeps the device's run time and modelled time of the last steps (no
    scheduler: their queue wait is 0), the same record the daemon backend keeps, so that a
    benchmark can check that two backends' steps ran at the same device speed.
    """

    def __init__(
        self,
        device: Device,
        *,
        clock: VirtualClock | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
        engine: int = 0,
        tier: MemoryTier = MemoryTier.DRAM,
    ) -> None:
        self.device = device
        self.clock = clock
        self.loop = loop
        self.engine = engine
        self.tier = tier
        self._buffers: dict[str, DeviceBuffer] = {}
        self._free_commands: list[DeviceBuffer] = []
        self._submitted = 0
        self._completed = 0
        self._uploaded = 0
        self._packs = 0
        self._written = 0
        self._read = 0
        self._busy = 0.0
        self._owned = False  # device (and loop) created by on_sim(): closed with the backend
        self.job_times: collections.deque[JobTimes] = collections.deque(maxlen=JOB_TIMES_KEPT)

    @classmethod
    def on_sim(
        cls, *, mode: str = "virtual", profile: str = "rk3588", slowdown: float = 1.0
    ) -> DirectBackend:
        """A direct backend on a fresh simulated NPU that it owns (and closes in :meth:`close`).

        ``mode="virtual"`` runs on a new :class:`VirtualClock` (modelled, deterministic
        times); ``mode="process"`` starts the device process on a private event loop (real
        times). ``slowdown`` models the board that many times slower (see
        :class:`~npud.devices.sim.SimDevice`).

        Raises:
            InvalidArgument: unknown mode or profile, or a bad slowdown.
            DeviceLost: the device process could not start.
        """
        from npud.devices.sim import SimDevice

        if mode == "virtual":
            clock = VirtualClock()
            device = SimDevice(profile, clock=clock, mode="virtual", slowdown=slowdown)
            device.open()
            backend = cls(device, clock=clock)
        elif mode == "process":
            loop = asyncio.new_event_loop()
            device = SimDevice(profile, mode="process", slowdown=slowdown)

            async def _open() -> None:  # the device process registers its pipe on the loop
                device.open()

            try:
                loop.run_until_complete(_open())
            except BaseException:
                loop.close()
                raise
            backend = cls(device, loop=loop)
        else:
            raise InvalidArgument(f"unknown sim mode {mode!r} (expected 'virtual' or 'process')")
        backend._owned = True
        return backend

    @property
    def name(self) -> str:
        """``direct:<device name>``."""
        return f"direct:{self.device.name}"

    def prepare(self, plan: MemoryPlan) -> None:
        """Allocate every buffer of ``plan`` on the device and copy the weights in.

        Raises:
            FailedPrecondition: called twice.
            OutOfDeviceMemory: the tier cannot hold the plan (what was allocated is freed).
            DeviceLost: the device is gone.
        """
        if self._buffers:
            raise FailedPrecondition("the direct backend is already prepared")
        try:
            for spec in plan.buffers:
                buf = self.device.create_buffer(spec.size, self.tier)
                self._buffers[spec.name] = buf
                if spec.pack is not None:
                    self._copy_in(buf.handle, 0, spec.pack.data)
                    self._uploaded += spec.pack.size
                    self._packs += 1
        except BaseException:
            self.close()
            raise

    def _copy_in(self, handle: BoHandle, offset: int, data: bytes) -> None:
        view = self.device.map_buffer(handle)
        try:
            view[offset : offset + len(data)] = data
        finally:
            view.release()
            self.device.unmap_buffer(handle)

    def _copy_out(self, handle: BoHandle, offset: int, size: int) -> bytes:
        view = self.device.map_buffer(handle)
        try:
            return bytes(view[offset : offset + size])
        finally:
            view.release()
            self.device.unmap_buffer(handle)

    def _buffer(self, name: str) -> DeviceBuffer:
        try:
            return self._buffers[name]
        except KeyError:
            raise InvalidArgument(f"no buffer {name!r} in the prepared plan") from None

    def write(self, buffer: str, offset: int, data: bytes) -> None:
        """Copy ``data`` into the plan's buffer ``buffer`` at ``offset``.

        Raises:
            InvalidArgument: unknown buffer, or the bytes run past its end.
        """
        buf = self._buffer(buffer)
        if offset < 0 or offset + len(data) > buf.size:
            raise InvalidArgument(
                f"write of {len(data)} bytes at {offset} runs past {buffer!r} ({buf.size} bytes)"
            )
        self._copy_in(buf.handle, offset, data)
        self._written += len(data)

    def _command_buffer(self, size: int) -> DeviceBuffer:
        for index, buf in enumerate(self._free_commands):
            if buf.size >= size:
                return self._free_commands.pop(index)
        return self.device.create_buffer(max(size, 4096), self.tier)

    def submit(self, steps: Sequence[Step]) -> DirectTicket:
        """Submit ``steps`` in order to the backend's engine.

        Raises:
            FailedPrecondition: the backend is not prepared.
            InvalidArgument: the device refused a submission.
            DeviceLost: the device is gone.
        """
        if not self._buffers:
            raise FailedPrecondition("prepare() the direct backend before submitting")
        ticket = DirectTicket(tuple(steps), [])
        for step in ticket.steps:
            command = self._command_buffer(len(step.command))
            ticket.commands.append(command)
            self._copy_in(command.handle, 0, step.command)
            bindings = tuple(
                Binding(self._buffer(name).handle, _use(access)) for name, access in step.bindings
            )
            submission = Submission(
                command=command.handle,
                command_offset=0,
                command_size=len(step.command),
                bindings=bindings,
                engine=self.engine,
                label=step.label,
            )
            ticket.tokens.append(
                self.device.submit(submission, functools.partial(self._on_done, ticket, step))
            )
            self._submitted += 1
        return ticket

    def _on_done(self, ticket: DirectTicket, step: Step, completion: Completion) -> None:
        ticket.completions.append(completion)
        self.job_times.append(
            JobTimes(step.kind, 0.0, completion.measured_s, completion.modelled_s)
        )
        self._completed += 1
        self._busy += completion.modelled_s if self.clock is not None else completion.measured_s
        self._read += completion.bytes_read
        if ticket.is_done() and ticket.waker is not None and not ticket.waker.done():
            ticket.waker.set_result(None)

    def _drive(self, ticket: DirectTicket) -> None:
        if ticket.is_done():
            return
        if self.clock is not None:
            while not ticket.is_done():
                deadline = self.clock.next_deadline()
                if deadline is None:
                    raise Unavailable(
                        f"{self.name}: the device went idle with {len(ticket.steps)} "
                        f"step(s) submitted and {len(ticket.completions)} completed"
                    )
                self.clock.advance_to(deadline)
            return
        if self.loop is None:
            raise FailedPrecondition(
                "the direct backend needs a VirtualClock or an event loop to wait on"
            )
        ticket.waker = self.loop.create_future()
        self.loop.run_until_complete(ticket.waker)

    def wait(self, ticket: DirectTicket) -> bytes | None:
        """Wait for every step of ``ticket``; the last step's readback bytes (or ``None``).

        Raises:
            JobFailed: a step completed with an error (its label and the device's reason).
            DeviceLost: a step was lost with the device.
            Unavailable: a virtual device went idle without completing the steps.
        """
        self._drive(ticket)
        self._free_commands.extend(ticket.commands)
        ticket.commands.clear()
        for step, completion in zip(ticket.steps, ticket.completions, strict=True):
            if completion.status is CompletionStatus.DEVICE_LOST:
                raise DeviceLost(f"{step.label}: {completion.error or 'device lost'}")
            if completion.status is not CompletionStatus.OK:
                raise JobFailed(f"{step.label}: {completion.status}: {completion.error}")
        last = ticket.steps[-1].readback if ticket.steps else None
        if last is None:
            return None
        data = self._copy_out(self._buffer(last.buffer).handle, last.offset, last.size)
        self._read += len(data)
        return data

    def abandon(self, tickets: Sequence[DirectTicket], *, cancel: bool) -> None:
        """Let ``tickets`` end (aborted first when ``cancel``) and drop their results.

        The device runs one engine's jobs in order, so this returns once the last of them has
        completed; their command buffers go back to the pool. Errors (a lost device, a virtual
        device gone idle) are swallowed: the caller is reporting its own.
        """
        if cancel:
            for ticket in tickets:
                for token in ticket.tokens:
                    with contextlib.suppress(Exception):  # a lost device aborts nothing
                        self.device.abort(token)
        for ticket in tickets:
            with contextlib.suppress(Exception):
                self._drive(ticket)
            if ticket.is_done():  # else the device is gone; the buffers may still be in use
                self._free_commands.extend(ticket.commands)
                ticket.commands.clear()

    def now(self) -> float:
        """The virtual clock's time, else ``time.monotonic()``."""
        return self.clock.now() if self.clock is not None else time.monotonic()

    def close(self) -> None:
        """Free every buffer this backend allocated. Idempotent."""
        for buf in [*self._buffers.values(), *self._free_commands]:
            with contextlib.suppress(NotFound, DeviceLost):  # a lost device freed everything
                self.device.free_buffer(buf.handle)
        self._buffers.clear()
        self._free_commands.clear()
        if self._owned:
            self._owned = False
            loop = self.loop
            if loop is not None and not loop.is_closed():

                async def _close() -> None:
                    self.device.close()

                loop.run_until_complete(_close())
                loop.close()
            else:
                self.device.close()

    def statistics(self) -> BackendStatistics:
        """Counters so far; ``device_busy_s`` sums modelled (virtual) or measured run times."""
        return BackendStatistics(
            backend=self.name,
            steps_submitted=self._submitted,
            steps_completed=self._completed,
            weight_bytes_uploaded=self._uploaded,
            weight_packs_uploaded=self._packs,
            weight_packs_reused=0,
            bytes_written=self._written,
            bytes_read=self._read,
            device_busy_s=self._busy,
        )
