"""The figures users ask a decoder first: time to first token, inter-token latency, tokens/s.

Times come from the backend's clock: real time through the daemon, modelled time on a
simulated device driven by a :class:`~npud.clock.VirtualClock` (deterministic figures).
Percentiles are nearest-rank (the smallest sample at or above the requested fraction of the
samples), so p99 of fewer than 100 samples is the maximum: a conservative figure.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


def percentile(samples: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile of ``samples`` (``fraction`` in [0, 1]); NaN when empty."""
    if not samples:
        return math.nan
    ordered = sorted(samples)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


@dataclass(frozen=True, slots=True)
class GenerationStats:
    """Figures of one generation.

    ``ttft_s`` runs from the start of the request (prompt upload included) to the first
    generated token being known to the caller; ``inter_token_s`` are the gaps between later
    tokens; ``decode_tokens_per_s`` counts tokens after the first over the decode time.
    """

    prompt_tokens: int
    generated_tokens: int
    prefill_chunks: int
    ttft_s: float
    total_s: float
    inter_token_s: tuple[float, ...]

    @property
    def decode_s(self) -> float:
        """Time spent after the first token."""
        return sum(self.inter_token_s)

    @property
    def prefill_tokens_per_s(self) -> float:
        """Prompt tokens over the time to first token."""
        return self.prompt_tokens / self.ttft_s if self.ttft_s > 0 else math.inf

    @property
    def decode_tokens_per_s(self) -> float:
        """Decode steps per second after the first token (NaN with fewer than two tokens)."""
        if not self.inter_token_s:
            return math.nan
        return len(self.inter_token_s) / self.decode_s if self.decode_s > 0 else math.inf

    @property
    def itl_p50_s(self) -> float:
        """Median inter-token latency."""
        return percentile(self.inter_token_s, 0.50)

    @property
    def itl_p99_s(self) -> float:
        """99th-percentile inter-token latency (nearest rank)."""
        return percentile(self.inter_token_s, 0.99)

    def summary(self) -> str:
        """One line for a terminal."""
        return (
            f"prompt {self.prompt_tokens} tok in {self.prefill_chunks} chunk(s), "
            f"generated {self.generated_tokens} tok | TTFT {self.ttft_s * 1e3:.2f} ms | "
            f"decode {self.decode_tokens_per_s:.1f} tok/s | "
            f"inter-token p50 {self.itl_p50_s * 1e3:.2f} ms p99 {self.itl_p99_s * 1e3:.2f} ms"
        )
