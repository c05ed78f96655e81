"""The simulated NPU: a device model that executes the npud command stream for real (numpy).

:class:`SimDevice` implements the Device contract on a board profile (:data:`PROFILES`);
:func:`estimate` is its cost model as a pure function. See ``docs/sim.md``.
"""

from npud.devices.sim.cost import OpCost, estimate, op_cost
from npud.devices.sim.device import SimDevice
from npud.devices.sim.job import JobOutcome, run_job
from npud.devices.sim.profiles import (
    LUNAR_LAKE,
    PROFILES,
    RK3588,
    STRIX_POINT,
    BoardProfile,
    get_profile,
)

__all__ = [
    "LUNAR_LAKE",
    "PROFILES",
    "RK3588",
    "STRIX_POINT",
    "BoardProfile",
    "JobOutcome",
    "OpCost",
    "SimDevice",
    "estimate",
    "get_profile",
    "op_cost",
    "run_job",
]
