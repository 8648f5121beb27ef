"""Load-shaped scenarios on real servers: heterogeneous speeds, many threads, hedging,
lifecycle of background work, and Prometheus metrics."""

from __future__ import annotations

import threading
import time

import anyio
import httpx
import numpy as np
import pytest
from echo_server import echo_servers

import embedbalance as eb

from ._load import run_async, run_sync

pytestmark = pytest.mark.timeout(180)


def _hetero(servers):
    fast = servers(3, delay=0.01, slots=8)
    slow = servers(1, delay=0.06, slots=2)[0]
    return fast, slow


def _share_and_p99(result, slow_url):
    share = result.backends.get(slow_url, 0) / result.ok
    return share, float(np.percentile(result.latencies, 99))


def test_peak_ewma_learns_a_slow_backend_round_robin_does_not(servers):
    """PeakEwma sends a 6× slower backend well under its round-robin share and keeps p99 far lower; RoundRobin does not."""
    fast, slow = _hetero(servers)
    urls = [s.url for s in [*fast, slow]]
    outcome = {}
    for name, balancer in (("rr", eb.RoundRobin()), ("ewma", eb.PeakEwma())):
        # hedging off: it would rescue round-robin's tail too, and this compares balancers
        transport = eb.BalancingTransport(urls, balancer=balancer, health_check=None, hedge=None)
        with httpx.Client(transport=transport, base_url="http://e") as client:
            run_sync(client, 50, 4)  # warm connections and estimates
            outcome[name] = _share_and_p99(run_sync(client, 600, 16), slow.url)
    rr_share, rr_p99 = outcome["rr"]
    ewma_share, ewma_p99 = outcome["ewma"]
    assert rr_share == pytest.approx(0.25, abs=0.03)
    assert ewma_share < 0.5 * rr_share
    assert ewma_p99 < 0.6 * rr_p99


@pytest.mark.anyio
@pytest.mark.parametrize("balancer", [eb.PeakEwma, eb.ShortestExpectedDelay])
async def test_load_aware_balancers_learn_a_slow_backend_async(servers, balancer):
    """The async transport with PeakEwma, and with the default balancer, keeps a 6× slower backend well under its round-robin share."""
    fast, slow = _hetero(servers)
    transport = eb.AsyncBalancingTransport(
        [s.url for s in [*fast, slow]], health_check=None, balancer=balancer()
    )
    async with httpx.AsyncClient(transport=transport, base_url="http://e") as client:
        await run_async(client, 50, 4)
        result = await run_async(client, 600, 16)
    share, _ = _share_and_p99(result, slow.url)
    assert result.failed == 0
    assert share < 0.125


def test_32_threads_share_one_transport_with_exact_counts(servers):
    """32 threads × 4,000 requests through one sync transport: no exception, exact per-backend counts, in-flight back to 0."""
    backends = servers(4)
    # no hedges: each request is then exactly one attempt, so the counts must agree
    transport = eb.BalancingTransport([s.url for s in backends], health_check=None, hedge=None)
    with httpx.Client(
        transport=transport, base_url="http://e", limits=httpx.Limits(max_connections=64)
    ) as client:
        result = run_sync(client, 4_000, 32)
    assert result.failed == 0, result.errors[:3]
    assert result.ok == 4_000
    stats = transport.stats()
    rows = stats.pool.by_url()
    for server in backends:
        received = server.stats()["requests"]
        assert rows[server.url].requests == received == result.backends[server.url]
        assert rows[server.url].successes == received
    assert stats.pool.in_flight == 0
    assert stats.requests == 4_000
    transport.close()


def _embedbalance_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("embedbalance")]


def test_close_leaves_no_thread_and_stops_checks(servers):
    """close() joins the health-check threads, and the backend sees no check afterwards."""
    (server,) = servers(1)
    before = set(_embedbalance_threads())
    transport = eb.BalancingTransport(
        [server.url], health_check=eb.HealthCheck(interval=0.05, jitter=0.0)
    )
    with httpx.Client(transport=transport, base_url="http://e") as client:
        client.post("/embed", json={"inputs": ["a"]})
        time.sleep(0.3)
    assert set(_embedbalance_threads()) - before == set()
    checks = server.stats()["health_checks"]
    assert checks >= 2
    time.sleep(0.3)
    assert server.stats()["health_checks"] == checks


@pytest.mark.anyio
async def test_aclose_stops_the_background_task(servers):
    """aclose() cancels the async health-check task: the backend sees no check afterwards."""
    (server,) = servers(1)
    transport = eb.AsyncBalancingTransport(
        [server.url], health_check=eb.HealthCheck(interval=0.05, jitter=0.0)
    )
    async with httpx.AsyncClient(transport=transport, base_url="http://e") as client:
        await client.post("/embed", json={"inputs": ["a"]})
        await anyio.sleep(0.3)
    checks = server.stats()["health_checks"]
    assert checks >= 2
    await anyio.sleep(0.3)
    assert server.stats()["health_checks"] == checks


def test_active_checks_take_out_and_bring_back_a_backend_sync(servers):
    """The sync transport's own checker: an unhealthy /health takes a backend out after
    `fall` checks and `rise` passing checks bring it back. If this fails, the sync
    transport starts its checker without its probe (every check then fails alike, the
    pool panics and serves everyone) and a dead backend is never taken out."""
    a, b = servers(2)
    policy = eb.HealthCheck(interval=0.05, jitter=0.0, rise=2, fall=2)
    with eb.BalancingTransport([a.url, b.url], health_check=policy) as transport:
        transport.start()
        b.control(healthy=False)
        deadline = time.monotonic() + 5
        while transport.stats().pool.by_url()[b.url].state != "unhealthy":
            assert time.monotonic() < deadline, transport.stats().pool.by_url()[b.url]
            time.sleep(0.02)
        assert transport.stats().pool.by_url()[a.url].state == "healthy"
        b.control(healthy=True)
        deadline = time.monotonic() + 5
        while transport.stats().pool.by_url()[b.url].state != "healthy":
            assert time.monotonic() < deadline, transport.stats().pool.by_url()[b.url]
            time.sleep(0.02)


@pytest.mark.anyio
async def test_active_checks_take_out_and_bring_back_a_backend_async(servers):
    """An unhealthy /health takes a backend out after `fall` checks and `rise` passing checks bring it back."""
    a, b = servers(2)
    policy = eb.HealthCheck(interval=0.05, jitter=0.0, rise=2, fall=2)
    async with eb.AsyncBalancingTransport([a.url, b.url], health_check=policy) as transport:
        b.control(healthy=False)
        with anyio.fail_after(5):
            while transport.stats().pool.by_url()[b.url].state != "unhealthy":
                await anyio.sleep(0.02)
        b.control(healthy=True)
        with anyio.fail_after(5):
            while transport.stats().pool.by_url()[b.url].state != "healthy":
                await anyio.sleep(0.02)


def _hedging_setup() -> dict[str, object]:
    return {
        "balancer": eb.RoundRobin(),
        "health_check": None,
        "outlier_detection": None,
        "hedge": eb.Hedge(percentile=60, min_samples=20, budget_ratio=0.5),
    }


def test_hedging_answers_requests_stuck_on_a_hung_backend_sync():
    """With hedging on, requests whose first copy went to a backend that never answers are answered by a copy sent elsewhere (without hedging they would hang)."""
    with echo_servers(3) as echo:
        hung = echo[2]
        transport = eb.BalancingTransport([s.url for s in echo], **_hedging_setup())
        with httpx.Client(transport=transport, base_url="http://e") as client:
            run_sync(client, 40, 1)  # latency samples for the hedge delay
            hung.hang = True
            before = hung.hits
            # Each losing copy stays parked on the hung backend until it answers.
            result = run_sync(client, 9, 1)
            assert result.failed == 0, result.errors[:3]
            assert result.ok == 9
            assert result.backends.get(hung.url, 0) == 0
            assert hung.hits - before >= 2
            assert transport.stats().hedges >= hung.hits - before
            row = transport.stats().pool.by_url()[hung.url]
            assert row.pending == hung.hits - before, "losers still count as its work"
            hung.hang = False  # the losers finish and report their own outcome
            deadline = time.monotonic() + 10
            while transport.stats().pool.in_flight and time.monotonic() < deadline:
                time.sleep(0.01)
            transport.close()
        stats = transport.stats()
        assert stats.pool.in_flight == 0
        row = stats.pool.by_url()[hung.url]
        assert row.cancelled == 0
        assert row.requests == row.successes + row.failures


@pytest.mark.anyio
async def test_hedging_async_lets_the_loser_finish_and_settle_itself():
    """The async hedge returns the first answer; the copy stuck on a hung backend is not cancelled but stays in flight (the server still holds it, and the balancer must keep counting it), then settles with its real outcome when the backend answers, leaving nothing in flight."""
    with echo_servers(3) as echo:
        hung = echo[2]
        transport = eb.AsyncBalancingTransport([s.url for s in echo], **_hedging_setup())
        async with httpx.AsyncClient(transport=transport, base_url="http://e") as client:
            await run_async(client, 40, 2)
            hung.hang = True
            before = transport.stats().pool.by_url()[hung.url]
            result = await run_async(client, 30, 2)
            assert result.failed == 0, result.errors[:3]
            assert result.backends.get(hung.url, 0) == 0
            stats = transport.stats()
            after = stats.pool.by_url()[hung.url]
            stuck = after.requests - before.requests
            assert stuck >= 1
            assert stats.hedges >= stuck
            assert after.pending == stuck, "the losers are still the hung backend's work"
            assert after.cancelled == before.cancelled
            hung.hang = False  # it answers now: every loser settles as a success
            with anyio.fail_after(10):
                while transport.stats().pool.by_url()[hung.url].pending:
                    await anyio.sleep(0.01)
            final = transport.stats().pool.by_url()[hung.url]
            assert final.successes - before.successes == stuck
            assert final.cancelled == before.cancelled
            assert transport.stats().pool.in_flight == 0


@pytest.mark.anyio
async def test_aclose_cancels_hedge_losers_still_in_flight():
    """Closing the async transport cuts off losers still waiting on a hung backend: they are released as cancelled and nothing is left in flight or running."""
    with echo_servers(3) as echo:
        hung = echo[2]
        transport = eb.AsyncBalancingTransport([s.url for s in echo], **_hedging_setup())
        async with httpx.AsyncClient(transport=transport, base_url="http://e") as client:
            await run_async(client, 40, 2)
            hung.hang = True
            result = await run_async(client, 20, 2)
            assert result.failed == 0
            stuck = transport.stats().pool.by_url()[hung.url].pending
            assert stuck >= 1
        # the client's exit closed the transport
        stats = transport.stats()
        assert stats.pool.in_flight == 0
        assert stats.pool.by_url()[hung.url].cancelled >= stuck
        assert not transport._attempts
        hung.hang = False


def test_prometheus_metrics_count_requests_and_ejections(servers):
    """The Prometheus sink counts attempts by outcome, observes latency and records ejections."""
    prometheus_client = pytest.importorskip("prometheus_client")
    from embedbalance.metrics import METRIC_NAMES, PrometheusMetrics

    registry = prometheus_client.CollectorRegistry()
    good = servers(2)
    bad = servers(1, mode="fail")[0]
    transport = eb.BalancingTransport(
        [s.url for s in [*good, bad]],
        health_check=None,
        balancer=eb.RoundRobin(),
        outlier_detection=eb.OutlierDetection(consecutive_failures=2),
        hedge=None,  # exact counts: one attempt per request unless it failed
        metrics=PrometheusMetrics(registry),
    )
    with httpx.Client(transport=transport, base_url="http://e") as client:
        for _ in range(30):
            client.post("/embed", json={"inputs": ["a"]})
    value = registry.get_sample_value
    assert value("embedbalance_requests_total", {"backend": bad.url, "outcome": "failure"}) == 2
    assert value("embedbalance_ejections_total", {"backend": bad.url}) == 1
    assert value("embedbalance_backend_healthy", {"backend": bad.url}) == 0
    ok_total = sum(
        value("embedbalance_requests_total", {"backend": s.url, "outcome": "success"}) or 0
        for s in good
    )
    assert ok_total == 30  # the two failed attempts were retried on a good backend
    assert value("embedbalance_request_duration_seconds_count", {"backend": good[0].url}) >= 10
    names = {m.name for m in registry.collect()}
    exported = {n.removesuffix("_total") for n in METRIC_NAMES}
    assert exported <= names
    transport.close()
