"""Load-metric promises that mutation testing found unpinned: argument checks and their
messages, defaults, the exact arithmetic of each metric (weight, slow start, failure
penalty, peak-EWMA decay) and of the expected-delay model (first answer, knee learning,
recovery asymmetry and the ``recovered_from`` rule, retest relaxation, the silence
bound, server hints). Manual clock values, states built by hand, no I/O."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest

from embedbalance import SlowStart
from embedbalance._hints import ServerHints
from embedbalance._state import BackendState
from embedbalance.load import (
    DEFAULT_FAILURE_DECAY,
    NOISE_SPREADS,
    QUEUE_MARGIN,
    DelayEstimate,
    ExpectedDelay,
    OutstandingTokens,
    PeakEwmaLatency,
    PendingRequests,
    RttEstimate,
)

from .conftest import make_state

NOW = 1000.0


def ramping(elapsed: float, *, weight: float = 2.0) -> BackendState:
    """A backend ``elapsed`` seconds into a 10 s slow start."""
    state = make_state(weight=weight)
    state.slow_start = SlowStart(window=10.0)
    state.admitted_at = NOW - elapsed
    return state


def penalised(state: BackendState, penalty: float = 1.0) -> BackendState:
    """One fresh failure: a penalty factor of exactly ``1 + penalty`` at ``NOW``."""
    state.penalty = penalty
    state.penalty_stamp = NOW
    return state


def record(state: BackendState) -> DelayEstimate:
    est = state.metric_state
    assert isinstance(est, DelayEstimate)
    return est


def taught(
    service: float = 0.1,
    slots: float = 4.0,
    *,
    stamp: float = NOW,
    samples: int = 10,
    spread: float = 0.0,
    weight: float = 1.0,
) -> BackendState:
    state = make_state(weight=weight)
    state.metric_state = DelayEstimate(
        service=service, slots=slots, stamp=stamp, samples=samples, spread=spread, news=stamp
    )
    return state


# --- argument checks and defaults ---------------------------------------------------


@pytest.mark.parametrize("value", [0.0, -1.0, math.inf, math.nan])
@pytest.mark.parametrize("name", ["retest", "default_delay"])
def test_expected_delay_rejects_bad_positive_numbers(name: str, value: float) -> None:
    """If this fails, ExpectedDelay accepts a time constant or default that breaks its arithmetic, or its error stops naming the field."""
    with pytest.raises(ValueError, match=f"^{name} must") as err:
        ExpectedDelay(**{name: value})  # type: ignore[arg-type]
    assert str(err.value) == f"{name} must be a finite number > 0, got {value!r}"


@pytest.mark.parametrize("value", [0.0, -0.1, 1.01])
@pytest.mark.parametrize("name", ["better", "worse"])
def test_expected_delay_rejects_weights_outside_0_1(name: str, value: float) -> None:
    """If this fails, a learning weight outside (0, 1] is accepted, or the error stops naming it."""
    with pytest.raises(ValueError, match=f"^{name} must") as err:
        ExpectedDelay(**{name: value})  # type: ignore[arg-type]
    assert str(err.value) == f"{name} must be > 0 and <= 1, got {value!r}"


def test_expected_delay_accepts_weights_of_exactly_one() -> None:
    """If this fails, the documented upper bound (1 included) of better/worse is rejected."""
    m = ExpectedDelay(better=1.0, worse=1.0)
    assert (m.better, m.worse) == (1.0, 1.0)


@pytest.mark.parametrize("value", [0.0, -1.0, math.inf, math.nan])
@pytest.mark.parametrize("name", ["tau", "default_rtt"])
def test_peak_ewma_rejects_bad_positive_numbers(name: str, value: float) -> None:
    """If this fails, PeakEwmaLatency accepts a time constant or default rtt that breaks its decay, or the error stops naming it."""
    with pytest.raises(ValueError, match=f"^{name} must") as err:
        PeakEwmaLatency(**{name: value})  # type: ignore[arg-type]
    assert str(err.value) == f"{name} must be a finite number > 0, got {value!r}"


def test_documented_defaults() -> None:
    """If this fails, a default the docs and tuning rely on has changed."""
    assert DEFAULT_FAILURE_DECAY == 5.0
    assert (QUEUE_MARGIN, NOISE_SPREADS) == (0.2, 2.5)
    m = ExpectedDelay()
    assert (m.better, m.worse, m.retest, m.default_delay, m.failure_decay) == (
        0.2,
        0.1,
        0.25,
        0.05,
        5.0,
    )
    p = PeakEwmaLatency()
    assert (p.tau, p.default_rtt, p.failure_decay) == (10.0, 0.05, 5.0)
    assert PendingRequests().failure_decay == 5.0
    assert OutstandingTokens().failure_decay == 5.0
    r = RttEstimate()
    assert (r.rtt, r.stamp, r.samples) == (0.0, 0.0, 0)
    d = DelayEstimate()
    assert (d.service, d.slots, d.stamp, d.samples, d.spread) == (0.0, 1.0, 0.0, 0, 0.0)
    assert d.recovered_from == -math.inf


# --- the simple metrics -----------------------------------------------------------


def test_pending_requests_load_weight_penalty_and_slow_start() -> None:
    """If this fails, PendingRequests stops being (pending + 1) / weight × penalty, or slow start stops scaling the weight until the window ends."""
    m = PendingRequests()
    s = make_state(weight=2.0, pending=3)
    assert m.load(s, NOW) == 2.0
    assert m.load(penalised(s), NOW) == 4.0
    assert m.load(penalised(make_state(weight=2.0, pending=3), 0.0), NOW) == 2.0
    r = ramping(5.0)
    r.pending = 1
    assert m.load(r, NOW) == pytest.approx(2 / r.effective_weight(NOW))
    assert r.effective_weight(NOW) < 2.0
    assert m.load(ramping(10.0), NOW) == 0.5  # the window is over at exactly its end
    assert m.observe(s, 1.0, NOW) is None
    assert m.estimate(s, NOW) is None
    assert PendingRequests(failure_decay=1.0).load(penalised(make_state()), NOW + 1.0) == (
        pytest.approx(1 + math.exp(-1.0))
    )


def test_outstanding_tokens_load_weight_penalty_and_slow_start() -> None:
    """If this fails, OutstandingTokens stops being (outstanding + 1) / weight × penalty, or slow start stops scaling the weight until the window ends."""
    m = OutstandingTokens()
    s = make_state(weight=2.0)
    s.outstanding_cost = 7.0
    assert m.load(s, NOW) == 4.0
    assert m.load(penalised(s), NOW) == 8.0
    r = ramping(5.0)
    r.outstanding_cost = 1.0
    assert m.load(r, NOW) == pytest.approx(2 / r.effective_weight(NOW))
    assert m.load(ramping(10.0), NOW) == 0.5
    assert m.observe(s, 1.0, NOW) is None
    assert m.estimate(s, NOW) is None
    assert OutstandingTokens(failure_decay=1.0).load(penalised(make_state()), NOW + 1.0) == (
        pytest.approx(1 + math.exp(-1.0))
    )


# --- peak EWMA --------------------------------------------------------------------


def test_peak_ewma_unmeasured_starts_at_default_and_decays_with_tau() -> None:
    """If this fails, an unmeasured backend no longer starts at default_rtt, or reading the load stops decaying the estimate by exp(-Δt/τ)."""
    m = PeakEwmaLatency(tau=2.0, default_rtt=0.5)
    s = make_state(weight=2.0, pending=1)
    assert m.load(s, NOW) == 0.5  # 0.5 × 2 / 2
    est = s.metric_state
    assert isinstance(est, RttEstimate)
    assert (est.rtt, est.stamp, est.samples) == (0.5, NOW, 0)
    assert m.load(s, NOW) == 0.5  # no time passed: no decay
    assert m.load(s, NOW + 2.0) == pytest.approx(0.5 * math.exp(-1.0))
    assert est.stamp == NOW + 2.0
    assert m.estimate(s, NOW) is None  # no samples yet


def test_peak_ewma_load_slow_start_and_penalty_floor() -> None:
    """If this fails, PeakEwma's load stops dividing by the slow-start weight, or a failing backend's estimate is no longer floored at default_rtt per recent failure before the penalty multiplies it."""
    m = PeakEwmaLatency(default_rtt=0.1)
    r = ramping(5.0)
    assert m.load(r, NOW) == pytest.approx(0.1 / r.effective_weight(NOW))
    assert m.load(ramping(10.0), NOW) == pytest.approx(0.05)
    s = penalised(make_state(), 2.0)  # factor 3
    s.metric_state = RttEstimate(rtt=0.01, stamp=NOW, samples=5)
    assert m.load(s, NOW) == pytest.approx(0.1 * 2 * 3)  # floor 0.2, times 3
    fast = penalised(make_state(), 2.0)
    fast.metric_state = RttEstimate(rtt=1.0, stamp=NOW, samples=5)
    assert m.load(fast, NOW) == pytest.approx(3.0)


def test_peak_ewma_observe_peaks_up_and_eases_down() -> None:
    """If this fails, a sample above the estimate no longer replaces it at once, or one below stops moving it by 1 - exp(-Δt/τ) (or the sample count and stamp stop updating)."""
    m = PeakEwmaLatency(tau=1.0, default_rtt=0.5)
    s = make_state()
    m.observe(s, 0.2, NOW)  # first sample, below the default: no time passed, no move
    est = s.metric_state
    assert isinstance(est, RttEstimate)
    assert (est.rtt, est.stamp, est.samples) == (0.5, NOW, 1)
    assert m.estimate(s, NOW) == 0.5
    m.observe(s, 0.9, NOW)
    assert est.rtt == 0.9
    assert est.samples == 2
    m.observe(s, 0.0, NOW + 1.0)
    assert est.rtt == pytest.approx(0.9 * math.exp(-1.0))
    assert est.stamp == NOW + 1.0
    m.observe(s, -5.0, NOW + 1.0)  # a negative latency is 0; no time: unchanged
    assert est.rtt == pytest.approx(0.9 * math.exp(-1.0))
    m.observe(s, 0.1, NOW + 0.5)  # an answer stamped earlier moves nothing back
    assert est.stamp == NOW + 1.0
    assert est.samples == 5


def test_peak_ewma_first_sample_above_default_replaces_it() -> None:
    """If this fails, the first slow answer no longer sets the estimate outright."""
    m = PeakEwmaLatency(default_rtt=0.05)
    s = make_state()
    m.observe(s, 2.0, NOW)
    assert m.estimate(s, NOW) == 2.0


def test_peak_ewma_decayed_matches_load() -> None:
    """If this fails, decayed() (the uninlined estimate) and load() disagree, or decayed stops seeding and decaying the record."""
    m = PeakEwmaLatency(tau=2.0, default_rtt=0.4)
    s = make_state()
    assert m.decayed(s, NOW) == 0.4
    assert m.decayed(s, NOW + 2.0) == pytest.approx(0.4 * math.exp(-1.0))
    t = make_state()
    m.load(t, NOW)
    assert m.load(t, NOW + 2.0) == pytest.approx(m.decayed(make_state(), NOW) * math.exp(-1.0))
    u = make_state()
    u.metric_state = RttEstimate(rtt=1.0, stamp=NOW, samples=3)
    m._update(u.metric_state, 3.0, NOW - 1.0)  # a peak stamped earlier keeps the stamp
    assert (u.metric_state.rtt, u.metric_state.stamp) == (3.0, NOW)
    m._update(u.metric_state, 0.0, NOW - 1.0)  # no elapsed time: no move
    assert u.metric_state.rtt == 3.0


# --- expected delay: delay and assess ------------------------------------------------


def test_unmeasured_delay_uses_prior_or_default_and_one_slot() -> None:
    """If this fails, an unmeasured backend no longer starts at the pool's typical service time (or default_delay) with a single slot."""
    m = ExpectedDelay(default_delay=0.3)
    s = make_state(weight=2.0)
    assert m.delay(s, NOW) == pytest.approx(0.15)
    assert m.delay(s, NOW, prior=(0.1, 8.0)) == pytest.approx(0.05)
    s.outstanding_cost = 1.0  # one slot: a second request queues behind it
    assert m.delay(s, NOW, prior=(0.1, 8.0)) == pytest.approx(0.1)
    assert m.delay(s, NOW, cost=3.0, prior=(0.1, 8.0)) == pytest.approx(0.1 * 3 * 4 / 3 / 2)
    assert m.estimate(s, NOW) is None
    assert m.concurrency(s) is None
    s.metric_state = DelayEstimate(samples=0, service=9.0)
    assert m.delay(s, NOW, prior=(0.1, 8.0)) == pytest.approx(0.1)
    assert m.estimate(s, NOW) is None
    assert m.concurrency(s) is None


def test_delay_knee_and_cost() -> None:
    """If this fails, expected delay stops being s × c × max(1, (W + c) / K) / weight."""
    m = ExpectedDelay()
    s = taught(0.1, 4.0, weight=2.0)
    assert m.delay(s, NOW) == pytest.approx(0.05)
    s.outstanding_cost = 3.0
    assert m.delay(s, NOW) == pytest.approx(0.05)  # exactly at the knee
    s.outstanding_cost = 5.0
    assert m.delay(s, NOW) == pytest.approx(0.1 * 6 / 4 / 2)
    assert m.delay(s, NOW, cost=2.0) == pytest.approx(0.1 * 2 * 7 / 4 / 2)
    big = taught(0.1, 2.0)
    assert m.delay(big, NOW, cost=3.0) == pytest.approx(0.3)  # slots widen to the cost
    assert m.load(s, NOW) == m.delay(s, NOW, 1.0)
    assert m.estimate(s, NOW) == 0.1
    assert m.concurrency(s) == 4.0


def test_retest_relaxes_only_a_stale_worse_estimate() -> None:
    """If this fails, an estimate worse than the pool's stops relaxing toward it by exp(-age/retest), or a better or fresh one starts relaxing."""
    m = ExpectedDelay(retest=1.0)
    prior = (0.1, 4.0)
    stale = taught(0.5, 4.0, stamp=NOW - 1.0)
    relaxed = 0.5 * math.exp(-1.0) + 0.1 * (1 - math.exp(-1.0))
    assert m.delay(stale, NOW, prior=prior) == pytest.approx(relaxed)
    assert m.assess(stale, NOW, prior=prior)[0] == pytest.approx(relaxed)
    assert m.delay(stale, NOW) == pytest.approx(0.5)  # no prior: nothing to relax to
    fresh = taught(0.5, 4.0, stamp=NOW)
    assert m.delay(fresh, NOW, prior=prior) == pytest.approx(0.5)
    future = taught(0.5, 4.0, stamp=NOW + 1.0)
    assert m.delay(future, NOW, prior=prior) == pytest.approx(0.5)
    better = taught(0.05, 4.0, stamp=NOW - 10.0)
    assert m.delay(better, NOW, prior=prior) == pytest.approx(0.05)
    same = taught(0.1, 4.0, stamp=NOW - 10.0)
    assert m.delay(same, NOW, prior=prior) == pytest.approx(0.1)


def test_slow_start_scales_slots_not_service() -> None:
    """If this fails, a ramping backend's knee stops being scaled by its slow-start factor (or the scaling outlives the window)."""
    m = ExpectedDelay()
    r = ramping(5.0)
    r.metric_state = DelayEstimate(service=0.1, slots=8.0, stamp=NOW, samples=5)
    factor = r.effective_weight(NOW) / r.weight
    r.outstanding_cost = 8.0 * factor
    assert m.delay(r, NOW) == pytest.approx(0.1 * (8.0 * factor + 1) / (8.0 * factor) / 2)
    _, room = m.assess(r, NOW)
    assert room == pytest.approx(0.0)
    done = ramping(10.0)
    done.metric_state = DelayEstimate(service=0.1, slots=8.0, stamp=NOW, samples=5)
    assert m.delay(done, NOW) == pytest.approx(0.05)
    assert m.assess(done, NOW)[1] == 8.0


def test_silence_bound_exact() -> None:
    """If this fails, a backend holding work stops being expected to take at least as long as it has gone without answering, measured from its oldest request or last answer, whichever is later."""
    m = ExpectedDelay()
    s = taught(0.1, 4.0)
    s.pending = 1
    s.outstanding_cost = 1.0
    s.in_flight.append(SimpleNamespace(started_at=NOW - 3.0, released=False))
    assert m.delay(s, NOW) == pytest.approx(3.0)
    s.answered_at = NOW - 2.0
    assert m.delay(s, NOW) == pytest.approx(2.0)
    s.answered_at = NOW - 0.05
    assert m.delay(s, NOW) == pytest.approx(0.1)  # silence under the estimate
    s.pending = 0  # nothing pending: no silence bound
    s.answered_at = -math.inf
    assert m.delay(s, NOW) == pytest.approx(0.1)
    s.pending = 1
    s.in_flight.clear()
    assert m.delay(s, NOW) == pytest.approx(0.1)


def test_penalty_floor_uses_prior_and_cost() -> None:
    """If this fails, a failing backend's delay stops being floored at one typical request per recent failure (prior × (cost + 1), else default_delay) before the penalty multiplies it."""
    m = ExpectedDelay(default_delay=0.3)
    s = penalised(taught(0.01, 4.0), 2.0)  # factor 3
    assert m.delay(s, NOW) == pytest.approx(0.3 * 2 * 3)
    assert m.delay(s, NOW, prior=(0.1, 4.0)) == pytest.approx(0.1 * 2 * 2 * 3)
    assert m.delay(s, NOW, cost=2.0, prior=(0.1, 4.0)) == pytest.approx(0.1 * 3 * 2 * 3)
    slow = penalised(taught(5.0, 4.0), 2.0)
    assert m.delay(slow, NOW) == pytest.approx(15.0)
    d = ExpectedDelay(failure_decay=1.0, default_delay=0.3)
    later = penalised(taught(5.0, 4.0), 1.0)
    assert d.delay(later, NOW + 1.0) == pytest.approx(5.0 * (1 + math.exp(-1.0)))


def test_assess_room_clamps_and_shrinks_with_penalty() -> None:
    """If this fails, assess() stops reporting the units left before the knee (0 past it), divided by the failure penalty."""
    m = ExpectedDelay()
    s = taught(0.1, 4.0)
    s.outstanding_cost = 1.0
    assert m.assess(s, NOW) == (pytest.approx(0.1), 3.0)
    assert m.assess(s, NOW, cost=6.0)[1] == 5.0  # slots widen to the cost
    s.outstanding_cost = 6.0
    assert m.assess(s, NOW)[1] == 0.0
    p = penalised(taught(0.1, 4.0), 1.0)
    assert m.assess(p, NOW)[1] == 2.0
    fresh = make_state()
    assert m.assess(fresh, NOW)[1] == 1.0
    assert m.assess(fresh, NOW, cost=3.0)[1] == 3.0
    stale = taught(0.5, 4.0, stamp=NOW - 1.0)
    assert m._model(stale, NOW, 1.0, (0.1, 4.0))[0] == pytest.approx(
        m.delay(stale, NOW, prior=(0.1, 4.0))
    )
    assert m._model(stale, NOW, 1.0, None)[0] == 0.5
    assert m._model(make_state(), NOW, 1.0, (0.2, 4.0)) == (0.2, 1.0)
    assert m._model(make_state(), NOW, 1.0, None) == (0.05, 1.0)


def test_record_creates_and_reuses() -> None:
    """If this fails, record() stops creating the metric's record on first use or replaces an existing one."""
    m = ExpectedDelay()
    s = make_state()
    first = m.record(s)
    assert first is s.metric_state
    assert first.samples == 0
    assert m.record(s) is first
    s.metric_state = RttEstimate()
    assert isinstance(m.record(s), DelayEstimate)


# --- expected delay: observe ---------------------------------------------------------


def test_first_answer_is_a_service_time_at_everything_in_flight() -> None:
    """If this fails, the first answer stops being taken as service time per unit at a concurrency of everything in flight (at least the request's own cost)."""
    m = ExpectedDelay()
    s = make_state()
    m.observe(s, 0.4, NOW, load_at_start=3.0, cost=2.0)
    est = record(s)
    assert (est.service, est.slots, est.stamp, est.samples) == (0.2, 3.0, NOW, 1)
    t = make_state()
    m.observe(t, 0.4, NOW, load_at_start=1.0, cost=2.0)
    assert record(t).slots == 2.0
    u = make_state()
    m.observe(u, -1.0, NOW, load_at_start=1.0, cost=0.0)  # cost 0 counts as 1; y >= 0
    assert (record(u).service, record(u).slots) == (0.0, 1.0)


def test_first_answer_with_hints() -> None:
    """If this fails, TEI timing hints stop giving the first service time and knee, or the worker's in-flight/queue-depth hints stop giving the knee."""
    m = ExpectedDelay()
    s = make_state()
    m.observe(s, 1.0, NOW, load_at_start=8.0, hints=ServerHints(inference_time=0.2, queue_time=0.6))
    assert (record(s).service, record(s).slots) == (pytest.approx(0.2), pytest.approx(2.0))
    small = make_state()  # a queue factor within the margin leaves the knee at everything
    m.observe(
        small, 1.0, NOW, load_at_start=8.0, hints=ServerHints(inference_time=0.5, queue_time=0.1)
    )
    assert record(small).slots == 8.0
    edge = make_state()  # exactly 1 + QUEUE_MARGIN: not queueing
    m.observe(
        edge, 1.0, NOW, load_at_start=8.0, hints=ServerHints(inference_time=1.0, queue_time=0.2)
    )
    assert record(edge).slots == 8.0
    tiny = make_state()  # the knee is at least the request's cost
    m.observe(
        tiny, 1.0, NOW, load_at_start=2.0, hints=ServerHints(inference_time=0.1, queue_time=10.0)
    )
    assert record(tiny).slots == 1.0
    w = make_state()
    m.observe(
        w, 1.0, NOW, load_at_start=8.0, cost=2.0, hints=ServerHints(in_flight=5.0, queue_depth=2.0)
    )
    assert record(w).slots == 6.0  # 3 served at once × cost 2
    one = make_state()
    m.observe(one, 1.0, NOW, load_at_start=8.0, hints=ServerHints(in_flight=2.0, queue_depth=1.0))
    assert record(one).slots == 1.0
    none = make_state()  # fewer than one served: the hint is ignored
    m.observe(none, 1.0, NOW, load_at_start=8.0, hints=ServerHints(in_flight=1.5, queue_depth=1.0))
    assert record(none).slots == 8.0
    zero = make_state()  # a zero run time is no service sample
    m.observe(
        zero, 1.0, NOW, load_at_start=8.0, hints=ServerHints(inference_time=0.0, queue_time=0.5)
    )
    assert (record(zero).service, record(zero).slots) == (1.0, 8.0)
    noq = make_state()  # no queue_time counts as no wait
    m.observe(noq, 1.0, NOW, load_at_start=8.0, hints=ServerHints(inference_time=0.25))
    assert (record(noq).service, record(noq).slots) == (0.25, 8.0)


def test_a_service_sample_below_the_knee_moves_service_by_better_or_worse() -> None:
    """If this fails, ordinary noise stops moving the service estimate by ``better`` (down) or ``worse`` (up), or the noise spread stops being learned below the knee."""
    m = ExpectedDelay(better=0.2, worse=0.1)
    s = taught(0.1, 4.0)
    m.observe(s, 0.08, NOW, load_at_start=2.0)
    est = record(s)
    assert est.service == pytest.approx(0.1 - 0.02 * 0.2)
    assert est.spread == pytest.approx(0.2 * 0.05)
    assert est.samples == 11
    t = taught(0.1, 4.0)
    m.observe(t, 0.115, NOW, load_at_start=2.0)
    assert record(t).service == pytest.approx(0.1 + 0.015 * 0.1)
    assert record(t).slots == 4.0
    u = taught(0.1, 4.0)
    m.observe(u, 0.1, NOW, load_at_start=2.0)  # exactly the estimate: worse weight, no move
    assert record(u).service == pytest.approx(0.1)
    assert record(u).spread == 0.0


def test_spread_saturates_and_is_learned_only_below_the_knee() -> None:
    """If this fails, one wild answer widens the noise margin by more than a capped deviation, or queueing past the knee is learned as noise."""
    m = ExpectedDelay()
    s = taught(0.1, 4.0)
    m.observe(s, 0.5, NOW, load_at_start=1.0)  # alone: a slow service time, deviation 4
    assert record(s).spread == pytest.approx(0.05)
    t = taught(0.1, 2.0)
    m.observe(t, 0.11, NOW, load_at_start=3.0)  # past the knee: no noise learned
    assert record(t).spread == 0.0
    u = taught(0.1, 2.0)
    m.observe(u, 0.11, NOW, load_at_start=2.0)  # at the knee: learned
    assert record(u).spread == pytest.approx(0.1 * 0.05)


def test_recovery_asymmetry_weights() -> None:
    """If this fails, an answer under half the estimate stops counting by the share it improves on it (and marking a recovery), or one over twice stops counting by half that."""
    m = ExpectedDelay()
    s = taught(1.0, 4.0)
    m.observe(s, 0.2, NOW, load_at_start=1.0)
    est = record(s)
    assert est.service == pytest.approx(1.0 + (0.2 - 1.0) * 0.8)
    assert est.recovered_from == pytest.approx(NOW - 0.2)
    half = taught(1.0, 4.0)
    m.observe(half, 0.5, NOW, load_at_start=1.0)  # exactly half: ordinary noise
    assert record(half).service == pytest.approx(1.0 - 0.5 * 0.2)
    assert record(half).recovered_from == -math.inf
    slow = taught(1.0, 4.0)
    m.observe(slow, 4.0, NOW, load_at_start=1.0)
    assert record(slow).service == pytest.approx(1.0 + 3.0 * 0.5 * 0.75)
    twice = taught(1.0, 4.0)
    m.observe(twice, 2.0, NOW, load_at_start=1.0)  # exactly twice: ordinary noise
    assert record(twice).service == pytest.approx(1.0 + 1.0 * 0.1)


def test_recovered_from_only_moves_forward() -> None:
    """If this fails, a recovery shown by an older request moves the recovery mark back, letting older slow answers undo it."""
    m = ExpectedDelay()
    s = taught(1.0, 4.0)
    record(s).recovered_from = NOW - 0.1
    m.observe(s, 0.2, NOW, load_at_start=1.0)  # started NOW - 0.2: before the mark
    assert record(s).recovered_from == NOW - 0.1


def test_older_slow_answers_are_ignored_but_not_faster_or_newer_ones() -> None:
    """If this fails, a slow answer to a request placed before the recovery is learned from (undoing it), or answers at/after the mark or no slower than the estimate are dropped."""
    m = ExpectedDelay()
    s = taught(0.1, 4.0)
    record(s).recovered_from = NOW - 0.5
    m.observe(s, 1.0, NOW, load_at_start=1.0)  # started NOW - 1: older news
    assert record(s).service == 0.1
    assert record(s).samples == 10
    at = taught(0.1, 4.0)
    record(at).recovered_from = NOW - 1.0
    m.observe(at, 1.0, NOW, load_at_start=1.0)  # started exactly at the mark: learned
    assert record(at).samples == 11
    assert record(at).service > 0.1
    same = taught(0.1, 4.0)
    record(same).recovered_from = NOW - 0.5
    m.observe(same, 0.1, NOW, load_at_start=1.0)  # ratio exactly 1: learned
    assert record(same).samples == 11
    zero = taught(0.0, 4.0)  # no service estimate yet: ratio 1, learned
    record(zero).recovered_from = NOW
    m.observe(zero, 0.3, NOW, load_at_start=1.0)
    assert record(zero).samples == 11


def test_queueing_with_company_moves_the_knee_and_service_a_little() -> None:
    """If this fails, a slow answer with company stops being read as queueing: the knee stops moving a quarter of the way to L × s × c / y, or service stops moving only at half weight by the de-queued sample."""
    m = ExpectedDelay()
    s = taught(0.1, 8.0)
    m.observe(s, 0.4, NOW, load_at_start=8.0)
    est = record(s)
    # queue factor min(4, 8) = 4: de-queued sample 0.1, ratio 1, weight worse/2
    assert est.service == pytest.approx(0.1)
    assert est.slots == pytest.approx(8.0 + (2.0 - 8.0) * 0.25)
    assert est.spread == 0.0  # not a clear sample
    capped = taught(0.1, 8.0)
    m.observe(capped, 1.0, NOW, load_at_start=2.0)  # ratio 10, capped at work 2
    assert record(capped).service == pytest.approx(0.1 + (0.5 - 0.1) * 0.5 * 0.5 * 0.8)
    assert record(capped).slots == pytest.approx(8.0 + (1.0 - 8.0) * 0.25)
    edge = taught(0.1, 8.0)
    m.observe(edge, 0.12, NOW, load_at_start=8.0)  # exactly 1 + margin: no queue
    assert record(edge).slots == 8.0
    floor = taught(0.1, 8.0)
    m.observe(floor, 0.35, NOW, load_at_start=3.0, cost=1.0)
    assert record(floor).slots == pytest.approx(8.0 + (1.0 - 8.0) * 0.25)


def test_noise_margin_follows_spread_within_bounds() -> None:
    """If this fails, the queueing margin stops widening with the backend's noise (2.5 spreads), or stops being bounded by 0.2 below and 0.8 above."""
    m = ExpectedDelay()
    noisy = taught(0.1, 8.0, spread=0.2)  # margin 0.5
    m.observe(noisy, 0.14, NOW, load_at_start=8.0)
    assert record(noisy).slots == 8.0
    noisier = taught(0.1, 8.0, spread=0.2)
    m.observe(noisier, 0.16, NOW, load_at_start=8.0)
    assert record(noisier).slots < 8.0
    capped = taught(0.1, 8.0, spread=1.0)  # margin capped at 0.8
    m.observe(capped, 0.185, NOW, load_at_start=8.0)
    assert record(capped).slots < 8.0
    within = taught(0.1, 8.0, spread=1.0)
    m.observe(within, 0.175, NOW, load_at_start=8.0)
    assert record(within).slots == 8.0
    low = taught(0.1, 8.0, spread=0.04)  # 2.5 × 0.04 = 0.1 < 0.2: margin 0.2
    m.observe(low, 0.115, NOW, load_at_start=8.0)
    assert record(low).slots == 8.0


def test_knee_grows_when_more_was_held_without_queueing() -> None:
    """If this fails, an answer within the noise with more in flight than the knee stops moving the knee halfway up toward it."""
    m = ExpectedDelay()
    s = taught(0.1, 4.0)
    m.observe(s, 0.1, NOW, load_at_start=8.0)
    assert record(s).slots == 6.0
    at = taught(0.1, 4.0)
    m.observe(at, 0.1, NOW, load_at_start=4.0)
    assert record(at).slots == 4.0


def test_later_hints_move_the_knee_halfway() -> None:
    """If this fails, the worker's in-flight and queue-depth hints stop pulling a learned knee halfway toward what it serves at once."""
    m = ExpectedDelay()
    s = taught(0.1, 2.0)
    m.observe(
        s, 0.5, NOW, load_at_start=8.0, cost=2.0, hints=ServerHints(in_flight=6.0, queue_depth=2.0)
    )
    assert record(s).slots == pytest.approx(2.0 + (8.0 - 2.0) * 0.5)
    one = taught(0.1, 2.0)
    m.observe(one, 0.1, NOW, load_at_start=8.0, hints=ServerHints(in_flight=3.0, queue_depth=2.0))
    assert record(one).slots == pytest.approx(1.5)
    few = taught(0.1, 2.0)  # under one served at once: the hint is not used, nor a guess
    m.observe(few, 0.5, NOW, load_at_start=8.0, hints=ServerHints(in_flight=2.5, queue_depth=2.0))
    assert record(few).slots == 2.0


def test_later_timing_hints_set_service_and_queue_factor() -> None:
    """If this fails, TEI's inference time stops being the service sample of a later answer, or its queue time stops being read as the queueing that moves the knee."""
    m = ExpectedDelay()
    s = taught(0.1, 8.0)
    m.observe(s, 1.0, NOW, load_at_start=8.0, hints=ServerHints(inference_time=0.1, queue_time=0.3))
    est = record(s)
    assert est.service == pytest.approx(0.1)
    assert est.slots == pytest.approx(8.0 + (2.0 - 8.0) * 0.25)
    assert est.spread == 0.0  # a clear sample below the knee, of deviation 0
    q = taught(0.1, 8.0)  # queue depth 0: a service time even though slow with company
    m.observe(q, 0.15, NOW, load_at_start=8.0, hints=ServerHints(queue_depth=0.0))
    assert record(q).service == pytest.approx(0.1 + 0.05 * 0.1)
    assert record(q).slots == 8.0
    assert record(q).spread == pytest.approx(0.5 * 0.05)
    d = taught(0.1, 8.0)  # queue depth 1 and no in_flight: guessed as usual
    m.observe(d, 0.4, NOW, load_at_start=8.0, hints=ServerHints(queue_depth=1.0))
    assert record(d).slots == pytest.approx(6.5)


def test_stale_estimate_is_mostly_replaced_by_the_first_answer() -> None:
    """If this fails, the first answer after Δt of silence stops replacing 1 - exp(-Δt/retest) of the old estimate."""
    m = ExpectedDelay(retest=1.0)
    s = taught(1.0, 4.0, stamp=NOW - 2.0)
    m.observe(s, 0.9, NOW, load_at_start=1.0)
    stale = 1 - math.exp(-2.0)
    assert record(s).service == pytest.approx(1.0 - 0.1 * stale)
    assert record(s).stamp == NOW
    back = taught(1.0, 4.0, stamp=NOW + 1.0)  # an answer stamped earlier: no staleness
    m.observe(back, 0.9, NOW, load_at_start=1.0)
    assert record(back).service == pytest.approx(1.0 - 0.1 * 0.2)
    assert record(back).stamp == NOW + 1.0


def test_cost_divides_latency_into_seconds_per_unit() -> None:
    """If this fails, a request's cost stops dividing its latency into a per-unit sample, or work in flight below the request's own cost stops counting as the cost."""
    m = ExpectedDelay()
    s = taught(0.1, 8.0)
    m.observe(s, 0.4, NOW, load_at_start=1.0, cost=4.0)
    assert record(s).service == pytest.approx(0.1)
    assert record(s).slots == 8.0
    zero = taught(0.1, 8.0)
    m.observe(zero, 0.08, NOW, load_at_start=0.0, cost=0.0)
    assert record(zero).service == pytest.approx(0.1 - 0.02 * 0.2)


def test_a_learned_zero_or_a_preset_estimate_is_not_reseeded() -> None:
    """If this fails, peak EWMA reseeds at default_rtt a backend whose estimate decayed to 0 after samples, or overwrites an estimate set without samples."""
    m = PeakEwmaLatency(default_rtt=0.5)
    for read in (m.decayed, m.load):
        zero = make_state()
        zero.metric_state = RttEstimate(rtt=0.0, stamp=NOW, samples=3)
        assert read(zero, NOW) == 0.0
        preset = make_state()
        preset.metric_state = RttEstimate(rtt=0.2, stamp=NOW, samples=0)
        assert read(preset, NOW) == pytest.approx(0.2)
    seen = make_state()
    seen.metric_state = RttEstimate(rtt=0.0, stamp=NOW, samples=3)
    m.observe(seen, 0.0, NOW)
    assert seen.metric_state.rtt == 0.0
    preset = make_state()
    preset.metric_state = RttEstimate(rtt=0.2, stamp=NOW, samples=0)
    m.observe(preset, 0.1, NOW)
    assert preset.metric_state.rtt == pytest.approx(0.2)


def test_each_metric_replaces_a_record_of_another_type() -> None:
    """If this fails, a metric reads another metric's record as its own (after the pool's metric changes) instead of starting afresh."""
    p = PeakEwmaLatency(default_rtt=0.5)
    d = ExpectedDelay()
    for read in (p.decayed, p.load):
        s = make_state()
        s.metric_state = DelayEstimate(service=3.0, samples=3)
        assert read(s, NOW) == 0.5
        assert isinstance(s.metric_state, RttEstimate)
    s = make_state()
    s.metric_state = DelayEstimate(service=3.0, samples=3)
    assert p.estimate(s, NOW) is None
    p.observe(s, 0.1, NOW)
    assert isinstance(s.metric_state, RttEstimate)
    t = make_state()
    t.metric_state = RttEstimate(rtt=3.0, samples=3)
    assert d.estimate(t, NOW) is None
    assert d.concurrency(t) is None
    assert d.delay(t, NOW) == 0.05
    assert d.assess(t, NOW)[1] == 1.0
    d.observe(t, 0.1, NOW)
    assert isinstance(t.metric_state, DelayEstimate)
    assert (record(t).service, record(t).slots) == (0.1, 1.0)  # defaults: cost 1, alone


def test_a_timing_hint_at_the_margin_counts_as_no_queue_later() -> None:
    """If this fails, a later answer whose hinted queueing is exactly the margin is read as queueing (pulling the knee down) instead of as having held everything without a queue."""
    m = ExpectedDelay()
    s = taught(0.1, 4.0)
    m.observe(
        s, 1.2, NOW, load_at_start=8.0, hints=ServerHints(inference_time=0.1, queue_time=0.02)
    )
    assert record(s).slots == 6.0


def test_model_and_assess_edges() -> None:
    """If this fails, assess() stops using a record with one answer (or starts using one with none), stops scaling a ramping backend's room by its slow-start factor, rounds a fractional room down, or stops dividing room by the penalty."""
    m = ExpectedDelay()
    none = make_state()
    none.metric_state = DelayEstimate(service=9.0, slots=8.0, samples=0)
    assert m._model(none, NOW, 1.0, (0.2, 4.0)) == (0.2, 1.0)
    one = make_state()
    one.metric_state = DelayEstimate(service=0.3, slots=8.0, stamp=NOW, samples=1)
    assert m._model(one, NOW, 1.0, None) == (0.3, 8.0)
    r = ramping(5.0)
    r.metric_state = DelayEstimate(service=0.1, slots=8.0, stamp=NOW, samples=5)
    assert m.assess(r, NOW)[1] == pytest.approx(8.0 * r.effective_weight(NOW) / r.weight)
    s = taught(0.1, 4.0)
    s.outstanding_cost = 3.5
    assert m.assess(s, NOW)[1] == 0.5
    p = penalised(taught(0.1, 4.0), 3.0)
    assert m.assess(p, NOW)[1] == 1.0
    q = penalised(taught(0.1, 4.0), 1.0)
    assert m.load(q, NOW) == m.delay(q, NOW)


def test_observe_edges_of_cost_hints_and_recovery() -> None:
    """If this fails, a fractional cost stops dividing latency, a hinted queue factor of 2 stops lowering the first knee, a slightly slow answer older than a recovery is learned from, or a half-second silence stops making the next answer count more."""
    m = ExpectedDelay()
    s = make_state()
    m.observe(s, 0.4, NOW, load_at_start=1.0, cost=0.5)
    assert record(s).service == pytest.approx(0.8)
    h = make_state()
    m.observe(h, 1.0, NOW, load_at_start=8.0, hints=ServerHints(inference_time=0.5, queue_time=0.5))
    assert record(h).slots == 4.0
    old = taught(0.1, 4.0)
    record(old).recovered_from = NOW - 0.1
    m.observe(old, 0.15, NOW, load_at_start=1.0)
    assert record(old).samples == 10
    stale = taught(1.0, 4.0, stamp=NOW - 0.5)
    m.observe(stale, 0.9, NOW, load_at_start=1.0)
    assert record(stale).service == pytest.approx(1.0 - 0.1 * (1 - math.exp(-2.0)))


def test_observe_edges_of_margin_spread_and_weights() -> None:
    """If this fails, the noise margin's cap, the spread's running average and cap, the over-twice weight, the de-queued sample's cap at work ÷ cost, or the knee's floor at the request's cost have changed."""
    m = ExpectedDelay()
    capped = taught(0.1, 8.0, spread=0.4)  # 2.5 × 0.4 = 1.0, capped at 0.8
    m.observe(capped, 0.185, NOW, load_at_start=8.0)
    assert record(capped).slots < 8.0
    zero = taught(0.0, 8.0)  # no service estimate: a service sample, not queueing
    m.observe(zero, 0.3, NOW, load_at_start=4.0)
    assert record(zero).service == pytest.approx(0.03)
    edge = taught(0.1, 8.0)  # exactly 1 + margin: a clear sample, noise learned
    m.observe(edge, 0.12, NOW, load_at_start=8.0)
    assert record(edge).spread == pytest.approx(0.2 * 0.05)
    costly = taught(0.1, 8.0)
    m.observe(costly, 1.0, NOW, load_at_start=4.0, cost=2.0)
    assert record(costly).service == pytest.approx(0.1 + 0.15 * 0.15)
    mean = taught(0.1, 8.0, spread=0.1)
    m.observe(mean, 0.12, NOW, load_at_start=2.0)
    assert record(mean).spread == pytest.approx(0.1 + 0.1 * 0.05)
    wild = taught(0.1, 8.0)
    m.observe(wild, 0.25, NOW, load_at_start=1.0)
    assert record(wild).spread == pytest.approx(0.05)
    slow = taught(1.0, 8.0)
    m.observe(slow, 2.5, NOW, load_at_start=1.0)
    assert record(slow).service == pytest.approx(1.0 + 1.5 * 0.3)
    floor = taught(0.1, 8.0)
    m.observe(
        floor, 1.1, NOW, load_at_start=2.0, hints=ServerHints(inference_time=0.1, queue_time=1.0)
    )
    assert record(floor).slots == pytest.approx(8.0 + (1.0 - 8.0) * 0.25)


def test_peak_ewma_clamps_a_negative_latency_to_zero() -> None:
    """If this fails, a negative latency (a clock step, say) drags the peak-EWMA estimate below zero instead of counting as an instant answer."""
    m = PeakEwmaLatency(tau=1.0)
    s = make_state()
    s.metric_state = RttEstimate(rtt=1.0, stamp=NOW, samples=3)
    m.observe(s, -5.0, NOW + 1.0)
    assert s.metric_state.rtt == pytest.approx(math.exp(-1.0))


@pytest.mark.parametrize(
    ("samples", "service", "baseline", "tau"),
    [
        (3, 0.5, 0.5, 4.0),  # three answers, as slow as it always is: settled
        (2, 0.5, 0.5, 1.0),  # too new to have a baseline
        (10, 0.2, 0.1, 4.0),  # exactly twice its baseline: still as it always is
        (10, 0.25, 0.1, 1.0),  # 2.5 times its baseline: in a spell
        (10, 0.5, 0.0, 1.0),  # no baseline yet
    ],
)
def test_retest_is_settled_times_slower_for_a_backend_as_slow_as_always(
    samples: int, service: float, baseline: float, tau: float
) -> None:
    """A backend slower than the pool but within twice its own baseline (after three
    answers) relaxes toward the pool SETTLED (4) times more slowly than one in a spell.
    If this fails, a small CPU replica beside GPUs is probed as often as a GPU in a slow
    spell (its probes cost the tail), or a spell is re-tested at the settled pace."""
    m = ExpectedDelay(retest=1.0)
    prior = (0.1, 4.0)
    state = taught(service, 4.0, stamp=NOW - 1.0, samples=samples)
    record(state).baseline = baseline
    w = math.exp(-1.0 / tau)
    assert m.delay(state, NOW, prior=prior) == pytest.approx(service * w + 0.1 * (1 - w))
    assert m.relaxed_by(state, NOW, prior) == pytest.approx(service / (service * w + 0.1 * (1 - w)))


def test_relaxed_by_is_one_without_a_prior_a_sample_or_a_worse_estimate() -> None:
    """If this fails, a backend never measured (or no worse than the pool) counts as a
    stale one being probed, and its hedges go out early."""
    m = ExpectedDelay(retest=1.0)
    prior = (0.1, 4.0)
    assert m.relaxed_by(make_state(), NOW, prior) == 1.0
    assert m.relaxed_by(taught(0.5, stamp=NOW - 5.0), NOW, None) == 1.0
    assert m.relaxed_by(taught(0.1, stamp=NOW - 5.0), NOW, prior) == 1.0
    assert m.relaxed_by(taught(0.5, stamp=NOW), NOW, prior) == 1.0  # fresh news


def test_a_worse_estimate_with_fresh_news_is_no_probe_and_keeps_the_silence_bound() -> None:
    """A backend slower than the pool whose news is fresh (age 0, nothing relaxed) is not
    being probed: one request held in silence still bounds its delay. If this fails, a
    slow backend that has gone quiet on its only request keeps getting work as if it
    were a probe awaiting a slow answer."""
    m = ExpectedDelay(retest=1.0)
    state = taught(0.5, 4.0, stamp=NOW)
    state.pending = 1
    state.outstanding_cost = 1.0
    state.in_flight.append(SimpleNamespace(started_at=NOW - 3.0, released=False))
    assert m.delay(state, NOW, prior=(0.1, 4.0)) == pytest.approx(3.0)


def _measured(service: float, *, news: float = 0.0) -> BackendState:
    """A backend whose record says ``service`` seconds per unit, 8 slots, news from ``news``."""
    state = make_state()
    state.metric_state = DelayEstimate(
        service=service, slots=8.0, stamp=news, samples=50, news=news
    )
    return state


def test_delays_default_cost_is_one_unit() -> None:
    """``delays()`` without a cost scores one unit, as ``delay()`` does. If this fails,
    a caller scoring candidates without naming a cost gets another size's delays."""
    m = ExpectedDelay()
    s = _measured(0.1, news=NOW)
    assert m.delays([s], NOW) == m.delays([s], NOW, 1.0) == [pytest.approx(0.1)]


def test_relaxed_by_counts_staleness_from_the_newest_placement() -> None:
    """The probe test (``relaxed_by``) relaxes a worse record from the newest request
    placed there, like the pick does: placed 1 s ago on news 6 s old, the relaxing is
    one second's. If this fails, a pick marked as a probe and the pick's own scores
    disagree on how stale the backend's news is."""
    m = ExpectedDelay(retest=0.25)
    s = _measured(0.8, news=NOW - 6.0)
    s.in_flight.append(SimpleNamespace(started_at=NOW - 1.0, released=False))
    s.pending, s.outstanding_cost = 1, 1.0
    w = math.exp(-1.0 / 0.25)
    assert m.relaxed_by(s, NOW, (0.1, 8.0)) == pytest.approx(0.8 / (0.8 * w + 0.1 * (1 - w)))


def test_untracked_work_in_flight_means_news_is_awaited() -> None:
    """Without placement tracking, a backend holding work (even one unit, or less) is
    awaiting news: its worse record is not relaxed at all. If this fails, a backend
    already being re-tested is treated as stale and probed again meanwhile."""
    m = ExpectedDelay(retest=0.25)
    for held in (1.0, 0.5):
        s = _measured(0.8, news=NOW - 6.0)
        s.pending, s.outstanding_cost = 1, held
        assert m.relaxed_by(s, NOW, (0.1, 8.0)) == 1.0


def test_a_cost_of_exactly_the_least_unit_is_learned_per_unit() -> None:
    """A request costing exactly ``MIN_UNIT`` is learned per unit of its cost (the
    bound is inclusive); just below it, as one unit. If this fails, the documented
    bound moved."""
    from embedbalance.load import MIN_UNIT

    m = ExpectedDelay()
    at = make_state()
    m.observe(at, 0.5, NOW, load_at_start=MIN_UNIT, cost=MIN_UNIT)
    assert at.metric_state.service == pytest.approx(0.5 / MIN_UNIT)
    below = make_state(1)
    m.observe(below, 0.5, NOW, load_at_start=MIN_UNIT / 2, cost=MIN_UNIT / 2)
    assert below.metric_state.service == pytest.approx(0.5)
