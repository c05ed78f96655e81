"""Latency CDF plots for the benchmarks where a picture says more than a percentile.

Each plot is an empirical CDF of one benchmark's raw samples, one line per series (npud and its
baselines), drawn with matplotlib's Agg backend (no display needed) into a PNG. A CDF shows the
whole distribution at once: where the bulk sits, how long the tail is, and whether one series
is faster everywhere or only at the median.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from bench.results import BenchResult

# series key -> (legend label, colour); keys are BenchResult.samples names
_SERIES = {
    "npud_us": ("npud null job (daemon, SubmitStream)", "tab:blue"),
    "echo_us": ("grpc.aio echo (floor)", "tab:gray"),
    "npud_ref_us": ("npud, command in a pre-uploaded buffer", "tab:cyan"),
    "direct_us": ("direct device call (no daemon)", "tab:green"),
    "npud_wait_ms": ("npud policy", "tab:blue"),
    "fifo_wait_ms": ("fifo policy (raw driver order)", "tab:red"),
    "daemon_gap_ms": ("through the daemon", "tab:blue"),
    "direct_gap_ms": ("direct in-process (no daemon)", "tab:green"),
    "rk3588_npud_loaded_gap_ms": ("rk3588: 4 decoders + prefill, npud policy", "tab:purple"),
    "rk3588_fifo_loaded_gap_ms": ("rk3588: 4 decoders + prefill, fifo policy", "tab:red"),
    "lunar-lake_npud_loaded_gap_ms": ("lunar-lake: 4 decoders + prefill, npud", "tab:olive"),
    "lunar-lake_fifo_loaded_gap_ms": ("lunar-lake: 4 decoders + prefill, fifo", "tab:orange"),
}

_PLOTS = {
    "P1": ("bench-p1-overhead.png", "P1: null-job round trip", "round trip (us, log scale)", True),
    "P2": (
        "bench-p2-isolation.png",
        "P2: LATENCY queue wait under a THROUGHPUT flood",
        "queue wait (ms, log scale)",
        True,
    ),
    "P5": (
        "bench-p5-decode.png",
        "P5: inter-token gap: one decoder (unslowed); decoders beside a prefill (slowed)",
        "inter-token gap (ms, log scale)",
        True,
    ),
}


def _cdf(ax: object, values: Sequence[float], label: str, colour: str) -> None:
    ordered = sorted(values)
    n = len(ordered)
    ys = [(i + 1) / n for i in range(n)]
    ax.step(ordered, ys, where="post", label=f"{label} (n={n})", color=colour)  # type: ignore[attr-defined]


def draw(results: Sequence[BenchResult], out_dir: Path) -> list[Path]:
    """Draw a CDF for every benchmark that has one and produced samples.

    Returns the PNG files written (into ``out_dir``, created if missing; the caller owns them).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for r in results:
        spec = _PLOTS.get(r.key)
        if spec is None or r.error is not None or not r.samples:
            continue
        filename, title, xlabel, log_x = spec
        fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
        for key, values in r.samples.items():
            if values:
                label, colour = _SERIES.get(key, (key, None))
                _cdf(ax, [v for v in values if v > 0] if log_x else values, label, colour or "k")
        if log_x:
            ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("fraction of samples")
        ax.set_title(title)
        ax.axhline(0.99, color="0.7", linestyle=":", linewidth=1)
        ax.text(ax.get_xlim()[0], 0.99, " p99", va="bottom", fontsize=8, color="0.4")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(loc="lower right", fontsize=8)
        fig.tight_layout()
        path = out_dir / filename
        fig.savefig(path)
        plt.close(fig)
        written.append(path)
    return written
