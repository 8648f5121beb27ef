"""Selection strategies: given comparable numbers, say who gets the request.

Pure functions over sequences of floats (loads or weights) and an injected
``random.Random``: no knowledge of backends, metrics or I/O. Balancers compose one
of these with one load metric; the property tests in ``tests/core`` pin each one.
"""

from __future__ import annotations

import bisect
import itertools
import random
from collections.abc import Callable, MutableSequence, Sequence

__all__ = [
    "least_loaded",
    "power_of_two_choices",
    "round_robin",
    "smooth_weighted_round_robin",
    "tier_shares",
    "two_distinct",
    "weighted_random",
]


def round_robin(counter: int, n: int) -> int:
    """Index for the ``counter``-th pick among ``n`` candidates."""
    return counter % n


def smooth_weighted_round_robin(weights: Sequence[float], current: MutableSequence[float]) -> int:
    """nginx's smooth weighted round-robin; mutates ``current`` (one accumulator each).

    Every pick adds each weight to its accumulator, takes the largest, and subtracts
    the total from the winner. Over ``Σw`` picks each index is chosen exactly ``w``
    times, interleaved (weights 5, 1, 1 give a a b a c a a, not a a a a a b c).
    """
    total = 0.0
    best = -1
    best_value = -float("inf")
    for i, w in enumerate(weights):
        value = current[i] + w
        current[i] = value
        total += w
        if value > best_value:
            best, best_value = i, value
    current[best] -= total
    return best


def weighted_random(weights: Sequence[float], rng: random.Random) -> int:
    """Index drawn with probability proportional to its weight."""
    if len(weights) == 1:
        return 0
    cumulative = list(itertools.accumulate(weights))
    return bisect.bisect_right(cumulative, rng.random() * cumulative[-1])


def least_loaded(loads: Sequence[float], rng: random.Random) -> int:
    """Index of a minimum of ``loads``; ties broken uniformly at random (a fixed
    tie-break would herd every idle client onto the first backend)."""
    best = min(loads)
    ties = [i for i, load in enumerate(loads) if load == best]
    return ties[0] if len(ties) == 1 else ties[rng.randrange(len(ties))]


def two_distinct(n: int, rng: random.Random) -> tuple[int, int]:
    """Two different indices in ``range(n)``, uniformly (requires ``n >= 2``).

    Scales ``rng.random()`` rather than calling ``randrange``, which costs several
    times more and runs on every pick; the bias is below 2**-40 for any pool size.
    """
    random_ = rng.random
    a = int(random_() * n)
    b = int(random_() * (n - 1))
    if b >= a:
        b += 1
    return a, b


def power_of_two_choices(n: int, load: Callable[[int], float], rng: random.Random) -> int:
    """Sample two distinct candidates and keep the less loaded (Mitzenmacher's p2c).

    O(1) in the number of candidates, and exponentially better than random at
    keeping the maximum load low. Ties go to either with equal probability.
    """
    if n == 1:
        return 0
    a, b = two_distinct(n, rng)
    la, lb = load(a), load(b)
    if la < lb:
        return a
    if lb < la:
        return b
    return a  # a and b are in random order already


def tier_shares(
    available: Sequence[float], total: Sequence[float], overprovisioning: float
) -> list[float]:
    """Share of traffic per priority tier, most preferred first (Envoy's priority load).

    A tier's *availability* is ``min(1, overprovisioning × available / total)`` of its
    capacity; it takes that share of what earlier tiers left over, and the rest
    spills down. With the default factor 1.4 a tier keeps all traffic until fewer
    than ~71% of its capacity is available. When all tiers together are less than
    fully available the shares are normalised, so traffic still sums to 1 (or all
    zeros when nothing is available).
    """
    availability = [
        min(1.0, overprovisioning * a / t) if t > 0 else 0.0
        for a, t in zip(available, total, strict=True)
    ]
    shares = []
    left = 1.0
    for avail in availability:
        share = min(avail, left)
        shares.append(share)
        left -= share
    placed = sum(shares)
    if placed <= 0:
        return [0.0] * len(shares)
    if placed < 1.0:
        shares = [s / placed for s in shares]
    return shares
