"""Configuration from TOML, NPUD_* environment and flags, with actionable errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from npud.config import Settings, identity_socket_for, load_settings
from npud.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def test_example_file_lists_every_setting_with_its_default(tmp_path: Path) -> None:
    """systemd/npud.toml.example parses and (commented or not) mentions every field."""
    example = ROOT / "systemd" / "npud.toml.example"
    text = example.read_text()
    settings = load_settings(example, env={})
    defaults = Settings(socket=settings.socket, state_dir=settings.state_dir)
    assert settings == defaults
    for name in Settings.model_fields:
        assert name in text, f"{name} missing from npud.toml.example"
    for name in type(settings.quotas).model_fields:
        assert name in text, f"quotas.{name} missing from npud.toml.example"


def test_precedence_file_env_flags(tmp_path: Path) -> None:
    """Flags beat NPUD_* environment, which beats the file."""
    cfg = tmp_path / "npud.toml"
    cfg.write_text('socket = "/a.sock"\nlog_level = "debug"\n[quotas]\nmax_queues = 3\n')
    env = {"NPUD_SOCKET": "/b.sock", "NPUD_QUOTAS__MAX_QUEUES": "5"}
    s = load_settings(cfg, env=env)
    assert s.socket == Path("/b.sock")
    assert s.quotas.max_queues == 5
    assert s.log_level == "debug"
    s = load_settings(cfg, env=env, overrides={"socket": Path("/c.sock"), "device": None})
    assert s.socket == Path("/c.sock")
    assert s.device == "auto"


def _refused(tmp_path: Path, toml: str) -> str:
    """The ConfigError message loading ``toml`` gives (fails the test if it loads)."""
    cfg = tmp_path / "npud.toml"
    cfg.write_text(toml)
    with pytest.raises(ConfigError) as info:
        load_settings(cfg, env={})
    return str(info.value)


def test_invalid_field_names_field_and_reason(tmp_path: Path) -> None:
    """A bad value raises ConfigError naming the field, the reason and the value."""
    text = _refused(tmp_path, 'policy = "random"\n[quotas]\nmax_queues = -1\n')
    assert "policy" in text
    assert "'random'" in text
    assert "quotas.max_queues" in text
    assert "greater than 0" in text


def test_unknown_key_is_refused(tmp_path: Path) -> None:
    """A typo in a key is an error, not silently ignored."""
    cfg = tmp_path / "npud.toml"
    cfg.write_text("sokcet = '/x'\n")
    with pytest.raises(ConfigError, match="sokcet"):
        load_settings(cfg, env={})


def test_bad_toml_and_missing_explicit_file(tmp_path: Path) -> None:
    """Unparseable TOML and a missing --config file are ConfigErrors with the path."""
    bad = tmp_path / "bad.toml"
    bad.write_text("socket = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(bad, env={})
    with pytest.raises(ConfigError, match=r"nope\.toml"):
        load_settings(tmp_path / "nope.toml", env={})


def test_socket_mode_accepts_octal_text() -> None:
    """socket_mode = "0640" is read as octal."""
    assert load_settings(Path("/dev/null"), env={"NPUD_SOCKET_MODE": "0640"}).socket_mode == 0o640
    with pytest.raises(ConfigError, match="socket_mode"):
        load_settings(Path("/dev/null"), env={"NPUD_SOCKET_MODE": "rw"})


def test_runtime_directory_decides_default_socket() -> None:
    """Under systemd the socket goes to $RUNTIME_DIRECTORY; identity socket sits beside it."""
    s = load_settings(Path("/dev/null"), env={"RUNTIME_DIRECTORY": "/run/npud"})
    assert s.socket == Path("/run/npud/npud.sock") or s.socket.name == "npud.sock"
    assert identity_socket_for(Path("/run/npud/npud.sock")) == Path("/run/npud/npud.sock.identity")


def test_daemon_exits_nonzero_naming_the_field(tmp_path: Path) -> None:
    """`npud --config bad.toml` exits 2 and says which field is wrong and why."""
    import subprocess
    import sys

    cfg = tmp_path / "npud.toml"
    cfg.write_text("shutdown_grace_s = -3\n")
    result = subprocess.run(
        [sys.executable, "-m", "npud.daemon", "--config", str(cfg)],
        capture_output=True,
        text=True,
        check=False,
        cwd=str(ROOT),
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)},
    )
    assert result.returncode == 2
    assert "shutdown_grace_s" in result.stderr
    assert "greater than or equal to 0" in result.stderr


@pytest.mark.parametrize("value", ["0", "-1", "inf", "nan", "fast"])
def test_sim_slowdown_must_be_a_positive_finite_number(value: str) -> None:
    """NPUD_SIM_SLOWDOWN that is not a finite number above 0 is refused, naming the field."""
    with pytest.raises(ConfigError, match="sim_slowdown"):
        load_settings(None, env={"NPUD_SIM_SLOWDOWN": value})


def test_sim_slowdown_reaches_the_simulated_device() -> None:
    """The daemon's simulated NPU models its profile slowed down by sim_slowdown, and says so."""
    from npud.daemon.devices import choose_devices

    settings = load_settings(None, env={"NPUD_SIM_SLOWDOWN": "300", "NPUD_DEVICE": "sim"})
    choice = choose_devices(settings, log=None)
    (device,) = choice.devices
    assert device.slowdown == 300.0  # type: ignore[attr-defined]
    assert "slowed down x300" in device.capabilities.description
    assert "slowed down x300" in choice.reason


def test_example_file_lists_every_scheduler_knob() -> None:
    """Every [scheduler] field is in npud.toml.example, at its default."""
    example = ROOT / "systemd" / "npud.toml.example"
    text = example.read_text()
    for name in type(Settings().scheduler).model_fields:
        assert name in text, f"scheduler.{name} missing from npud.toml.example"


def test_min_shares_that_leave_no_room_for_the_class_order_are_refused(tmp_path: Path) -> None:
    """Shares adding up to 1 or more are a ConfigError naming both knobs and their sum."""
    text = _refused(
        tmp_path, "[scheduler]\nthroughput_min_share = 0.7\nbackground_min_share = 0.3\n"
    )
    assert "throughput_min_share + background_min_share = 1" in text
    assert "scheduler" in text


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("THROUGHPUT_MIN_SHARE", "-0.1"),
        ("THROUGHPUT_MIN_SHARE", "1"),
        ("TIME_SLICE_MS", "-5"),
        ("TIME_SLICE_MS", "nan"),
        ("LATENCY_WINDOW_S", "inf"),
    ],
)
def test_a_bad_scheduler_knob_is_named(name: str, value: str) -> None:
    """A negative, too large or non-finite knob is refused, naming scheduler.<knob>."""
    with pytest.raises(ConfigError, match=f"scheduler.{name.lower()}"):
        load_settings(None, env={f"NPUD_SCHEDULER__{name}": value})


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("SESSION_GRACE_S", "inf"),
        ("SESSION_GRACE_S", "nan"),
        ("CLOSE_GRACE_S", "1e12"),
        ("SHUTDOWN_GRACE_S", "inf"),
        ("LIMITS__MAX_WEIGHT", "inf"),
        ("LIMITS__LATENCY_TIMEOUT_MAX_S", "nan"),
        ("LIMITS__MIN_EVENT_INTERVAL_S", "0"),
    ],
)
def test_every_float_setting_is_finite_and_bounded(name: str, value: str) -> None:
    """An infinite grace, a NaN ceiling, a zero interval: ConfigError naming the knob."""
    knob = name.lower().replace("__", ".")
    with pytest.raises(ConfigError, match=knob):
        load_settings(None, env={f"NPUD_{name}": value})


def test_example_file_lists_every_limit() -> None:
    """Every [limits] field is in npud.toml.example, and the example's values are the defaults."""
    example = ROOT / "systemd" / "npud.toml.example"
    text = example.read_text()
    for name in type(Settings().limits).model_fields:
        assert f"\n{name} = " in text, f"limits.{name} missing from npud.toml.example"
    assert load_settings(example, env={}).limits == Settings().limits


def test_limits_reach_core() -> None:
    """[limits] knobs become core's bounds."""
    from npud.daemon.app import core_limits
    from npud.vocab import SchedulingClass

    s = load_settings(
        None, env={"NPUD_LIMITS__LATENCY_TIMEOUT_MAX_S": "3", "NPUD_LIMITS__MAX_WEIGHT": "4"}
    )
    bounds = core_limits(s)
    assert bounds.timeout_ceiling(SchedulingClass.LATENCY) == 3.0
    assert bounds.max_weight == 4.0
    assert bounds.min_weight == 0.25


def test_client_and_tool_variables_with_the_prefix_do_not_stop_the_daemon() -> None:
    """NPUD_* variables that name no setting (a client's NPUD_TENANT_FILE, a test stage's
    NPUD_CACHE) are not the daemon's and are ignored; a typo inside a known section is still
    refused naming it."""
    settings = load_settings(
        None,
        env={"NPUD_TENANT_FILE": "/run/t", "NPUD_CACHE": "/tmp/c", "NPUD_SIM_SLOWDOWN": "2"},
    )
    assert settings.sim_slowdown == 2.0
    with pytest.raises(ConfigError, match="max_queuez"):
        load_settings(None, env={"NPUD_QUOTAS__MAX_QUEUEZ": "3"})
