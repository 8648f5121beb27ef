"""Slow start under every balancer: a backend added at runtime gets a reduced, non-zero
share during the window and its full share after it, on a manual clock."""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable

import pytest

import embedbalance as eb

from .conftest import urls

WINDOW = 10.0
STEP = 0.003  # clock seconds between two requests
IN_FLIGHT = 16  # closed loop: each answer lets the next request in

BALANCERS: dict[str, Callable[[], eb.Balancer]] = {
    "ShortestExpectedDelay": eb.ShortestExpectedDelay,
    "PeakEwma": eb.PeakEwma,
    "LeastConnections": eb.LeastConnections,
    "PowerOfTwoChoices": eb.PowerOfTwoChoices,
    "LeastOutstandingTokens": eb.LeastOutstandingTokens,
    "WeightedRoundRobin": eb.WeightedRoundRobin,
    "Random": eb.Random,
    "GpuPriority": eb.GpuPriority,
    "RoundRobin": eb.RoundRobin,
}

def _shares(balancer: eb.Balancer, slow_start: eb.SlowStart) -> tuple[float, float]:
    """The new backend's share of requests in the first half of its window, and after it."""
    clock = eb.ManualClock(1000.0)
    pool = eb.BackendPool(
        urls(3),
        balancer=balancer,
        clock=clock,
        rng=random.Random(11),
        slow_start=slow_start,
        outlier_detection=None,
    )
    leases: deque[eb.Lease] = deque()

    def run(seconds: float) -> float:
        """Drive the closed loop for ``seconds``; the new backend's share of picks."""
        picks = new = 0
        end = clock() + seconds
        while clock() < end:
            while len(leases) < IN_FLIGHT:
                lease = pool.acquire()
                leases.append(lease)
                picks += 1
                new += lease.backend.url == "http://new.test:8000"
            clock.advance(STEP)
            pool.release(leases.popleft(), eb.Outcome.SUCCESS)
        return new / picks

    run(2.0)  # measured, warm backends
    pool.add("http://new.test:8000")
    during = run(WINDOW / 2)
    run(WINDOW / 2)
    after = run(3.0)
    return during, after


@pytest.mark.parametrize("name", list(BALANCERS))
def test_added_backend_gets_a_reduced_but_non_zero_share(name: str) -> None:
    """During its window a new backend gets less than it would without slow start, but not nothing, and its share recovers after the window (else a cold replica is flooded, or starved forever)."""
    make = BALANCERS[name]
    during, after = _shares(make(), eb.SlowStart(window=WINDOW))
    without, _ = _shares(make(), eb.SlowStart(window=0.0))
    assert during > 0.0, "slow start must not starve the new backend"
    assert during < 0.8 * without, (during, without)
    assert after > during, (during, after)


def test_the_default_balancer_honours_slow_start() -> None:
    """The default balancer (what most users run) slow-starts: with the default SlowStart a new backend's early share is clearly below the share it gets without it."""
    pool = eb.BackendPool(["http://a.test"])
    assert isinstance(pool.balancer, eb.ShortestExpectedDelay)
    during, _ = _shares(eb.ShortestExpectedDelay(), eb.SlowStart())
    without, _ = _shares(eb.ShortestExpectedDelay(), eb.SlowStart(window=0.0))
    assert 0.0 < during < 0.8 * without


def test_effective_weight_in_stats_follows_the_ramp() -> None:
    """stats() reports the ramp: min weight at admission, the linear factor mid-window, the full weight after it."""
    clock = eb.ManualClock(0.0)
    pool = eb.BackendPool(["http://a.test"], clock=clock, slow_start=eb.SlowStart(window=10.0))
    pool.add(eb.Backend("http://b.test", weight=2.0))

    def weight() -> float:
        return pool.stats().by_url()["http://b.test"].effective_weight

    assert weight() == pytest.approx(0.2)  # 10% floor of weight 2
    clock.advance(5.0)
    assert weight() == pytest.approx(1.0)
    clock.advance(4.5)
    assert 1.0 < weight() < 2.0
    clock.advance(0.5)
    assert weight() == 2.0
    assert pool.stats().by_url()["http://a.test"].effective_weight == 1.0
