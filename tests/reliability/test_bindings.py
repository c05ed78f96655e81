"""Jobs with absurd binding tables, submitted by an unprivileged user: refused at admission,
and the device, its engines and every other user carry on."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import npud.client
from npud.client import DeviceHealth, JobSpec, JobState
from npud.devices.sim.wire import MAX_BINDINGS
from npud.isa import Program
from npud.testing.daemon import DaemonProcess
from tests.reliability.harness import NOBODY, Actor, own_daemon, record
from tests.reliability.leaks import assert_back, baseline

pytestmark = pytest.mark.slow


@pytest.fixture
def private() -> Iterator[DaemonProcess]:
    """A daemon of this test alone (a device lost here must not spill into other tests)."""
    with own_daemon("npud-bind-") as daemon:
        yield daemon


def _victim_job(npu: npud.client.Client) -> JobState:
    ctx = npu.create_context(label="victim")
    q = npu.create_queue(ctx)
    done = npu.wait(ctx, npu.submit(ctx, JobSpec(q, Program().burn(0.001).encode())), timeout_s=30)
    npu.destroy_context(ctx)
    return done.state


def test_too_many_bindings_are_refused_and_the_device_stays_up(
    private: DaemonProcess, tmp_path: Path
) -> None:
    """Another uid submits jobs binding 7,278 and 65,536 buffers (past the device's message and
    past its u16 count): each is INVALID_ARGUMENT naming the limit, the device stays OK with
    no job left running, a victim's job completes, and contexts, buffers and fds return to
    the baseline once the attacker leaves."""
    with npud.client.connect(private.socket) as root:
        base = baseline(private, root)
        attacker = Actor(private.socket, NOBODY)
        try:
            ctx = attacker.ok("create_context", label="binder")["context_id"]
            q = attacker.ok("create_queue", ctx)["queue_id"]
            buf = attacker.ok("create_buffer", ctx, 4096)["buffer_id"]
            replies = {
                n: attacker.submit(ctx, q, 0.001, bind=[[buf, "read"]] * n)
                for n in (MAX_BINDINGS + 1, 65_536)
            }
            at_limit = attacker.submit(ctx, q, 0.001, bind=[[buf, "read"]] * 16)
            assert at_limit["ok"], at_limit
            done = attacker.ok("wait", ctx, at_limit["value"]["job_id"], timeout_s=30)
            assert done["state"] == JobState.COMPLETED.value, done
        finally:
            attacker.close()
        device = root.devices()[0]
        assert device.health is DeviceHealth.OK, device
        assert _victim_job(root) is JobState.COMPLETED
        for n, reply in replies.items():
            assert reply.get("kind") == "InvalidArgument", f"{n} bindings: {reply}"
            assert f"at most {MAX_BINDINGS}" in reply["message"]
        assert root.stats().devices[0].states.get(JobState.RUNNING, 0) == 0
        assert_back(private, root, base)
    record("bindings_refused", sorted(replies))
