"""Extension point: a user subclass overriding score changes the picks."""

from __future__ import annotations

import random
from collections import Counter

import embedbalance as eb
from embedbalance import BackendView

from .conftest import pool_of


class AvoidZoneB(eb.LeastConnections):
    """Least connections, but backends labelled zone=b look ten times as loaded."""

    def score(self, state: BackendView, now: float) -> float:
        base = super().score(state, now)
        return base * 10 if state.backend.labels.get("zone") == "b" else base


class PreferQueueDepth(eb.PowerOfTwoChoices):
    """p2c on the server-reported queue depth."""

    def score(self, state: BackendView, now: float) -> float:
        return state.queue_depth or 0.0


def test_full_scan_subclass_score_changes_picks(clock: eb.ManualClock) -> None:
    """Overriding score on a full-scan balancer moves traffic away from the penalised zone."""
    backends = [
        eb.Backend("http://a.test", labels={"zone": "a"}),
        eb.Backend("http://b.test", labels={"zone": "b"}),
    ]
    pool = eb.BackendPool(backends, balancer=AvoidZoneB(), clock=clock, rng=random.Random(1))
    held = [pool.acquire() for _ in range(22)]
    counts = Counter(lease.backend.url for lease in held)
    assert counts == {"http://a.test": 20, "http://b.test": 2}


def test_p2c_subclass_score_changes_picks(clock: eb.ManualClock) -> None:
    """Overriding score on a p2c balancer is honoured by its pick."""
    pool = pool_of(2, clock, balancer=PreferQueueDepth())
    lease = pool.acquire()
    pool.release(lease, queue_depth=50.0)
    busy = lease.backend.url
    assert all(pool.acquire().backend.url != busy for _ in range(50))
