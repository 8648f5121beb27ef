"""Edges of the pure selection strategies that the properties do not reach."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from embedbalance import strategies


@given(st.integers(min_value=0, max_value=10**6), st.integers(min_value=1, max_value=50))
def test_round_robin_index_is_counter_mod_n(counter: int, n: int) -> None:
    """The counter-th pick among n is index counter mod n, always a valid index."""
    assert strategies.round_robin(counter, n) == counter % n


def test_weighted_random_uses_the_total_of_all_weights() -> None:
    """With three or more weights, draws follow all of them (a heavy last backend gets most picks)."""
    rng = random.Random(3)
    counts = Counter(strategies.weighted_random([1.0, 1.0, 1.0, 97.0], rng) for _ in range(2000))
    assert counts[3] > 1800
    assert set(counts) <= {0, 1, 2, 3}


def test_two_way_tie_is_broken_at_random() -> None:
    """Two equally loaded candidates each get picked (a fixed tie-break would herd every idle client onto one)."""
    rng = random.Random(5)
    counts = Counter(strategies.least_loaded([3.0, 1.0, 1.0], rng) for _ in range(400))
    assert set(counts) == {1, 2}
    assert min(counts.values()) > 120


def test_power_of_two_choices_with_one_candidate() -> None:
    """With a single candidate p2c returns it without sampling."""
    assert strategies.power_of_two_choices(1, lambda i: 0.0, random.Random(0)) == 0


def test_tier_without_capacity_gets_nothing() -> None:
    """A tier whose total weight is zero takes no traffic and causes no division by zero."""
    assert strategies.tier_shares([0.0, 2.0], [0.0, 2.0], 1.4) == [0.0, 1.0]
    assert strategies.tier_shares([0.0], [0.0], 1.4) == [0.0]


def test_tier_shares_refuse_mismatched_inputs() -> None:
    """Available and total capacities of different lengths are a ValueError, not a silently truncated split."""
    with pytest.raises(ValueError, match="zip"):
        strategies.tier_shares([1.0], [1.0, 2.0], 1.4)
