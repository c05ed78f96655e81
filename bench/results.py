"""Benchmark results: a metric beside its baseline and its goal, and the report they make.

A :class:`Metric` is one measured figure with the baseline it is compared with (measured in the
same run), their ratio, the goal in words and whether it was met. A :class:`BenchResult` is
what one benchmark returns: its metrics, the raw samples worth plotting, and notes saying how it
was measured. The runner turns a list of them into the table it prints and the JSON it writes.

A missed goal is a result, not an error: ``met`` is ``False`` and the run goes on. Only a
benchmark that fails to run (raises) makes the runner exit non-zero.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any


def percentile(samples: Sequence[float], q: float) -> float:
    """The ``q``-quantile (0..1) of ``samples`` by linear interpolation.

    Raises:
        ValueError: no samples.
    """
    if not samples:
        raise ValueError("percentile of no samples")
    ordered = sorted(samples)
    pos = q * (len(ordered) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


@dataclass(frozen=True, slots=True)
class Metric:
    """One figure beside its same-run baseline and its goal (a value object).

    Attributes:
        name: what was measured ("null job p99").
        value: the figure, in ``unit``.
        unit: "ms", "us", "%", "tok/s", "MB", "jobs/s", "x".
        baseline: the same quantity for the baseline (``None`` when the goal is absolute).
        baseline_label: what the baseline is ("grpc.aio echo", "fifo policy").
        goal: the goal in words ("<= 1.3x echo").
        met: whether the goal was met (``None``: informational, no goal).
        ratio: ``value / baseline`` unless given (``None`` without a baseline).
    """

    name: str
    value: float
    unit: str
    baseline: float | None = None
    baseline_label: str = ""
    goal: str = ""
    met: bool | None = None
    ratio: float | None = None

    def with_ratio(self) -> Metric:
        """This metric with ``ratio`` filled from value and baseline where it can be."""
        if self.ratio is not None or self.baseline is None or self.baseline == 0:
            return self
        return Metric(
            self.name,
            self.value,
            self.unit,
            self.baseline,
            self.baseline_label,
            self.goal,
            self.met,
            self.value / self.baseline,
        )

    def as_dict(self) -> dict[str, Any]:
        """The JSON form (``None`` stays ``null``)."""
        m = self.with_ratio()
        return {
            "name": m.name,
            "value": m.value,
            "unit": m.unit,
            "baseline": m.baseline,
            "baseline_label": m.baseline_label,
            "ratio": m.ratio,
            "goal": m.goal,
            "met": m.met,
        }


@dataclass(slots=True, eq=False)
class BenchResult:
    """What one benchmark produced (an identity object, filled while it runs).

    ``samples`` maps a series name to raw values (for CDF plots); ``notes`` says how the figures
    were measured and what limits them; ``error`` is set by the runner when it failed to run.
    """

    key: str
    title: str
    metrics: list[Metric] = field(default_factory=list)
    samples: dict[str, list[float]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    error: str | None = None

    def add(self, metric: Metric) -> Metric:
        """Record ``metric`` (with its ratio filled) and return it."""
        m = metric.with_ratio()
        self.metrics.append(m)
        return m

    def as_dict(self) -> dict[str, Any]:
        """The JSON form, raw samples included."""
        return {
            "key": self.key,
            "title": self.title,
            "seconds": round(self.seconds, 2),
            "error": self.error,
            "params": self.params,
            "notes": self.notes,
            "metrics": [m.as_dict() for m in self.metrics],
            "samples": self.samples,
        }


def at_most(limit: float) -> Callable[[float], bool]:
    """A goal check: the value must not exceed ``limit``."""
    return lambda v: v <= limit


def at_least(limit: float) -> Callable[[float], bool]:
    """A goal check: the value must reach ``limit``."""
    return lambda v: v >= limit


def _fmt(value: float | None, unit: str = "") -> str:
    if value is None:
        return "-"
    if value != 0 and (abs(value) >= 10_000 or abs(value) < 0.01):
        text = f"{value:,.0f}" if abs(value) >= 10_000 else f"{value:.2e}"
    elif abs(value) >= 100:
        text = f"{value:.0f}"
    else:
        text = f"{value:.3g}"
    return f"{text} {unit}".strip()


def _verdict(met: bool | None) -> str:
    return {True: "yes", False: "MISSED", None: "-"}[met]


def table_rows(results: Sequence[BenchResult]) -> list[tuple[str, ...]]:
    """The report as rows: benchmark, metric, value, baseline, ratio, goal, met?"""
    rows: list[tuple[str, ...]] = []
    for r in results:
        if r.error is not None:
            rows.append((r.key, "FAILED TO RUN", r.error.splitlines()[0][:60], "", "", "", "no"))
            continue
        for m in r.metrics:
            base = _fmt(m.baseline, m.unit)
            if m.baseline_label:
                base = f"{base} ({m.baseline_label})"
            ratio = "-" if m.ratio is None else f"{m.ratio:.3g}x"
            rows.append(
                (r.key, m.name, _fmt(m.value, m.unit), base, ratio, m.goal, _verdict(m.met))
            )
    return rows


HEADER = ("bench", "metric", "value", "baseline (same run)", "ratio", "goal", "met?")


def format_table(results: Sequence[BenchResult]) -> str:
    """A fixed-width text table for the terminal."""
    rows = [HEADER, *table_rows(results)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(HEADER))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(line.rstrip() for line in lines)


def markdown_table(results: Sequence[BenchResult]) -> str:
    """The same table in GitHub markdown (for docs/benchmarks.md)."""
    rows = table_rows(results)
    out = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    out += ["| " + " | ".join(cell.replace("|", "/") for cell in row) + " |" for row in rows]
    return "\n".join(out)
