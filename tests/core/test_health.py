"""Outlier detection, active checks, slow start, panic mode and overload, on a manual clock."""

from __future__ import annotations

import random
from collections import Counter

import pytest

import embedbalance as eb
from embedbalance.health import ejection_duration, max_ejectable

from .conftest import pool_of, urls

U = urls(10)


def fail(pool: eb.BackendPool, url: str, times: int) -> None:
    """Send ``times`` failing requests to ``url`` (everything else excluded)."""
    others = [u for u in U if u != url]
    for _ in range(times):
        pool.release(pool.acquire(exclude=others), eb.Outcome.FAILURE)


def state_of(pool: eb.BackendPool, url: str) -> eb.BackendStats:
    return pool.stats().by_url()[url]


def test_five_consecutive_failures_eject(clock: eb.ManualClock) -> None:
    """Four failures in a row keep a backend in; the fifth ejects it for 30 s."""
    pool = pool_of(10, clock)
    fail(pool, U[0], 4)
    assert state_of(pool, U[0]).state == "healthy"
    fail(pool, U[0], 1)
    row = state_of(pool, U[0])
    assert row.state == "ejected"
    assert row.ejected_until == pytest.approx(clock() + 30.0)


def test_a_success_resets_the_failure_streak(clock: eb.ManualClock) -> None:
    """Failures interleaved with successes never eject: only consecutive ones count."""
    pool = pool_of(10, clock)
    for _ in range(5):
        fail(pool, U[0], 4)
        pool.release(pool.acquire(exclude=U[1:]))
    assert state_of(pool, U[0]).state == "healthy"


def test_overload_answers_never_eject(clock: eb.ManualClock) -> None:
    """429s are load, not death: twenty of them do not eject."""
    pool = pool_of(10, clock)
    for _ in range(20):
        pool.release(pool.acquire(exclude=U[1:]), eb.Outcome.OVERLOADED, retry_after=0.0)
    assert state_of(pool, U[0]).ejections == 0


def test_ejected_backend_is_not_picked_and_readmits_with_slow_start(
    clock: eb.ManualClock,
) -> None:
    """An ejected backend gets nothing until its time is over, then comes back slow-started."""
    pool = pool_of(10, clock, balancer=eb.RoundRobin(), slow_start=eb.SlowStart(window=10.0))
    fail(pool, U[0], 5)
    picks = {pool.acquire().backend.url for _ in range(100)}
    assert U[0] not in picks
    clock.advance(29.9)
    assert state_of(pool, U[0]).state == "ejected"
    clock.advance(0.1)
    row = state_of(pool, U[0])
    assert row.state == "healthy"
    assert row.effective_weight == pytest.approx(0.1)  # the 10% floor at t=0 of the ramp
    clock.advance(5.0)
    assert state_of(pool, U[0]).effective_weight == pytest.approx(0.5)
    clock.advance(5.0)
    assert state_of(pool, U[0]).effective_weight == pytest.approx(1.0)


def test_ejection_time_grows_and_is_capped() -> None:
    """The n-th ejection lasts 30 s × n, never more than 300 s."""
    policy = eb.OutlierDetection()
    assert [ejection_duration(policy, n) for n in (1, 2, 3, 10, 11, 50)] == [
        30.0,
        60.0,
        90.0,
        300.0,
        300.0,
        300.0,
    ]


def test_repeated_ejections_last_longer_in_the_pool(clock: eb.ManualClock) -> None:
    """A backend ejected again right after re-admission stays out twice as long, then 3×."""
    pool = pool_of(10, clock)
    durations = []
    for _ in range(3):
        fail(pool, U[0], 5)
        row = state_of(pool, U[0])
        durations.append(row.ejected_until - clock())  # type: ignore[operator]
        clock.advance(durations[-1])
    assert durations == pytest.approx([30.0, 60.0, 90.0])


def test_ejection_multiplier_resets_after_a_long_healthy_spell(clock: eb.ManualClock) -> None:
    """After staying in for max_ejection_time, the next ejection is back to the base time."""
    pool = pool_of(10, clock)
    fail(pool, U[0], 5)
    clock.advance(30.0)
    fail(pool, U[0], 5)  # 60 s
    clock.advance(60.0 + 301.0)
    fail(pool, U[0], 5)
    assert state_of(pool, U[0]).ejected_until == pytest.approx(clock() + 30.0)


def test_max_ejection_percent_caps_ejections(clock: eb.ManualClock) -> None:
    """With max_ejection_percent=20, at most 2 of 10 backends are ejected at once."""
    pool = pool_of(10, clock, outlier_detection=eb.OutlierDetection(max_ejection_percent=20))
    for url in U[:5]:
        fail(pool, url, 5)
    states = Counter(b.state for b in pool.stats().backends)
    assert states == {"ejected": 2, "healthy": 8}
    assert max_ejectable(eb.OutlierDetection(max_ejection_percent=0), 3) == 1


def test_disabled_outlier_detection_never_ejects(clock: eb.ManualClock) -> None:
    """outlier_detection=None turns passive ejection off."""
    pool = pool_of(10, clock, outlier_detection=None)
    fail(pool, U[0], 50)
    assert state_of(pool, U[0]).state == "healthy"


def test_report_check_fall_and_rise(clock: eb.ManualClock) -> None:
    """fall failed checks mark a backend unhealthy; rise passed ones bring it back slow-started."""
    pool = pool_of(
        4, clock, health_check=eb.HealthCheck(rise=2, fall=3), slow_start=eb.SlowStart(10.0)
    )
    pool.report_check(U[0], False)
    pool.report_check(U[0], False)
    assert state_of(pool, U[0]).state == "healthy"
    pool.report_check(U[0], False)
    assert state_of(pool, U[0]).state == "unhealthy"
    assert all(pool.acquire().backend.url != U[0] for _ in range(50))
    pool.report_check(U[0], True)
    assert state_of(pool, U[0]).state == "unhealthy"
    pool.report_check(U[0], True)
    row = state_of(pool, U[0])
    assert row.state == "healthy"
    assert row.effective_weight == pytest.approx(0.1)


def test_first_healthy_verdict_keeps_full_weight(clock: eb.ManualClock) -> None:
    """A serving backend's first passing checks do not slow-start it (only a comeback does)."""
    pool = pool_of(4, clock, health_check=eb.HealthCheck(rise=2), slow_start=eb.SlowStart(10.0))
    pool.report_check(U[0], True)
    pool.report_check(U[0], True)
    assert state_of(pool, U[0]).effective_weight == 1.0


def test_passing_checks_uneject_early(clock: eb.ManualClock) -> None:
    """A passively ejected backend comes back after rise passing checks, long before 30 s."""
    pool = pool_of(4, clock, health_check=eb.HealthCheck(rise=2))
    for _ in range(3):  # checks passing before the ejection do not count toward it
        pool.report_check(U[0], True)
    fail(pool, U[0], 5)
    clock.advance(2.0)
    pool.report_check(U[0], True)
    assert state_of(pool, U[0]).state == "ejected"
    clock.advance(2.0)
    pool.report_check(U[0], True)
    assert state_of(pool, U[0]).state == "healthy"


def test_uneject_on_success_can_be_disabled(clock: eb.ManualClock) -> None:
    """With uneject_on_success=False passing checks leave an ejection to run its course."""
    pool = pool_of(4, clock, health_check=eb.HealthCheck(rise=1, uneject_on_success=False))
    fail(pool, U[0], 5)
    for _ in range(5):
        pool.report_check(U[0], True)
    assert state_of(pool, U[0]).state == "ejected"


def test_report_check_for_unknown_backend_is_ignored(clock: eb.ManualClock) -> None:
    """A check result for a URL no longer in the pool is dropped, not an error."""
    pool = pool_of(2, clock)
    pool.report_check("http://gone.test", False)
    assert len(pool.stats().backends) == 2


def test_slow_start_ramp() -> None:
    """SlowStart is linear with a floor, faster early with aggression > 1, off with window=0."""
    s = eb.SlowStart(window=10.0, min_weight_percent=10.0)
    assert [s.factor(t) for t in (0.0, 0.5, 5.0, 10.0, 50.0)] == pytest.approx(
        [0.1, 0.1, 0.5, 1.0, 1.0]
    )
    assert eb.SlowStart(window=10.0, aggression=2.0).factor(2.5) == pytest.approx(0.5)
    assert eb.SlowStart(window=0.0).factor(0.0) == 1.0


def test_new_backend_slow_starts_in_the_pool(clock: eb.ManualClock) -> None:
    """A backend added at runtime gets a small share at first and its full share after the
    window, while the initial members start warm."""
    pool = pool_of(1, clock, balancer=eb.WeightedRoundRobin(), slow_start=eb.SlowStart(window=10.0))
    pool.add("http://late.test")
    first = Counter(pool.acquire().backend.url for _ in range(1100))
    assert first["http://late.test"] == 100  # weight 0.1 against 1.0
    clock.advance(10.0)
    later = Counter(pool.acquire().backend.url for _ in range(1000))
    assert later["http://late.test"] == 500


def test_panic_mode_balances_over_everything(clock: eb.ManualClock) -> None:
    """Below the panic threshold the pool ignores health; above it, it honours it."""
    events: list[eb.PoolEvent] = []
    pool = pool_of(4, clock, health_check=eb.HealthCheck(fall=1), panic_threshold=0.5)
    pool.add_listener(events.append)
    pool.report_check(U[0], False)
    assert all(pool.acquire().backend.url != U[0] for _ in range(100))  # 3 of 4: calm
    pool.report_check(U[1], False)
    assert not pool.stats().panic  # 2 of 4 is not below 50%
    pool.report_check(U[2], False)
    assert pool.stats().panic
    picked = Counter(pool.acquire().backend.url for _ in range(400))
    assert set(picked) == set(U[:4])
    assert "panic" in [e.kind for e in events]
    pool.report_check(U[2], True)
    pool.report_check(U[2], True)
    assert not pool.stats().panic
    assert [e.kind for e in events][-2:] == ["healthy", "calm"]


def test_panic_threshold_zero_disables_panic(clock: eb.ManualClock) -> None:
    """panic_threshold=0: with every backend unhealthy the pool raises rather than panics."""
    pool = pool_of(2, clock, health_check=eb.HealthCheck(fall=1), panic_threshold=0.0)
    for url in U[:2]:
        pool.report_check(url, False)
    with pytest.raises(eb.NoBackendAvailable) as info:
        pool.acquire()
    assert {(r.url, r.reason) for r in info.value.reasons} == {
        (U[0], "unhealthy"),
        (U[1], "unhealthy"),
    }


def test_overload_with_retry_after_excludes_then_readmits(clock: eb.ManualClock) -> None:
    """A 429 with Retry-After keeps a backend out until then, and no longer; it is not ejected."""
    pool = pool_of(2, clock, balancer=eb.RoundRobin())
    lease = pool.acquire(exclude=[U[1]])
    pool.release(lease, eb.Outcome.OVERLOADED, retry_after=2.0)
    assert state_of(pool, U[0]).state == "overloaded"
    assert {pool.acquire().backend.url for _ in range(20)} == {U[1]}
    clock.advance(1.999)
    with pytest.raises(eb.NoBackendAvailable) as info:
        pool.acquire(exclude=[U[1]])
    assert info.value.reasons == (
        eb.Unavailability(U[0], "overloaded", clock() + 0.001),
        eb.Unavailability(U[1], "excluded"),
    )
    clock.advance(0.001)
    assert pool.acquire(exclude=[U[1]]).backend.url == U[0]
    assert state_of(pool, U[0]).ejections == 0


def test_overload_without_retry_after_backs_off_one_second(clock: eb.ManualClock) -> None:
    """An overload answer without Retry-After avoids the backend for the default 1 s."""
    pool = pool_of(2, clock)
    pool.release(pool.acquire(exclude=[U[1]]), eb.Outcome.OVERLOADED)
    assert state_of(pool, U[0]).state == "overloaded"
    clock.advance(1.0)
    assert state_of(pool, U[0]).state == "healthy"


def test_no_backend_available_names_every_backend(clock: eb.ManualClock) -> None:
    """NoBackendAvailable lists each backend with its reason, and says when none is configured."""
    with pytest.raises(eb.NoBackendAvailable, match="none configured") as info:
        eb.BackendPool(clock=clock).acquire()
    assert info.value.reasons == ()
    pool = pool_of(2, clock, panic_threshold=0.0)
    fail(pool, U[0], 5)
    with pytest.raises(eb.NoBackendAvailable, match="ejected until") as info:
        pool.acquire(exclude=[U[1]])
    assert [r.reason for r in info.value.reasons] == ["ejected", "excluded"]
    assert isinstance(info.value, eb.EmbedbalanceError)


def test_events_are_emitted(clock: eb.ManualClock) -> None:
    """Listeners hear ejections and re-admissions, in order."""
    events: list[eb.PoolEvent] = []
    pool = pool_of(4, clock, rng=random.Random(1))
    pool.add_listener(events.append)
    fail(pool, U[0], 5)
    clock.advance(30.0)
    pool.acquire()
    assert [(e.kind, e.url) for e in events] == [("ejected", U[0]), ("readmitted", U[0])]
