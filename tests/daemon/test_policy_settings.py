"""The daemon's scheduling policy comes from ``policy`` and the ``[scheduler]`` settings."""

from __future__ import annotations

import pytest

from npud.config import load_settings
from npud.core.policy import PolicyKind, SchedulerPolicy
from npud.daemon.app import scheduler_policy
from npud.errors import ConfigError
from npud.vocab import SchedulingClass


def test_default_settings_give_the_default_policy() -> None:
    """With nothing configured, every device gets SchedulerPolicy's own defaults."""
    assert scheduler_policy(load_settings(None, env={})) == SchedulerPolicy()


def test_every_knob_reaches_the_policy() -> None:
    """Shares, time slice (ms -> s; 0 -> none), latency window, watchdog scale and kind all
    reach the policy."""
    env = {
        "NPUD_POLICY": "fifo",
        "NPUD_SCHEDULER__THROUGHPUT_MIN_SHARE": "0.25",
        "NPUD_SCHEDULER__BACKGROUND_MIN_SHARE": "0",
        "NPUD_SCHEDULER__TIME_SLICE_MS": "250",
        "NPUD_SCHEDULER__LATENCY_WINDOW_S": "2",
        "NPUD_SCHEDULER__WATCHDOG_SCALE": "20",
    }
    policy = scheduler_policy(load_settings(None, env=env))
    assert policy.kind is PolicyKind.FIFO
    assert dict(policy.min_share) == {
        SchedulingClass.LATENCY: 0.0,
        SchedulingClass.THROUGHPUT: 0.25,
        SchedulingClass.BACKGROUND: 0.0,
    }
    assert policy.time_slice_s == 0.25
    assert policy.latency_window_s == 2.0
    defaults = SchedulerPolicy().timeouts
    assert dict(policy.timeouts) == {c: 20 * t for c, t in defaults.items()}
    unlimited = load_settings(None, env={"NPUD_SCHEDULER__TIME_SLICE_MS": "0"})
    assert scheduler_policy(unlimited).time_slice_s is None


def test_watchdog_scale_below_one_is_refused() -> None:
    """A scale that would shorten the class watchdogs is a configuration error, not a policy."""
    with pytest.raises(ConfigError, match="watchdog_scale"):
        load_settings(None, env={"NPUD_SCHEDULER__WATCHDOG_SCALE": "0.5"})
