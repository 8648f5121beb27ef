"""Finagle-style evenness: 100 backends, 100,000 requests, fixed seed, tolerance-based."""

from __future__ import annotations

import random
from collections import Counter, deque

import pytest

import embedbalance as eb

from .conftest import pool_of

BACKENDS = 100
REQUESTS = 100_000
MEAN = REQUESTS / BACKENDS


def run(balancer: eb.Balancer, concurrency: int) -> Counter[str]:
    """Send REQUESTS through a pool, keeping ``concurrency`` of them in flight."""
    pool = pool_of(BACKENDS, eb.ManualClock(), balancer=balancer, rng=random.Random(42))
    held: deque[eb.Lease] = deque()
    counts: Counter[str] = Counter()
    for _ in range(REQUESTS):
        lease = pool.acquire()
        counts[lease.backend.url] += 1
        held.append(lease)
        if len(held) >= concurrency:
            pool.release(held.popleft(), latency=0.01)
    return counts


@pytest.mark.parametrize(
    ("balancer", "concurrency", "tolerance"),
    [
        (eb.RoundRobin, 1, 0.0),  # exact
        (eb.WeightedRoundRobin, 1, 0.0),  # exact with equal weights
        (eb.Random, 1, 0.15),  # binomial: σ ≈ 3.1% of the mean, so ±15% is ~5σ
        (eb.PowerOfTwoChoices, 1, 0.15),  # idle: ties, so as even as random
        (eb.PowerOfTwoChoices, 200, 0.05),  # under load p2c is much tighter than random
        (eb.PeakEwma, 200, 0.15),
    ],
)
def test_hundred_backends_even(balancer: type, concurrency: int, tolerance: float) -> None:
    """Every one of 100 identical backends gets its share of 100,000 requests within tolerance."""
    counts = run(balancer(), concurrency)
    assert len(counts) == BACKENDS
    assert sum(counts.values()) == REQUESTS
    worst = max(abs(c - MEAN) for c in counts.values()) / MEAN
    assert worst <= tolerance, f"worst deviation {worst:.1%}"
    if balancer is eb.Random:
        assert worst > 0.03  # the spread is visible: the tolerance can tell them apart
