"""The daemon serving NPUs behind DRM render nodes: a fake etnaviv (VIPNano beside a GPU) and a
fake vendor rknpu (RK3588, three cores, SRAM), over gRPC, with ``npuctl devices list``; and a
render node unplugged under load fails exactly its own jobs.

The daemon runs in this process over a fake machine (the real adapters on the fake kernels with
the stand-in firmware, which computes the jobs); clients are the asyncio client library on the
daemon's real socket, and npuctl's own ``main`` (run on a worker thread, since the daemon shares
this thread's loop).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import npud.client.aio
from npud.client import JobSpec, JobState
from npud.daemon.hotplug import QueuedEvents
from npud.isa import Program
from tests.cli.harness import npuctl
from tests.daemon.fakenodes import FakeMachine, add_on, render_node, serving, settings_for

pytestmark = pytest.mark.slow

ETNAVIV, RKNPU = render_node(0, "etnaviv"), render_node(1, "rknpu")


def _devices_json(socket: Path) -> dict[str, dict[str, Any]]:
    res = npuctl("devices", "list", "-o", "json", socket_path=socket)
    assert res.returncode == 0, res.stderr
    return {d["name"]: d for d in json.loads(res.stdout)["devices"]}


def _tiers(device: dict[str, Any]) -> dict[str, int]:
    return {t["tier"]: int(t["capacity_bytes"]) for t in device["tiers"]}


def test_etnaviv_and_rknpu_nodes_serve_jobs_and_npuctl_lists_them(tmp_path: Path) -> None:
    """Both render nodes are served as real devices: ADD jobs over gRPC compute a + b on each
    node's kernel; npuctl lists etnaviv with one engine (the NPU pipe, not the GPU) and no SRAM,
    rknpu with three engines (its cores) and its 956 KiB SRAM."""
    machine, source = FakeMachine(), QueuedEvents()
    machine.plug(ETNAVIV)
    machine.plug(RKNPU)

    async def scenario() -> None:
        async with (
            serving(settings_for(tmp_path), machine, source) as daemon,
            npud.client.aio.connect(daemon.settings.socket) as npu,
        ):
            listed = {d.name: d for d in await npu.devices()}
            assert set(listed) == {"renderD128", "renderD129"}  # NPUs found: no simulated one
            assert listed["renderD128"].driver == "etnaviv"
            assert listed["renderD129"].driver == "rknpu"
            assert listed["renderD128"].node == "/dev/dri/renderD128"
            for name, node in (("renderD128", ETNAVIV), ("renderD129", RKNPU)):
                state, a, out = await add_on(npu, name, 1.5, f"add-{name}")
                assert state is JobState.COMPLETED
                np.testing.assert_array_equal(out, a + np.float32(1.5))
                assert machine.fake(node).firmware.executed == 1  # on that node's kernel
            assert [j.engine for j in machine.fake(ETNAVIV).jobs] == [1]  # the NPU pipe

            doc = await asyncio.to_thread(_devices_json, daemon.settings.socket)
            etna, rk = doc["renderD128"], doc["renderD129"]
            assert (etna["driver"], etna["simulated"], len(etna["engines"])) == (
                "etnaviv",
                False,
                1,
            )
            assert (rk["driver"], rk["simulated"], len(rk["engines"])) == ("rknpu", False, 3)
            assert _tiers(etna).get("MEMORY_TIER_SRAM", 0) == 0
            assert _tiers(rk)["MEMORY_TIER_SRAM"] == 0xEF000
            assert rk["board"] == "rk3588"
            assert rk["node"] == "/dev/dri/renderD129"

            table = await asyncio.to_thread(
                npuctl, "devices", "list", socket_path=daemon.settings.socket
            )
            assert table.returncode == 0, table.stderr
            rows = {line.split()[0]: line for line in table.stdout.splitlines() if line.strip()}
            assert "real" in rows["renderD128"].split()
            assert "real" in rows["renderD129"].split()
            assert "none" in rows["renderD128"].split()  # no SRAM tier on etnaviv
            assert "/ 956.0 KiB" in rows["renderD129"]  # SRAM: used / capacity

    asyncio.run(scenario())


def _burn(seconds: float) -> bytes:
    return Program().burn(seconds).encode()


@pytest.mark.parametrize(
    ("gone", "stays"), [(ETNAVIV, RKNPU), (RKNPU, ETNAVIV)], ids=["etnaviv", "rknpu"]
)
def test_an_unplugged_render_node_fails_exactly_its_jobs(
    tmp_path: Path, gone: Any, stays: Any
) -> None:
    """With jobs running and queued on both nodes, removing one node fails its jobs
    (DeviceLost) while every job on the other node completes; npud keeps no file of it."""
    machine, source = FakeMachine(), QueuedEvents()
    machine.plug(ETNAVIV)
    machine.plug(RKNPU)
    gone_name, stays_name = Path(gone.path).name, Path(stays.path).name

    async def scenario() -> None:
        async with (
            serving(settings_for(tmp_path), machine, source) as daemon,
            npud.client.aio.connect(daemon.settings.socket) as npu,
        ):
            queues = {}
            for name in (gone_name, stays_name):
                ctx = await npu.create_context(name, label=f"load-{name}")
                queues[name] = (ctx, await npu.create_queue(ctx, in_order=False))
            gone_fake, stays_fake = machine.fake(gone), machine.fake(stays)
            async with (
                npu.submit_stream(queues[gone_name][0]) as gone_stream,
                npu.submit_stream(queues[stays_name][0]) as stays_stream,
            ):
                doomed = [
                    await gone_stream.submit(
                        JobSpec(queues[gone_name][1], _burn(5.0), timeout_s=30)
                    )
                    for _ in range(4)
                ]
                kept = [
                    await stays_stream.submit(
                        JobSpec(queues[stays_name][1], _burn(0.3), timeout_s=30)
                    )
                    for _ in range(4)
                ]
                await asyncio.wait_for(
                    _until(
                        lambda: len(gone_fake.pending()) >= 1 and len(stays_fake.pending()) >= 1
                    ),
                    30,
                )
                source.put(machine.unplug(gone))
                gone_ended = await asyncio.gather(*doomed)
                kept_ended = await asyncio.gather(*kept)
            assert all(r.job is not None and r.job.state is JobState.FAILED for r in gone_ended)
            assert all(
                r.job is not None and r.job.error is not None and r.job.error.kind == "DeviceLost"
                for r in gone_ended
            )
            assert all(r.job is not None and r.job.state is JobState.COMPLETED for r in kept_ended)
            assert (await npu.device(stays_name)).health.name == "OK"
            assert (await npu.device(gone_name)).health.name == "LOST"
            assert all(f.closed for f in gone_fake.files)  # npud holds none of its files

    asyncio.run(scenario())


def test_the_watchdog_resets_rknpu_with_its_soft_reset(tmp_path: Path) -> None:
    """A job hung on one rknpu core ends TIMED_OUT when its timeout passes; the watchdog's reset
    is the driver's RKNPU_ACT_RESET (every core), so a job running on another core fails saying
    so; afterwards the NPU serves again."""
    machine, source = FakeMachine(), QueuedEvents()
    machine.plug(RKNPU)

    async def scenario() -> None:
        async with (
            serving(settings_for(tmp_path), machine, source) as daemon,
            npud.client.aio.connect(daemon.settings.socket) as npu,
        ):
            ctx = await npu.create_context("renderD129", label="watchdog")
            q = await npu.create_queue(ctx, in_order=False)
            fake = machine.fake(RKNPU)
            async with npu.submit_stream(ctx) as stream:
                other = await stream.submit(JobSpec(q, _burn(4.0), timeout_s=30))
                await asyncio.wait_for(_until(lambda: len(fake.pending()) == 1), 30)
                hung = await stream.submit(JobSpec(q, _burn(10.0), timeout_s=1.0))
                hung_end, other_end = await asyncio.gather(hung, other)
            assert hung_end.job is not None
            assert hung_end.job.state is JobState.TIMED_OUT
            assert fake.resets == 1  # RKNPU_ACT_RESET, issued by npud's watchdog
            assert "DRM_IOCTL_RKNPU_ACTION" in fake.calls
            assert other_end.job is not None
            assert other_end.job.state is JobState.FAILED
            assert other_end.job.error is not None
            assert "soft-reset" in other_end.job.error.message
            state, a, out = await add_on(npu, "renderD129", 3.0, "after-reset")
            assert state is JobState.COMPLETED
            np.testing.assert_array_equal(out, a + np.float32(3.0))

    asyncio.run(scenario())


async def _until(predicate: Any, timeout_s: float = 30.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not predicate():
            await asyncio.sleep(0.005)
