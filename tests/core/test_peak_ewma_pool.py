"""PeakEwma seen through the pool's public surface: validation, and what stats() reports
before and after the first latency sample."""

from __future__ import annotations

import math

import pytest

import embedbalance as eb


def test_tau_and_default_rtt_bounds() -> None:
    """Any finite positive tau or default_rtt is accepted (sub-second included); zero is refused."""
    assert "tau=0.5" in repr(eb.PeakEwma(tau=0.5))
    assert "default_rtt=0.001" in repr(eb.PeakEwma(default_rtt=0.001))
    with pytest.raises(ValueError, match="default_rtt"):
        eb.PeakEwma(default_rtt=0.0)
    with pytest.raises(ValueError, match="tau"):
        eb.PeakEwma(tau=0.0)


def test_no_estimate_is_reported_before_the_first_sample() -> None:
    """stats() shows no RTT estimate until a success was measured, even after picks read the default."""
    clock = eb.ManualClock(10.0)
    pool = eb.BackendPool(["http://a.test", "http://b.test"], balancer=eb.PeakEwma(), clock=clock)
    assert {r.rtt_estimate for r in pool.stats().backends} == {None}
    leases = [pool.acquire() for _ in range(4)]  # reading loads seeds the default
    assert {r.rtt_estimate for r in pool.stats().backends} == {None}
    clock.advance(0.2)
    pool.release(leases[0], eb.Outcome.SUCCESS)
    row = pool.stats().by_url()[leases[0].backend.url]
    assert row.rtt_estimate == pytest.approx(0.2)


def test_a_negative_latency_never_makes_a_negative_estimate() -> None:
    """A negative latency (a clock quirk in the caller) counts as zero, never as a negative RTT."""
    clock = eb.ManualClock(10.0)
    pool = eb.BackendPool(["http://a.test"], balancer=eb.PeakEwma(), clock=clock)
    pool.release(pool.acquire(), eb.Outcome.SUCCESS, latency=-1.0)
    estimate = pool.stats().backends[0].rtt_estimate
    assert estimate is not None
    assert estimate >= 0.0
    assert math.isfinite(estimate)
