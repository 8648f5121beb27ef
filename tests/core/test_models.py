"""Several models behind one pool: requests that name a model go only where it is served."""

from __future__ import annotations

import random
from collections import Counter

import pytest

import embedbalance as eb


def model_pool(clock: eb.ManualClock, **kwargs: object) -> eb.BackendPool:
    backends = [
        eb.Backend("http://small0.test", model="small"),
        eb.Backend("http://small1.test", model="small"),
        eb.Backend("http://large0.test", model="large", tier=0),
        eb.Backend("http://any0.test"),
    ]
    return eb.BackendPool(
        backends,
        clock=clock,
        rng=random.Random(5),
        health_check=eb.HealthCheck(fall=1),
        **kwargs,  # type: ignore[arg-type]
    )


def hosts(pool: eb.BackendPool, n: int, model: str | None) -> Counter[str]:
    counts: Counter[str] = Counter()
    for _ in range(n):
        lease = pool.acquire(model=model)
        counts[lease.backend.host.split(".")[0]] += 1
        pool.release(lease, latency=0.01)
    return counts


def test_a_named_model_goes_only_to_its_backends_and_the_unknown_ones(
    clock: eb.ManualClock,
) -> None:
    """If this fails, a request for one model can reach a replica serving another."""
    counts = hosts(model_pool(clock), 400, "small")
    assert set(counts) <= {"small0", "small1", "any0"}
    assert counts["small0"]
    assert counts["small1"]
    assert set(hosts(model_pool(clock), 200, "large")) <= {"large0", "any0"}


def test_a_request_without_a_model_may_go_anywhere(clock: eb.ManualClock) -> None:
    """If this fails, requests that name no model are refused or confined to some
    backends, breaking every single-model deployment that sends no model."""
    counts = hosts(model_pool(clock), 800, None)
    assert set(counts) == {"small0", "small1", "large0", "any0"}


def test_an_unserved_model_names_itself_and_the_served_ones(clock: eb.ManualClock) -> None:
    """If this fails, a typo in a model name reaches a server of another model, or the
    error does not say which models exist."""
    pool = eb.BackendPool(
        [eb.Backend("http://a.test", model="small"), eb.Backend("http://b.test", model="large")],
        clock=clock,
    )
    with pytest.raises(eb.NoBackendAvailable) as info:
        pool.acquire(model="huge")
    assert info.value.model == "huge"
    assert info.value.served == ("large", "small")
    assert "'huge'" in str(info.value)
    assert "'large', 'small'" in str(info.value)


def test_when_a_models_backends_are_down_the_reasons_name_only_them(
    clock: eb.ManualClock,
) -> None:
    """If this fails, the error for a model whose replicas are all unhealthy blames
    replicas of other models (or none), and operators look in the wrong place."""
    pool = eb.BackendPool(
        [eb.Backend("http://a.test", model="small"), eb.Backend("http://b.test", model="large")],
        clock=clock,
        health_check=eb.HealthCheck(fall=1),
        panic_threshold=0.0,
    )
    pool.report_check("http://b.test", False)
    with pytest.raises(eb.NoBackendAvailable) as info:
        pool.acquire(model="large")
    assert [r.url for r in info.value.reasons] == ["http://b.test"]
    assert "model 'large'" in str(info.value)
    assert pool.acquire(model="small").backend.url == "http://a.test"


def test_a_learned_model_routes_like_a_given_one(clock: eb.ManualClock) -> None:
    """If this fails, models read from /info at admission are ignored and every backend
    keeps serving every model."""
    pool = eb.BackendPool(["http://a.test", "http://b.test"], clock=clock, rng=random.Random(1))
    assert pool.wants_model("http://a.test")
    pool.learn_model("http://a.test", "small")
    pool.learn_model("http://b.test", "large")
    assert not pool.wants_model("http://a.test")
    assert set(hosts(pool, 100, "small")) == {"a"}
    assert {b.url: b.model for b in pool.stats().backends} == {
        "http://a.test": "small",
        "http://b.test": "large",
    }


def test_a_given_model_wins_over_info(clock: eb.ManualClock) -> None:
    """If this fails, what a server's /info says overrides what the operator configured."""
    pool = eb.BackendPool([eb.Backend("http://a.test", model="small")], clock=clock)
    assert not pool.wants_model("http://a.test")
    pool.learn_model("http://a.test", "other")
    assert pool.acquire(model="small").backend.url == "http://a.test"


def test_per_model_stats_count_attempts_and_latencies(clock: eb.ManualClock) -> None:
    """If this fails, stats() cannot tell how much traffic (and how fast) each model got."""
    pool = model_pool(clock)
    for model, outcome in [
        ("small", eb.Outcome.SUCCESS),
        ("small", eb.Outcome.SUCCESS),
        ("small", eb.Outcome.FAILURE),
        ("large", eb.Outcome.OVERLOADED),
    ]:
        lease = pool.acquire(model=model)
        clock.advance(0.25)
        pool.release(lease, outcome)
    lease = pool.acquire()  # no model: not counted per model
    pool.release(lease)
    by_model = pool.stats().by_model()
    assert set(by_model) == {"small", "large"}
    small = by_model["small"]
    assert (small.requests, small.successes, small.failures) == (3, 2, 1)
    assert small.latency_p50 == pytest.approx(0.25)
    assert by_model["large"].overloads == 1
    assert by_model["large"].latency_p50 is None


def test_retries_stay_within_the_model(clock: eb.ManualClock) -> None:
    """If this fails, a retry after a failure on a model's replica lands on another model's."""
    pool = model_pool(clock)
    first = pool.acquire(model="large")
    second = pool.acquire(model="large", exclude={first.backend.url})
    assert {first.backend.host, second.backend.host} == {"large0.test", "any0.test"}
    with pytest.raises(eb.NoBackendAvailable):
        pool.acquire(model="large", exclude={first.backend.url, second.backend.url})


def test_gpu_priority_tiers_are_computed_within_the_model(clock: eb.ManualClock) -> None:
    """If this fails, one model's healthy GPUs count as capacity for another model and
    its traffic never spills to its own CPU tier when its GPUs are down."""
    pool = eb.BackendPool(
        [
            eb.Backend("http://a-gpu.test", model="a", tier=0),
            eb.Backend("http://a-cpu.test", model="a", tier=1),
            eb.Backend("http://b-gpu0.test", model="b", tier=0),
            eb.Backend("http://b-gpu1.test", model="b", tier=0),
        ],
        balancer=eb.GpuPriority,
        clock=clock,
        health_check=eb.HealthCheck(fall=1),
        panic_threshold=0.0,
    )
    pool.report_check("http://a-gpu.test", False)
    assert set(hosts(pool, 50, "a")) == {"a-cpu"}


def test_a_short_name_matches_the_full_one() -> None:
    """If this fails, callers that say ``all-MiniLM-L6-v2`` are refused by replicas that
    report ``sentence-transformers/all-MiniLM-L6-v2`` (and TEI reports the full one)."""
    from embedbalance.pool import model_matches

    assert model_matches("all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2")
    assert model_matches("sentence-transformers/all-MiniLM-L6-v2", "all-MiniLM-L6-v2")
    assert model_matches("a/x", "a/x")
    assert not model_matches("a/x", "b/x")
    assert not model_matches("x", "y/xx")


def test_one_learned_model_does_not_refuse_other_names(clock: eb.ManualClock) -> None:
    """If this fails, a single-model deployment that never configured models starts
    refusing the model name its callers always sent, once /info is read."""
    pool = eb.BackendPool(["http://a.test", "http://b.test"], clock=clock, rng=random.Random(1))
    pool.learn_model("http://a.test", "org/minilm")
    pool.learn_model("http://b.test", "org/minilm")
    assert set(hosts(pool, 100, "text-embedding-3-small")) == {"a", "b"}
    assert set(hosts(pool, 100, "minilm")) == {"a", "b"}


def test_two_learned_models_refuse_a_third_name(clock: eb.ManualClock) -> None:
    """If this fails, with two models served a request for neither goes to one of them
    at random instead of being refused by name."""
    pool = eb.BackendPool(["http://a.test", "http://b.test"], clock=clock)
    pool.learn_model("http://a.test", "small")
    pool.learn_model("http://b.test", "large")
    with pytest.raises(eb.NoBackendAvailable, match="'huge'"):
        pool.acquire(model="huge")


def test_a_configured_model_is_strict_even_alone(clock: eb.ManualClock) -> None:
    """If this fails, a model the operator configured still accepts requests for others."""
    pool = eb.BackendPool([eb.Backend("http://a.test", model="small")], clock=clock)
    with pytest.raises(eb.NoBackendAvailable, match="'large'"):
        pool.acquire(model="large")


def test_a_comeback_reads_info_again(clock: eb.ManualClock) -> None:
    """If this fails, a replica restarted at the same address with another model keeps
    receiving its old model's requests for good."""
    pool = eb.BackendPool(
        ["http://a.test"], clock=clock, health_check=eb.HealthCheck(fall=1, rise=1)
    )
    pool.learn_model("http://a.test", "small")
    pool.report_check("http://a.test", True)
    assert not pool.wants_model("http://a.test")
    pool.report_check("http://a.test", False)
    pool.report_check("http://a.test", True)
    assert pool.wants_model("http://a.test")


def test_an_address_that_comes_back_serving_another_model_is_updated(
    clock: eb.ManualClock,
) -> None:
    """If this fails, discovery keeps routing by what an address served before: a pod
    IP reused by another Service (another model, another zone) goes on receiving the
    old model's requests and none of the new one's."""
    pool = eb.BackendPool(
        [eb.Backend("http://10.0.0.5:8000", model="small", zone="a")],
        clock=clock,
        rng=random.Random(2),
    )
    pool.update([eb.Backend("http://10.0.0.5:8000", model="large", zone="b")])
    (backend,) = pool.backends
    assert (backend.model, backend.zone) == ("large", "b")
    assert pool.acquire(model="large").backend.url == "http://10.0.0.5:8000"
    with pytest.raises(eb.NoBackendAvailable):
        pool.acquire(model="small")


def test_a_learned_model_is_forgotten_when_the_address_changes_model(
    clock: eb.ManualClock,
) -> None:
    """If this fails, /info's answer from a pod that left outlives it: the address is
    not asked again and routes by a model it no longer serves."""
    pool = eb.BackendPool(["http://10.0.0.5:8000"], clock=clock, rng=random.Random(2))
    pool.learn_model("http://10.0.0.5:8000", "small")
    pool.update([eb.Backend("http://10.0.0.5:8000", model="large")])
    pool.update([eb.Backend("http://10.0.0.5:8000")])  # the model no longer given
    assert pool.wants_model("http://10.0.0.5:8000")


def test_panic_mode_is_decided_per_model(clock: eb.ManualClock) -> None:
    """If this fails, a small model whose replicas are mostly down has all its traffic
    crushed onto one survivor (or refused when all are down) because a larger model
    keeps the pool as a whole above the panic threshold."""
    small = [eb.Backend(f"http://s{i}.test", model="small") for i in range(4)]
    large = [eb.Backend(f"http://l{i}.test", model="large") for i in range(8)]
    pool = eb.BackendPool(
        small + large,
        clock=clock,
        rng=random.Random(3),
        health_check=eb.HealthCheck(fall=1),
        outlier_detection=None,
    )
    for b in small[:3]:
        pool.report_check(b, False)
    assert not pool.stats().panic  # 9 of 12 healthy: the pool as a whole is calm
    assert set(hosts(pool, 400, "small")) == {"s0", "s1", "s2", "s3"}
    assert set(hosts(pool, 400, "large")) == {f"l{i}" for i in range(8)}
    pool.report_check(small[3], False)
    assert set(hosts(pool, 400, "small")) == {"s0", "s1", "s2", "s3"}
