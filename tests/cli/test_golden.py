"""npuctl's tables against golden files, with only the volatile columns masked.

Set ``NPUCTL_UPDATE_GOLDEN=1`` to rewrite the files from a run (then review the diff).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.cli.conftest import Live
from tests.cli.harness import normalise, npuctl

pytestmark = pytest.mark.slow

GOLDEN = Path(__file__).parent / "golden"

CASES = {
    "summary": (),
    "devices_list": ("devices", "list"),
    "contexts_list": ("contexts", "list"),
    "queues_list": ("queues", "list"),
    "jobs_list": ("jobs", "list"),
    "jobs_list_background": ("jobs", "list", "--class", "background"),
    "buffers_list": ("buffers", "list"),
    "queues_show": ("queues", "show", "{background_q}"),
    "jobs_show": ("jobs", "show", "{decode_job}"),
}


def _args(live: Live, args: tuple[str, ...]) -> list[str]:
    w = live.workload
    ids = {"background_q": w.background_q, "decode_job": w.decode_jobs[0]}
    return [a.format(**ids) for a in args]


@pytest.mark.parametrize("name", sorted(CASES))
def test_table_matches_golden(live: Live, name: str) -> None:
    """The table output equals tests/cli/golden/<name>.txt once ids, times and % are masked."""
    res = npuctl(*_args(live, CASES[name]), socket_path=live.socket)
    assert res.returncode == 0, res.stderr
    assert res.stderr == ""
    got = normalise(res.stdout)
    path = GOLDEN / f"{name}.txt"
    if os.environ.get("NPUCTL_UPDATE_GOLDEN"):
        path.write_text(got)
    assert got == path.read_text(), f"npuctl {' '.join(CASES[name])} differs from {path}"


def test_normalise_masks_only_volatile_values() -> None:
    """The mask hides ids, pids, times and percentages but keeps labels and counts."""
    line = "job-0123456789abcdef  ctx-00112233aabbccdd  root (4242)  decode  3  1.07 ms  15.4%"
    assert normalise(line) == "job-<id> ctx-<id> root (<pid>) decode 3 <t> <pct>\n"
