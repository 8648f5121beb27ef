"""Properties of the pure selection strategies and of the balancers built on them."""

from __future__ import annotations

import itertools
import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import embedbalance as eb
from embedbalance import strategies

from .conftest import make_state, make_states

int_weights = st.lists(st.integers(min_value=1, max_value=8), min_size=1, max_size=8)
loads = st.lists(st.floats(min_value=0.0, max_value=1e6, allow_nan=False), min_size=2, max_size=30)
seeds = st.integers(min_value=0, max_value=2**32 - 1)


def pick_many(balancer: eb.Balancer, states: list, picks: int, seed: int = 0) -> list[int]:
    rng = random.Random(seed)
    index = {id(s): i for i, s in enumerate(states)}
    return [
        index[id(balancer.pick(states, cost=1.0, now=0.0, rng=rng, population=states))]
        for _ in range(picks)
    ]


@settings(max_examples=60, deadline=None)
@given(n=st.integers(min_value=1, max_value=20), k=st.integers(min_value=1, max_value=5))
def test_round_robin_exact_and_never_repeats(n: int, k: int) -> None:
    """RoundRobin gives each of n backends k of k·n picks, never one backend twice running."""
    order = pick_many(eb.RoundRobin(), make_states([1.0] * n), k * n)
    assert Counter(order) == dict.fromkeys(range(n), k)
    if n > 1:
        assert all(a != b for a, b in itertools.pairwise(order))


@settings(max_examples=100, deadline=None)
@given(weights=int_weights, k=st.integers(min_value=1, max_value=4))
def test_smooth_wrr_exact_proportions(weights: list[int], k: int) -> None:
    """Smooth WRR picks each backend exactly k·w times over k·Σw picks."""
    order = pick_many(eb.WeightedRoundRobin(), make_states(weights), k * sum(weights))
    counts = Counter(order)
    assert [counts[i] for i in range(len(weights))] == [k * w for w in weights]


@settings(max_examples=60, deadline=None)
@given(n=st.integers(min_value=2, max_value=12), w=st.integers(min_value=1, max_value=5))
def test_smooth_wrr_equal_weights_never_repeats(n: int, w: int) -> None:
    """With equal weights smooth WRR never sends two consecutive picks to one backend."""
    order = pick_many(eb.WeightedRoundRobin(), make_states([float(w)] * n), 3 * n)
    assert all(a != b for a, b in itertools.pairwise(order))


def test_smooth_wrr_interleaves_like_nginx() -> None:
    """Weights 5, 1, 1 interleave as nginx documents (a a b a c a a), not in a burst."""
    current = [0.0, 0.0, 0.0]
    order = [strategies.smooth_weighted_round_robin([5, 1, 1], current) for _ in range(7)]
    assert order == [0, 0, 1, 0, 2, 0, 0]
    assert current == [0.0, 0.0, 0.0]


@settings(max_examples=200, deadline=None)
@given(values=loads, seed=seeds)
def test_p2c_strategy_never_picks_the_worse_of_its_two(values: list[float], seed: int) -> None:
    """power_of_two_choices returns the less loaded of the two indices it sampled."""
    a, b = strategies.two_distinct(len(values), random.Random(seed))
    got = strategies.power_of_two_choices(len(values), values.__getitem__, random.Random(seed))
    assert a != b
    assert got in (a, b)
    assert values[got] == min(values[a], values[b])


@settings(max_examples=150, deadline=None)
@given(pending=st.lists(st.integers(0, 50), min_size=2, max_size=30), seed=seeds)
def test_p2c_balancer_never_picks_the_worse_of_its_two(pending: list[int], seed: int) -> None:
    """PowerOfTwoChoices picks the candidate with fewer pending of the two it sampled."""
    states = [make_state(i, pending=p) for i, p in enumerate(pending)]
    a, b = strategies.two_distinct(len(states), random.Random(seed))
    got = eb.PowerOfTwoChoices().pick(
        states, cost=1.0, now=0.0, rng=random.Random(seed), population=states
    )
    assert got in (states[a], states[b])
    assert got.pending == min(pending[a], pending[b])


@settings(max_examples=150, deadline=None)
@given(values=loads, seed=seeds)
def test_full_scan_picks_a_minimum(values: list[float], seed: int) -> None:
    """least_loaded always returns an index whose load is the minimum."""
    assert values[strategies.least_loaded(values, random.Random(seed))] == min(values)


@settings(max_examples=100, deadline=None)
@given(pending=st.lists(st.integers(0, 50), min_size=1, max_size=30), seed=seeds)
def test_least_connections_picks_a_minimum(pending: list[int], seed: int) -> None:
    """LeastConnections (full scan) picks a backend with the fewest pending requests."""
    states = [make_state(i, pending=p) for i, p in enumerate(pending)]
    got = eb.LeastConnections().pick(
        states, cost=1.0, now=0.0, rng=random.Random(seed), population=states
    )
    assert got.pending == min(pending)


def test_least_loaded_breaks_ties_at_random() -> None:
    """Ties in a full scan spread over all tied backends instead of herding on the first."""
    rng = random.Random(3)
    counts = Counter(strategies.least_loaded([1.0, 0.0, 0.0, 0.0], rng) for _ in range(3000))
    assert set(counts) == {1, 2, 3}
    assert min(counts.values()) > 800


@settings(max_examples=60, deadline=None)
@given(weights=st.lists(st.floats(0.1, 10.0), min_size=1, max_size=10), seed=seeds)
def test_weighted_random_in_range(weights: list[float], seed: int) -> None:
    """weighted_random always returns a valid index."""
    rng = random.Random(seed)
    for _ in range(20):
        assert 0 <= strategies.weighted_random(weights, rng) < len(weights)


def test_weighted_random_follows_weights() -> None:
    """Random's picks follow the weights within a few percent over 40,000 draws."""
    order = pick_many(eb.Random(), make_states([1.0, 3.0]), 40_000, seed=11)
    share = Counter(order)[1] / len(order)
    assert share == pytest.approx(0.75, abs=0.01)


@settings(max_examples=200, deadline=None)
@given(
    tiers=st.lists(
        st.tuples(st.just(0.0) | st.floats(1e-3, 100.0), st.floats(0.1, 100.0)),
        min_size=1,
        max_size=5,
    ),
    factor=st.floats(1.0, 3.0),
)
def test_tier_shares_sum_to_one_and_fill_in_order(
    tiers: list[tuple[float, float]], factor: float
) -> None:
    """Tier shares sum to 1 (or are all 0), and a tier gets traffic only after every
    more preferred tier is at its availability."""
    available = [min(a, t) for a, t in tiers]
    total = [t for _, t in tiers]
    shares = strategies.tier_shares(available, total, factor)
    assert all(s >= 0 for s in shares)
    if sum(available) == 0:
        assert shares == [0.0] * len(tiers)
        return
    assert sum(shares) == pytest.approx(1.0)
    availability = [min(1.0, factor * a / t) for a, t in zip(available, total, strict=True)]
    if sum(availability) >= 1.0:
        for i, share in enumerate(shares):
            if share > 0 and i > 0:
                # Anything reaching tier i means all earlier tiers took their fill.
                assert sum(shares[:i]) == pytest.approx(sum(availability[:i]))


def test_tier_shares_envoy_example() -> None:
    """A tier at 50% health with factor 1.4 keeps 70% and spills 30% (Envoy's table)."""
    assert strategies.tier_shares([5, 10], [10, 10], 1.4) == pytest.approx([0.7, 0.3])
    assert strategies.tier_shares([8, 10], [10, 10], 1.4) == pytest.approx([1.0, 0.0])
    # Both tiers degraded: normalised so traffic still sums to 1.
    assert strategies.tier_shares([2, 2], [10, 10], 1.4) == pytest.approx([0.5, 0.5])
