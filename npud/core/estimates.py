"""Duration estimates per job kind, for admission (deadlines, time slice) and fair charging.

A job carries a kind tag ("decode", "prefill", ...). Each completion of a kind updates an
exponential moving average of its measured device time (the device's modelled time seeds it
where the device reports one, then measurements take over). An estimate is only an estimate:
it decides admission and the cost charged ahead of completion, never a job's outcome.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from npud.devices.base import Completion


@dataclass(frozen=True, slots=True)
class KindEstimate:
    """What is known of one kind: its average duration and how many samples made it."""

    kind: str
    mean_s: float
    samples: int


class DurationEstimator:
    """Per-kind exponential moving averages of device time."""

    __slots__ = ("_alpha", "_kinds")

    def __init__(self, alpha: float = 0.2, priors: Mapping[str, float] | None = None) -> None:
        self._alpha = alpha
        self._kinds: dict[str, list[float]] = {}  # kind -> [mean, samples]
        for kind, value in (priors or {}).items():
            self._kinds[kind] = [value, 0.0]

    def estimate(self, kind: str) -> float | None:
        """The expected device time of a job of ``kind``, or ``None`` when nothing is known."""
        entry = self._kinds.get(kind)
        return None if entry is None else entry[0]

    def set_prior(self, kind: str, seconds: float) -> None:
        """Seed (or reset) the estimate of ``kind`` before any job of it has run."""
        self._kinds[kind] = [seconds, 0.0]

    def observe(self, kind: str, completion: Completion) -> None:
        """Fold one successful completion into its kind's average."""
        sample = completion.measured_s if completion.measured_s > 0 else completion.modelled_s
        entry = self._kinds.get(kind)
        if entry is None:
            # The first sample of a kind: the device's model is the prior, the measurement the
            # first correction, so a device with a good model starts close to the truth.
            prior = completion.modelled_s if completion.modelled_s > 0 else sample
            self._kinds[kind] = [prior + self._alpha * (sample - prior), 1.0]
            return
        entry[0] += self._alpha * (sample - entry[0])
        entry[1] += 1

    def forget(self, kind: str) -> None:
        """Drop what is known of ``kind``."""
        self._kinds.pop(kind, None)

    def statistics(self) -> tuple[KindEstimate, ...]:
        """A snapshot of every kind's estimate, sorted by kind."""
        return tuple(
            KindEstimate(kind, mean, int(samples))
            for kind, (mean, samples) in sorted(self._kinds.items())
        )
