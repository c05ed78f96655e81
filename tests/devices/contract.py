"""The device contract suite: what every adapter of :class:`npud.devices.base.Device` must do.

Each adapter contributes a factory to :data:`ADAPTERS`: a context manager that yields a
:class:`DeviceUnderTest` (an opened device plus a ``run_until`` that drives the device's
clock or event loop) and closes everything afterwards. ``tests/devices/test_contract.py``
runs every contract test against every factory. To add an adapter (vgem, rocket, ivpu, ...),
append ``pytest.param(my_factory, id="vgem", marks=...)`` to :data:`ADAPTERS` (or extend
the list from a kernel-marked test module and call the ``check_*`` functions directly).

The helpers here use only the Device protocol and the ISA, so they run on any adapter
whose engines execute the npud command stream.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import pytest

from npud.clock import VirtualClock
from npud.devices.base import (
    Binding,
    BufferUse,
    Completion,
    Device,
    DeviceBuffer,
    Submission,
    SubmitToken,
)
from npud.devices.sim import SimDevice
from npud.isa import Program, T
from npud.vocab import MemoryTier


@dataclass
class DeviceUnderTest:
    """An opened device and a way to let time pass until something has happened."""

    device: Device
    run_until: Callable[[Callable[[], bool], float], None]
    simulated_time: bool  # True when time is virtual (durations are exact)
    completions: list[Completion] = field(default_factory=list)

    def submit(self, submission: Submission) -> tuple[SubmitToken, list[Completion]]:
        """Submit and return the token plus a list that receives its completion(s)."""
        box: list[Completion] = []

        def _done(c: Completion) -> None:
            box.append(c)
            self.completions.append(c)

        return self.device.submit(submission, _done), box

    def run(self, submission: Submission, timeout: float = 30.0) -> Completion:
        """Submit one job and drive the device until it completes."""
        _, box = self.submit(submission)
        self.run_until(lambda: bool(box), timeout)
        assert len(box) == 1
        return box[0]


AdapterFactory = Callable[[], contextlib.AbstractContextManager[DeviceUnderTest]]


@contextlib.contextmanager
def on_virtual_clock(device: Device, clock: VirtualClock) -> Iterator[DeviceUnderTest]:
    """Open ``device`` (whose time is ``clock``); time moves only when a test waits for something.

    ``run_until`` advances the clock from one due timer to the next until the predicate holds,
    failing when nothing is left to happen before the timeout. Afterwards the device is closed
    and the clock drained.
    """
    device.open()

    def run_until(predicate: Callable[[], bool], timeout: float) -> None:
        deadline = clock.now() + timeout
        while not predicate():
            nxt = clock.next_deadline()
            if nxt is None or nxt > deadline:
                raise AssertionError(f"nothing left to happen before t={deadline}")
            clock.advance_to(nxt)

    try:
        yield DeviceUnderTest(device, run_until, simulated_time=True)
    finally:
        device.close()
        clock.run_until_idle()


@contextlib.contextmanager
def sim_virtual() -> Iterator[DeviceUnderTest]:
    """The simulated NPU in-process on a VirtualClock."""
    clock = VirtualClock()
    with on_virtual_clock(SimDevice("rk3588", clock=clock, mode="virtual"), clock) as dut:
        yield dut


@contextlib.contextmanager
def sim_process() -> Iterator[DeviceUnderTest]:
    """The simulated NPU in a child process, on a real asyncio loop."""
    loop = asyncio.new_event_loop()
    device = SimDevice("rk3588", mode="process")

    async def _open() -> None:
        device.open()

    loop.run_until_complete(_open())

    def run_until(predicate: Callable[[], bool], timeout: float) -> None:
        async def _wait() -> None:
            while not predicate():
                await asyncio.sleep(0.001)  # the test harness polls; the device does not

        loop.run_until_complete(asyncio.wait_for(_wait(), timeout))

    try:
        yield DeviceUnderTest(device, run_until, simulated_time=False)
    finally:
        device.close()
        loop.run_until_complete(asyncio.sleep(0))  # deliver deferred completions
        loop.close()


ADAPTERS = [
    pytest.param(sim_virtual, id="sim-virtual"),
    pytest.param(sim_process, id="sim-process", marks=pytest.mark.slow),
]
"""Every adapter the contract suite runs against."""


# ---- generic job builders ---------------------------------------------------------------


def upload(device: Device, data: bytes, tier: MemoryTier = MemoryTier.DRAM) -> DeviceBuffer:
    """A new buffer holding ``data`` at offset 0."""
    buf = device.create_buffer(max(1, len(data)), tier)
    view = device.map_buffer(buf.handle)
    try:
        view[: len(data)] = data
    finally:
        view.release()
        device.unmap_buffer(buf.handle)
    return buf


def download(device: Device, buf: DeviceBuffer, size: int) -> bytes:
    """The first ``size`` bytes of ``buf``."""
    view = device.map_buffer(buf.handle)
    try:
        return bytes(view[:size])
    finally:
        view.release()
        device.unmap_buffer(buf.handle)


def command(
    device: Device,
    program: Program,
    *,
    bindings: tuple[Binding, ...] = (),
    engine: int = 0,
    wait_for: tuple[SubmitToken, ...] = (),
) -> Submission:
    """Upload ``program`` and build its submission."""
    blob = program.encode()
    buf = upload(device, blob)
    return Submission(buf.handle, 0, len(blob), bindings, engine, wait_for=wait_for)


@dataclass
class AddJob:
    """A tiny ADD job and its expected result."""

    submission: Submission
    out: DeviceBuffer
    expected: np.ndarray


def add_job(device: Device, engine: int = 0, n: int = 16, seed: int = 0) -> AddJob:
    """out = a + b over ``n`` float32s, with a and b random."""
    rng = np.random.default_rng(seed)
    a = rng.standard_normal(n).astype(np.float32)
    b = rng.standard_normal(n).astype(np.float32)
    ba, bb = upload(device, a.tobytes()), upload(device, b.tobytes())
    out = device.create_buffer(4 * n, MemoryTier.DRAM)
    prog = Program().add(T(2, 0, (n,)), T(0, 0, (n,)), T(1, 0, (n,)))
    sub = command(
        device,
        prog,
        bindings=(
            Binding(ba.handle, BufferUse.READ),
            Binding(bb.handle, BufferUse.READ),
            Binding(out.handle, BufferUse.WRITE),
        ),
        engine=engine,
    )
    return AddJob(sub, out, a + b)


def check_add(dut: DeviceUnderTest, job: AddJob, completion: Completion) -> None:
    """The ADD job completed OK and wrote a + b."""
    assert completion.status == "ok", completion.error
    got = np.frombuffer(download(dut.device, job.out, job.expected.nbytes), np.float32)
    np.testing.assert_array_equal(got, job.expected)


def burn_job(
    device: Device, seconds: float, engine: int = 0, wait_for: tuple[SubmitToken, ...] = ()
) -> Submission:
    """A job that only occupies ``engine`` for ``seconds``."""
    return command(device, Program().burn(seconds), engine=engine, wait_for=wait_for)


def bad_job(device: Device) -> Submission:
    """A job whose stream is malformed: op 1 ADDs mismatched shapes."""
    buf = upload(device, bytes(64))
    prog = Program().burn(0.0)
    prog.add(T(0, 0, (4,)), T(0, 0, (4,)), T(0, 16, (3,)))
    blob = prog.encode(validate=False)
    cmd = upload(device, blob)
    return Submission(
        cmd.handle, 0, len(blob), (Binding(buf.handle, BufferUse.READWRITE),), engine=0
    )


__all__ = [
    "ADAPTERS",
    "AdapterFactory",
    "DeviceUnderTest",
    "add_job",
    "bad_job",
    "burn_job",
    "check_add",
    "command",
    "download",
    "sim_process",
    "sim_virtual",
    "upload",
]
