"""Scale and soak: the default balancer near the oracle at hundreds of backends, and a
transport that survives repeated crashes of its backends without losing a request."""

from __future__ import annotations

import threading

import httpx
import pytest
from control_proc import ControlServer
from simulate import ORACLE, Topology, simulate

import embedbalance as eb

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


@pytest.mark.parametrize("n", [100, 1000])
def test_default_balancer_stays_near_the_oracle_at_scale(n: int) -> None:
    """At 80% load over 100 and 1,000 mixed backends, ShortestExpectedDelay's p99 is within 1.5x of join-shortest-queue with perfect knowledge, where PeakEwma is many times worse."""
    topo = Topology.mixed(n)
    requests = 30_000 if n == 100 else 60_000
    oracle = simulate(ORACLE, topo, requests=requests, seed=3)
    ours = simulate("ShortestExpectedDelay", topo, requests=requests, seed=3)
    peak = simulate("PeakEwma", topo, requests=requests, seed=3)
    assert ours.p99 < 1.5 * oracle.p99
    assert peak.p99 > 5 * ours.p99


def test_soak_repeated_crashes_lose_nothing() -> None:
    """6,000 requests from 16 threads while backends are SIGKILLed and restarted three times: every request succeeds and in-flight returns to 0."""
    from transport._load import run_sync

    servers = [ControlServer(delay=0.002) for _ in range(4)]
    try:
        transport = eb.BalancingTransport(
            [s.url for s in servers],
            health_check=eb.HealthCheck(interval=0.2, timeout=0.5, rise=2, fall=2, jitter=0.0),
            outlier_detection=eb.OutlierDetection(consecutive_failures=3, base_ejection_time=5.0),
            slow_start=eb.SlowStart(window=1.0),
        )
        lock = threading.Lock()
        crashes: list[int] = []

        def progress(i: int) -> None:
            if i and i % 1500 == 0:
                with lock:
                    if i in crashes:
                        return
                    crashes.append(i)
                victim = servers[len(crashes) % len(servers)]
                victim.kill()
                threading.Thread(target=victim.start, daemon=True).start()

        with httpx.Client(transport=transport, base_url="http://e") as client:
            result = run_sync(client, 6000, 16, on_progress=progress, deadline=600)
        assert len(crashes) == 3
        assert result.failed == 0, result.errors[:5]
        assert result.ok == 6000
        assert transport.stats().pool.in_flight == 0
    finally:
        for s in servers:
            s.stop()
