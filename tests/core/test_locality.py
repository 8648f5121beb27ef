"""Locality: traffic stays in the caller's zone while it can carry it, spills in
proportion (Envoy's overprovisioning factor), and comes back as the zone recovers."""

from __future__ import annotations

import itertools
import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import embedbalance as eb
from embedbalance import strategies
from embedbalance.locality import local_share, prefer_local

weights = st.floats(min_value=0.0, max_value=1e6, allow_nan=False)
factors = st.floats(min_value=1.0, max_value=10.0, allow_nan=False)


@given(weights, weights, weights, factors)
def test_the_local_share_is_a_fraction(avail: float, total: float, remote: float, f: float) -> None:
    """If this fails, a share outside 0..1 makes the draw always or never local."""
    assert 0.0 <= local_share(avail, total, remote, f) <= 1.0


@given(
    st.floats(min_value=0.0, max_value=1.0),
    st.floats(min_value=0.0, max_value=1.0),
    st.floats(min_value=0.1, max_value=1e3),
    st.floats(min_value=0.1, max_value=1e3),
    factors,
)
def test_more_local_capacity_never_means_less_local_traffic(
    a: float, b: float, total: float, remote: float, f: float
) -> None:
    """If this fails, a recovering local zone would get *less* traffic as it heals."""
    low, high = sorted((a * total, b * total))
    assert local_share(low, total, remote, f) <= local_share(high, total, remote, f)


@given(st.floats(min_value=0.1, max_value=1e3), st.floats(min_value=0.1, max_value=1e3), factors)
def test_a_zone_with_its_overprovisioned_capacity_keeps_everything(
    total: float, remote: float, f: float
) -> None:
    """If this fails, a healthy local zone leaks traffic to other zones for nothing."""
    assert local_share(total / f, total, remote, f) == pytest.approx(1.0)
    assert local_share(total, total, remote, f) == 1.0


@given(weights, st.floats(min_value=0.1, max_value=1e3), factors)
def test_an_empty_local_zone_sends_everything_away(total: float, remote: float, f: float) -> None:
    """If this fails, requests keep going to a local zone with nothing available in it."""
    assert local_share(0.0, total, remote, f) == 0.0


@given(weights, st.floats(min_value=0.1, max_value=1e3), factors)
def test_with_nothing_elsewhere_the_local_zone_keeps_everything(
    avail: float, total: float, f: float
) -> None:
    """If this fails, a busy local zone sends traffic to other zones that cannot take it."""
    assert local_share(avail, total, 0.0, f) == 1.0


@given(
    st.floats(min_value=0.0, max_value=1.0),
    st.floats(min_value=0.1, max_value=1e3),
    st.floats(min_value=0.1, max_value=1e3),
    factors,
)
def test_the_split_is_envoys_priority_split(
    fraction: float, total: float, remote: float, f: float
) -> None:
    """If this fails, zones and priority tiers spill by different rules, and the docs'
    "like priority tiers" is false."""
    avail = fraction * total
    tiers = strategies.tier_shares([avail, remote], [total, remote], f)
    assert local_share(avail, total, remote, f) == pytest.approx(tiers[0])


@settings(max_examples=50)
@given(st.floats(min_value=0.0, max_value=1.0), st.integers(0, 2**32))
def test_draws_follow_the_share(share: float, seed: int) -> None:
    """If this fails, the local zone gets a different share of requests than computed."""
    rng = random.Random(seed)
    n = 2000
    local = sum(prefer_local(share, rng) for _ in range(n))
    assert abs(local / n - share) < 0.06


def test_a_zone_must_be_named() -> None:
    """If this fails, an empty zone name (an unset variable) silently means "no zone"."""
    with pytest.raises(ValueError, match="zone"):
        eb.Locality("")
    with pytest.raises(ValueError, match="overprovisioning"):
        eb.Locality("a", overprovisioning=0.5)
    with pytest.raises(ValueError, match="zone"):
        eb.Backend("http://a.test", zone="")


# -- in a pool -----------------------------------------------------------------------


def zoned_pool(
    clock: eb.ManualClock,
    local: int = 10,
    remote: int = 10,
    zone: eb.Locality | str = "a",
    **kwargs: object,
) -> eb.BackendPool:
    backends = [eb.Backend(f"http://a{i}.test", zone="a") for i in range(local)]
    backends += [eb.Backend(f"http://b{i}.test", zone="b") for i in range(remote)]
    kwargs.setdefault("balancer", eb.LeastConnections)
    return eb.BackendPool(
        backends,
        zone=zone,
        clock=clock,
        rng=random.Random(7),
        panic_threshold=0.0,
        health_check=eb.HealthCheck(fall=1, rise=1),
        **kwargs,  # type: ignore[arg-type]
    )


def zone_counts(pool: eb.BackendPool, n: int, **acquire: object) -> Counter[str]:
    counts: Counter[str] = Counter()
    for _ in range(n):
        lease = pool.acquire(**acquire)  # type: ignore[arg-type]
        counts[lease.backend.zone or "-"] += 1
        pool.release(lease, latency=0.01)
    return counts


def test_a_healthy_local_zone_takes_all_traffic(clock: eb.ManualClock) -> None:
    """If this fails, requests cross zones (latency and money) with the local zone idle."""
    assert zone_counts(zoned_pool(clock), 2000) == {"a": 2000}


def test_a_pool_without_a_zone_spreads_over_all(clock: eb.ManualClock) -> None:
    """If this fails, zones on backends change routing for callers that stated none."""
    pool = eb.BackendPool(
        [eb.Backend("http://a.test", zone="a"), eb.Backend("http://b.test", zone="b")],
        balancer=eb.RoundRobin,
        clock=clock,
    )
    assert zone_counts(pool, 100) == {"a": 50, "b": 50}


@pytest.mark.parametrize(("down", "expected_remote"), [(2, 0.0), (5, 0.3), (8, 0.72), (10, 1.0)])
def test_a_degraded_zone_spills_in_proportion(
    clock: eb.ManualClock, down: int, expected_remote: float
) -> None:
    """If this fails, a degraded zone either keeps more than it can carry or gives up
    traffic it could serve (Envoy's 1.4 factor: 8 of 10 up keeps all)."""
    pool = zoned_pool(clock)
    for i in range(down):
        pool.report_check(f"http://a{i}.test", False)
    counts = zone_counts(pool, 20_000)
    assert counts["b"] / 20_000 == pytest.approx(expected_remote, abs=0.02)


def test_saturated_local_backends_count_as_unavailable(clock: eb.ManualClock) -> None:
    """If this fails, a local zone whose replicas are all full keeps queueing locally
    while other zones sit idle."""
    pool = zoned_pool(
        clock, local=2, remote=2, zone=eb.Locality("a", saturation=2, overprovisioning=2.0)
    )
    # overprovisioning=2: one of the two local backends free still keeps all traffic
    # local, so the first four picks are local by rule, not by the seed.
    held = [pool.acquire() for _ in range(4)]
    assert {lease.backend.zone for lease in held} == {"a"}
    assert pool.acquire().backend.zone == "b"  # both local backends hold 2: full
    for lease in held:
        pool.release(lease, latency=0.01)
    assert pool.acquire().backend.zone == "a"


def test_a_zone_coming_back_ramps_up_with_slow_start(clock: eb.ManualClock) -> None:
    """If this fails, a recovered zone gets all its traffic back at once (a cold cache,
    a thundering herd) or never gets it back."""
    pool = zoned_pool(clock, slow_start=eb.SlowStart(window=10.0))
    for i in range(10):
        pool.report_check(f"http://a{i}.test", False)
    assert zone_counts(pool, 500) == {"b": 500}
    for i in range(10):
        pool.report_check(f"http://a{i}.test", True)
    shares = []
    for _ in range(6):
        shares.append(zone_counts(pool, 4000)["a"] / 4000)
        clock.advance(2.5)
    assert shares[0] < 0.5
    assert all(x <= y + 0.03 for x, y in itertools.pairwise(shares))
    assert shares[-1] == 1.0


def test_zones_apply_within_gpu_tiers(clock: eb.ManualClock) -> None:
    """If this fails, a local CPU replica wins over a remote GPU (zone replaced tiers),
    or the local GPU is skipped while healthy."""
    backends = [
        eb.Backend("http://gpu-a.test", zone="a", tier=0),
        eb.Backend("http://gpu-b.test", zone="b", tier=0),
        eb.Backend("http://cpu-a.test", zone="a", tier=1),
        eb.Backend("http://cpu-b.test", zone="b", tier=1),
    ]
    pool = eb.BackendPool(
        backends,
        balancer=eb.GpuPriority,
        zone="a",
        clock=clock,
        rng=random.Random(2),
        panic_threshold=0.0,
        health_check=eb.HealthCheck(fall=1),
    )
    picks = Counter(pool.acquire().backend.host for _ in range(200))
    assert picks == {"gpu-a.test": 200}
    pool.report_check("http://gpu-a.test", False)
    leases = [pool.acquire() for _ in range(200)]
    # Tier 0 keeps ~70% (one of two GPUs × 1.4), all of it on the remote GPU; the
    # spilled ~30% stays in zone a on the CPU tier.
    picks = Counter(lease.backend.host for lease in leases)
    assert set(picks) == {"gpu-b.test", "cpu-a.test"}
    assert picks["gpu-b.test"] > picks["cpu-a.test"]


def test_zones_and_models_compose(clock: eb.ManualClock) -> None:
    """If this fails, zone preference sends a model's requests to a local replica of
    another model, or ignores the zone once a model is named."""
    pool = eb.BackendPool(
        [
            eb.Backend("http://small-a.test", zone="a", model="small"),
            eb.Backend("http://large-a.test", zone="a", model="large"),
            eb.Backend("http://small-b.test", zone="b", model="small"),
            eb.Backend("http://large-b.test", zone="b", model="large"),
        ],
        zone="a",
        clock=clock,
        rng=random.Random(4),
    )
    assert Counter(pool.acquire(model="small").backend.host for _ in range(50)) == {
        "small-a.test": 50
    }


def test_backends_in_no_zone_are_never_local(clock: eb.ManualClock) -> None:
    """If this fails, backends nobody placed in a zone count as the caller's own."""
    pool = eb.BackendPool(
        [eb.Backend("http://a.test", zone="a"), eb.Backend("http://x.test")],
        zone="a",
        clock=clock,
    )
    assert zone_counts(pool, 100) == {"a": 100}
    stats = pool.stats()
    assert stats.requests_by_zone() == {"a": 100, None: 0}


class _TwoSlots(eb.LeastConnections):
    """Says every backend serves two requests at once (as a learning balancer would)."""

    def concurrency(self, state: object) -> float | None:
        return 2.0


def test_local_backends_past_their_knee_count_as_full(clock: eb.ManualClock) -> None:
    """If this fails, ``Locality(knee=...)`` is ignored and requests queue behind busy
    local slots while other zones have free ones."""
    pool = zoned_pool(
        clock,
        local=2,
        remote=2,
        zone=eb.Locality("a", knee=1.0, overprovisioning=2.0),
        balancer=_TwoSlots,
    )
    held = [pool.acquire() for _ in range(4)]
    assert {lease.backend.zone for lease in held} == {"a"}
    assert pool.acquire().backend.zone == "b"
    pool.release(held[0], latency=0.01)
    assert pool.acquire().backend.zone == "a"
