"""GpuPriority: stay on tier 0 while it can take the traffic, spill per Envoy's 1.4 factor."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import embedbalance as eb

from .conftest import make_state


def tiered_pool(
    clock: eb.ManualClock, gpus: int = 10, cpus: int = 10, **kwargs: object
) -> eb.BackendPool:
    backends = [eb.Backend(f"http://gpu{i}.test", tier=0) for i in range(gpus)]
    backends += [eb.Backend(f"http://cpu{i}.test", tier=1) for i in range(cpus)]
    return eb.BackendPool(
        backends,
        balancer=eb.GpuPriority(**kwargs),  # type: ignore[arg-type]
        clock=clock,
        rng=random.Random(3),
        panic_threshold=0.0,
        health_check=eb.HealthCheck(fall=1),
    )


def tier_counts(pool: eb.BackendPool, n: int, cost: float = 1.0) -> Counter[str]:
    counts: Counter[str] = Counter()
    for _ in range(n):
        lease = pool.acquire(cost=cost)
        counts[lease.backend.url[7:10]] += 1
        pool.release(lease, latency=0.01)
    return counts


def test_stays_on_tier_zero_while_healthy(clock: eb.ManualClock) -> None:
    """With every GPU backend healthy, no request goes to the CPU tier."""
    assert tier_counts(tiered_pool(clock), 2000) == {"gpu": 2000}


def test_no_spill_while_above_the_overprovisioned_threshold(clock: eb.ManualClock) -> None:
    """Losing 2 of 10 GPU backends (80% × 1.4 ≥ 100%) still keeps everything on tier 0."""
    pool = tiered_pool(clock)
    pool.report_check("http://gpu0.test", False)
    pool.report_check("http://gpu1.test", False)
    assert tier_counts(pool, 2000) == {"gpu": 2000}


def test_spills_in_proportion_when_tier_zero_degrades(clock: eb.ManualClock) -> None:
    """With 5 of 10 GPU backends out, tier 0 keeps 70% and 30% spills (Envoy's 1.4 factor)."""
    pool = tiered_pool(clock)
    for i in range(5):
        pool.report_check(f"http://gpu{i}.test", False)
    counts = tier_counts(pool, 20_000)
    assert counts["cpu"] / 20_000 == pytest.approx(0.3, abs=0.02)


def test_spills_when_tier_zero_is_ejected(clock: eb.ManualClock) -> None:
    """Passively ejected GPU backends count as unavailable capacity too."""
    pool = tiered_pool(clock, gpus=2, cpus=2)
    for _ in range(5):
        pool.release(pool.acquire(exclude=["http://gpu1.test"]), eb.Outcome.FAILURE)
    assert pool.stats().by_url()["http://gpu0.test"].state == "ejected"
    counts = tier_counts(pool, 10_000)
    assert counts["cpu"] / 10_000 == pytest.approx(0.3, abs=0.02)


def test_spills_when_tier_zero_is_saturated(clock: eb.ManualClock) -> None:
    """GPU backends at their saturation point push new requests to the CPU tier; once
    both tiers are saturated the preferred tier takes the excess."""
    pool = tiered_pool(clock, gpus=2, cpus=2, saturation=4.0)
    held = [pool.acquire() for _ in range(6)]  # 3 + 3: no GPU saturated yet
    assert {lease.backend.tier for lease in held} == {0}
    cpus = ["http://cpu0.test", "http://cpu1.test"]
    held += [pool.acquire(exclude=cpus) for _ in range(2)]  # both GPUs at 4
    assert {s.pending for s in pool.stats().backends if s.tier == 0} == {4}
    assert {pool.acquire().backend.tier for _ in range(8)} == {1}
    assert {pool.acquire().backend.tier for _ in range(4)} == {0}


def test_pin_cost_above_keeps_large_batches_on_tier_zero(clock: eb.ManualClock) -> None:
    """A request costing more than pin_cost_above stays on tier 0 even when tier 0 is degraded."""
    pool = tiered_pool(clock, pin_cost_above=100.0)
    for i in range(7):
        pool.report_check(f"http://gpu{i}.test", False)
    assert tier_counts(pool, 500, cost=512.0) == {"gpu": 500}
    assert tier_counts(pool, 2000, cost=10.0)["cpu"] > 500


def test_falls_back_to_lower_tier_when_tier_zero_is_gone(clock: eb.ManualClock) -> None:
    """With every GPU backend unhealthy all traffic goes to the CPU tier, pinned or not."""
    pool = tiered_pool(clock, gpus=2, cpus=2, pin_cost_above=100.0)
    for i in range(2):
        pool.report_check(f"http://gpu{i}.test", False)
    assert tier_counts(pool, 200, cost=512.0) == {"cpu": 200}


@settings(max_examples=150, deadline=None)
@given(
    tier0=st.lists(st.tuples(st.integers(1, 4), st.integers(0, 6)), min_size=1, max_size=6),
    tier1=st.integers(1, 6),
    saturation=st.sampled_from([None, 2.0, 4.0]),
    unavailable=st.sets(st.integers(0, 5), max_size=6),
    seed=st.integers(0, 2**16),
)
def test_spills_only_when_tier_zero_unhealthy_or_saturated(
    tier0: list[tuple[int, int]],
    tier1: int,
    saturation: float | None,
    unavailable: set[int],
    seed: int,
) -> None:
    """Any pick on tier 1 implies some tier-0 backend is unavailable or saturated."""
    gpus = [make_state(i, weight=w, pending=p, tier=0) for i, (w, p) in enumerate(tier0)]
    cpus = [make_state(i, tier=1, prefix="c") for i in range(tier1)]
    population = gpus + cpus
    candidates = [s for i, s in enumerate(gpus) if i not in unavailable] + cpus
    balancer = eb.GpuPriority(eb.PowerOfTwoChoices, saturation=saturation)
    rng = random.Random(seed)
    tiers = {
        balancer.pick(candidates, cost=1.0, now=0.0, rng=rng, population=population).tier
        for _ in range(30)
    }
    degraded = len(candidates) < len(population) or any(balancer.saturated(s) for s in gpus)
    if not degraded:
        assert tiers == {0}
    if not any(s.tier == 0 for s in candidates):
        assert tiers == {1}
