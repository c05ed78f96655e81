"""``npuctl top`` in a pseudo-terminal: it shows the workload, follows new jobs, quits cleanly.

The pty comes from util-linux ``script`` started with :mod:`subprocess`, and pexpect reads it
through ``fdspawn``: pexpect's own ``spawn`` forks this process, which holds live gRPC threads
(the workload's client), and a forked gRPC child can die before it execs.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pexpect
import pytest
from pexpect import fdpexpect

from npud.cli.exit_codes import ExitCode
from npud.client import JobSpec
from tests.cli.conftest import Live
from tests.cli.harness import ROOT, burn, npuctl, start_daemon

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("script") is None, reason="needs util-linux script"),
]

ALT_SCREEN_OFF = "\x1b[?1049l"
SHOW_CURSOR = "\x1b[?25h"


class Pty:
    """A command in a 50x200 pseudo-terminal: ``child`` expects on its output, keys go in."""

    def __init__(self, command: str, env: dict[str, str]) -> None:
        # The shell traps SIGINT (its children still get the default) so that Ctrl-C reaches
        # npuctl and the shell survives to report its status and the tty settings after it.
        inner = f"stty rows 50 cols 200; trap true INT; {command}; echo EXIT=$?; stty -a"
        self.proc = subprocess.Popen(
            ["script", "-qfec", inner, "/dev/null"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=ROOT,
        )
        assert self.proc.stdout is not None
        self.child = fdpexpect.fdspawn(self.proc.stdout.fileno(), encoding="utf-8", timeout=30)

    def send(self, keys: str) -> None:
        """Type ``keys`` into the terminal."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(keys.encode())
        self.proc.stdin.flush()

    def sendintr(self) -> None:
        """Press Ctrl-C (the terminal turns it into SIGINT for the foreground job)."""
        self.send("\x03")

    def expect(self, pattern: object) -> int:
        """Wait for ``pattern`` in the output (pexpect semantics)."""
        return self.child.expect(pattern)

    def close(self) -> None:
        """Stop the terminal and everything in it."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                stream.close()


def spawn_top(socket_path: Path, *extra: str) -> Pty:
    """npuctl top in a pty, followed by its exit status and the terminal's settings."""
    argv = [sys.executable, "-m", "npud.cli", "top", "--interval", "0.3", *extra]
    env = {**os.environ, "NPUD_SOCKET": str(socket_path), "TERM": "xterm-256color"}
    env.pop("COLUMNS", None)
    env.pop("LINES", None)
    return Pty(shlex.join(argv), env)


def wait_streaming(child: Pty) -> None:
    """Until the view has drawn at least one snapshot from the stream."""
    child.expect(r"[1-9]\d* snapshots")


def assert_clean_exit(pty: Pty) -> str:
    """The view exited 0, left the alternate screen, showed the cursor, restored the tty."""
    pty.expect(r"EXIT=(\d+)")
    before = pty.child.before
    status = pty.child.match.group(1)
    pty.expect(pexpect.EOF)
    stty = pty.child.before
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
    child = spawn_top(busy.socket)
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
        child.close()


def test_top_exits_cleanly_on_ctrl_c(busy: Live) -> None:
    """Ctrl-C ends top with status 0 and the terminal restored."""
    child = spawn_top(busy.socket)
    try:
        wait_streaming(child)
        child.sendintr()
        assert_clean_exit(child)
    finally:
        child.close()


def test_top_stops_after_n_snapshots(busy: Live) -> None:
    """-n N ends the view by itself after N snapshots (for captures and smoke tests)."""
    child = spawn_top(busy.socket, "-n", "2")
    try:
        out = assert_clean_exit(child)
        assert "2 snapshots" in out
    finally:
        child.close()


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


def test_top_reports_a_daemon_that_goes_away(tmp_path: Path) -> None:
    """The daemon stops under top: the view closes, the tty is restored, status 3 with a line."""
    daemon = start_daemon(tmp_path / "npud")
    try:
        child = spawn_top(daemon.socket)
        try:
            wait_streaming(child)
            daemon.stop()
            child.expect(r"EXIT=(\d+)")
            before, status = child.child.before, child.child.match.group(1)
            child.expect(pexpect.EOF)
            assert status == str(int(ExitCode.CANNOT_CONNECT)), before[-2000:]
            assert ALT_SCREEN_OFF in before
            assert "npuctl: " in before.split(ALT_SCREEN_OFF)[-1]
            assert "-icanon" not in child.child.before
        finally:
            child.close()
    finally:
        daemon.stop()
