"""The daemon's scheduling policy comes from ``policy`` and the ``[scheduler]`` settings."""

from __future__ import annotations

from npud.config import load_settings
from npud.core.policy import PolicyKind, SchedClass, SchedulerPolicy
from npud.daemon.app import scheduler_policy


def test_default_settings_give_the_default_policy() -> None:
    """With nothing configured, every device gets SchedulerPolicy's own defaults."""
    assert scheduler_policy(load_settings(None, env={})) == SchedulerPolicy()


def test_every_knob_reaches_the_policy() -> None:
    """Shares, time slice (ms -> s; 0 -> none), latency window and kind are all carried over."""
    env = {
        "NPUD_POLICY": "fifo",
        "NPUD_SCHEDULER__THROUGHPUT_MIN_SHARE": "0.25",
        "NPUD_SCHEDULER__BACKGROUND_MIN_SHARE": "0",
        "NPUD_SCHEDULER__TIME_SLICE_MS": "250",
        "NPUD_SCHEDULER__LATENCY_WINDOW_S": "2",
    }
    policy = scheduler_policy(load_settings(None, env=env))
    assert policy.kind is PolicyKind.FIFO
    assert dict(policy.min_share) == {
        SchedClass.LATENCY: 0.0,
        SchedClass.THROUGHPUT: 0.25,
        SchedClass.BACKGROUND: 0.0,
    }
    assert policy.time_slice_s == 0.25
    assert policy.latency_window_s == 2.0
    unlimited = load_settings(None, env={"NPUD_SCHEDULER__TIME_SLICE_MS": "0"})
    assert scheduler_policy(unlimited).time_slice_s is None
