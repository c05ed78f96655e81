"""A real npud on a temporary socket, a known workload on it, and npuctl run as a subprocess.

Readiness is the daemon's own ``READY=1`` on a ``NOTIFY_SOCKET`` this harness binds, as systemd
would do it: no sleeps. The workload is built through :mod:`npud.client` and kept open (its
session owns the contexts) for as long as the tests need it; every number the tests check
follows from it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import npud.client as nc
from npud.client import Access, Bind, BufferUsage, JobSpec, Persistence, SchedulingClass
from npud.errors import NpudError
from npud.isa.program import Program
from npud.isa.tensor import Tensor
from npud.testing.daemon import DaemonProcess, spawn_npud

ROOT = Path(__file__).resolve().parents[2]
BLOCKER_S = 600.0
"""A burn long enough to stay RUNNING for the whole test session (cancelled at teardown)."""


def start_daemon(tmp: Path, timeout_s: float = 300.0) -> DaemonProcess:
    """Start ``npud --device sim`` on ``tmp/npud.sock`` (in this environment, so an operator's
    ``NPUD_*`` settings reach it) and wait for READY=1; the caller stops it. ``timeout_s`` is a
    hang guard: under emulation a daemon's start takes over a minute.

    Raises:
        DaemonDied: it exited or was not ready within ``timeout_s`` (it is killed).
    """
    # the blocker is a LATENCY job longer than the default ceiling: this operator allows it
    env = dict(os.environ, NPUD_LIMITS__LATENCY_TIMEOUT_MAX_S=str(BLOCKER_S * 2))
    daemon = spawn_npud(tmp, env, log_stdout=False)
    try:
        daemon.wait_ready(timeout_s)
    except BaseException:
        daemon.stop(signal.SIGKILL, timeout=10)
        raise
    return daemon


def add_program() -> bytes:
    """``a += w`` over 16 float32 (slot 0 read-write, slot 1 read)."""
    t = Tensor(0, 0, (16,))
    return Program().add(t, t, Tensor(1, 0, (16,))).encode()


def burn(seconds: float) -> bytes:
    """Occupy one engine for ``seconds``."""
    return Program().burn(seconds).encode()


@dataclass
class Workload:
    """What the workload created, by role, so tests can name the objects they expect."""

    client: nc.Client
    pid: int
    decode_ctx: str = ""
    prefill_ctx: str = ""
    decode_q: str = ""
    prefill_q: str = ""
    background_q: str = ""
    state_buf: str = ""
    weights_buf: str = ""
    scratch_buf: str = ""
    decode_jobs: list[str] = field(default_factory=list)
    prefill_jobs: list[str] = field(default_factory=list)
    background_jobs: list[str] = field(default_factory=list)
    blocker: str = ""
    waiting: str = ""

    def close(self) -> None:
        """Abort the blocker and end the session (the daemon releases the contexts)."""
        if self.blocker:
            with contextlib.suppress(NpudError):
                self.client.cancel(self.decode_ctx, self.blocker)
        self.client.close()


WEIGHTS_KEY = "tiny-weights@1"
DECODE_STEPS = 3
PREFILL_CHUNKS = 4
BACKGROUND_JOBS = 2
PREFILL_S = 0.02


def run_workload(sock: Path) -> Workload:
    """Two contexts, three queues of three classes, finished jobs, a running one, a queued one.

    - ``decode`` (default LATENCY): a LATENCY queue; a STATE buffer and a PERSISTENT weights
      buffer; three decode steps run to completion; then a long burn that keeps running and a
      decode step that depends on it, queued.
    - ``prefill`` (default THROUGHPUT, weight 2): a THROUGHPUT queue with four finished prefill
      chunks and a BACKGROUND queue (priority 1) with two finished jobs; it opens the same
      persistent weights by key and holds a 4 KiB scratch buffer it never wrote.
    """
    client = nc.connect(sock)
    w = Workload(client=client, pid=os.getpid())
    try:
        dec = client.create_context(label="decode", default_class=SchedulingClass.LATENCY)
        pre = client.create_context(label="prefill", weight=2.0)
        w.decode_ctx, w.prefill_ctx = dec.context_id, pre.context_id
        w.decode_q = client.create_queue(dec, SchedulingClass.LATENCY, label="steps").queue_id
        w.prefill_q = client.create_queue(pre, SchedulingClass.THROUGHPUT, label="chunks").queue_id
        w.background_q = client.create_queue(
            pre, SchedulingClass.BACKGROUND, priority=1, label="idle"
        ).queue_id
        state = client.create_buffer(dec, 64, usage=BufferUsage.STATE)
        weights = client.create_buffer(
            dec, 64, usage=BufferUsage.WEIGHTS, persistence=Persistence.PERSISTENT, key=WEIGHTS_KEY
        )
        w.state_buf, w.weights_buf = state.buffer_id, weights.buffer_id
        client.write_buffer(dec, state, np.arange(16, dtype=np.float32).tobytes())
        client.write_buffer(dec, weights, np.ones(16, dtype=np.float32).tobytes())
        w.scratch_buf = client.create_buffer(pre, 4096).buffer_id
        client.open_persistent(pre, WEIGHTS_KEY)
        step = JobSpec(
            queue=w.decode_q,
            command=add_program(),
            bindings=(Bind(state, Access.READ_WRITE), Bind(weights)),
            kind="decode",
        )
        for _ in range(DECODE_STEPS):
            job = client.submit(dec, step)
            client.wait(dec, job)
            w.decode_jobs.append(job.job_id)
        for _ in range(PREFILL_CHUNKS):
            job = client.submit(
                pre, JobSpec(queue=w.prefill_q, command=burn(PREFILL_S), kind="prefill")
            )
            client.wait(pre, job)
            w.prefill_jobs.append(job.job_id)
        for _ in range(BACKGROUND_JOBS):
            spec = JobSpec(queue=w.background_q, command=burn(0.001), kind="compact")
            job = client.submit(pre, spec)
            client.wait(pre, job)
            w.background_jobs.append(job.job_id)
        blocker = client.submit(
            dec,
            JobSpec(queue=w.decode_q, command=burn(BLOCKER_S), kind="hog", timeout_s=BLOCKER_S * 2),
        )
        w.blocker = blocker.job_id
        # it waits for the blocker's completion in npud (QUEUED): without the dependency it
        # would follow the blocker onto its engine and be RUNNING behind it
        w.waiting = client.submit(dec, dataclasses.replace(step, depends_on=(blocker,))).job_id
        # The blocker must be on an engine before anyone looks: wait for RUNNING.
        deadline = time.monotonic() + 30
        while client.job(dec, blocker).state is not nc.JobState.RUNNING:
            if time.monotonic() > deadline:
                raise AssertionError("the blocker never started running")
            time.sleep(0.01)
        # Finished jobs' command buffers are freed just after their completion is reported;
        # wait until only the five the workload holds remain (state, weights, scratch and the
        # commands of the two live jobs) so memory figures are the same on every run.
        while _device_buffers(client) != LIVE_BUFFERS:
            if time.monotonic() > deadline:
                raise AssertionError(f"{_device_buffers(client)} buffers, not {LIVE_BUFFERS}")
            time.sleep(0.01)
    except BaseException:
        w.close()
        raise
    return w


LIVE_BUFFERS = 5


def _device_buffers(client: nc.Client) -> int:
    (dev,) = client.stats().devices
    return dev.buffers


def npuctl(
    *args: str,
    socket_path: Path | None = None,
    env: dict[str, str] | None = None,
    subprocess_: bool = False,
) -> subprocess.CompletedProcess[str]:
    """Run npuctl with ARGS (wide, non-terminal output) and capture its output and status.

    By default npuctl's ``main()`` runs in this process with stdout/stderr redirected and the
    environment set as a shell would (``$NPUD_SOCKET``, ``$COLUMNS``): the same code path as
    the command, without an interpreter start per call on a shared 2-core machine. With
    ``subprocess_`` it runs as ``python -m npud.cli``, a real separate process.
    """
    full_env = {"COLUMNS": "240", "NO_COLOR": "1", **(env or {})}
    if socket_path is not None:
        full_env["NPUD_SOCKET"] = str(socket_path)
    if subprocess_:
        child_env = {k: v for k, v in os.environ.items() if k != "NPUD_SOCKET"}
        child_env.update(full_env)
        return subprocess.run(
            [sys.executable, "-m", "npud.cli", *args],
            capture_output=True,
            text=True,
            env=child_env,
            cwd=ROOT,
            timeout=60,
            check=False,
        )
    return _in_process(list(args), full_env)


def _in_process(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    from npud.cli.main import main

    saved = dict(os.environ)
    os.environ.pop("NPUD_SOCKET", None)
    os.environ.update(env)
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(args)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


def npuctl_json(*args: str, socket_path: Path) -> Any:
    """Run ``npuctl ARGS -o json``; asserts exit 0 and returns the parsed document."""
    res = npuctl(*args, "-o", "json", socket_path=socket_path)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


# ---- golden tables --------------------------------------------------------------------------

_VOLATILE = (
    (re.compile(r"\b(ctx|q|job|buf)-[0-9a-f]{8,}"), r"\1-<id>"),
    (re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}\+00:00"), "<time>"),
    (re.compile(r"\(\d+\)"), "(<pid>)"),
    (re.compile(r"\d+ context\(s\), \d+ live job\(s\)"), "<n> context(s), <n> live job(s)"),
    (re.compile(r"[█░]{10}"), "<bar>"),
    (re.compile(r"\b\d+(\.\d+)?(e[-+]\d+)? s \("), "<n> s ("),
    (re.compile(r"\d+(\.\d+)?%"), "<pct>"),
    (re.compile(r"\b\d+(\.\d+)? (us|ms|s|min|h)\b"), "<t>"),
)


def normalise(text: str) -> str:
    """A table with its volatile columns (ids, pids, times, percentages) masked, widths ignored.

    Masking changes column widths, so runs of spaces and of rule characters collapse to one
    and trailing blanks go: what remains is the structure, the headers and every stable value.
    """
    out = []
    for raw in text.splitlines():
        line = raw
        for pattern, repl in _VOLATILE:
            line = pattern.sub(repl, line)
        line = re.sub(r"─+", "─", line)
        out.append(re.sub(r" +", " ", line).strip())
    while out and not out[-1]:
        out.pop()
    return "\n".join(out) + "\n"
