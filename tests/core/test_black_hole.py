"""The black-hole scenario: one of four backends fails instantly and must not win traffic."""

from __future__ import annotations

import heapq
import random
from collections import Counter

import pytest

import embedbalance as eb

from .conftest import urls

U = urls(4)


def simulate(balancer: eb.Balancer, seconds: float) -> tuple[float, float]:
    """1,000 requests/s for ``seconds``; healthy backends answer in 20 ms, U[0] fails at once.

    Outlier detection is off so that only the load metric's failure penalty protects
    the pool. Returns U[0]'s share overall and over the last tenth of the run.
    """
    clock = eb.ManualClock()
    pool = eb.BackendPool(
        U, balancer=balancer, outlier_detection=None, clock=clock, rng=random.Random(9)
    )
    in_flight: list[tuple[float, int, eb.Lease]] = []
    counts: Counter[str] = Counter()
    tail: Counter[str] = Counter()
    steps = int(seconds * 1000)
    for step in range(steps):
        clock.advance(0.001)
        while in_flight and in_flight[0][0] <= clock():
            pool.release(heapq.heappop(in_flight)[2])
        lease = pool.acquire()
        counts[lease.backend.url] += 1
        if step >= steps * 0.9:
            tail[lease.backend.url] += 1
        if lease.backend.url == U[0]:
            pool.release(lease, eb.Outcome.FAILURE)
        else:
            heapq.heappush(in_flight, (clock() + 0.02, step, lease))
    return counts[U[0]] / sum(counts.values()), tail[U[0]] / sum(tail.values())


@pytest.mark.parametrize("balancer", [eb.LeastConnections, eb.PeakEwma])
def test_instant_failures_get_a_small_share(balancer: type) -> None:
    """Over 120 simulated seconds the instantly failing backend gets under 2% of requests,
    and does not creep up over time (peak-EWMA's estimate decays toward 0 without samples)."""
    overall, tail = simulate(balancer(), 120.0)
    assert overall < 0.02
    assert tail < 0.02


def test_outlier_detection_ejects_the_black_hole(clock: eb.ManualClock) -> None:
    """With outlier detection on, five instant failures take the backend out entirely."""
    pool = eb.BackendPool(U, clock=clock, rng=random.Random(1))
    for _ in range(5):
        pool.release(pool.acquire(exclude=U[1:]), eb.Outcome.FAILURE)
    assert all(pool.acquire().backend.url != U[0] for _ in range(200))
