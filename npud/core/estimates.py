"""Duration estimates per owner and job kind, for admission (deadlines, time slice) and fair
charging.

A job carries a kind tag ("decode", "prefill", ...). Each completion of a kind updates an
exponential moving average of its measured device time (the device's modelled time seeds it
where the device reports one, then measurements take over), and, where the device models its
cost, a second average of the modelled time. An estimate is only an estimate: it decides
admission and the cost charged ahead of completion, never a job's outcome.

Two uses, two numbers:

* :meth:`DurationEstimator.estimate` is the measured average: what a job of the kind really
  occupies the engine for. Fair-share charging and the in-flight work per engine use it.
* :meth:`DurationEstimator.admission` is what admission control (the time slice, deadlines)
  compares against limits: the measured average, capped at ``cap`` times the modelled average
  where the device models the kind (see "Why admission caps the measured estimate").
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from npud.core.owner import Account
from npud.devices.base import Completion

DEFAULT_MODEL_CAP = 2.0
"""Admission trusts measured times up to this multiple of the device's modelled time."""


@dataclass(frozen=True, slots=True)
class KindEstimate:
    """What is known of one kind: its average durations and how many samples made them.

    ``mean_s`` is the measured average; ``modelled_s`` the device's modelled average (``None``
    when the device has no cost model for it); ``owner_uid`` and ``tenant`` the account whose
    jobs made it (``owner_uid`` ``None`` for a prior every account starts from).
    """

    kind: str
    mean_s: float
    samples: int
    modelled_s: float | None = None
    owner_uid: int | None = None
    tenant: str | None = None


@dataclass(frozen=True, slots=True)
class AdmissionEstimate:
    """The duration admission control uses for a kind, and what it was based on."""

    seconds: float
    measured_s: float
    modelled_s: float | None

    @property
    def capped(self) -> bool:
        """Whether the measured average was cut down to the modelled cap."""
        return self.seconds < self.measured_s

    def describe(self) -> str:
        """How the estimate was made, for error messages ("measured average", ...)."""
        if self.capped and self.modelled_s is not None:
            return (
                f"measured average {self.measured_s * 1e3:.3f} ms, capped at a multiple of the "
                f"device's modelled {self.modelled_s * 1e3:.3f} ms"
            )
        return "measured average"


# ---- Why admission caps the measured estimate --------------------------------------------
#
# Admission refuses a throughput job estimated over the time slice (TimeSliceExceeded) and a
# job whose deadline its estimate cannot meet (DeadlineInfeasible). The estimate follows the
# measured run times, and a measured time includes whatever stalled the host while the job
# ran: under a loaded host the simulated NPU's 10 ms job measured ~160 ms (bench P2), so its
# kind's average crossed the 100 ms slice and npud refused jobs that the device itself
# models at a tenth of the slice. Measured times are still the better number where the
# device's model is optimistic, so neither number alone will do. Admission therefore takes
# the measured average but never more than ``cap`` (2 by default) times the modelled average:
# a device up to twice as slow as its model is believed, a measurement inflated beyond that
# is treated as host noise. Where the device has no cost model (real accel drivers report
# modelled 0), the measured average is used unchanged. Charging for fairness keeps the
# measured average: that is the engine time the job really took from others.
# -------------------------------------------------------------------------------------------


class DurationEstimator:
    """Per-kind exponential moving averages of measured (and modelled) device time."""

    __slots__ = ("_alpha", "_cap", "_kinds", "_models")

    def __init__(
        self,
        alpha: float = 0.2,
        priors: Mapping[str, float] | None = None,
        *,
        model_cap: float = DEFAULT_MODEL_CAP,
    ) -> None:
        self._alpha = alpha
        self._cap = model_cap
        self._kinds: dict[str, list[float]] = {}  # kind -> [mean, samples]
        self._models: dict[str, float] = {}  # kind -> modelled mean (devices with a model)
        for kind, value in (priors or {}).items():
            self._kinds[kind] = [value, 0.0]

    def estimate(self, kind: str) -> float | None:
        """The expected device time of a job of ``kind``, or ``None`` when nothing is known."""
        entry = self._kinds.get(kind)
        return None if entry is None else entry[0]

    def modelled(self, kind: str) -> float | None:
        """The device's modelled average for ``kind``, or ``None`` when it models none."""
        return self._models.get(kind)

    def admission_s(self, kind: str) -> float | None:
        """The seconds of :meth:`admission` alone (the submit hot path: no allocation)."""
        entry = self._kinds.get(kind)
        if entry is None:
            return None
        model = self._models.get(kind)
        return entry[0] if model is None else min(entry[0], self._cap * model)

    def admission(self, kind: str) -> AdmissionEstimate | None:
        """The duration admission control uses for ``kind`` (``None`` when nothing is known):
        the measured average, capped at ``model_cap`` times the modelled one where known."""
        entry = self._kinds.get(kind)
        if entry is None:
            return None
        measured = entry[0]
        model = self._models.get(kind)
        seconds = measured if model is None else min(measured, self._cap * model)
        return AdmissionEstimate(seconds, measured, model)

    def set_prior(self, kind: str, seconds: float) -> None:
        """Seed (or reset) the estimate of ``kind`` before any job of it has run."""
        self._kinds[kind] = [seconds, 0.0]
        self._models.pop(kind, None)

    def observe(self, kind: str, completion: Completion) -> None:
        """Fold one successful completion into its kind's averages."""
        modelled, measured = completion.modelled_s, completion.measured_s
        if not (math.isfinite(measured) and math.isfinite(modelled)) or min(measured, modelled) < 0:
            return  # a device reporting nonsense must not poison the kind's average
        sample = measured if measured > 0 else modelled
        if modelled > 0:
            model = self._models.get(kind)
            self._models[kind] = (
                modelled if model is None else model + self._alpha * (modelled - model)
            )
        entry = self._kinds.get(kind)
        if entry is None:
            # The first sample of a kind: the device's model is the prior, the measurement the
            # first correction, so a device with a good model starts close to the truth.
            prior = modelled if modelled > 0 else sample
            self._kinds[kind] = [prior + self._alpha * (sample - prior), 1.0]
            return
        entry[0] += self._alpha * (sample - entry[0])
        entry[1] += 1

    def forget(self, kind: str) -> None:
        """Drop what is known of ``kind``."""
        self._kinds.pop(kind, None)
        self._models.pop(kind, None)

    def __len__(self) -> int:
        return len(self._kinds)

    def kinds(self) -> list[str]:
        """The kinds known, oldest first (insertion order)."""
        return list(self._kinds)

    def touch(self, kind: str) -> None:
        """Make ``kind`` the most recently used (the last to be dropped for room)."""
        entry = self._kinds.pop(kind, None)
        if entry is not None:
            self._kinds[kind] = entry

    def seed(self, kind: str, mean_s: float, modelled_s: float | None) -> None:
        """Start ``kind`` from a known average (a prior), with no samples of its own."""
        self._kinds[kind] = [mean_s, 0.0]
        if modelled_s is not None:
            self._models[kind] = modelled_s

    def statistics(
        self, owner_uid: int | None = None, tenant: str | None = None
    ) -> tuple[KindEstimate, ...]:
        """A snapshot of every kind's estimate, sorted by kind."""
        return tuple(
            KindEstimate(kind, mean, int(samples), self._models.get(kind), owner_uid, tenant)
            for kind, (mean, samples) in sorted(self._kinds.items())
        )


# ---- Why estimates are kept per owner -------------------------------------------------------
#
# Admission refuses a job by its kind's estimate (the time slice, deadlines), and a kind is a
# name the client chooses. Shared between users, one user's 0.5 s jobs named "prefill" made
# another user's 20 ms "prefill" TimeSliceExceeded and its "decode" with a 50 ms deadline
# DeadlineInfeasible: a user could refuse another's work by naming its own jobs alike. Each
# account (uid, and tenant inside it) therefore has its own table; what one account runs never
# moves another's estimates.
# Priors (set by the operator or a test) are shared: every user starts a kind from them. A
# table holds at most ``max_kinds`` kinds; a new kind past that drops the least recently used
# one (which then starts again from the prior or the device's model), so a user inventing kinds
# costs the daemon bounded memory and forgets only its own history.
# ---------------------------------------------------------------------------------------------


class OwnerEstimates:
    """Duration estimates per account and kind, over shared priors (see the "why" above).

    The scheduler asks with the job's owner; every method of :class:`DurationEstimator` has
    its owner-scoped form here.
    """

    __slots__ = ("_alpha", "_cap", "_max_kinds", "_owners", "_priors")

    def __init__(
        self,
        alpha: float = 0.2,
        *,
        model_cap: float = DEFAULT_MODEL_CAP,
        max_kinds: int = 256,
    ) -> None:
        if max_kinds < 1:
            raise ValueError(f"max_kinds must be at least 1, got {max_kinds}")
        self._alpha = alpha
        self._cap = model_cap
        self._max_kinds = max_kinds
        self._priors = DurationEstimator(alpha, model_cap=model_cap)
        self._owners: dict[Account, DurationEstimator] = {}

    def _table(self, uid: Account, kind: str) -> DurationEstimator:
        """The table that answers for ``uid``'s ``kind``: its own, else the shared priors."""
        own = self._owners.get(uid)
        if own is not None and own.estimate(kind) is not None:
            return own
        return self._priors

    def estimate(self, uid: Account, kind: str) -> float | None:
        """``uid``'s measured average for ``kind`` (else the prior; ``None``: nothing known)."""
        return self._table(uid, kind).estimate(kind)

    def admission_s(self, uid: Account, kind: str) -> float | None:
        """What admission holds ``uid``'s ``kind`` to (see :meth:`DurationEstimator.admission`)."""
        return self._table(uid, kind).admission_s(kind)

    def admission(self, uid: Account, kind: str) -> AdmissionEstimate | None:
        """:meth:`admission_s` with what it was based on."""
        return self._table(uid, kind).admission(kind)

    def set_prior(self, kind: str, seconds: float) -> None:
        """Seed ``kind`` for every owner that has not measured it yet."""
        self._priors.set_prior(kind, seconds)

    def observe(self, uid: Account, kind: str, completion: Completion) -> None:
        """Fold one of ``uid``'s completions into ``uid``'s average for ``kind``."""
        own = self._owners.get(uid)
        if own is None:
            own = self._owners[uid] = DurationEstimator(self._alpha, model_cap=self._cap)
        if own.estimate(kind) is None:
            while len(own) >= self._max_kinds:
                own.forget(own.kinds()[0])
            prior = self._priors.estimate(kind)
            if prior is not None:
                own.seed(kind, prior, self._priors.modelled(kind))
        else:
            own.touch(kind)
        own.observe(kind, completion)

    def kinds_of(self, uid: Account) -> int:
        """How many kinds ``uid``'s table holds."""
        own = self._owners.get(uid)
        return 0 if own is None else len(own)

    def statistics(self) -> tuple[KindEstimate, ...]:
        """Every prior, then every owner's kinds (by uid, then kind)."""
        out = list(self._priors.statistics())
        for uid, tenant in sorted(self._owners, key=lambda a: (a[0], a[1] or "")):
            out.extend(self._owners[uid, tenant].statistics(uid, tenant))
        return tuple(out)
