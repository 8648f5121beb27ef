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
