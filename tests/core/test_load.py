"""Load metrics against hand-computed values, on a manual clock."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import embedbalance as eb
from embedbalance._state import BackendState
from embedbalance.load import OutstandingTokens, PeakEwmaLatency, PendingRequests, RttEstimate

from .conftest import make_state


def test_unmeasured_backend_starts_at_default_rtt() -> None:
    """A backend never measured is estimated at default_rtt, and its load is that × (pending+1)."""
    metric = PeakEwmaLatency(tau=10.0, default_rtt=0.05)
    state = make_state(pending=2)
    assert metric.load(state, 0.0) == pytest.approx(0.05 * 3)


def test_peak_replaces_the_estimate_at_once() -> None:
    """A sample above the estimate replaces it immediately, however little time passed."""
    metric = PeakEwmaLatency(tau=10.0, default_rtt=0.05)
    state = make_state()
    metric.observe(state, 0.2, 1.0)
    assert metric.decayed(state, 1.0) == pytest.approx(0.2)
    metric.observe(state, 0.9, 1.0)
    assert metric.decayed(state, 1.0) == pytest.approx(0.9)


def test_lower_sample_decays_with_exp_of_elapsed_over_tau() -> None:
    """A lower sample moves the estimate with weight exp(-Δt/τ) on the old value."""
    metric = PeakEwmaLatency(tau=10.0, default_rtt=0.05)
    state = make_state()
    metric.observe(state, 0.2, 1.0)
    metric.observe(state, 0.1, 3.0)
    w = math.exp(-2.0 / 10.0)
    expected = 0.2 * w + 0.1 * (1 - w)
    assert state.metric_state.rtt == pytest.approx(expected)
    assert metric.decayed(state, 3.0) == pytest.approx(expected)  # no time passed: no decay


def test_reading_decays_toward_zero() -> None:
    """Reading the load decays the estimate toward 0 by exp(-Δt/τ) since the last update."""
    metric = PeakEwmaLatency(tau=10.0, default_rtt=0.05)
    state = make_state(pending=1)
    metric.observe(state, 0.2, 0.0)
    assert metric.decayed(state, 10.0) == pytest.approx(0.2 * math.exp(-1.0))
    # A second read 5 s later decays only over those 5 s, not again from the start.
    assert metric.load(state, 15.0) == pytest.approx(0.2 * math.exp(-1.5) * 2)


def test_load_is_estimate_times_pending_plus_one() -> None:
    """load = estimate × (pending + 1) for a weight-1 backend with no failures."""
    metric = PeakEwmaLatency()
    state = make_state()
    metric.observe(state, 0.3, 0.0)
    for pending in (0, 1, 7):
        state.pending = pending
        assert metric.load(state, 0.0) == pytest.approx(0.3 * (pending + 1))


def test_weight_divides_load() -> None:
    """A weight-4 backend with 3 pending looks like a weight-1 backend that is idle."""
    heavy, light = make_state(0, weight=4.0, pending=3), make_state(1)
    for metric in (PendingRequests(), PeakEwmaLatency()):
        assert metric.load(heavy, 0.0) == pytest.approx(metric.load(light, 0.0))


def test_outstanding_tokens_counts_cost() -> None:
    """OutstandingTokens' load is (outstanding cost + 1) / weight."""
    state = make_state(weight=2.0)
    state.outstanding_cost = 511.0
    assert OutstandingTokens().load(state, 0.0) == pytest.approx(256.0)


def test_failure_penalty_multiplies_and_decays() -> None:
    """One failure doubles a backend's load at once and fades by exp(-Δt/decay)."""
    state = make_state(pending=1)
    metric = PendingRequests(failure_decay=5.0)
    state.add_penalty(0.0, 5.0)
    assert metric.load(state, 0.0) == pytest.approx(2 * 2.0)
    assert metric.load(state, 5.0) == pytest.approx(2 * (1 + math.exp(-1.0)))
    state.add_penalty(5.0, 5.0)  # a second failure adds to what is left of the first
    assert metric.load(state, 5.0) == pytest.approx(2 * (2 + math.exp(-1.0)))


def test_peak_ewma_failures_floor_a_decayed_estimate() -> None:
    """A backend whose estimate has decayed toward 0 but which keeps failing does not
    look cheaper than an unmeasured one."""
    metric = PeakEwmaLatency(tau=10.0, default_rtt=0.05)
    failing, fresh = make_state(0), make_state(1)
    metric.decayed(failing, 0.0)
    for t in range(1, 300):
        failing.add_penalty(float(t), 5.0)
    assert metric.decayed(failing, 300.0) < 1e-12
    assert metric.load(failing, 300.0) > metric.load(fresh, 300.0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"tau": 0.0}, "tau"), ({"default_rtt": -1.0}, "default_rtt"), ({"tau": math.inf}, "tau")],
)
def test_peak_ewma_validates(kwargs: dict[str, float], message: str) -> None:
    """PeakEwma rejects a non-positive or infinite tau/default_rtt with a ValueError naming it."""
    with pytest.raises(ValueError, match=message):
        eb.PeakEwma(**kwargs)


def test_pool_feeds_latency_into_peak_ewma(clock: eb.ManualClock) -> None:
    """The pool measures a success's latency on its clock and the stats show the estimate."""
    pool = eb.BackendPool(["http://a.test"], clock=clock, balancer=eb.PeakEwma())
    lease = pool.acquire()
    clock.advance(0.25)
    pool.release(lease)
    assert pool.stats().backends[0].rtt_estimate == pytest.approx(0.25)
    pool.release(pool.acquire(), latency=0.5)
    assert pool.stats().backends[0].rtt_estimate == pytest.approx(0.5)
    assert pool.stats().backends[0].estimate == pytest.approx(0.5)


@settings(max_examples=200, deadline=None)
@given(
    pending=st.integers(0, 20),
    cost=st.floats(0.0, 1e4),
    weight=st.floats(0.5, 8.0),
    admitted_ago=st.floats(0.0, 30.0),
    failures=st.integers(0, 5),
    samples=st.lists(st.tuples(st.floats(0.0, 2.0), st.floats(0.0, 5.0)), max_size=4),
    read_after=st.floats(0.0, 50.0),
)
def test_fast_paths_match_the_reference_formulas(
    pending: int,
    cost: float,
    weight: float,
    admitted_ago: float,
    failures: int,
    samples: list[tuple[float, float]],
    read_after: float,
) -> None:
    """The inlined load() of each metric equals the formula written with the state's
    helper methods (effective weight, failure penalty, decayed estimate)."""
    now = 100.0

    def state() -> BackendState:
        s = BackendState(
            backend=eb.Backend("http://a.test", weight=weight),
            weight=weight,
            tier=0,
            admitted_at=now - admitted_ago,
            slow_start=eb.SlowStart(window=10.0),
        )
        s.pending, s.outstanding_cost = pending, cost
        for i in range(failures):
            s.add_penalty(now + i, 5.0)
        return s

    ewma = PeakEwmaLatency(tau=10.0, default_rtt=0.05)
    fast, ref = state(), state()
    t = now
    for latency, gap in samples:
        t += gap
        ewma.observe(fast, latency, t)
        record = ref.metric_state if isinstance(ref.metric_state, RttEstimate) else RttEstimate()
        ref.metric_state = record
        ewma._seed(record, t)
        ewma._update(record, latency, t)
        record.samples += 1
        assert fast.metric_state.rtt == pytest.approx(record.rtt)
    t += read_after
    penalty = ref.penalty_factor(t, 5.0)
    estimate = max(ewma.decayed(ref, t), 0.05 * (penalty - 1.0))
    expected = estimate * (pending + 1) / ref.effective_weight(t) * penalty
    assert ewma.load(fast, t) == pytest.approx(expected, rel=1e-9, abs=1e-300)
    factor = ref.penalty_factor(t, 5.0) / ref.effective_weight(t)
    assert PendingRequests().load(fast, t) == pytest.approx((pending + 1) * factor)
    assert OutstandingTokens().load(fast, t) == pytest.approx((cost + 1) * factor)
