"""Every balancer survives any sequence of observations: zero, tiny and huge latencies,
zero and huge costs, clock steps backwards and forwards, odd server hints; NaN and
infinite inputs are refused at the pool's boundary. Picks stay valid and every score and
estimate stays a finite number."""

from __future__ import annotations

import math
import random
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import embedbalance as eb

BALANCERS: dict[str, Callable[[], eb.Balancer]] = {
    "RoundRobin": eb.RoundRobin,
    "WeightedRoundRobin": eb.WeightedRoundRobin,
    "Random": eb.Random,
    "LeastConnections": eb.LeastConnections,
    "PowerOfTwoChoices": eb.PowerOfTwoChoices,
    "PeakEwma": eb.PeakEwma,
    "ShortestExpectedDelay": eb.ShortestExpectedDelay,
    "LeastOutstandingTokens": eb.LeastOutstandingTokens,
    "GpuPriority": eb.GpuPriority,
}

latencies = st.one_of(
    st.none(),
    st.just(0.0),
    st.floats(1e-300, 1e-6),
    st.floats(1e-6, 10.0),
    st.floats(1e6, 1e12),
    st.floats(-5.0, -1e-9),  # a clock that stepped back
)
costs = st.one_of(st.just(0.0), st.floats(1e-9, 1.0), st.floats(1.0, 1e4), st.floats(1e9, 1e15))
hints = st.one_of(
    st.none(),
    st.builds(
        eb.ServerHints,
        queue_depth=st.one_of(st.none(), st.floats(0.0, 1e6)),
        in_flight=st.one_of(st.none(), st.floats(0.0, 1e6)),
        queue_time=st.one_of(st.none(), st.floats(0.0, 1e4)),
        inference_time=st.one_of(st.none(), st.just(0.0), st.floats(1e-9, 1e4)),
    ),
)
step = st.one_of(st.just(0.0), st.floats(-30.0, -1e-6), st.floats(1e-9, 1.0), st.floats(1.0, 1e5))
op = st.one_of(
    st.tuples(st.just("acquire"), costs),
    st.tuples(
        st.just("release"),
        st.integers(0, 50),
        st.sampled_from(list(eb.Outcome)),
        latencies,
        hints,
    ),
    st.tuples(st.just("clock"), step),
    st.tuples(st.just("bad"), st.sampled_from([math.nan, math.inf, -math.inf, -1.0])),
)


class SteppingClock:
    """A clock that can jump backwards as well as forwards (an NTP step, a VM resume)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _assert_finite(pool: eb.BackendPool, clock: SteppingClock) -> None:
    now = clock()
    for state in pool._states.values():
        balancer = pool.balancer
        if isinstance(balancer, eb.GpuPriority):
            balancer = balancer.tier_balancer(state.tier)
        score = balancer.score(state.view, now)
        assert not math.isnan(score), state
        assert score >= 0.0, state
        if balancer.metric is not None:
            load = balancer.metric.load(state, now)
            assert not math.isnan(load)
            assert load >= 0.0
    for row in pool.stats().backends:
        for value in (row.estimate, row.concurrency, row.latency_high):
            assert value is None or (math.isfinite(value) and value >= 0.0), row


@pytest.mark.parametrize("name", sorted(BALANCERS))
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(op, max_size=80), seed=st.integers(0, 2**16))
def test_any_observation_sequence_keeps_picks_valid_and_scores_finite(
    name: str, ops: list[tuple[object, ...]], seed: int
) -> None:
    """Arbitrary observations never make a balancer pick outside the usable set, crash, or produce a NaN score or estimate — and NaN/infinite costs or latencies are refused with ValueError instead of poisoning the estimates."""
    clock = SteppingClock()
    backends = [eb.Backend(f"http://b{i}.test", tier=i % 2) for i in range(4)]
    pool = eb.BackendPool(
        backends,
        balancer=BALANCERS[name],
        clock=clock,
        rng=random.Random(seed),
        outlier_detection=None,
        panic_threshold=0.0,
    )
    urls = {b.url for b in backends}
    held: list[eb.Lease] = []
    for item in ops:
        kind = item[0]
        if kind == "acquire":
            lease = pool.acquire(cost=float(item[1]))  # type: ignore[arg-type]
            assert lease.backend.url in urls
            held.append(lease)
        elif kind == "release" and held:
            _, index, outcome, latency, hint = item
            lease = held.pop(int(index) % len(held))  # type: ignore[call-overload]
            pool.release(lease, outcome, latency=latency, hints=hint)  # type: ignore[arg-type]
        elif kind == "clock":
            clock.now += float(item[1])  # type: ignore[arg-type]
        elif kind == "bad":
            with pytest.raises(ValueError, match="cost"):
                pool.acquire(cost=float(item[1]))  # type: ignore[arg-type]
            if held and not math.isfinite(float(item[1])):  # type: ignore[arg-type]
                with pytest.raises(ValueError, match="latency"):
                    pool.release(held[-1], latency=float(item[1]))  # type: ignore[arg-type]
                assert not held[-1].released
        _assert_finite(pool, clock)
    for lease in held:
        pool.release(lease)
    assert pool.stats().in_flight == 0
    _assert_finite(pool, clock)
