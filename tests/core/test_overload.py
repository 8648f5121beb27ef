"""Overload semantics in the pool, on a manual clock: ``Retry-After: N`` means exactly N
seconds out, never an ejection, whatever the balancer."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import embedbalance as eb

from .conftest import urls

U = urls(2)
BALANCERS = [eb.ShortestExpectedDelay, eb.PeakEwma, eb.LeastConnections, eb.RoundRobin, eb.Random]


@settings(max_examples=60, deadline=None)
@given(
    quarters=st.integers(min_value=1, max_value=1200),
    balancer=st.sampled_from(BALANCERS),
    seed=st.integers(0, 2**16),
)
def test_retry_after_keeps_a_backend_out_for_exactly_n_seconds(
    quarters: int, balancer: type, seed: int
) -> None:
    """A backend answered overloaded with Retry-After N is unpickable until exactly N clock seconds later and pickable from then on (else the hint is ignored or misread)."""
    n = quarters / 4  # exact in binary, so the boundary is exact
    clock = eb.ManualClock(1000.0)
    pool = eb.BackendPool(
        U, balancer=balancer(), clock=clock, rng=random.Random(seed), outlier_detection=None
    )
    pool.release(pool.acquire(exclude=[U[1]]), eb.Outcome.OVERLOADED, retry_after=n)
    assert {pool.acquire().backend.url for _ in range(8)} == {U[1]}
    clock.advance(n - 0.125)  # n >= 0.25
    with pytest.raises(eb.NoBackendAvailable) as info:
        pool.acquire(exclude=[U[1]])
    assert info.value.reasons[0] == eb.Unavailability(U[0], "overloaded", 1000.0 + n)
    clock.now = 1000.0 + n
    assert pool.acquire(exclude=[U[1]]).backend.url == U[0]
    row = pool.stats().by_url()[U[0]]
    assert (row.state, row.overloads, row.ejections, row.failures) == ("healthy", 1, 0, 0)


@given(st.integers(min_value=1, max_value=50))
def test_overload_answers_never_eject_however_many(count: int) -> None:
    """Any number of overload answers in a row leaves a backend un-ejected, even with a one-failure ejection policy."""
    clock = eb.ManualClock(0.0)
    pool = eb.BackendPool(
        U, clock=clock, outlier_detection=eb.OutlierDetection(consecutive_failures=1)
    )
    for _ in range(count):
        clock.advance(2.0)
        pool.release(pool.acquire(exclude=[U[1]]), eb.Outcome.OVERLOADED, retry_after=1.0)
    row = pool.stats().by_url()[U[0]]
    assert (row.ejections, row.failures, row.overloads) == (0, 0, count)


def test_a_later_shorter_retry_after_does_not_shorten_the_wait() -> None:
    """Two overload answers in flight together: the longer Retry-After wins, a later shorter one does not cut it."""
    clock = eb.ManualClock(0.0)
    pool = eb.BackendPool(U, clock=clock, balancer=eb.RoundRobin())
    first, second = pool.acquire(exclude=[U[1]]), pool.acquire(exclude=[U[1]])
    pool.release(first, eb.Outcome.OVERLOADED, retry_after=10.0)
    pool.release(second, eb.Outcome.OVERLOADED, retry_after=2.0)
    clock.advance(9.5)
    with pytest.raises(eb.NoBackendAvailable):
        pool.acquire(exclude=[U[1]])
    clock.advance(0.5)
    assert pool.acquire(exclude=[U[1]]).backend.url == U[0]


def test_negative_retry_after_means_now() -> None:
    """A negative back-off handed to the pool is treated as zero: the backend is usable at once, not before the present."""
    clock = eb.ManualClock(5.0)
    pool = eb.BackendPool(U, clock=clock)
    pool.release(pool.acquire(exclude=[U[1]]), eb.Outcome.OVERLOADED, retry_after=-3.0)
    assert pool.acquire(exclude=[U[1]]).backend.url == U[0]
