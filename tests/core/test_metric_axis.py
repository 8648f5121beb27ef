"""The metric axis: each metric keeps its own per-backend record, stats report any
metric's estimate, a pool builds its own balancer from a factory (and refuses to share
one), score() sees a read-only view, and the per-attempt deadline helper."""

from __future__ import annotations

import random

import pytest

import embedbalance as eb
from embedbalance.load import DelayEstimate, RttEstimate

from .conftest import pool_of


def test_balancer_factory_gives_each_pool_its_own_balancer(clock: eb.ManualClock) -> None:
    """balancer= accepts a class (or any factory): two pools built from it never share learned state."""
    a = pool_of(2, clock, balancer=eb.ShortestExpectedDelay)
    b = pool_of(2, clock, balancer=lambda: eb.ShortestExpectedDelay(tolerance=0.1))
    assert isinstance(a.balancer, eb.ShortestExpectedDelay)
    assert a.balancer is not b.balancer
    assert b.balancer.tolerance == 0.1
    a.release(a.acquire(), latency=0.2)
    assert a.balancer.prior is not None
    assert b.balancer.prior is None


def test_one_balancer_instance_cannot_serve_two_pools(clock: eb.ManualClock) -> None:
    """Handing the same balancer instance to a second pool is a clear ValueError (its learned state is per pool)."""
    shared = eb.PeakEwma()
    pool_of(2, clock, balancer=shared)
    with pytest.raises(ValueError, match="factory"):
        pool_of(2, clock, balancer=shared)
    with pytest.raises(TypeError, match="Balancer"):
        pool_of(2, clock, balancer=lambda: "not a balancer")


@pytest.mark.parametrize(
    ("factory", "record"),
    [(eb.PeakEwma, RttEstimate), (eb.ShortestExpectedDelay, DelayEstimate)],
)
def test_each_metric_keeps_its_own_record_and_stats_report_it(
    clock: eb.ManualClock, factory: type[eb.Balancer], record: type
) -> None:
    """A metric's per-backend state lives in its own record, and stats() report its estimate whatever the metric."""
    pool = eb.BackendPool(["http://a.test"], balancer=factory, clock=clock)
    lease = pool.acquire()
    clock.advance(0.25)
    pool.release(lease)
    state = next(iter(pool._states.values()))
    assert isinstance(state.metric_state, record)
    row = pool.stats().backends[0]
    assert row.estimate == pytest.approx(0.25)
    assert row.latency_high is not None
    assert row.latency_high >= 0.25


def test_stats_report_the_learned_knee(clock: eb.ManualClock) -> None:
    """The default balancer's learned concurrency shows in stats (None for metrics without one)."""
    pool = eb.BackendPool(["http://a.test"], clock=clock)
    leases = [pool.acquire() for _ in range(6)]
    clock.advance(0.1)
    for lease in leases:
        pool.release(lease, hints=eb.ServerHints(queue_depth=2.0, in_flight=6.0))
    assert pool.stats().backends[0].concurrency == pytest.approx(4.0, rel=0.1)
    plain = eb.BackendPool(["http://a.test"], balancer=eb.LeastConnections, clock=clock)
    plain.release(plain.acquire())
    assert plain.stats().backends[0].concurrency is None
    assert plain.stats().backends[0].estimate is None


def test_score_receives_a_read_only_view(clock: eb.ManualClock) -> None:
    """A user's score() gets a BackendView: it reads live numbers but cannot write into the pool's record."""
    seen: list[tuple[eb.BackendView, int]] = []

    class Spy(eb.LeastConnections):
        def score(self, backend: eb.BackendView, now: float) -> float:
            seen.append((backend, backend.pending))
            return float(backend.pending)

    pool = pool_of(2, clock, balancer=Spy)
    first = pool.acquire()
    second = pool.acquire()
    assert second.backend != first.backend  # the score was honoured
    assert sorted(p for _, p in seen[-2:]) == [0, 1]  # it saw the live pending counts
    view = seen[-1][0]
    assert isinstance(view, eb.BackendView)
    assert view.pending == 1  # a live window, not a copy
    with pytest.raises(AttributeError, match="read-only"):
        view.pending = 0  # type: ignore[misc]
    assert view.pending == 1


@pytest.mark.parametrize("cost", [float("nan"), float("inf"), -1.0])
def test_bad_costs_are_refused_at_the_pool(clock: eb.ManualClock, cost: float) -> None:
    """A NaN, infinite or negative cost is a ValueError naming the cost, not a poisoned estimate."""
    pool = pool_of(2, clock)
    with pytest.raises(ValueError, match="cost must be a finite number >= 0"):
        pool.acquire(cost=cost)
    assert pool.stats().in_flight == 0


def test_attempt_deadline_follows_the_backend_high_percentile(clock: eb.ManualClock) -> None:
    """The per-attempt deadline is a multiple of the backend's recent p99, the pool's worst while it has few answers, and never above the ceiling."""
    pool = pool_of(2, clock, balancer=eb.LeastConnections, rng=random.Random(1))
    fast, slow = (b.url for b in pool.backends)
    assert pool.attempt_deadline(fast, ceiling=30.0) == 30.0  # nothing known yet
    rng = random.Random(2)
    for _ in range(400):
        lease = pool.acquire(exclude=[slow])
        pool.release(lease, latency=rng.uniform(0.08, 0.12))
    for _ in range(5):
        lease = pool.acquire(exclude=[fast])
        pool.release(lease, latency=2.0)
    deadline = pool.attempt_deadline(fast, multiple=3.0, ceiling=30.0)
    assert deadline is not None
    assert 0.3 <= deadline <= 0.6
    young = pool.attempt_deadline(slow, multiple=3.0, ceiling=30.0)
    assert young is not None
    assert young >= 3.0 * 2.0
    assert pool.attempt_deadline(slow, multiple=3.0, ceiling=1.0) == 1.0
    with pytest.raises(ValueError, match="multiple"):
        pool.attempt_deadline(fast, multiple=0.0)
