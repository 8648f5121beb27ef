"""RetryBudget, LatencyWindow and the Retry/Hedge policies."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import embedbalance as eb
from embedbalance.retry import LatencyWindow, RetryBudget


def test_budget_floor_allows_min_per_second_times_window(clock: eb.ManualClock) -> None:
    """With no traffic, exactly min_per_second × window retries are allowed."""
    budget = RetryBudget(eb.RetryBudgetPolicy(ratio=0.2, window=10.0, min_per_second=1.0), clock)
    assert [budget.try_withdraw() for _ in range(11)] == [True] * 10 + [False]
    assert budget.exhausted == 1


def test_budget_ratio_adds_a_share_of_requests(clock: eb.ManualClock) -> None:
    """100 requests with ratio 0.2 and no floor allow exactly 20 retries."""
    budget = RetryBudget(eb.RetryBudgetPolicy(ratio=0.2, window=10.0, min_per_second=0.0), clock)
    for _ in range(100):
        budget.deposit()
    assert sum(budget.try_withdraw() for _ in range(30)) == 20


def test_budget_forgets_after_the_window(clock: eb.ManualClock) -> None:
    """Requests and retries older than the window stop counting."""
    budget = RetryBudget(eb.RetryBudgetPolicy(ratio=0.5, window=10.0, min_per_second=0.0), clock)
    for _ in range(10):
        budget.deposit()
    assert sum(budget.try_withdraw() for _ in range(10)) == 5
    clock.advance(10.0)
    assert not budget.try_withdraw()  # the deposits are gone
    for _ in range(4):
        budget.deposit()
    assert sum(budget.try_withdraw() for _ in range(4)) == 2  # old retries are gone too


def test_budget_zero_forbids_retries(clock: eb.ManualClock) -> None:
    """ratio=0 with min_per_second=0 never allows a retry."""
    budget = RetryBudget(eb.RetryBudgetPolicy(ratio=0.0, min_per_second=0.0), clock)
    budget.deposit()
    assert not budget.try_withdraw()


def test_budget_policy_validates() -> None:
    """A negative ratio or a non-positive window is a ValueError."""
    with pytest.raises(ValueError, match="window"):
        eb.RetryBudgetPolicy(window=0)
    with pytest.raises(ValueError, match="ratio"):
        eb.RetryBudgetPolicy(ratio=-0.1)


@settings(max_examples=100, deadline=None)
@given(
    samples=st.lists(st.floats(0.0, 10.0), min_size=1, max_size=300),
    q=st.floats(0.5, 99.5),
)
def test_latency_window_percentile_is_nearest_rank(samples: list[float], q: float) -> None:
    """LatencyWindow's percentile is the nearest-rank percentile of its samples."""
    window = LatencyWindow(size=1024, refresh=1)
    for s in samples:
        window.add(s)
    ordered = sorted(samples)
    expected = ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]
    assert window.percentile(q) == expected
    assert len(window) == len(samples)


def test_latency_window_keeps_the_most_recent() -> None:
    """Only the last ``size`` samples count, and an empty window has no percentile."""
    window = LatencyWindow(size=10, refresh=1)
    assert window.percentile(50) is None
    for ms in range(100):
        window.add(ms / 1000)
    assert len(window) == 10
    assert window.percentile(50) == pytest.approx(0.094)
    assert window.percentile(100) == pytest.approx(0.099)


def test_latency_window_refreshes_its_cache() -> None:
    """A cached percentile is recomputed after ``refresh`` new samples."""
    window = LatencyWindow(size=100, refresh=4)
    for _ in range(4):
        window.add(1.0)
    assert window.percentile(99) == 1.0
    for _ in range(4):
        window.add(5.0)
    assert window.percentile(99) == 5.0


def test_retry_coerce() -> None:
    """Retry.coerce maps None/True to defaults, False/0 to one attempt, ints to attempts."""
    assert eb.Retry.coerce(None) == eb.Retry()
    assert eb.Retry.coerce(True) == eb.Retry()
    assert eb.Retry.coerce(False).attempts == 1
    assert eb.Retry.coerce(0).attempts == 1
    assert eb.Retry.coerce(5).attempts == 5
    with pytest.raises(ValueError, match="attempts"):
        eb.Retry(attempts=0)


def test_retry_idempotence() -> None:
    """GETs and POSTs to the embedding routes may be resent; other POSTs may not."""
    retry = eb.Retry()
    assert retry.is_idempotent("get", "/anything")
    assert retry.is_idempotent("POST", "/v1/embeddings")
    assert retry.is_idempotent("POST", "/prefix/embed")
    assert not retry.is_idempotent("POST", "/v1/chat/completions")


def test_hedge_validates_percentile() -> None:
    """A hedge percentile outside (0, 100) is a ValueError."""
    with pytest.raises(ValueError, match="percentile"):
        eb.Hedge(percentile=100)
