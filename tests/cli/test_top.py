"""``npuctl top`` in a pseudo-terminal: it shows the workload, follows new jobs, quits cleanly."""

from __future__ import annotations

import json
import os
import sys

import pexpect
import pytest

from npud.client import JobSpec
from tests.cli.conftest import Live
from tests.cli.harness import ROOT, burn, npuctl

pytestmark = pytest.mark.slow

ALT_SCREEN_OFF = "\x1b[?1049l"
SHOW_CURSOR = "\x1b[?25h"


def spawn_top(live: Live, *extra: str) -> pexpect.spawn:
    """npuctl top in a 50x200 pty, followed by the terminal's settings once it has exited."""
    cmd = " ".join([sys.executable, "-m", "npud.cli", "top", "--interval", "0.3", *extra])
    env = {**os.environ, "NPUD_SOCKET": str(live.socket), "TERM": "xterm-256color"}
    env.pop("COLUMNS", None)
    env.pop("LINES", None)
    return pexpect.spawn(
        "/bin/sh",
        # The shell traps SIGINT (its children still get the default) so that Ctrl-C reaches
        # npuctl and the shell survives to report its status and the tty settings.
        ["-c", f"trap true INT; {cmd}; echo EXIT=$?; stty -a"],
        env=env,
        cwd=str(ROOT),
        dimensions=(50, 200),
        encoding="utf-8",
        timeout=30,
    )


def wait_streaming(child: pexpect.spawn) -> None:
    """Until the view has drawn at least one snapshot from the stream."""
    child.expect(r"[1-9]\d* snapshots")


def assert_clean_exit(child: pexpect.spawn) -> str:
    """The view exited 0, left the alternate screen, showed the cursor, restored the tty."""
    child.expect(r"EXIT=(\d+)")
    before = child.before
    status = child.match.group(1)
    child.expect(pexpect.EOF)
    stty = child.before
    assert status == "0", before[-2000:]
    assert ALT_SCREEN_OFF in before
    assert SHOW_CURSOR in before
    # cbreak mode is undone: canonical input and echo are back on.
    assert "-icanon" not in stty
    assert " icanon" in stty
    assert "-echo " not in stty
    return before


def test_top_shows_live_jobs_and_follows_new_ones_then_quits_on_q(busy: Live) -> None:
    """top lists the running hog, shows a job submitted while it runs, and exits on q."""
    w = busy.workload
    child = spawn_top(busy)
    try:
        wait_streaming(child)
        child.expect(w.blocker)  # the live jobs, listed once at start
        job = w.client.submit(
            w.prefill_ctx, JobSpec(queue=w.prefill_q, command=burn(0.01), kind="topcheck")
        )
        w.client.wait(w.prefill_ctx, job)
        child.expect(job.job_id)  # arrived through the event stream
        child.expect(r"topcheck\s+completed")
        child.expect(r"([2-9]|\d\d+) snapshots")  # and the statistics keep coming
        child.send("q")
        assert_clean_exit(child)
    finally:
        child.close(force=True)


def test_top_exits_cleanly_on_ctrl_c(busy: Live) -> None:
    """Ctrl-C ends top with status 0 and the terminal restored."""
    child = spawn_top(busy)
    try:
        wait_streaming(child)
        child.sendintr()
        assert_clean_exit(child)
    finally:
        child.close(force=True)


def test_top_stops_after_n_snapshots(busy: Live) -> None:
    """-n N ends the view by itself after N snapshots (for captures and smoke tests)."""
    child = spawn_top(busy, "-n", "2")
    try:
        out = assert_clean_exit(child)
        assert "2 snapshots" in out
    finally:
        child.close(force=True)


def test_top_json_streams_events_as_json_lines(busy: Live) -> None:
    """top -o json prints each stream message as one JSON line: snapshots and job events."""
    res = npuctl("top", "-o", "json", "-n", "2", "--interval", "0.2", socket_path=busy.socket)
    assert res.returncode == 0, res.stderr
    events = [json.loads(line) for line in res.stdout.splitlines()]
    kinds = [next(iter(e)) for e in events]
    assert kinds[0] == "stats"
    assert kinds.count("stats") == 2
    assert events[0]["stats"]["devices"][0]["device"] == "sim0"


def test_top_refuses_to_draw_without_a_terminal(busy: Live) -> None:
    """Piped, top says to use -o json or -l and exits with the usage status."""
    res = npuctl("top", socket_path=busy.socket)
    assert res.returncode == 2
    assert "needs a terminal" in res.stderr
