"""Bulk requests' overloads, and the usable-backend count, at the pool (pure: a
manual clock, no I/O)."""

from __future__ import annotations

import pytest

import embedbalance as eb


def test_bulk_overload_keeps_only_bulk_away():
    """An overloaded release of a bulk lease hides the backend from bulk picks until its
    Retry-After ends, and from no interactive pick. If this fails, a bulk 429 locks
    interactive requests out of the replica (or bulk keeps hammering it)."""
    clock = eb.ManualClock()
    pool = eb.BackendPool(["http://a:1"], clock=clock)
    lease = pool.acquire(bulk=True)
    assert lease.bulk
    pool.release(lease, eb.Outcome.OVERLOADED, retry_after=10.0)
    pool.release(pool.acquire())  # interactive: still picked
    with pytest.raises(eb.NoBackendAvailable) as caught:
        pool.acquire(bulk=True)
    assert [(r.reason, r.until) for r in caught.value.reasons] == [("overloaded (bulk)", 10.0)]
    assert pool.stats().backends[0].state == "healthy"
    clock.advance(10.0)
    pool.release(pool.acquire(bulk=True))


def test_usable_count_counts_only_members_a_request_may_go_to():
    """Ejected, unhealthy and canary-pending members and those of another model are not
    usable; an overloaded one still is (it is back in seconds). If this fails, a bulk
    client sizes its limit by replicas that take no traffic, and floods the rest."""
    clock = eb.ManualClock()
    pool = eb.BackendPool(
        [
            eb.Backend("http://ok:1", model="m"),
            eb.Backend("http://busy:1", model="m"),
            eb.Backend("http://ejected:1", model="m"),
            eb.Backend("http://sick:1", model="m"),
            eb.Backend("http://other:1", model="x"),
        ],
        outlier_detection=eb.OutlierDetection(consecutive_failures=1, max_ejection_percent=100),
        panic_threshold=0.0,
        clock=clock,
    )
    assert (pool.usable_count(), pool.usable_count("m")) == (5, 4)
    for _ in range(pool.health_check.fall):
        pool.report_check("http://sick:1", ok=False)
    lease = pool.acquire(exclude={"http://ok:1", "http://busy:1", "http://sick:1"}, model="m")
    assert lease.backend.url == "http://ejected:1"
    pool.release(lease, eb.Outcome.FAILURE)
    pool.release(pool.acquire(exclude={"http://ok:1"}, model="m"), eb.Outcome.OVERLOADED)
    assert pool.usable_count("m") == 2
    assert pool.usable_count() == 3
    assert len(pool.backends) == 5


def test_usable_count_leaves_out_replicas_awaiting_their_canary():
    """With canary checks on, a member whose first canary has not passed takes no
    traffic and is not counted. If this fails, the count includes replicas that may be
    serving wrong vectors."""
    pool = eb.BackendPool(["http://a:1", "http://b:1"], health_check=eb.HealthCheck(canary=True))
    assert pool.usable_count() == 0
    pool.report_canary("http://a:1", True, "canary: ok")
    assert pool.usable_count() == 1
