"""The scale simulation: deterministic, the oracle beats blind balancing, and pick cost
is measured."""

from __future__ import annotations

import numpy as np
import pytest
from bench_balance import ideal_throughput, summarise
from simulate import ORACLE, Topology, pick_cost, simulate


def test_topology_mix_and_capacity() -> None:
    """One backend in four is slow with 2 slots, and capacity is the sum of slots / mean."""
    topo = Topology.mixed(8, fast_mean=1.0)
    assert list(topo.slots) == [8, 8, 8, 2, 8, 8, 8, 2]
    assert topo.capacity == pytest.approx(6 * 8 + 2 * 2 / 6)


def test_simulation_is_deterministic_for_a_seed() -> None:
    """Same seed, same balancer, same numbers — the simulation is reproducible."""
    topo = Topology.mixed(12)
    a = simulate("PeakEwma", topo, requests=3000, seed=5)
    b = simulate("PeakEwma", topo, requests=3000, seed=5)
    assert (a.p50, a.p99, a.slow_share) == (b.p50, b.p99, b.slow_share)


def test_oracle_beats_round_robin_on_heterogeneous_backends() -> None:
    """The oracle avoids the slow backends; round-robin gives them a full share and queues."""
    topo = Topology.mixed(8)
    oracle = simulate(ORACLE, topo, requests=4000, seed=1)
    rr = simulate("RoundRobin", topo, requests=4000, seed=1)
    assert rr.slow_share == pytest.approx(0.25, abs=0.01)
    assert oracle.slow_share < 0.05
    assert oracle.p99 < rr.p99 / 3


def test_pick_cost_is_positive_and_bounded() -> None:
    """Pick cost is measured through the real pool and returns within its time budget."""
    cost = pick_cost("PeakEwma", 50, picks=200, budget_s=0.2)
    assert 0 < cost < 0.01


def test_throughput_counts_only_successes_inside_the_window() -> None:
    """Requests finishing in the drain, and failures, do not count toward throughput."""
    part = {
        "ends": [0.5, 1.5, 2.5, 3.5, 11.5, 12.0],
        "latencies": [0.1] * 6,
        "ok": [True, True, False, True, True, True],
        "errors": {"HTTP 502": 1},
        "unfinished": 0,
        "cpu_s": 1.0,
        "wall_s": 4.0,
    }
    row = summarise([part], window_start=1.0, window=10.0)
    assert row["throughput"] == pytest.approx(0.2)  # 1.5 and 3.5 only
    assert row["failed"] == 1
    assert row["loadgen_cpu"] == pytest.approx(0.25)
    assert np.isfinite(row["p99"])


def test_ideal_throughput_accounts_for_scenario_events() -> None:
    """The kill and the hang remove 30% of one backend's capacity; an open loop caps the ideal at its arrival rate."""
    from bench_balance import SCENARIOS, Settings

    settings = Settings(fast_mean=0.1)
    specs = settings.backends(SCENARIOS["above"])
    full = 3 * 80 + 2 / 0.6
    assert ideal_throughput(SCENARIOS["above"], specs) == pytest.approx(full)
    assert ideal_throughput(SCENARIOS["kill"], specs) == pytest.approx(full - 24)
    assert ideal_throughput(SCENARIOS["open50"], specs) == pytest.approx(full / 2)
    equal = settings.backends(SCENARIOS["degrade70"])
    assert [b.slots for b in equal] == [4, 4, 4, 4]
    stragglers = settings.backends(SCENARIOS["stragglers"])
    assert stragglers[0].straggle_p > 0
    assert all(b.straggle_p == 0 for b in stragglers[1:])


def test_phases_split_shares_and_p50_by_start_time() -> None:
    """Degrade-and-recover phases count each request by when it started and report each backend's share and the p50."""
    from bench_balance import DEGRADE_AT, DEGRADE_FOR, phases

    starts = [0.5, 1.0, DEGRADE_AT + 1, DEGRADE_AT + 2, DEGRADE_AT + DEGRADE_FOR + 3]
    part = {
        "starts": starts,
        "latencies": [0.1, 0.3, 1.0, 1.0, 0.2],
        "ok": [True] * 5,
        "served_by": [7000, 7001, 7001, 7001, 7000],
    }
    out = phases([part], window_start=0.0, ports=[7000, 7001])
    assert out["before"]["shares"] == [0.5, 0.5]
    assert out["before"]["p50"] == pytest.approx(0.2)
    assert out["during"]["shares"] == [0.0, 1.0]
    assert out["after 2-5 s"]["shares"] == [1.0, 0.0]
    assert out["after 0-2 s"]["requests"] == 0


def test_regain_time_is_when_the_sliding_share_first_reaches_the_fraction() -> None:
    """The recovered backend counts as back once its share of the next second's requests
    reaches 0.8x fair; a shunned stretch before that delays it, and never is nan."""
    from bench_balance import DEGRADE_AT, DEGRADE_FOR, regain_time

    end = DEGRADE_AT + DEGRADE_FOR
    # two backends, fair 0.5: for 0.7 s only the other serves, then they alternate
    starts = [end + 0.02 * k for k in range(150)]
    served = [7001 if s < end + 0.7 else (7000 if k % 2 else 7001) for k, s in enumerate(starts)]
    part = {"starts": starts, "ok": [True] * 150, "served_by": served}
    t = regain_time([part], window_start=0.0, port=7000, fair=0.5)
    # the share of [t, t+1) is (1 - (0.7 - t)) / 2 / 1: it reaches 0.4 once t >= 0.5
    assert 0.45 <= t <= 0.55
    never = dict(part, served_by=[7001] * 150)
    assert np.isnan(regain_time([never], window_start=0.0, port=7000, fair=0.5))
