"""The daemon as a process: systemd notify and watchdog, health, reflection, a client killed
with SIGKILL, and the SIGTERM drain."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

import npud.client
from npud.api.server import SERVICE_NAMES
from npud.client import ContextEvent, JobSpec, JobState, SchedulingClass
from npud.isa import Program
from npud.testing.daemon import DaemonProcess, start_daemon
from tests import ROOT

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    d = start_daemon(tmp_path_factory.mktemp("npud-daemon"))
    yield d
    assert d.stop() == 0


def test_ready_carries_a_status_naming_the_simulated_npu(daemon: DaemonProcess) -> None:
    """READY=1 arrives with STATUS= saying the NPU is simulated; the log says so too."""
    ready = next(m for m in daemon.messages if b"READY=1" in m)
    status = dict(line.split(b"=", 1) for line in ready.split(b"\n"))[b"STATUS"]
    assert b"SIMULATED" in status
    assert daemon.log_events("devices.simulated")


def test_health_serving_and_reflection_lists_every_service(daemon: DaemonProcess) -> None:
    """grpc.health.v1 answers SERVING; reflection lists every npud.v1 service."""
    with grpc.insecure_channel(f"unix:{daemon.socket}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for name in ("", *SERVICE_NAMES):
            resp = health.Check(health_pb2.HealthCheckRequest(service=name), timeout=10)
            assert resp.status == health_pb2.HealthCheckResponse.SERVING, name
        services = set(ProtoReflectionDescriptorDatabase(channel).get_services())
    assert set(SERVICE_NAMES) <= services
    assert "grpc.health.v1.Health" in services
    assert {
        "npud.v1.SystemService",
        "npud.v1.DeviceService",
        "npud.v1.ContextService",
        "npud.v1.BufferService",
        "npud.v1.JobService",
        "npud.v1.StatsService",
    } <= services


def test_socket_mode_and_identity_socket(daemon: DaemonProcess) -> None:
    """Both sockets exist with the configured mode; the identity socket names our uid/pid."""
    ident = Path(str(daemon.socket) + ".identity")
    assert daemon.socket.stat().st_mode & 0o777 == 0o666
    assert ident.stat().st_mode & 0o777 == 0o666
    me = npud.client.identity.handshake(daemon.socket)
    assert me.uid == os.getuid()
    assert me.pid == os.getpid()
    assert len(me.token) >= 32


def test_sigkilled_client_leaves_nothing_behind(daemon: DaemonProcess) -> None:
    """A client killed mid-job loses its contexts, queues and buffers within the grace
    period (statistics prove it), and another client's jobs complete."""
    with npud.client.connect(daemon.socket) as npu:
        mine = npu.create_context(label="survivor")
        q = npu.create_queue(mine, SchedulingClass.THROUGHPUT)
        keep = npu.create_buffer(mine, 1024)
        before = npu.stats().devices[0]
        victim = subprocess.Popen(
            [sys.executable, "-m", "tests.daemon.victim", str(daemon.socket)],
            stdout=subprocess.PIPE,
            cwd=str(ROOT),
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        assert victim.stdout is not None
        info = json.loads(victim.stdout.readline())
        during = npu.stats().devices[0]
        assert during.contexts == before.contexts + 1
        assert during.queues == before.queues + 1
        assert during.buffers > before.buffers
        events = npu.events(interval_s=0.5)
        burn = Program().burn(0.02).encode()
        ours = npu.submit_many(mine, [JobSpec(q, burn, timeout_s=5.0, kind="ours")] * 5)
        victim.send_signal(signal.SIGKILL)
        victim.wait(10)
        victim.stdout.close()
        killed_at = time.monotonic()
        gone_after = None
        for ev in events:
            if (
                isinstance(ev, ContextEvent)
                and ev.context_id == info["context"]
                and ev.change is not None
                and ev.change.value == "destroyed"
            ):
                gone_after = time.monotonic() - killed_at
                assert "session" in ev.reason
                break
            if time.monotonic() - killed_at > 20:
                break
        events.close()  # type: ignore[attr-defined]
        assert gone_after is not None, "the victim's context was never destroyed"
        print(f"victim's context destroyed {gone_after:.2f} s after SIGKILL")
        # session grace 0.5 s + close grace 2 s for its running job, plus slack
        assert gone_after < 8.0
        after = npu.stats().devices[0]
        assert after.contexts == before.contexts
        assert after.queues == before.queues
        assert after.buffers == before.buffers
        assert [c.context_id for c in npu.contexts() if c.label == "victim"] == []
        for job in ours:
            assert npu.wait(mine, job).state is JobState.COMPLETED
        npu.release_buffer(mine, keep)
        npu.destroy_context(mine)


def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path) -> None:
    """`systemd-analyze verify` accepts systemd/npud.service (ExecStart pointed at a stub)."""
    analyze = "/usr/bin/systemd-analyze"
    if not Path(analyze).exists():
        pytest.fail("systemd-analyze is missing: apt-get install -y systemd")
    unit = (ROOT / "systemd" / "npud.service").read_text()
    stub = tmp_path / "npud"
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    (tmp_path / "npud.service").write_text(unit.replace("/opt/npud/bin/npud", str(stub)))
    result = subprocess.run(
        [analyze, "verify", str(tmp_path / "npud.service")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "npud.service" not in result.stderr, result.stderr
    for needed in (
        "Type=notify",
        "WatchdogSec=",
        "Restart=on-failure",
        "RuntimeDirectory=npud",
        "StateDirectory=npud",
        "DevicePolicy=closed",
        "DeviceAllow=char-accel rw",
        "SupplementaryGroups=render",
        "ProtectSystem=strict",
    ):
        assert needed in unit, needed
    # and a broken unit is refused, so the check means something
    (tmp_path / "bad.service").write_text("[Service]\nType=bogus\nExecStart=relative\n")
    bad = subprocess.run(
        [analyze, "verify", str(tmp_path / "bad.service")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert bad.returncode != 0 or bad.stderr


def test_watchdog_pings_then_sigterm_drains(tmp_path: Path) -> None:
    """WATCHDOG=1 at half of WATCHDOG_USEC; on SIGTERM the jobs on the device complete (the
    running one and the one behind it), queued ones end CANCELLED with a reason, the exit
    status is 0 and the socket files are gone."""
    d = start_daemon(tmp_path / "d", watchdog_usec=200_000)  # ping every 0.1 s
    try:
        window_end = time.monotonic() + 1.0
        while time.monotonic() < window_end:
            d.receive(max(0.0, window_end - time.monotonic()))
        pings = sum(1 for m in d.messages if m == b"WATCHDOG=1")
        assert 3 <= pings <= 30, d.messages  # ~10 expected; loose on a shared machine
        with npud.client.connect(d.socket) as npu:
            ctx = npu.create_context(label="drain")
            q = npu.create_queue(ctx, SchedulingClass.LATENCY)
            # the running job outlasts the steps below by far: it is still running when the
            # waiter asks, whatever the host's speed
            burn = Program().burn(3.0).encode()
            jobs = npu.submit_many(ctx, [JobSpec(q, burn, timeout_s=10.0, kind="drain")] * 4)
            watch = npu.watch_jobs(ctx)
            first = jobs[0]
            if npu.job(ctx, first).state is not JobState.RUNNING:
                for ev in watch:
                    if ev.job_id == first.job_id and ev.state is JobState.RUNNING:
                        break
            watch.close()  # type: ignore[attr-defined]
            # the second follows the first onto its engine (on the device, behind it); the
            # last two are still queued in npud
            on_device = jobs[:2]
            assert npu.job(ctx, jobs[1]).state is JobState.RUNNING
            d.proc.send_signal(signal.SIGTERM)
            # STOPPING=1 comes as the drain begins: a WaitJob asked after it is served by a
            # draining daemon, and the running job it waits for still completes
            deadline = time.monotonic() + 30.0
            while not any(m.startswith(b"STOPPING=1") for m in d.messages):
                assert time.monotonic() < deadline, f"no STOPPING=1: {d.messages}"
                d.receive(max(0.0, deadline - time.monotonic()))
            assert npu.job(ctx, first).state is JobState.RUNNING
            done = npu.wait(ctx, first)
            assert done.state is JobState.COMPLETED, done
        status = d.proc.wait(30)
        assert status == 0, d.log()
        assert not d.socket.exists()
        assert not Path(str(d.socket) + ".identity").exists()
        finished = {e["job"]: e for e in d.log_events("job.finished")}
        for job in on_device:
            assert finished[job.job_id]["outcome"] == "completed"
        for job in jobs[2:]:
            rec = finished[job.job_id]
            assert rec["outcome"] == "cancelled"
            assert "shutting down" in rec["error"]
    finally:
        d.stop(signal.SIGKILL)


def test_a_second_sigterm_during_the_drain_aborts_running_jobs_and_exits(tmp_path: Path) -> None:
    """The first SIGTERM gives a running job the shutdown grace (here 300 s); a second one
    forces the stop: the job ends CANCELLED saying the grace ran out, and npud exits 0 long
    before the grace would have ended."""
    # a 600 s THROUGHPUT job: this operator raises the class's timeout ceiling for it
    d = start_daemon(
        tmp_path / "d",
        env={
            "NPUD_SHUTDOWN_GRACE_S": "300",
            "NPUD_LIMITS__THROUGHPUT_TIMEOUT_MAX_S": "900",
            "NPUD_SCHEDULER__TIME_SLICE_MS": "0",  # its 600 s THROUGHPUT job
        },
    )
    try:
        with npud.client.connect(d.socket) as npu:
            ctx = npu.create_context(label="force")
            q = npu.create_queue(ctx, SchedulingClass.THROUGHPUT)
            [job] = npu.submit_many(
                ctx, [JobSpec(q, Program().burn(600.0).encode(), timeout_s=900.0)]
            )
            watch = npu.watch_jobs(ctx)
            if npu.job(ctx, job).state is not JobState.RUNNING:
                for ev in watch:
                    if ev.job_id == job.job_id and ev.state is JobState.RUNNING:
                        break
            watch.close()  # type: ignore[attr-defined]
        d.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 60
        while not d.log_events("npud.draining") and time.monotonic() < deadline:
            d.receive(0.2)
        assert d.log_events("npud.draining"), d.log()
        assert d.proc.poll() is None  # draining: the job has 300 s to finish
        d.proc.send_signal(signal.SIGTERM)
        assert d.proc.wait(120) == 0, d.log()
        assert d.log_events("npud.forcing_stop")
        [rec] = [e for e in d.log_events("job.finished") if e["job"] == job.job_id]
        assert rec["outcome"] == "cancelled"
        assert "grace period ran out" in rec["error"]
    finally:
        d.stop(signal.SIGKILL)
