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


def test_an_unplugged_render_node_fails_exactly_its_jobs(tmp_path: Path) -> None:
    """With jobs running and queued on both nodes, removing the etnaviv node fails its jobs
    (DeviceLost) while every job on the rknpu node completes."""
    machine, source = FakeMachine(), QueuedEvents()
    machine.plug(ETNAVIV)
    machine.plug(RKNPU)

    async def scenario() -> None:
        async with (
            serving(settings_for(tmp_path), machine, source) as daemon,
            npud.client.aio.connect(daemon.settings.socket) as npu,
        ):
            streams = {}
            for name in ("renderD128", "renderD129"):
                ctx = await npu.create_context(name, label=f"load-{name}")
                q = await npu.create_queue(ctx, in_order=False)
                streams[name] = (ctx, q)
            etna_fake, rk_fake = machine.fake(ETNAVIV), machine.fake(RKNPU)
            results: dict[str, list[Any]] = {}
            async with (
                npu.submit_stream(streams["renderD128"][0]) as etna_stream,
                npu.submit_stream(streams["renderD129"][0]) as rk_stream,
            ):
                results["renderD128"] = [
                    await etna_stream.submit(
                        JobSpec(streams["renderD128"][1], _burn(5.0), timeout_s=30)
                    )
                    for _ in range(3)
                ]
                results["renderD129"] = [
                    await rk_stream.submit(
                        JobSpec(streams["renderD129"][1], _burn(0.3), timeout_s=30)
                    )
                    for _ in range(3)
                ]
                await asyncio.wait_for(
                    _until(lambda: len(etna_fake.pending()) == 1 and len(rk_fake.pending()) >= 1),
                    30,
                )
                source.put(machine.unplug(ETNAVIV))
                etna_ended = await asyncio.gather(*results["renderD128"])
                rk_ended = await asyncio.gather(*results["renderD129"])
            assert all(r.job is not None and r.job.state is JobState.FAILED for r in etna_ended)
            assert all(
                r.job is not None and r.job.error is not None and r.job.error.kind == "DeviceLost"
                for r in etna_ended
            )
            assert all(r.job is not None and r.job.state is JobState.COMPLETED for r in rk_ended)
            assert (await npu.device("renderD129")).health.name == "OK"
            assert [f.closed for f in etna_fake.files] == [True]  # npud holds none of its files

    asyncio.run(scenario())


async def _until(predicate: Any) -> None:
    while not predicate():
        await asyncio.sleep(0.005)
