"""Edges of the retry budget and the hedging latency window, on a manual clock.

Each test pins a boundary a one-character change would move: the bucket a request
falls in, the instant it is forgotten, how often a cached percentile refreshes.
"""

from __future__ import annotations

import pytest

import embedbalance as eb
from embedbalance.retry import LatencyWindow, RetryBudget


def _budget(clock: eb.ManualClock, window: float = 20.0) -> RetryBudget:
    """One retry per recent request and no floor: the budget is exactly the requests it remembers."""
    return RetryBudget(eb.RetryBudgetPolicy(ratio=1.0, window=window, min_per_second=0.0), clock)


def test_each_request_allows_exactly_one_retry_at_ratio_one() -> None:
    """At ratio 1 and no floor, one request buys one retry, not two, and every refusal is counted."""
    clock = eb.ManualClock(5.0)
    budget = _budget(clock)
    budget.deposit()
    assert budget.try_withdraw()
    assert not budget.try_withdraw()
    assert not budget.try_withdraw()
    assert budget.exhausted == 2


@pytest.mark.parametrize(("at", "remembered"), [(37.99, True), (38.0, False)])
def test_a_request_is_forgotten_when_its_bucket_leaves_the_window(
    at: float, remembered: bool
) -> None:
    """With a 20 s window (ten 2 s buckets) a request made at 19.9 s sits in the bucket starting at 18 s and stops counting at exactly 38 s."""
    clock = eb.ManualClock(19.9)
    budget = _budget(clock)
    budget.deposit()
    clock.now = at
    assert budget.try_withdraw() is remembered


def test_requests_in_different_buckets_are_forgotten_separately() -> None:
    """A request from an old bucket expires without taking a newer one with it."""
    clock = eb.ManualClock(0.5)
    budget = _budget(clock)
    budget.deposit()  # bucket [0, 2)
    clock.now = 19.9
    budget.deposit()  # bucket [18, 20)
    clock.now = 20.0  # the first bucket has left the window, the second has not
    assert budget.try_withdraw()
    assert not budget.try_withdraw()


def test_sub_second_windows_are_valid() -> None:
    """Any positive window is accepted (0.5 s included); zero or negative is a ValueError with the documented message."""
    assert eb.RetryBudgetPolicy(window=0.5).window == 0.5
    for bad in ({"window": 0.0}, {"min_per_second": -1.0}, {"ratio": -0.5}):
        with pytest.raises(
            ValueError, match=r"^ratio and min_per_second must be >= 0, window > 0$"
        ):
            eb.RetryBudgetPolicy(**bad)


def test_hedge_percentile_bounds_are_open() -> None:
    """Hedge accepts any percentile strictly between 0 and 100 (0.5 included) and refuses 0 and 100."""
    assert eb.Hedge(percentile=0.5).percentile == 0.5
    assert eb.Hedge(percentile=99.9).percentile == 99.9
    for bad in (0, 0.0, 100, -1):
        with pytest.raises(ValueError, match="percentile"):
            eb.Hedge(percentile=bad)


def test_cached_percentile_refreshes_every_refresh_samples_exactly() -> None:
    """A computed percentile is reused for the next refresh-1 samples and recomputed on the refresh-th (hedging reads it on every request)."""
    window = LatencyWindow(size=100, refresh=4)
    for _ in range(4):
        window.add(1.0)
    assert window.percentile(100) == 1.0
    for _ in range(3):
        window.add(9.0)
        assert window.percentile(100) == 1.0, "recomputed before `refresh` new samples"
    window.add(9.0)
    assert window.percentile(100) == 9.0


def test_percentiles_are_cached_per_quantile() -> None:
    """Two quantiles read from the same cache do not overwrite each other."""
    window = LatencyWindow(size=100, refresh=50)
    for ms in range(1, 11):
        window.add(float(ms))
    assert window.percentile(10) == 1.0
    assert window.percentile(100) == 10.0
    assert window.percentile(10) == 1.0


def test_nearest_rank_at_an_odd_count() -> None:
    """The median of 1..101 is the 51st value by nearest rank (ceil(0.5 × 101) = 51)."""
    window = LatencyWindow(size=200, refresh=1)
    for v in range(1, 102):
        window.add(float(v))
    assert window.percentile(50) == 51.0
    assert window.percentile(99) == 100.0
