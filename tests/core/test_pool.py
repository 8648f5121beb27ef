"""Pool membership, leases and counters."""

from __future__ import annotations

import pytest

import embedbalance as eb
from embedbalance.discovery import Change, diff

from .conftest import pool_of, urls

U = urls(4)


def test_lease_records_backend_cost_and_start(clock: eb.ManualClock) -> None:
    """acquire returns a lease naming the backend, the cost and the clock time."""
    pool = pool_of(1, clock)
    lease = pool.acquire(cost=12.0)
    assert (lease.backend.url, lease.cost, lease.started_at) == (U[0], 12.0, clock())
    row = pool.stats().backends[0]
    assert (row.pending, row.outstanding_cost, row.requests) == (1, 12.0, 1)


def test_release_twice_is_an_error(clock: eb.ManualClock) -> None:
    """Releasing a lease twice raises instead of corrupting the pending count."""
    pool = pool_of(1, clock)
    lease = pool.acquire()
    pool.release(lease)
    with pytest.raises(eb.EmbedbalanceError, match="released twice"):
        pool.release(lease)
    assert pool.stats().in_flight == 0


def test_outcomes_are_counted(clock: eb.ManualClock) -> None:
    """Each outcome lands in its own counter and every release brings pending back down."""
    pool = pool_of(1, clock, outlier_detection=None)
    for outcome in eb.Outcome:
        pool.release(pool.acquire(), outcome, retry_after=0.0)
    row = pool.stats().backends[0]
    assert (row.requests, row.successes, row.failures, row.overloads, row.cancelled) == (
        4,
        1,
        1,
        1,
        1,
    )
    assert row.pending == 0


def test_removed_backend_drains(clock: eb.ManualClock) -> None:
    """A removed backend is never picked again, its leases still release and are counted."""
    pool = pool_of(2, clock)
    lease = pool.acquire(exclude=[U[1]])
    pool.remove(U[0])
    assert {pool.acquire().backend.url for _ in range(20)} == {U[1]}
    assert pool.stats().by_url()[U[0]].state == "draining"
    assert pool.backends == (eb.Backend(U[1]),)
    pool.release(lease, eb.Outcome.FAILURE)
    assert U[0] not in pool.stats().by_url()


def test_readding_a_draining_backend_keeps_its_counts(clock: eb.ManualClock) -> None:
    """Removing and re-adding a backend with requests in flight keeps pending consistent."""
    pool = pool_of(2, clock)
    lease = pool.acquire(exclude=[U[1]])
    pool.remove(U[0])
    pool.add(U[0])
    assert pool.stats().by_url()[U[0]].pending == 1
    pool.release(lease)
    assert pool.stats().by_url()[U[0]].pending == 0


def test_update_applies_adds_removes_and_weight_changes(clock: eb.ManualClock) -> None:
    """update() makes membership exactly the given list, emitting one event per change (and 'released' for a removed backend with nothing in flight)."""
    events: list[eb.PoolEvent] = []
    pool = pool_of(3, clock)
    pool.add_listener(events.append)
    pool.update([U[0], eb.Backend(U[1], weight=3), U[3]])
    assert {b.url: b.weight for b in pool.backends} == {U[0]: 1.0, U[1]: 3.0, U[3]: 1.0}
    assert sorted((e.kind, e.url) for e in events) == [
        ("added", U[3]),
        ("released", U[2]),
        ("removed", U[2]),
        ("updated", U[1]),
    ]


def test_diff_orders_removals_first() -> None:
    """diff lists removals, then updates, then adds, keyed by URL."""
    a, b, c = (eb.Backend(u) for u in U[:3])
    changes = diff([a, b], [eb.Backend(U[1], tier=1), c])
    assert changes == [
        Change("remove", a),
        Change("update", eb.Backend(U[1], tier=1)),
        Change("add", c),
    ]


def test_static_discovery_fills_a_pool(clock: eb.ManualClock) -> None:
    """StaticDiscovery.start coerces strings and sets the pool's membership."""
    pool = eb.BackendPool(clock=clock)
    source = eb.StaticDiscovery(U[:2])
    assert isinstance(source, eb.Discovery)
    source.start(pool)
    source.stop()
    assert [b.url for b in pool.backends] == U[:2]


def test_exclude_avoids_urls(clock: eb.ManualClock) -> None:
    """exclude keeps a retry off the backends its earlier attempts used."""
    pool = pool_of(3, clock)
    assert {pool.acquire(exclude={U[0], U[1]}).backend.url for _ in range(20)} == {U[2]}


def test_stats_latency_percentiles(clock: eb.ManualClock) -> None:
    """stats reports p50/p99 of recent success latencies."""
    pool = pool_of(1, clock)
    for ms in range(1, 101):
        pool.release(pool.acquire(), latency=ms / 1000)
    row = pool.stats().backends[0]
    assert row.latency_p50 == pytest.approx(0.0505)
    assert row.latency_p99 == pytest.approx(0.09901)
