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
    during, after = _shares(make(), eb.SlowStart(window=WINDOW, warm_answers=0))
    without, _ = _shares(make(), eb.SlowStart(window=0.0))
    assert during > 0.0, "slow start must not starve the new backend"
    assert during < 0.8 * without, (during, without)
    assert after > during, (during, after)


def test_the_default_balancer_honours_slow_start() -> None:
    """The default balancer (what most users run) slow-starts: with the default time ramp a new backend's early share is clearly below the share it gets without it."""
    pool = eb.BackendPool(["http://a.test"])
    assert isinstance(pool.balancer, eb.ShortestExpectedDelay)
    during, _ = _shares(eb.ShortestExpectedDelay(), eb.SlowStart(warm_answers=0))
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


# -- the ramp moved on by answers ------------------------------------------------------

NEW = "http://new.test:8000"


def _warm_pool(clock: eb.ManualClock, slow_start: eb.SlowStart) -> eb.BackendPool:
    """Three backends with a history of 100 ms answers (their p99 estimates settled)."""
    pool = eb.BackendPool(
        urls(3), clock=clock, rng=random.Random(3), slow_start=slow_start, outlier_detection=None
    )
    for _ in range(200):
        pool.release(pool.acquire(), eb.Outcome.SUCCESS, latency=0.1)
    return pool


def _answer_on_new(pool: eb.BackendPool, latency: float) -> None:
    """One request placed on the new backend (the others excluded) and answered."""
    lease = pool.acquire(exclude=set(urls(3)))
    assert lease.backend.url == NEW
    pool.release(lease, eb.Outcome.SUCCESS, latency=latency)


def _factor(pool: eb.BackendPool) -> float:
    return pool.stats().by_url()[NEW].effective_weight


@pytest.mark.parametrize("history", [False, True])
def test_each_good_answer_moves_the_ramp_on_by_window_over_warm_answers(history: bool) -> None:
    """An answer as fast as usual is worth window / warm_answers seconds of ramp, so a backend that answers warm is at full share after warm_answers answers (else a restarted warm replica idles part of the pool for the whole window); with and without its own history."""
    clock = eb.ManualClock(100.0)
    pool = _warm_pool(clock, eb.SlowStart(window=10.0, warm_answers=5))
    pool.add(NEW)
    if history:  # a comeback: its own p99 from before is the yardstick
        for _ in range(30):
            _answer_on_new(pool, 0.1)
        fall, rise = pool.health_check.fall, pool.health_check.rise
        for ok in [False] * fall + [True] * rise:  # unhealthy, then back: slow start anew
            pool.report_check(NEW, ok)
        assert _factor(pool) == pytest.approx(0.1)
    clock.advance(1.0)
    assert _factor(pool) == pytest.approx(0.1)  # 10% floor: 1 s of 10 is below it
    _answer_on_new(pool, 0.09)
    assert _factor(pool) == pytest.approx(0.3)  # 1 s + 2 s of credit
    for _ in range(3):
        _answer_on_new(pool, 0.1)
    assert _factor(pool) == pytest.approx(0.9)
    _answer_on_new(pool, 0.05)
    assert _factor(pool) == 1.0


def test_slow_answers_leave_the_ramp_to_time() -> None:
    """Answers slower than the pool's usual p99 (a cold replica compiling kernels) earn no credit: the ramp follows the clock alone (else slow start would hand a cold replica its full share at once)."""
    clock = eb.ManualClock(100.0)
    pool = _warm_pool(clock, eb.SlowStart(window=10.0, warm_answers=5))
    pool.add(NEW)
    for _ in range(20):
        _answer_on_new(pool, 2.0)
    clock.advance(4.0)
    assert _factor(pool) == pytest.approx(0.4)


def test_warm_answers_zero_ramps_by_time_only() -> None:
    """``warm_answers=0`` is Envoy's time-only ramp: fast answers change nothing."""
    clock = eb.ManualClock(100.0)
    pool = _warm_pool(clock, eb.SlowStart(window=10.0, warm_answers=0))
    pool.add(NEW)
    for _ in range(20):
        _answer_on_new(pool, 0.01)
    clock.advance(3.0)
    assert _factor(pool) == pytest.approx(0.3)


def test_a_warm_newcomer_gets_its_full_share_long_before_the_window() -> None:
    """Under load, the default balancer gives a new backend that answers as fast as its peers about its full share over the first half of the window (10 good answers end the ramp), where the time ramp alone holds it well below."""
    during, _ = _shares(eb.ShortestExpectedDelay(), eb.SlowStart(window=WINDOW))
    clock_only, _ = _shares(eb.ShortestExpectedDelay(), eb.SlowStart(window=WINDOW, warm_answers=0))
    without, _ = _shares(eb.ShortestExpectedDelay(), eb.SlowStart(window=0.0))
    assert during >= 0.9 * without, (during, without)
    assert clock_only < 0.8 * without, (clock_only, without)


@pytest.mark.parametrize("name", list(BALANCERS))
def test_good_answers_end_the_ramp_early_under_every_balancer(name: str) -> None:
    """Whatever the balancer, a warm newcomer under load is at full weight within a third of the window: the time ramp lets its first requests in, their answers end the ramp (else it idles for the whole window, as with Envoy's time-only ramp)."""
    clock = eb.ManualClock(1000.0)
    pool = eb.BackendPool(
        urls(3),
        balancer=BALANCERS[name](),
        clock=clock,
        rng=random.Random(5),
        slow_start=eb.SlowStart(window=WINDOW),
        outlier_detection=None,
    )
    leases: deque[eb.Lease] = deque()
    added = None
    while clock() < 1000.0 + 2.0 + WINDOW:
        if added is None and clock() >= 1002.0:
            pool.add(NEW)
            added = clock()
        while len(leases) < IN_FLIGHT:
            leases.append(pool.acquire())
        clock.advance(STEP)
        pool.release(leases.popleft(), eb.Outcome.SUCCESS)
        if added is not None and _factor(pool) == 1.0:
            break
    assert added is not None
    assert clock() - added <= WINDOW / 3, clock() - added


def _ramp_pool(clock: eb.ManualClock, warm_answers: int) -> eb.BackendPool:
    return eb.BackendPool(
        ["http://a.test"],
        clock=clock,
        rng=random.Random(1),
        slow_start=eb.SlowStart(window=10.0, warm_answers=warm_answers),
        outlier_detection=None,
    )


def _answer(pool: eb.BackendPool, url: str, latency: float) -> None:
    others = {b.url for b in pool.backends if b.url != url}
    pool.release(pool.acquire(exclude=others), eb.Outcome.SUCCESS, latency=latency)


def test_from_its_twentieth_answer_a_backend_is_judged_by_its_own_p99() -> None:
    """With 20 answers of its own, a ramping backend's yardstick is its own p99, not the pool's largest: an answer fast for the pool but slow for it earns no credit (else a slow-warming replica rides the pool's slowest member)."""
    clock = eb.ManualClock(0.0)
    pool = _ramp_pool(clock, warm_answers=1000)
    _answer(pool, "http://a.test", 1.0)  # the pool's largest p99: about 2 s
    pool.add(NEW)
    for _ in range(20):
        _answer(pool, NEW, 0.1)
    own = pool.stats().by_url()[NEW].latency_high
    assert own is not None
    assert own < 0.5
    clock.advance(3.0)  # off the 10% floor, so a credit would show
    before = _factor(pool)
    _answer(pool, NEW, 0.5)  # under the pool's 2 s, over its own ~0.2 s
    assert _factor(pool) == before


def test_an_answer_exactly_at_the_usual_p99_earns_credit() -> None:
    """ "No slower than usual" includes equal: an answer at exactly the backend's p99 moves the ramp on."""
    clock = eb.ManualClock(0.0)
    pool = _ramp_pool(clock, warm_answers=10)
    pool.add(NEW)
    for _ in range(20):
        _answer(pool, NEW, 0.1)
    pool.report_check(NEW, False)  # make it ramp again from now with its history kept
    fall, rise = pool.health_check.fall, pool.health_check.rise
    for ok in [False] * (fall - 1) + [True] * rise:
        pool.report_check(NEW, ok)
    usual = pool.stats().by_url()[NEW].latency_high
    assert usual is not None
    clock.advance(2.0)
    assert _factor(pool) == pytest.approx(0.2)
    _answer(pool, NEW, usual)
    assert _factor(pool) == pytest.approx(0.3)


def test_the_pools_yardstick_is_rescanned_once_a_second() -> None:
    """A newcomer is judged by the pool's largest p99, rescanned when a second has passed since the last scan (exactly one second included): a pool that slowed meanwhile counts."""
    clock = eb.ManualClock(0.0)
    pool = _ramp_pool(clock, warm_answers=10)
    _answer(pool, "http://a.test", 0.1)  # the pool's p99: 0.2 s
    pool.add(NEW)
    clock.advance(2.0)
    _answer(pool, NEW, 0.15)  # scanned now: 0.15 <= 0.2, credit (2 s + 1 s)
    assert _factor(pool) == pytest.approx(0.3)
    _answer(pool, "http://a.test", 3.0)  # young estimate catches up: p99 3 s
    clock.advance(0.5)
    _answer(pool, NEW, 0.5)  # within the second: still the old 0.2 s, no credit
    assert _factor(pool) == pytest.approx(0.35)
    clock.advance(0.5)  # exactly one second after the scan
    _answer(pool, NEW, 0.5)  # rescanned: 0.5 <= 3 s, credit
    assert _factor(pool) == pytest.approx(0.5)
