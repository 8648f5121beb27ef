"""Shared builders for the core tests: backend states, pools and a tiny traffic driver."""

from __future__ import annotations

import random
from collections.abc import Sequence

import pytest

from embedbalance import Backend, BackendPool, ManualClock, SlowStart
from embedbalance._state import BackendState


def urls(n: int, prefix: str = "b") -> list[str]:
    """``n`` distinct backend URLs."""
    return [f"http://{prefix}{i}.test:8000" for i in range(n)]


def make_state(
    i: int = 0,
    *,
    weight: float = 1.0,
    tier: int = 0,
    pending: int = 0,
    prefix: str = "b",
) -> BackendState:
    """A warm, healthy backend state outside any pool (for balancer-level tests)."""
    state = BackendState(
        backend=Backend(f"http://{prefix}{i}.test:8000", weight=weight, tier=tier),
        weight=weight,
        tier=tier,
        admitted_at=-1e9,
        slow_start=SlowStart(window=0.0),
    )
    state.pending = pending
    return state


def make_states(weights: Sequence[float]) -> list[BackendState]:
    return [make_state(i, weight=w) for i, w in enumerate(weights)]


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(1000.0)


@pytest.fixture
def rng() -> random.Random:
    return random.Random(20240611)


def pool_of(n: int, clock: ManualClock, **kwargs: object) -> BackendPool:
    """A pool of ``n`` warm backends on a manual clock with a seeded rng."""
    kwargs.setdefault("rng", random.Random(7))
    return BackendPool(urls(n), clock=clock, **kwargs)  # type: ignore[arg-type]
