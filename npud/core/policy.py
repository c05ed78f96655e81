"""Scheduling classes and the knobs of a scheduler's policy.

npud has three classes (LATENCY / THROUGHPUT / BACKGROUND) and two policies:

* ``npud``: LATENCY first (earliest deadline first), THROUGHPUT shared fairly between contexts
  by weight, BACKGROUND when idle, a minimum share per class, shallow hardware queues while
  latency work exists, a time slice for throughput jobs;
* ``fifo``: arrival order over every class with a deep hardware queue, which is what a client
  gets from a raw drivers/accel node. It is kept as the baseline the benchmarks compare with.

A :class:`SchedulerPolicy` is a value object chosen per scheduler (per device) from the config;
there is no global policy switch.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field

from npud.errors import InvalidArgument
from npud.vocab import SchedulingClass

CLASS_ORDER: tuple[SchedulingClass, ...] = (
    SchedulingClass.LATENCY,
    SchedulingClass.THROUGHPUT,
    SchedulingClass.BACKGROUND,
)


class PolicyKind(enum.StrEnum):
    """Which dispatch policy a scheduler runs."""

    NPUD = "npud"
    FIFO = "fifo"


def _default_min_share() -> dict[SchedulingClass, float]:
    return {
        SchedulingClass.LATENCY: 0.0,
        SchedulingClass.THROUGHPUT: 0.10,
        SchedulingClass.BACKGROUND: 0.05,
    }


def _default_timeouts() -> dict[SchedulingClass, float]:
    # Well before the kernels' own job timeouts (rocket 500 ms, amdxdna 16 s): npud's watchdog
    # must fire first so that npud, not the kernel, decides what happens to the other jobs.
    return {
        SchedulingClass.LATENCY: 0.25,
        SchedulingClass.THROUGHPUT: 0.40,
        SchedulingClass.BACKGROUND: 0.40,
    }


@dataclass(frozen=True, slots=True)
class SchedulerPolicy:
    """The policy of one scheduler. All times are seconds on the core clock.

    Attributes:
        kind: ``npud`` or the ``fifo`` baseline.
        min_share: the guaranteed share of device time per class over ``share_window_s``; a
            class below it gets the next free slot. Their sum must stay below 1.
        share_window_s: the half-life of the decaying per-class usage that min shares watch.
        latency_window_s: after the last latency job was seen, how long the engines stay in
            shallow mode (at most one non-latency job in flight per engine).
        deep_credits: jobs in flight per engine when only throughput/background work exists.
        latency_credits: latency jobs in flight per engine (the rest wait in npud, in EDF order).
        fifo_credits: jobs in flight per engine under the ``fifo`` policy (deep, like a driver).
        time_slice_s: the longest estimated duration a THROUGHPUT/BACKGROUND job may have;
            ``None`` disables the check.
        timeouts: the watchdog timeout per class, for jobs that set none of their own.
        reject_late: whether a job whose deadline can no longer be met when it reaches the front
            is REJECTED instead of run (NNAPI's "abort before starting").
        unknown_cost_s: the cost charged for fairness when nothing is known of a job's kind.
        resident_lookahead: how many equally ranked ready jobs are compared to prefer one whose
            buffers are already resident.
        ema_alpha: the weight of a new sample in the per-kind duration average.
        model_cap: admission (time slice, deadlines) uses a kind's measured average but at
            most this multiple of the device's modelled average, where the device models it
            (see :mod:`npud.core.estimates`).
        history: finished jobs kept per context for listing.
    """

    kind: PolicyKind = PolicyKind.NPUD
    min_share: Mapping[SchedulingClass, float] = field(default_factory=_default_min_share)
    share_window_s: float = 1.0
    latency_window_s: float = 0.5
    deep_credits: int = 4
    latency_credits: int = 2
    fifo_credits: int = 1 << 20
    time_slice_s: float | None = 0.1
    timeouts: Mapping[SchedulingClass, float] = field(default_factory=_default_timeouts)
    reject_late: bool = True
    unknown_cost_s: float = 0.001
    resident_lookahead: int = 4
    ema_alpha: float = 0.2
    history: int = 256
    model_cap: float = 2.0

    def __post_init__(self) -> None:
        if sum(self.min_share.get(c, 0.0) for c in CLASS_ORDER) >= 1.0:
            raise InvalidArgument(
                f"the minimum shares add up to {sum(self.min_share.values()):.2f}; they must "
                "stay below 1.0 so that the class order still decides something"
            )
        if min(self.deep_credits, self.latency_credits, self.fifo_credits) < 1:
            raise InvalidArgument("every credit limit must be at least 1")
        if self.share_window_s <= 0 or self.latency_window_s < 0:
            raise InvalidArgument("share_window_s must be > 0 and latency_window_s >= 0")
        if not 0.0 < self.ema_alpha <= 1.0:
            raise InvalidArgument(f"ema_alpha must be in (0, 1], got {self.ema_alpha}")
        if not self.model_cap >= 1.0:
            raise InvalidArgument(f"model_cap must be >= 1, got {self.model_cap}")

    def timeout_for(self, sched_class: SchedulingClass) -> float:
        """The watchdog timeout of a class (jobs may set a shorter or longer one)."""
        return self.timeouts.get(sched_class, 1.0)


def native_priority(sched_class: SchedulingClass, levels: int) -> int:
    """Map an npud class onto a device's native priority levels (0 is the most urgent).

    LATENCY takes the most urgent level, BACKGROUND the least, THROUGHPUT the one after
    LATENCY; a device with a single level (rocket, ethosu) gets 0 for everything and npud's own
    ordering is all there is.
    """
    if levels <= 1:
        return 0
    if sched_class is SchedulingClass.LATENCY:
        return 0
    if sched_class is SchedulingClass.THROUGHPUT:
        return 1
    return levels - 1
