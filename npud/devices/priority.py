"""Native priorities: how npud's scheduling classes land on what each kernel driver offers.

npud schedules in three classes (LATENCY, THROUGHPUT, BACKGROUND; see ``docs/design.md``). Core
turns a class into a *native level* ``0..native_priorities-1`` (0 most urgent) through
:func:`level_for_class`, and an adapter turns the level into the value its UAPI expects through a
:class:`PriorityMap`. The maps are data, one per driver, with the UAPI constant each level becomes:

========  ==========================================  ================================
driver    native levels (0 first)                      where the value goes
========  ==========================================  ================================
ivpu      REALTIME(4) FOCUS(3) NORMAL(2) IDLE(1)       ``drm_ivpu_cmdq_create.priority``
amdxdna   REALTIME(0x100) HIGH(0x180) NORMAL(0x200)    ``amdxdna_qos_info.priority`` at
          LOW(0x280)                                   ``CREATE_HWCTX``
rocket    one level (every fd runs at the fixed        nowhere: ordering happens in npud
          DRM_SCHED_PRIORITY_NORMAL)
ethosu    one level                                    nowhere
qaic      one level (no priority in the UAPI)          nowhere
etnaviv   one level (no priority in the UAPI)          nowhere
rknpu     one level (``rknpu_submit.priority`` exists  ``rknpu_submit.priority`` = 0
          but the driver's job queues never read it)
========  ==========================================  ================================

ivpu's ``DRM_IVPU_JOB_PRIORITY_DEFAULT`` (0) is never used: it lets the driver pick, which is
exactly the decision npud exists to make. ivpu's command-queue ``TURBO`` flag (higher clocks at
higher power) is attached to the most urgent level only, so decode steps get it and prefills do
not.

This module is pure data and arithmetic; it imports nothing from core (core passes the class by
its string value).
"""

from __future__ import annotations

from dataclasses import dataclass

from npud.errors import InvalidArgument

# ivpu_accel.h: DRM_IVPU_JOB_PRIORITY_*, DRM_IVPU_CMDQ_FLAG_TURBO
IVPU_JOB_PRIORITY_IDLE = 1
IVPU_JOB_PRIORITY_NORMAL = 2
IVPU_JOB_PRIORITY_FOCUS = 3
IVPU_JOB_PRIORITY_REALTIME = 4
IVPU_CMDQ_FLAG_TURBO = 0x1

# amdxdna_accel.h: AMDXDNA_QOS_*_PRIORITY (a lower value is more urgent)
AMDXDNA_QOS_REALTIME_PRIORITY = 0x100
AMDXDNA_QOS_HIGH_PRIORITY = 0x180
AMDXDNA_QOS_NORMAL_PRIORITY = 0x200
AMDXDNA_QOS_LOW_PRIORITY = 0x280

LATENCY = "latency"
THROUGHPUT = "throughput"
BACKGROUND = "background"
CLASSES = (LATENCY, THROUGHPUT, BACKGROUND)


@dataclass(frozen=True, slots=True)
class PriorityMap:
    """One driver's native levels: ``values[level]`` is the UAPI value of level ``level``.

    ``names`` are the UAPI constant names, for logs and ``npuctl``. ``turbo_levels`` are the
    levels that also ask the driver for its low-latency/high-clock mode where it has one.
    """

    driver: str
    values: tuple[int, ...]
    names: tuple[str, ...]
    turbo_levels: frozenset[int] = frozenset()

    @property
    def levels(self) -> int:
        """How many native levels the driver offers (1 = no native priority)."""
        return len(self.values)

    def value(self, level: int) -> int:
        """The UAPI value for native ``level``.

        Raises:
            InvalidArgument: ``level`` is outside ``range(self.levels)``.
        """
        if not 0 <= level < len(self.values):
            raise InvalidArgument(
                f"{self.driver}: native priority level {level} is out of range "
                f"0..{len(self.values) - 1}"
            )
        return self.values[level]

    def turbo(self, level: int) -> bool:
        """Whether submissions at ``level`` ask for the driver's turbo mode."""
        return level in self.turbo_levels


IVPU = PriorityMap(
    driver="ivpu",
    values=(
        IVPU_JOB_PRIORITY_REALTIME,
        IVPU_JOB_PRIORITY_FOCUS,
        IVPU_JOB_PRIORITY_NORMAL,
        IVPU_JOB_PRIORITY_IDLE,
    ),
    names=(
        "DRM_IVPU_JOB_PRIORITY_REALTIME",
        "DRM_IVPU_JOB_PRIORITY_FOCUS",
        "DRM_IVPU_JOB_PRIORITY_NORMAL",
        "DRM_IVPU_JOB_PRIORITY_IDLE",
    ),
    turbo_levels=frozenset({0}),
)

AMDXDNA = PriorityMap(
    driver="amdxdna",
    values=(
        AMDXDNA_QOS_REALTIME_PRIORITY,
        AMDXDNA_QOS_HIGH_PRIORITY,
        AMDXDNA_QOS_NORMAL_PRIORITY,
        AMDXDNA_QOS_LOW_PRIORITY,
    ),
    names=(
        "AMDXDNA_QOS_REALTIME_PRIORITY",
        "AMDXDNA_QOS_HIGH_PRIORITY",
        "AMDXDNA_QOS_NORMAL_PRIORITY",
        "AMDXDNA_QOS_LOW_PRIORITY",
    ),
)


def single_level(driver: str) -> PriorityMap:
    """The map of a driver without native priorities: one level, value 0."""
    return PriorityMap(driver=driver, values=(0,), names=("(none: ordering happens in npud)",))


ROCKET = single_level("rocket")
ETHOSU = single_level("ethosu")
QAIC = single_level("qaic")
ETNAVIV = single_level("etnaviv")
RKNPU = single_level("rknpu")

MAPS: dict[str, PriorityMap] = {
    m.driver: m for m in (IVPU, AMDXDNA, ROCKET, ETHOSU, QAIC, ETNAVIV, RKNPU)
}


# Why these class -> level choices
# --------------------------------
# With four levels, LATENCY takes the top (REALTIME: the firmware preempts for it on ivpu with
# HWS, and amdxdna's solver gives it its own partition first), THROUGHPUT takes NORMAL (the
# level every other process on the machine gets by default, so npud's bulk work does not starve
# foreign clients), and BACKGROUND takes the bottom (IDLE/LOW). Level 1 (FOCUS/HIGH) is left for
# latency work whose queue priority within the class is below the top, so two latency tiers can
# still be told apart by the hardware. With fewer levels the classes fold upwards: two levels put
# THROUGHPUT and BACKGROUND together at the bottom; one level puts everything at 0.
_FOUR_LEVEL_CLASS = {LATENCY: 0, THROUGHPUT: 2, BACKGROUND: 3}


def level_for_class(sched_class: str, levels: int, *, within_class: int = 0) -> int:
    """The native level for an npud scheduling class on a device with ``levels`` levels.

    ``within_class`` > 0 marks latency work below the top of its class (it lands on level 1
    where the device has four levels); it does not move the other classes.

    Raises:
        InvalidArgument: unknown class, or ``levels`` < 1.
    """
    if sched_class not in CLASSES:
        raise InvalidArgument(
            f"unknown scheduling class {sched_class!r}; expected one of {CLASSES}"
        )
    if levels < 1:
        raise InvalidArgument(f"a device offers at least one priority level, not {levels}")
    if levels == 1:
        return 0
    if levels >= 4:
        level = _FOUR_LEVEL_CLASS[sched_class]
        if sched_class == LATENCY and within_class > 0:
            level = 1
        return min(level, levels - 1)
    if levels == 2:
        return 0 if sched_class == LATENCY else 1
    # three levels: one each
    return CLASSES.index(sched_class)
