"""Edges of the health policies: validator boundaries, the slow-start ramp's ends and
the rise/fall counter's exact transitions."""

from __future__ import annotations

import math

import pytest

import embedbalance as eb
from embedbalance.health import ActiveCheckState


@pytest.mark.parametrize("bad", [0, 0.0, -1.0, math.inf, math.nan, "2", None])
def test_positive_fields_refuse_zero_negative_non_finite_and_non_numbers(bad: object) -> None:
    """interval (and every other must-be-positive field) refuses 0, negatives, inf, NaN and non-numbers with a ValueError naming it."""
    with pytest.raises(ValueError, match=r"^interval must be a finite number > 0, got "):
        eb.HealthCheck(interval=bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [0, -2, True, 2.0, "3"])
def test_counts_must_be_plain_ints_of_at_least_one(bad: object) -> None:
    """rise refuses 0, negatives, booleans, floats and strings (True would silently mean 1)."""
    with pytest.raises(ValueError, match=r"^rise must be an int >= 1, got "):
        eb.HealthCheck(rise=bad)  # type: ignore[arg-type]


def test_fraction_bounds_are_inclusive() -> None:
    """jitter accepts exactly 0 and exactly 1 and refuses anything outside [0, 1] or non-numeric."""
    assert eb.HealthCheck(jitter=0).jitter == 0
    assert eb.HealthCheck(jitter=1).jitter == 1
    for bad in (1.5, -0.1, "0.1"):
        with pytest.raises(ValueError, match=r"^jitter must be between 0 and 1, got "):
            eb.HealthCheck(jitter=bad)  # type: ignore[arg-type]


def test_percent_bounds() -> None:
    """max_ejection_percent accepts 0 and 100; min_weight_percent accepts (0, 100] including fractions below 1."""
    assert eb.OutlierDetection(max_ejection_percent=100).max_ejection_percent == 100
    assert eb.OutlierDetection(max_ejection_percent=0).max_ejection_percent == 0
    assert eb.SlowStart(min_weight_percent=0.5).min_weight_percent == 0.5
    assert eb.SlowStart(min_weight_percent=100).min_weight_percent == 100
    for bad in (100.5, 0, -1):
        with pytest.raises(ValueError, match=r"^min_weight_percent must be > 0 and <= 100"):
            eb.SlowStart(min_weight_percent=bad)


def test_check_headers_from_a_mapping_or_pairs() -> None:
    """Check headers given as a mapping or as pairs become the same hashable pairs; anything else is a ValueError."""
    expected = (("Authorization", "Bearer t"), ("X-N", "1"))
    assert eb.HealthCheck(headers={"Authorization": "Bearer t", "X-N": 1}).headers == expected
    assert eb.HealthCheck(headers=[("Authorization", "Bearer t"), ("X-N", "1")]).headers == expected
    with pytest.raises(ValueError, match=r"^headers must be a mapping of str to str, got 3$"):
        eb.HealthCheck(headers=3)  # type: ignore[arg-type]


def test_slow_start_ramp_ends() -> None:
    """The ramp is linear within any positive window (sub-second included), floored at min weight, full from the window on; window 0 is always full."""
    assert eb.SlowStart(window=0.5).factor(0.25) == 0.5
    assert eb.SlowStart(window=10.0, min_weight_percent=1.0).factor(0.5) == 0.05
    assert eb.SlowStart(window=10.0).factor(10.0) == 1.0
    assert eb.SlowStart(window=0.0).factor(-1.0) == 1.0
    assert eb.SlowStart(window=10.0).factor(-5.0) == 0.1


def _policy(rise: int, fall: int) -> eb.HealthCheck:
    return eb.HealthCheck(rise=rise, fall=fall)


def test_rise_needs_exactly_rise_successes() -> None:
    """An unhealthy backend needs exactly `rise` passing checks in a row, and only the last one reports a change."""
    state = ActiveCheckState(healthy=False, streak=-4)
    policy = _policy(rise=3, fall=2)
    assert [state.record(True, policy) for _ in range(3)] == [False, False, True]
    assert state.healthy is True


def test_first_success_on_an_unknown_backend_is_no_change() -> None:
    """A first passing check on a never-judged backend keeps it in without reporting a change."""
    state = ActiveCheckState()
    assert state.record(True, _policy(rise=2, fall=2)) is False
    assert state.healthy is None


def test_a_failure_after_successes_starts_a_new_failure_streak() -> None:
    """After any number of successes, `fall` failures in a row (not more) mark the backend unhealthy."""
    for successes in (1, 5):
        state = ActiveCheckState(healthy=True, streak=successes)
        policy = _policy(rise=2, fall=2)
        assert [state.record(False, policy) for _ in range(2)] == [False, True]
        assert state.healthy is False


def test_more_failures_on_an_unhealthy_backend_change_nothing() -> None:
    """Failed checks on a backend already unhealthy report no change (no repeated events)."""
    state = ActiveCheckState()
    policy = _policy(rise=2, fall=3)
    assert [state.record(False, policy) for _ in range(5)] == [False, False, True, False, False]
    assert state.healthy is False


def test_unhealthy_verdict_on_an_unknown_backend_after_fall_failures() -> None:
    """A never-judged backend whose checks fail is marked unhealthy after exactly `fall` failures."""
    state = ActiveCheckState()
    policy = _policy(rise=2, fall=1)
    assert state.record(False, policy) is True
    assert state.healthy is False
