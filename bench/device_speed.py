"""Device speed: whether every leg of a comparison ran its steps on the same modelled board.

A comparison of two legs (decode through the daemon against the direct backend, npud against
fifo, a leg under load against one without) measures what differs between the legs only when
their jobs ran at the same device speed. On the simulated NPU that speed is not fixed by the
board alone: the cost model times each operand's bytes at the bandwidth of the tier its buffer
lives in, so a leg whose buffers npud placed in SRAM runs faster steps than a leg whose buffers
sit in DRAM, on the same board and the same slowdown. One P5 run compared a daemon leg whose
decode steps ran 77 ms (KV cache and scratch in lunar-lake's 8 MiB SRAM) with a direct leg at
100 ms (everything in DRAM) and reported the daemon 1.3x faster than in-process.

The figure compared is each leg's median *modelled* step time (``JobTimes.modelled_s``, from
the simulated board's cost model): it depends only on the program, the buffers' tiers and the
board (slowdown included), not on how loaded the host was, so legs at the same speed agree to
well within the tolerance and a placement or calibration difference stands out. The run time
observed carries the host's noise and is reported beside it, not judged.

:func:`check_same_speed` takes every leg's step times (and, where the run calibrated the board,
the step time it calibrated to) and says whether they all lie within :data:`TOLERANCE` of each
other.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

TOLERANCE = 0.05
"""How far apart (slowest / fastest - 1) the legs' median modelled step times may be.

Steps of one model on one board differ only by the attention's share, which grows with the
position (a few per cent over a short decode of the tiny model); a tier difference moves the
step by a quarter on lunar-lake."""

DRAM_ONLY_ENV = {"NPUD_RESIDENCY__SRAM_PLACEMENT": "false"}
"""A benchmark daemon's setting that keeps its buffers where the direct backend keeps them.

Why in DRAM: the direct backend (the in-process baseline) and the calibration
(``bench/decode.py``'s ``_modelled_step_s``) allocate every buffer in DRAM; npud's placement
policy would move the tiny model's KV cache, scratch and small weights into SRAM, where the
board runs them faster. A slowed board stands for a model as many times bigger, whose buffers
would not fit the SRAM; the tiny model's fitting is an artefact of the stand-in, not a speed the
bigger model would see."""


@dataclass(frozen=True, slots=True)
class LegSpeed:
    """One leg's device speed: how many steps it ran and their median modelled time (s)."""

    name: str
    steps: int
    step_s: float | None  # None: no step with a modelled time


@dataclass(frozen=True, slots=True)
class SpeedCheck:
    """Whether the legs of one comparison ran at the same device speed (a value object).

    ``reference_s`` is the step time the run calibrated the board to (``None``: none); it is
    held to the same tolerance as the legs. Legs without steps are named but not judged.
    """

    legs: tuple[LegSpeed, ...]
    reference_s: float | None
    tolerance: float

    def _figures(self) -> list[float]:
        got = [leg.step_s for leg in self.legs if leg.step_s is not None]
        return got + ([self.reference_s] if self.reference_s is not None else [])

    @property
    def slowest_s(self) -> float | None:
        """The longest median step among the legs and the reference (``None``: no figure)."""
        figures = self._figures()
        return max(figures) if figures else None

    @property
    def fastest_s(self) -> float | None:
        """The shortest median step among the legs and the reference (``None``: no figure)."""
        figures = self._figures()
        return min(figures) if figures else None

    @property
    def spread(self) -> float | None:
        """Slowest over fastest median step (1.0: identical); ``None`` with fewer than two
        figures to compare."""
        figures = self._figures()
        if len(figures) < 2:
            return None
        return max(figures) / min(figures)

    @property
    def ok(self) -> bool:
        """Whether at least two figures were compared and all lie within the tolerance."""
        spread = self.spread
        return spread is not None and spread <= 1.0 + self.tolerance

    def describe(self) -> str:
        """One line for a report: every leg's median step, the spread and the verdict."""
        legs = ", ".join(
            f"{leg.name} {leg.step_s * 1e3:.3g} ms" if leg.step_s is not None else f"{leg.name} -"
            for leg in self.legs
        )
        ref = "" if self.reference_s is None else f"; calibrated {self.reference_s * 1e3:.3g} ms"
        spread = self.spread
        if spread is None:
            verdict = "NOT CHECKED (fewer than two legs with steps)"
        elif self.ok:
            verdict = f"same speed (spread {spread:.3f}x <= {1 + self.tolerance:.2f}x)"
        else:
            verdict = f"DIFFERENT SPEEDS (spread {spread:.3f}x > {1 + self.tolerance:.2f}x)"
        return f"median modelled device step: {legs}{ref}: {verdict}"

    def as_dict(self) -> dict[str, Any]:
        """The JSON form (times in ms)."""
        return {
            "ok": self.ok,
            "tolerance": self.tolerance,
            "spread": self.spread,
            "reference_ms": None if self.reference_s is None else self.reference_s * 1e3,
            "legs": {
                leg.name: {
                    "steps": leg.steps,
                    "step_ms": None if leg.step_s is None else leg.step_s * 1e3,
                }
                for leg in self.legs
            },
            "text": self.describe(),
        }


def check_same_speed(
    steps: Mapping[str, Sequence[float]],
    *,
    reference_s: float | None = None,
    tolerance: float = TOLERANCE,
) -> SpeedCheck:
    """Compare the median step time of every leg in ``steps`` (leg name -> its steps' times, s).

    A time of 0 means the device modelled nothing for that step (hardware without a cost
    model); such steps are left out, and a leg left with none is named but not judged.

    Raises:
        ValueError: a time is negative or not finite, ``reference_s`` is not above 0, or
            ``tolerance`` is negative.
    """
    if not (math.isfinite(tolerance) and tolerance >= 0):
        raise ValueError(f"the tolerance must be a finite number >= 0, got {tolerance!r}")
    if reference_s is not None and not (math.isfinite(reference_s) and reference_s > 0):
        raise ValueError(f"the reference step must be a finite time above 0, got {reference_s!r}")
    legs: list[LegSpeed] = []
    for name, times in steps.items():
        bad = [t for t in times if not (math.isfinite(t) and t >= 0)]
        if bad:
            raise ValueError(f"leg {name!r} has step times that are not times: {bad[:3]!r}")
        modelled = [t for t in times if t > 0]
        legs.append(
            LegSpeed(name, len(modelled), statistics.median(modelled) if modelled else None)
        )
    return SpeedCheck(tuple(legs), reference_s, tolerance)
