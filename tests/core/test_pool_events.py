"""Membership events carry the clock's time and their detail, and a re-admitted backend
starts with its old failures forgotten — on a manual clock."""

from __future__ import annotations

import random
from collections import Counter

import pytest

import embedbalance as eb

from .conftest import urls

U = urls(4)


def _recording_pool(clock: eb.ManualClock, **kwargs: object) -> tuple[eb.BackendPool, list]:
    events: list[tuple[str, str, float, str]] = []
    pool = eb.BackendPool(U[:3], clock=clock, **kwargs)  # type: ignore[arg-type]
    pool.add_listener(lambda e: events.append((e.kind, e.url, e.at, e.detail)))
    return pool, events


def test_removing_an_idle_backend_reports_removed_then_released_at_the_clock_time() -> None:
    """remove() of a backend with nothing in flight emits 'removed' (0 in flight) and 'released', stamped with the pool clock."""
    clock = eb.ManualClock(50.0)
    pool, events = _recording_pool(clock)
    pool.remove(U[0])
    assert events == [
        ("removed", U[0], 50.0, "0 in flight"),
        ("released", U[0], 50.0, "left the pool"),
    ]


def test_removing_a_busy_backend_releases_it_when_it_drains() -> None:
    """A backend removed with work in flight says how much, and is released only when its last lease ends."""
    clock = eb.ManualClock(5.0)
    pool, events = _recording_pool(clock)
    lease = pool.acquire(exclude=U[1:3])
    pool.remove(U[0])
    assert events == [("removed", U[0], 5.0, "1 in flight")]
    clock.advance(2.0)
    pool.release(lease, eb.Outcome.SUCCESS)
    assert events[-1][:3] == ("released", U[0], 7.0)


def test_update_reports_every_change_at_the_clock_time() -> None:
    """update() emits one stamped event per removal and addition, none lost when there are several."""
    clock = eb.ManualClock(9.0)
    pool, events = _recording_pool(clock)
    pool.update([U[2], U[3]])
    kinds = Counter((kind, url) for kind, url, _, _ in events)
    assert kinds == Counter(
        {
            ("removed", U[0]): 1,
            ("released", U[0]): 1,
            ("removed", U[1]): 1,
            ("released", U[1]): 1,
            ("added", U[3]): 1,
        }
    )
    assert {at for _, _, at, _ in events} == {9.0}


def test_readmitted_backend_has_its_old_failures_forgotten() -> None:
    """After its ejection time a backend comes back without the failure penalty that got it ejected, so it competes evenly again."""
    clock = eb.ManualClock(0.0)
    pool = eb.BackendPool(
        U[:2],
        clock=clock,
        balancer=eb.LeastConnections(),
        slow_start=None,
        rng=random.Random(4),
        outlier_detection=eb.OutlierDetection(consecutive_failures=3, base_ejection_time=1.0),
    )
    for _ in range(3):
        pool.release(pool.acquire(exclude=[U[1]]), eb.Outcome.FAILURE)
    assert pool.stats().by_url()[U[0]].state == "ejected"
    clock.advance(1.0)
    picks = Counter()
    for _ in range(200):
        lease = pool.acquire()
        picks[lease.backend.url] += 1
        pool.release(lease, eb.Outcome.SUCCESS, latency=0.01)
    assert picks[U[0]] > 60, picks


def test_health_events_carry_kind_url_time_and_detail_exactly() -> None:
    """Ejection, re-admission and active-check verdicts are reported with their kind, backend, clock time and a detail saying why, each exactly once."""
    clock = eb.ManualClock(10.0)
    pool, events = _recording_pool(
        clock,
        health_check=eb.HealthCheck(rise=2, fall=2),
        outlier_detection=eb.OutlierDetection(consecutive_failures=2, base_ejection_time=4.0),
    )
    for _ in range(2):
        pool.release(pool.acquire(exclude=U[1:3]), eb.Outcome.FAILURE)
    assert events == [("ejected", U[0], 10.0, "2 failures, for 4s")]
    assert pool.stats().by_url()[U[0]].ejections == 1
    clock.advance(1.0)
    pool.report_check(U[0], True)
    pool.report_check(U[0], True)  # rise passed checks after the ejection: back early
    assert events[1:] == [
        ("healthy", U[0], 11.0, "2 checks passed"),
        ("readmitted", U[0], 11.0, "active checks passed"),
    ]
    assert pool.stats().by_url()[U[0]].state == "healthy"
    clock.advance(1.0)
    for _ in range(3):
        pool.report_check(U[1], False)
    assert events[3:] == [("unhealthy", U[1], 12.0, "2 checks failed")]
    assert pool.stats().by_url()[U[1]].state == "unhealthy"
    assert pool.stats().by_url()[U[0]].ejections == 1


def test_release_accounting_over_many_requests() -> None:
    """Counters add up over many releases, outstanding cost tracks leases in flight, and a latency not given is the pool clock's time since acquire."""
    clock = eb.ManualClock(100.0)
    pool = eb.BackendPool([U[0]], clock=clock, outlier_detection=None)
    leases = [pool.acquire(cost=c) for c in (2.0, 3.0, 5.0)]
    assert pool.stats().backends[0].outstanding_cost == 10.0
    clock.advance(0.25)
    pool.release(leases[0], eb.Outcome.SUCCESS)
    assert pool.stats().backends[0].outstanding_cost == 8.0
    pool.release(leases[1], eb.Outcome.SUCCESS)
    pool.release(leases[2], eb.Outcome.FAILURE)
    for _ in range(2):
        pool.release(pool.acquire(), eb.Outcome.FAILURE)
    row = pool.stats().backends[0]
    assert (row.requests, row.successes, row.failures, row.pending) == (5, 2, 3, 0)
    assert row.outstanding_cost == 0.0
    assert row.latency_p50 == 0.25


def test_draining_backend_is_named_when_nothing_is_available() -> None:
    """NoBackendAvailable names a removed backend that still has work in flight as draining."""
    clock = eb.ManualClock(0.0)
    pool = eb.BackendPool([U[0]], clock=clock)
    lease = pool.acquire()
    pool.remove(U[0])
    with pytest.raises(eb.NoBackendAvailable) as info:
        pool.acquire()
    assert info.value.reasons == (eb.Unavailability(U[0], "draining"),)
    pool.release(lease, eb.Outcome.SUCCESS)
