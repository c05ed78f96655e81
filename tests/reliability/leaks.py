"""Leak checks: a daemon's contexts, buffers and open fds return to a baseline after a test.

The baseline is taken once the daemon has served a first client end to end (grpc opens its
epoll and timer fds lazily). Afterwards a test's clients close; the daemon destroys their
contexts when the session grace period (0.5 s in the harness) ends, so :func:`assert_back`
polls the daemon's own figures until they match, up to a bound, instead of sleeping a guess.
Warm-pool buffers (persistent buffers nobody holds, kept resident by design) are not leaks
and are left out of the buffer count.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import npud.client
from npud.isa import Program
from npud.testing.daemon import DaemonProcess
from tests.reliability.harness import fd_count


@dataclass(frozen=True, slots=True)
class Baseline:
    """What the daemon holds when idle (besides the measuring client's own session)."""

    contexts: int
    buffers: int
    fds: int


def _held(client: npud.client.Client) -> tuple[int, int]:
    dev = client.stats().devices[0]
    return dev.contexts, dev.buffers - dev.warm_buffers


def _warm_up(daemon: DaemonProcess) -> None:
    with npud.client.connect(daemon.socket) as client:
        ctx = client.create_context(label="warm-up")
        q = client.create_queue(ctx)
        job = client.submit(ctx, npud.client.JobSpec(q, Program().burn(0.001).encode()))
        client.wait(ctx, job)
        client.destroy_context(ctx)


def baseline(daemon: DaemonProcess, client: npud.client.Client) -> Baseline:
    """Warm the daemon up, wait until it is idle, and measure it."""
    _warm_up(daemon)
    contexts, buffers = _settle(client, want=None)
    return Baseline(contexts, buffers, fd_count(daemon.proc.pid))


def _settle(client: npud.client.Client, want: tuple[int, int] | None) -> tuple[int, int]:
    deadline = time.monotonic() + 10.0
    held = _held(client)
    while time.monotonic() < deadline:
        if want is not None and held == want:
            return held
        time.sleep(0.1)
        new = _held(client)
        if want is None and new == held:
            return held
        held = new
    return held


def assert_back(daemon: DaemonProcess, client: npud.client.Client, base: Baseline) -> Baseline:
    """Wait (bounded) until contexts, buffers and fds are back at ``base``; return the figures.

    Raises:
        AssertionError: something stayed above the baseline.
    """
    contexts, buffers = _settle(client, want=(base.contexts, base.buffers))
    fds = fd_count(daemon.proc.pid)
    deadline = time.monotonic() + 10.0
    while fds != base.fds and time.monotonic() < deadline:
        time.sleep(0.1)
        fds = fd_count(daemon.proc.pid)
    now = Baseline(contexts, buffers, fds)
    assert now == base, f"daemon did not return to its baseline: {now} != {base}"
    return now


def difference(after: Baseline, base: Baseline) -> dict[str, int]:
    """What is held now beyond ``base``, per resource (for the figures file)."""
    return {
        "contexts": after.contexts - base.contexts,
        "buffers": after.buffers - base.buffers,
        "fds": after.fds - base.fds,
    }
