"""Choosing the next token: greedy, or sampled with temperature, top-k, top-p and a seed.

The device never sends a whole row of logits (49,152 floats for a real vocabulary) back per
step. A step that samples ends in TOPK instead of ARGMAX: the device sorts its logits and
returns the :data:`MAX_CANDIDATES` best (value, id) pairs, at most 512 bytes, and the host
draws from those. Greedy decoding needs only the best id, which ARGMAX writes on the device
itself (nothing is drawn on the host, and decode stays pipelined).

Sampling from the best 64 rather than the whole vocabulary is a truncation: ids outside them
are never drawn. At the temperatures sampling is used with (up to about 1.5) the probability
mass beyond the 64th logit of a trained model is small, and ``top_k``/``top_p`` cut deeper
than that in practice; the truncation is part of the contract (``top_k`` may not exceed 64).

The draw (why it is reproducible)
---------------------------------
Candidates arrive sorted by logit, highest first, ties broken by the lower id (the order
:func:`top_candidates` defines and the device's TOPK follows). The host keeps the first
``top_k``, divides by the temperature, takes the softmax in float64, keeps the smallest prefix
whose probability reaches ``top_p`` (at least one candidate), and inverts the cumulative
distribution at one uniform number from a :class:`numpy.random.Generator` seeded with
``seed`` (PCG64). The same seed, parameters and logits give the same ids on every machine;
each draw consumes exactly one uniform, so a sequence of draws is reproducible too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from npud.errors import InvalidArgument

MAX_CANDIDATES = 64
"""How many (logit, id) pairs a sampling step returns from the device; ``top_k``'s ceiling."""

MAX_TEMPERATURE = 100.0
"""The largest temperature accepted (beyond it the draw is uniform over the candidates)."""


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """How to pick each next token.

    ``temperature`` 0 is greedy (the default: the highest logit, ties to the lower id);
    ``top_k`` 0 means every candidate the device returns (:data:`MAX_CANDIDATES`);
    ``top_p`` 1.0 keeps the whole distribution; ``seed`` ``None`` draws fresh entropy.

    Raises:
        InvalidArgument: (on construction) a value outside its range, or not a number.
    """

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None

    def __post_init__(self) -> None:
        t, k, p = self.temperature, self.top_k, self.top_p
        if isinstance(t, bool) or not isinstance(t, int | float) or not math.isfinite(t):
            raise InvalidArgument(f"temperature must be a finite number, got {t!r}")
        if not 0.0 <= t <= MAX_TEMPERATURE:
            raise InvalidArgument(f"temperature must be within 0..{MAX_TEMPERATURE}, got {t}")
        if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= MAX_CANDIDATES:
            raise InvalidArgument(
                f"top_k must be an integer within 0..{MAX_CANDIDATES} (0: all {MAX_CANDIDATES} "
                f"candidates), got {k!r}"
            )
        if isinstance(p, bool) or not isinstance(p, int | float) or not 0.0 < p <= 1.0:
            raise InvalidArgument(f"top_p must be a number within (0, 1], got {p!r}")
        seed = self.seed
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
            raise InvalidArgument(f"seed must be a non-negative integer, got {seed!r}")

    @property
    def greedy(self) -> bool:
        """Whether this picks the highest logit (no draw, no candidates needed on the host)."""
        return self.temperature == 0.0 or self.top_k == 1

    @property
    def candidates(self) -> int:
        """How many top logits the device must return for one draw."""
        return self.top_k if self.top_k else MAX_CANDIDATES


GREEDY = SamplingParams()
"""The default: the highest logit at every step."""


def top_candidates(
    logits: npt.NDArray[np.floating], k: int
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int32]]:
    """The ``k`` highest logits of a row and their ids, highest first, ties to the lower id.

    The order the device's TOPK op produces; a host-side reference for it.

    Raises:
        InvalidArgument: ``logits`` is not one row, or ``k`` is not within 1..len(logits).
    """
    row = np.asarray(logits, dtype=np.float32)
    if row.ndim != 1 or not 0 < k <= row.size:
        raise InvalidArgument(f"top_candidates needs one row and 1 <= k <= its length, got {k}")
    order = np.lexsort((np.arange(row.size), -row))[:k]
    return row[order], order.astype(np.int32)


@dataclass(frozen=True, slots=True)
class SamplerStatistics:
    """What a sampler has done: draws made and the greedy shortcuts taken."""

    draws: int
    greedy: int


@dataclass(slots=True, eq=False)
class Sampler:
    """Draws next tokens for one sequence under fixed :class:`SamplingParams`.

    Owns its random generator (seeded from ``params.seed``): two samplers with the same seed
    draw the same ids from the same candidates.
    """

    params: SamplingParams = GREEDY
    _rng: np.random.Generator | None = None
    _draws: int = 0
    _greedy: int = 0

    def __post_init__(self) -> None:
        self._rng = np.random.default_rng(self.params.seed)

    def pick(self, values: npt.ArrayLike, ids: npt.ArrayLike) -> int:
        """The next id from candidates sorted as :func:`top_candidates` returns them.

        Raises:
            InvalidArgument: no candidates, values and ids of different lengths, or a
                non-finite highest logit.
        """
        v = np.asarray(values, dtype=np.float64).reshape(-1)
        i = np.asarray(ids, dtype=np.int64).reshape(-1)
        if v.size == 0 or v.size != i.size:
            raise InvalidArgument(
                f"sampling needs matching candidates, got {v.size} values, {i.size} ids"
            )
        if not math.isfinite(v[0]):
            raise InvalidArgument(f"the highest candidate logit is not finite: {v[0]}")
        p = self.params
        if p.greedy:
            self._greedy += 1
            return int(i[0])
        keep = min(p.candidates, v.size)
        scaled = v[:keep] / p.temperature
        probs = np.exp(scaled - scaled[0])  # candidates are sorted: [0] is the maximum
        probs[~np.isfinite(probs)] = 0.0
        probs /= probs.sum()
        if p.top_p < 1.0:
            cumulative = np.cumsum(probs)
            cut = int(np.searchsorted(cumulative, p.top_p, side="left")) + 1
            probs = probs[: max(1, min(cut, keep))]
            probs /= probs.sum()
        assert self._rng is not None
        u = float(self._rng.random())
        index = int(np.searchsorted(np.cumsum(probs), u, side="right"))
        self._draws += 1
        return int(i[min(index, probs.size - 1)])

    def pick_from_logits(self, logits: npt.NDArray[np.floating]) -> int:
        """The next id from a whole row of logits (host-side; tests and references).

        Raises:
            InvalidArgument: as :meth:`pick`, or ``logits`` is not one row.
        """
        k = min(self.params.candidates, int(np.asarray(logits).size))
        values, ids = top_candidates(logits, k)
        return self.pick(values, ids)

    def statistics(self) -> SamplerStatistics:
        """Draws made and greedy picks so far."""
        return SamplerStatistics(self._draws, self._greedy)
