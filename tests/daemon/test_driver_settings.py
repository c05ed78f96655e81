"""Drivers that need more than a node: amdxdna's program (``[amdxdna] cu_configs``) and qaic's
activation (``[qaic] activate``) come from npud.toml; with them a discovered device serves jobs,
without them the daemon names the missing setting instead of serving a device that runs
nothing.

The adapters are built the daemon's way (:func:`npud.daemon.devices.build_adapter`) on fake
kernels with the stand-in firmware, so the jobs compute for real.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import npud.client.aio
from npud.client import JobState
from npud.config import load_settings
from npud.daemon.app import Daemon
from npud.daemon.devices import adapter_options
from npud.daemon.hotplug import QueuedEvents
from npud.devices.amdxdna import AmdxdnaDevice
from npud.errors import ConfigError
from tests.daemon.fakenodes import (
    ConfiguredMachine,
    accel_node,
    add_on,
    serving,
    settings_for,
)

AMDXDNA, QAIC, ROCKET = accel_node(0, "amdxdna"), accel_node(1, "qaic"), accel_node(2, "rocket")
HOOK = "tests.daemon.fakenodes:activate_fake_qaic"


def _pdi(tmp: Path) -> Path:
    path = tmp / "kernel.pdi"
    path.write_bytes(b"\x00PDI" * 64)
    return path


def _configured(tmp: Path, **extra: Any) -> Any:
    return settings_for(
        tmp,
        amdxdna={"cu_configs": [{"pdi": _pdi(tmp), "func": 0}], "engines": 2},
        qaic={"activate": HOOK, "command_input": True},
        **extra,
    )


def test_the_toml_settings_are_validated(tmp_path: Path) -> None:
    """[amdxdna] cu_configs and [qaic] activate load from TOML; a missing PDI file or a hook
    that is not 'module:function' is refused with the setting's name."""
    pdi = _pdi(tmp_path)
    good = tmp_path / "good.toml"
    good.write_text(
        f'[amdxdna]\ncu_configs = [{{ pdi = "{pdi}", func = 1 }}]\nengines = 2\n'
        f'[qaic]\nactivate = "{HOOK}"\n'
    )
    settings = load_settings(good, env={})
    assert settings.amdxdna.cu_configs[0].pdi == pdi
    assert settings.amdxdna.cu_configs[0].func == 1
    assert settings.qaic.activate == HOOK
    options = adapter_options(settings, AmdxdnaDevice.driver)
    assert options["cu_configs"] == [(pdi.read_bytes(), 1)]
    assert options["engines"] == 2

    missing = tmp_path / "missing.toml"
    missing.write_text(f'[amdxdna]\ncu_configs = [{{ pdi = "{tmp_path}/nope.pdi" }}]\n')
    with pytest.raises(ConfigError, match=r"amdxdna\.cu_configs\.0\.pdi: .*not a file"):
        load_settings(missing, env={})
    bad_hook = tmp_path / "hook.toml"
    bad_hook.write_text('[qaic]\nactivate = "not a hook"\n')
    with pytest.raises(ConfigError, match=r"qaic\.activate"):
        load_settings(bad_hook, env={})
    unknown = tmp_path / "unknown.toml"
    unknown.write_text('[qaic]\nactivate = "tests.daemon.fakenodes:no_such_hook"\n')
    with pytest.raises(ConfigError, match=r"qaic\.activate: cannot import"):
        adapter_options(load_settings(unknown, env={}), "qaic")


@pytest.mark.slow
def test_amdxdna_and_qaic_with_their_settings_serve_jobs(tmp_path: Path) -> None:
    """A discovered amdxdna (program from cu_configs) and qaic (network activated by the hook)
    each run an ADD job over gRPC that computes a + b."""
    settings = _configured(tmp_path)
    machine, source = ConfiguredMachine(settings=settings), QueuedEvents()
    machine.plug(AMDXDNA)
    machine.plug(QAIC)

    async def scenario() -> None:
        async with (
            serving(settings, machine, source) as daemon,
            npud.client.aio.connect(daemon.settings.socket) as npu,
        ):
            listed = {d.name: d for d in await npu.devices()}
            assert set(listed) == {"accel0", "accel1"}
            assert len(listed["accel0"].engines) == 2  # [amdxdna] engines
            assert len(listed["accel1"].engines) == 2  # the hook's two DBCs
            for name, node in (("accel0", AMDXDNA), ("accel1", QAIC)):
                state, a, out = await add_on(npu, name, 0.25, f"add-{name}")
                assert state is JobState.COMPLETED
                np.testing.assert_array_equal(out, a + np.float32(0.25))
                assert machine.fake(node).firmware.executed >= 1
            contexts = machine.fake(AMDXDNA).hwctxs  # type: ignore[attr-defined]
            assert contexts
            assert all(c["ready"] for c in contexts.values())  # the program was loaded

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("node", "setting"),
    [(AMDXDNA, "amdxdna.cu_configs is not set"), (QAIC, "qaic.activate is not set")],
)
def test_without_the_setting_the_daemon_names_it(tmp_path: Path, node: Any, setting: str) -> None:
    """The only NPU needs a setting that is not there: the daemon does not start, and its
    error names the setting (no simulated NPU served in its place)."""
    settings = settings_for(tmp_path)
    machine = ConfiguredMachine(settings=settings)
    machine.plug(node)

    async def scenario() -> None:
        daemon = Daemon(settings, nodes=machine, hotplug=QueuedEvents())
        with pytest.raises(ConfigError, match=setting) as err:
            await daemon.run()
        assert node.path in str(err.value)
        machine.stop()

    asyncio.run(scenario())


@pytest.mark.slow
def test_an_unconfigured_npu_beside_a_served_one_is_skipped(tmp_path: Path) -> None:
    """With a rocket beside an unconfigured amdxdna, the rocket is served and the amdxdna is
    left out (logged with the setting it needs), not served running nothing."""
    settings = settings_for(tmp_path)
    machine, source = ConfiguredMachine(settings=settings), QueuedEvents()
    machine.plug(AMDXDNA)
    machine.plug(ROCKET)

    async def scenario() -> None:
        async with (
            serving(settings, machine, source) as daemon,
            npud.client.aio.connect(daemon.settings.socket) as npu,
        ):
            assert [d.name for d in await npu.devices()] == ["accel2"]
            state, a, out = await add_on(npu, "accel2", 1.0, "rocket")
            assert state is JobState.COMPLETED
            np.testing.assert_array_equal(out, a + np.float32(1.0))

    asyncio.run(scenario())


def test_the_example_file_documents_both_tables() -> None:
    """systemd/npud.toml.example has [amdxdna] and [qaic] with every field, at the defaults."""
    from npud.config import Settings

    example = Path(__file__).resolve().parents[2] / "systemd" / "npud.toml.example"
    text = example.read_text()
    settings = load_settings(example, env={})
    assert settings.amdxdna == Settings.model_fields["amdxdna"].default_factory()  # type: ignore[misc]
    assert settings.qaic == Settings.model_fields["qaic"].default_factory()  # type: ignore[misc]
    for table in ("amdxdna", "qaic"):
        assert f"[{table}]" in text
        for name in type(getattr(settings, table)).model_fields:
            assert name in text, f"{table}.{name} missing from npud.toml.example"
