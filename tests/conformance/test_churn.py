"""Pod churn under load: hundreds of backend-set changes (what a rollout or an autoscaler
cycle looks like through DNS discovery) while requests run. Per-backend resources —
connections, metric series, in-flight gauges, threads — must stay bounded by the live
backends, and no gauge may go negative."""

from __future__ import annotations

import threading
import time

import httpx
import pytest
from echo_server import echo_servers

import embedbalance as eb
from embedbalance.metrics import PrometheusMetrics

from .conftest import tcp_connections

prometheus_client = pytest.importorskip("prometheus_client")

pytestmark = pytest.mark.timeout(120)

LOADERS = 4


def _series(registry: object) -> tuple[set[str], float]:
    """Backend label values across every family, and the lowest in_flight sample."""
    labels: set[str] = set()
    lowest = 0.0
    for family in registry.collect():  # type: ignore[attr-defined]
        for sample in family.samples:
            url = sample.labels.get("backend")
            if url is None:
                continue
            labels.add(url)
            if family.name == "embedbalance_in_flight":
                lowest = min(lowest, sample.value)
    return labels, lowest


@pytest.mark.parametrize(
    "changes", [60, pytest.param(300, marks=pytest.mark.slow)], ids=["60", "300"]
)
def test_churn_under_load_keeps_sockets_series_gauges_and_threads_bounded(changes: int) -> None:
    """Hundreds of membership changes under concurrent load leave only live backends' connections and series, no negative in_flight gauge and no extra threads (else a rollout leaks sockets, series and gauges at -1)."""
    registry = prometheus_client.CollectorRegistry()
    with echo_servers(4) as servers:
        ports = {s.port for s in servers}

        def generation(g: int) -> list[str]:
            # Each server's backend changes every second generation, staggered: every
            # change keeps two backends and replaces two, as a rolling update does.
            return [f"{s.url}/g{(g + i) // 2}" for i, s in enumerate(servers)]

        transport = eb.BalancingTransport(
            generation(0),
            health_check=None,
            slow_start=None,
            metrics=PrometheusMetrics(registry=registry),
        )
        client = httpx.Client(transport=transport, base_url="http://tei", timeout=10)
        threads_before = threading.active_count()
        stop = threading.Event()
        errors: list[BaseException] = []
        sent = [0] * LOADERS

        def load(k: int) -> None:
            deadline = time.monotonic() + 60
            while not stop.is_set() and time.monotonic() < deadline and sent[k] < 5000:
                try:
                    client.post("/embed", json={"inputs": ["x"]})
                except eb.NoBackendAvailable:
                    pass
                except BaseException as exc:  # any other error is a finding
                    errors.append(exc)
                    return
                sent[k] += 1

        loaders = [threading.Thread(target=load, args=(k,), daemon=True) for k in range(LOADERS)]
        for t in loaders:
            t.start()
        lowest_gauge = 0.0
        most_threads = 0
        try:
            for g in range(1, changes + 1):
                transport.pool.update(generation(g))
                if g % 10 == 0:
                    _, low = _series(registry)
                    lowest_gauge = min(lowest_gauge, low)
                    most_threads = max(most_threads, threading.active_count())
                time.sleep(0.005)
        finally:
            stop.set()
            for t in loaders:
                t.join(timeout=30)
        live = {b.url for b in transport.pool.backends}
        labels, low = _series(registry)
        lowest_gauge = min(lowest_gauge, low)
        connections = tcp_connections(ports)
        stats = transport.stats()
        client.close()

    assert not errors, errors[:3]
    assert sum(sent) > changes  # the churn really happened under load
    assert len(live) == 4
    assert lowest_gauge >= 0
    assert stats.pool.in_flight == 0
    assert labels <= live, f"{len(labels - live)} series for removed backends"
    # Each live backend keeps at most one idle connection per loader.
    assert connections <= LOADERS * len(live), connections
    # Hedging (on by default) runs each attempt of a sync request on a pooled runner
    # thread: a few per loader at once (an attempt, a hedge, a late copy finishing),
    # reused, never one per backend or per change.
    assert most_threads <= threads_before + 4 * LOADERS + 4
