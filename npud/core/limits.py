"""Bounds on what one client may ask of the daemon: every number it sends is finite and within
a range, and every timeout within its class's ceiling.

npud is shared by users who do not trust each other, so a value one client sends must not be
able to hurt another: a NaN timeout reaching the scheduler's timer heap breaks the heap's
order for everyone (a heap compares with ``<``, and every comparison with NaN is false), an
infinite grace keeps objects forever, a stream interval of a nanosecond turns one watcher into
a busy loop on the daemon's one event loop, an unbounded weight takes the whole device.

:class:`Limits` is one frozen value object holding every such bound; the daemon fills it from
the ``[limits]`` table of its configuration, and core, the API layer and the scheduler read it.
:func:`bounded` is the one check every float goes through, at the API edge (naming the wire
field) and again in core (so that no caller, not only the gRPC one, can put a NaN on a heap).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from npud.errors import InvalidArgument
from npud.vocab import SchedulingClass


def _default_timeout_ceilings() -> dict[SchedulingClass, float]:
    # A job holds its engine until it ends or its watchdog fires, and no job is preempted, so
    # a class's ceiling is the longest one job of that class may keep an engine from everyone.
    return {
        SchedulingClass.LATENCY: 10.0,
        SchedulingClass.THROUGHPUT: 60.0,
        SchedulingClass.BACKGROUND: 600.0,
    }


@dataclass(frozen=True, slots=True)
class Limits:
    """Every bound on what a client may ask. All times are seconds.

    Attributes:
        timeout_ceilings: the longest watchdog timeout (``timeout_s``) a job of each class may
            ask for; the class default applies to jobs that ask for none.
        max_deadline_s: how far ahead a job's deadline (``deadline_s``) may lie.
        max_estimate_s: the largest declared duration (``estimate_s``).
        max_wait_s: the longest ``WaitJob`` timeout.
        min_event_interval_s: the shortest statistics interval of ``StreamEvents``.
        max_event_interval_s: the longest statistics interval of ``StreamEvents``.
        max_weight: the largest fair-share weight of a context; the smallest is its inverse.
        max_kinds_per_owner: the duration-estimate table's kinds per user (per device); a new
            kind past it drops that user's least recently used one.
        max_label_chars: the longest label of a context, queue or job.
        max_kind_chars: the longest job kind.
        max_readbacks: readbacks per SubmitStream request.
        max_readback_bytes: bytes of all readbacks of one SubmitStream request together.
    """

    timeout_ceilings: Mapping[SchedulingClass, float] = field(
        default_factory=_default_timeout_ceilings
    )
    max_deadline_s: float = 3600.0
    max_estimate_s: float = 3600.0
    max_wait_s: float = 3600.0
    min_event_interval_s: float = 0.1
    max_event_interval_s: float = 3600.0
    max_weight: float = 16.0
    max_kinds_per_owner: int = 256
    max_label_chars: int = 256
    max_kind_chars: int = 64
    max_readbacks: int = 16
    max_readback_bytes: int = 16 << 20

    def __post_init__(self) -> None:
        for name in ("max_deadline_s", "max_estimate_s", "max_wait_s", "max_event_interval_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise InvalidArgument(f"limits.{name} must be a finite number > 0, got {value}")
        for cls in SchedulingClass:
            ceiling = self.timeout_ceiling(cls)
            if not (math.isfinite(ceiling) and ceiling > 0):
                raise InvalidArgument(
                    f"limits: the {cls} timeout ceiling must be a finite number > 0, got {ceiling}"
                )
        if not (0 < self.min_event_interval_s <= self.max_event_interval_s):
            raise InvalidArgument(
                "limits.min_event_interval_s must be > 0 and at most max_event_interval_s, "
                f"got {self.min_event_interval_s}"
            )
        for name in (
            "max_kinds_per_owner",
            "max_label_chars",
            "max_kind_chars",
            "max_readbacks",
            "max_readback_bytes",
        ):
            if getattr(self, name) < 1:
                raise InvalidArgument(
                    f"limits.{name} must be at least 1, got {getattr(self, name)}"
                )
        if not (math.isfinite(self.max_weight) and self.max_weight >= 1):
            raise InvalidArgument(
                f"limits.max_weight must be finite and >= 1, got {self.max_weight}"
            )

    def timeout_ceiling(self, sched_class: SchedulingClass) -> float:
        """The longest timeout a job of ``sched_class`` may ask for."""
        return self.timeout_ceilings.get(sched_class, 60.0)

    @property
    def min_weight(self) -> float:
        """The smallest fair-share weight (the inverse of :attr:`max_weight`)."""
        return 1.0 / self.max_weight


def check_text(name: str, text: str, limit: int) -> str:
    """``text`` when it has at most ``limit`` characters.

    Raises:
        InvalidArgument: it is longer; the message names ``name``, the length and the limit
            (the text itself is not echoed).
    """
    if len(text) > limit:
        raise InvalidArgument(f"{name} has {len(text)} characters; the limit is {limit}")
    return text


def clip(text: str, limit: int) -> str:
    """``text`` cut to about ``limit`` characters, saying how much was cut: for echoing what a
    client sent in an error message or a log line without letting it grow them."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text) - limit} more characters)"


def bounded(
    name: str,
    value: float,
    *,
    high: float,
    low: float = 0.0,
    low_open: bool = False,
    why: str = "",
) -> float:
    """``value`` when it is finite and within ``[low, high]`` (``(low, high]`` when
    ``low_open``); the one check every float a client sends goes through.

    Raises:
        InvalidArgument: NaN, an infinity or a value out of range; the message names
            ``name``, the value and the range (and ``why`` the bound exists, when given).
    """
    if not math.isfinite(value):
        raise InvalidArgument(f"{name} must be a finite number, got {value}")
    below = value <= low if low_open else value < low
    if below or value > high:
        opening = "(" if low_open else "["
        reason = f" ({why})" if why else ""
        raise InvalidArgument(f"{name} = {value:g} is outside {opening}{low:g}, {high:g}]{reason}")
    return value
