"""bench/device_speed.py: legs of a comparison are judged to run at one device speed or not."""

from __future__ import annotations

import math

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from bench.device_speed import TOLERANCE, check_same_speed


def test_a_placement_difference_is_caught() -> None:
    """The daemon leg's steps at 77 ms against direct's 100 ms fail the check (the SRAM case)."""
    check = check_same_speed({"direct": [0.100, 0.101, 0.099], "daemon": [0.077, 0.078, 0.076]})
    assert not check.ok
    assert check.spread == pytest.approx(0.100 / 0.077)
    assert "DIFFERENT SPEEDS" in check.describe()
    assert check.as_dict()["legs"]["daemon"] == {"steps": 3, "step_ms": pytest.approx(77.0)}


def test_legs_within_the_tolerance_pass() -> None:
    """Medians 3 % apart pass; the medians, not single outliers, are compared."""
    check = check_same_speed(
        {"direct": [0.100, 0.100, 0.5], "npud/one": [0.103, 0.103, 0.01]}, reference_s=0.101
    )
    assert check.ok
    assert (check.fastest_s, check.slowest_s) == (0.100, 0.103)
    assert "same speed" in check.describe()


def test_the_calibrated_step_is_held_to_the_tolerance() -> None:
    """Legs that agree with each other but not with the step the board was calibrated to fail."""
    check = check_same_speed({"direct": [0.077], "daemon": [0.077]}, reference_s=0.100)
    assert not check.ok
    assert check.as_dict()["reference_ms"] == pytest.approx(100.0)


def test_legs_without_modelled_steps_are_named_but_not_judged() -> None:
    """A leg with no steps (or only unmodelled 0 s ones) is listed without a figure; with fewer
    than two figures nothing is checked, and that is not a pass."""
    check = check_same_speed({"direct": [0.1], "fifo/loaded": [], "hw": [0.0, 0.0]})
    assert [leg.step_s for leg in check.legs] == [0.1, None, None]
    assert check.spread is None
    assert not check.ok
    assert "NOT CHECKED" in check.describe()


@pytest.mark.parametrize(
    ("steps", "kwargs"),
    [
        ({"a": [-0.1]}, {}),
        ({"a": [math.nan]}, {}),
        ({"a": [0.1]}, {"reference_s": 0.0}),
        ({"a": [0.1]}, {"tolerance": -0.01}),
    ],
)
def test_bad_input_is_refused(steps: dict[str, list[float]], kwargs: dict[str, float]) -> None:
    """Negative or non-finite times, a reference that is no time, a negative tolerance."""
    with pytest.raises(ValueError):
        check_same_speed(steps, **kwargs)


@given(
    base=st.floats(min_value=1e-6, max_value=10.0),
    factors=st.lists(st.floats(min_value=0.5, max_value=2.0), min_size=2, max_size=6),
)
def test_ok_exactly_when_every_pair_is_within_the_tolerance(
    base: float, factors: list[float]
) -> None:
    """The check passes iff no leg's median is more than the tolerance above another's."""
    legs = {f"leg{i}": [base * f] for i, f in enumerate(factors)}
    check = check_same_speed(legs)
    medians = [base * f for f in factors]
    assume(abs(max(medians) / min(medians) - (1 + TOLERANCE)) > 1e-9)  # not on the boundary
    within = all(a <= b * (1 + TOLERANCE) for a in medians for b in medians)
    assert check.ok == within
