"""The one small protocol every way of running compiled steps implements.

A backend owns the device-side copies of a :class:`~npud.llm.plan.MemoryPlan`'s buffers and
runs :class:`~npud.llm.compiler.Step` programs against them in submission order. Submission
and waiting are split (:meth:`Backend.submit` returns a ticket, :meth:`Backend.wait` blocks on
it) so that a decode loop can compile step p+1 while step p runs, and keep several steps in
flight (see :mod:`npud.llm.generator`); :meth:`Backend.abandon` lets go of steps whose results
are no longer wanted (submitted past EOS, or behind a failed step).

Implementations: :class:`~npud.llm.direct.DirectBackend` (a Device in this process) and
:class:`~npud.llm.daemon.DaemonBackend` (the npud daemon through :mod:`npud.client`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

from npud.llm.compiler import Step, StepKind
from npud.llm.plan import MemoryPlan


@dataclass(frozen=True, slots=True)
class BackendStatistics:
    """What a backend has done so far.

    ``weight_bytes_uploaded`` counts weight bytes this backend wrote; packs that were found
    already on the device (persistent buffers of another process) are counted in
    ``weight_packs_reused`` instead.
    """

    backend: str
    steps_submitted: int
    steps_completed: int
    weight_bytes_uploaded: int
    weight_packs_uploaded: int
    weight_packs_reused: int
    bytes_written: int
    bytes_read: int
    device_busy_s: float


JOB_TIMES_KEPT = 4096
"""How many finished steps' times a backend keeps (the newest)."""


@dataclass(frozen=True, slots=True)
class JobTimes:
    """One finished step's times: queued in npud, on the device, and the device's model of it.

    ``run_s`` is the device time observed (dispatch to completion through npud; the device's
    own clock for the direct backend). ``modelled_s`` is the simulated board's cost-model time
    of the step (0.0 on hardware without a model): it depends only on the program, where its
    buffers live and the board, so two runs whose steps have different ``modelled_s`` ran on
    different device speeds. The direct backend has no scheduler: its ``queue_wait_s`` is 0.
    """

    kind: StepKind
    queue_wait_s: float
    run_s: float
    modelled_s: float = 0.0


TicketT = TypeVar("TicketT")
"""A backend's handle on submitted steps, redeemed with :meth:`Backend.wait`."""


class Backend(Protocol[TicketT]):
    """Runs compiled steps on device buffers laid out by a memory plan.

    Generic in its ticket type (each backend has its own handle on submitted steps).
    """

    @property
    def name(self) -> str:
        """A short name for reports (``direct:sim0``, ``daemon:/run/npud/npud.sock``)."""
        ...

    def prepare(self, plan: MemoryPlan) -> None:
        """Create (or attach) every buffer of ``plan`` and make the weights present.

        Weights already on the device under the same content key are attached, not uploaded.
        Called once, before any other method but :meth:`close`.

        Raises:
            ResourceExhausted: the device cannot hold the plan.
            Unavailable: the device or daemon is gone.
        """
        ...

    def write(self, buffer: str, offset: int, data: bytes) -> None:
        """Write ``data`` into the plan's buffer ``buffer`` at ``offset`` (e.g. prompt ids).

        Ordered after every step already waited for and before every later submission.
        """
        ...

    def submit(self, steps: Sequence[Step]) -> TicketT:
        """Queue ``steps`` to run in order after everything submitted before. Never blocks long.

        Raises:
            InvalidArgument: the device refused a step's command stream.
            Unavailable: the device or daemon is gone.
        """
        ...

    def wait(self, ticket: TicketT) -> bytes | None:
        """Block until every step of ``ticket`` completed; the last step's readback bytes.

        Returns ``None`` when the last step has no readback.

        Raises:
            JobFailed: a step failed on the device (the message carries the device's reason).
            Unavailable: the device or daemon went away meanwhile.
        """
        ...

    def abandon(self, tickets: Sequence[TicketT], *, cancel: bool) -> None:
        """Let go of submitted steps whose results no longer matter; returns when they ended.

        Used by a pipelined decode loop: after EOS (``cancel=False``: the few steps already
        submitted past it just run out) and after a failed step (``cancel=True``: steps not yet
        finished are cancelled or aborted where the device allows). Either way every step of
        ``tickets`` has ended when this returns, so a later :meth:`write` cannot race one, and
        their results and errors are dropped. Never raises an npud error (the caller is
        usually already handling one); the tickets must not be waited for afterwards.
        """
        ...

    def now(self) -> float:
        """The backend's clock in seconds (virtual for a simulated device on a VirtualClock)."""
        ...

    def close(self) -> None:
        """Release every buffer this backend holds (persistent weights stay warm in the daemon).

        Idempotent.
        """
        ...

    def statistics(self) -> BackendStatistics:
        """A frozen snapshot of the backend's counters."""
        ...
