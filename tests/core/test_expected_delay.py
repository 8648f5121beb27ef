"""ExpectedDelay / ShortestExpectedDelay: drain-rate learning, the oldest-request bound,
cost awareness, and telling a slow backend from a busy one."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import embedbalance as eb
from embedbalance.load import ExpectedDelay

from .conftest import make_state, pool_of


def test_sample_is_latency_per_unit_of_work_and_averages_with_time() -> None:
    """A sample is latency ÷ work in flight at send; later samples blend with weight exp(-Δt/τ)."""
    m = ExpectedDelay(tau=2.0)
    s = make_state()
    m.observe(s, latency=0.8, now=10.0, load_at_start=4.0)
    assert s.delay_unit == pytest.approx(0.2)
    m.observe(s, latency=0.1, now=12.0, load_at_start=1.0)
    w = math.exp(-2.0 / 2.0)
    assert s.delay_unit == pytest.approx(0.2 * w + 0.1 * (1 - w))


def test_unmeasured_backend_uses_the_default_and_idle_estimates_decay() -> None:
    """No sample yet means default_delay; an estimate left unrefreshed decays with idle_decay."""
    m = ExpectedDelay(default_delay=0.05, idle_decay=30.0)
    s = make_state()
    assert m.unit(s, 0.0) == 0.05
    m.observe(s, latency=0.3, now=0.0)
    assert m.unit(s, 0.0) == pytest.approx(0.3)
    assert m.unit(s, 30.0) == pytest.approx(0.3 * math.exp(-1.0))


def test_delay_covers_work_in_flight_and_the_new_request_cost() -> None:
    """Expected delay is unit × (outstanding cost + the new request's cost), divided by weight."""
    m = ExpectedDelay()
    s = make_state(weight=2.0)
    m.observe(s, latency=1.0, now=0.0, load_at_start=10.0)  # 0.1 s per unit
    s.outstanding_cost = 30.0
    assert m.delay(s, 0.0, cost=10.0) == pytest.approx(0.1 * 40.0 / 2.0)
    assert m.delay(s, 0.0, cost=1.0) == pytest.approx(0.1 * 31.0 / 2.0)


def test_oldest_request_in_flight_bounds_the_estimate(clock: eb.ManualClock) -> None:
    """A backend whose oldest request has waited 5 s is expected to take at least 5 s, however fast it was."""
    pool = pool_of(2, clock, balancer=eb.ShortestExpectedDelay())
    stuck = pool.acquire()
    clock.advance(5.0)
    state = stuck._state
    assert pool.balancer.metric.delay(state, clock(), 1.0) >= 5.0  # type: ignore[union-attr]
    for _ in range(20):  # every new request avoids the stalled backend
        lease = pool.acquire()
        assert lease.backend != stuck.backend
        pool.release(lease, eb.Outcome.SUCCESS, latency=0.01)
    pool.release(stuck)
    assert state.oldest_age(clock()) == 0.0


def test_tells_a_slow_backend_from_a_busy_one(clock: eb.ManualClock) -> None:
    """A fast 8-slot backend with a queue still beats an idle slow 2-slot one until its queue would take longer."""
    pool = pool_of(2, clock, balancer=eb.ShortestExpectedDelay())
    fast_url, slow_url = (b.url for b in pool.backends)
    # Teach the pool: the fast one drains 8 requests per 0.15 s, the slow one 2 per 0.9 s.
    for url, latency, load in ((fast_url, 0.15, 8.0), (slow_url, 0.9, 2.0)):
        state = next(s for s in pool._states.values() if s.url == url)
        for _ in range(5):
            pool.balancer.observe(state, latency, clock(), load)
            clock.advance(0.1)
    fast = next(s for s in pool._states.values() if s.url == fast_url)
    # Fast queue of 10: 0.019 × 11 ≈ 0.21 s beats the idle slow one's 0.45 s.
    fast.pending = 10
    fast.outstanding_cost = 10.0
    lease = pool.acquire()
    assert lease.backend.url == fast_url
    pool.release(lease, eb.Outcome.CANCELLED)
    # Fast queue of 30: 0.019 × 31 ≈ 0.58 s — now the slow one is the sooner answer.
    fast.pending = 30
    fast.outstanding_cost = 30.0
    assert pool.acquire().backend.url == slow_url


def test_black_hole_backend_gets_almost_nothing(clock: eb.ManualClock) -> None:
    """A backend that fails instantly is not mistaken for the fastest one (no ejection to help)."""
    pool = pool_of(4, clock, balancer=eb.ShortestExpectedDelay(), outlier_detection=None)
    dead = pool.backends[0].url
    hits = 0
    for _ in range(4000):
        lease = pool.acquire()
        if lease.backend.url == dead:
            hits += 1
            pool.release(lease, eb.Outcome.FAILURE)
        else:
            clock.advance(0.002)
            pool.release(lease, eb.Outcome.SUCCESS)
    assert hits < 0.05 * 4000


@settings(max_examples=60, deadline=None)
@given(
    units=st.lists(st.floats(0.001, 1.0), min_size=2, max_size=12),
    pendings=st.lists(st.integers(0, 20), min_size=12, max_size=12),
    cost=st.floats(1.0, 500.0),
    seed=st.integers(0, 2**16),
)
def test_scan_picks_a_minimum_expected_delay(units, pendings, cost, seed) -> None:
    """Up to scan_limit candidates, the pick has the least expected delay for the request's cost."""
    balancer = eb.ShortestExpectedDelay()
    metric = balancer.metric
    states = []
    for i, unit in enumerate(units):
        s = make_state(i)
        s.delay_unit, s.delay_samples, s.delay_stamp = unit, 1, 0.0
        s.pending = pendings[i]
        s.outstanding_cost = float(pendings[i])
        states.append(s)
    chosen = balancer.pick(states, cost=cost, now=0.0, rng=random.Random(seed), population=states)
    delays = [metric.delay(s, 0.0, cost) for s in states]  # type: ignore[union-attr]
    assert metric.delay(chosen, 0.0, cost) == min(delays)  # type: ignore[union-attr]


def test_many_backends_use_sampled_choices_and_stay_away_from_slow_ones() -> None:
    """Above scan_limit the pick samples `choices` candidates; slow backends are rarely chosen."""
    balancer = eb.ShortestExpectedDelay(scan_limit=16, choices=4)
    states = []
    for i in range(200):
        s = make_state(i)
        s.delay_unit, s.delay_samples = (0.45 if i % 4 == 3 else 0.02), 1
        states.append(s)
    rng = random.Random(3)
    slow = sum(
        balancer.pick(states, cost=1.0, now=0.0, rng=rng, population=states).delay_unit == 0.45
        for _ in range(4000)
    )
    assert slow / 4000 < 0.25**4 * 2  # only when all four samples are slow


def test_new_backend_is_not_starved_when_costs_are_tokens(clock: eb.ManualClock) -> None:
    """With costs in tokens, a backend added after the others were measured still gets work (its estimate starts at the pool's average, not a fixed guess)."""
    pool = pool_of(2, clock, balancer=eb.ShortestExpectedDelay(), slow_start=None)
    for _ in range(50):  # two measured backends: 10 ms per 400-token request
        lease = pool.acquire(cost=400.0)
        clock.advance(0.01)
        pool.release(lease, eb.Outcome.SUCCESS)
    pool.add("http://late.test:8000")
    served = set()
    for _ in range(10):  # three requests in flight at a time
        leases = [pool.acquire(cost=400.0) for _ in range(3)]
        served.update(lease.backend.url for lease in leases)
        clock.advance(0.01)
        for lease in leases:
            pool.release(lease, eb.Outcome.SUCCESS)
    assert "http://late.test:8000" in served


def test_unmeasured_backend_is_probed_one_request_at_a_time(clock: eb.ManualClock) -> None:
    """A backend with no answer yet is not handed a burst: while it holds a request, the others get the next ones."""
    pool = pool_of(3, clock, balancer=eb.ShortestExpectedDelay())
    leases = [pool.acquire() for _ in range(3)]
    assert len({lease.backend.url for lease in leases}) == 3  # one probe each, no pile-up
