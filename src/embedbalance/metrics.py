"""Prometheus metrics for the client side (extra ``prometheus``).

Names follow Prometheus conventions (``embedbalance_`` prefix, ``_total`` counters,
``_seconds`` units). Pass ``registry=`` to keep them out of the global registry (one
per test, or one per transport when an app has several).

Per-backend series live as long as their backend: when the pool says a backend has
left and drained (its ``released`` event), every series labelled with it is removed,
so a cluster's pod churn cannot grow the series count without bound. The gauges
(``in_flight``, ``backend_healthy``) are read from the pool at scrape time rather than
incremented and decremented, so they are always exact and never negative.

What an :class:`~embedbalance.EmbeddingClient` saves is exported the same way: a client
given this sink calls :meth:`PrometheusMetrics.watch_client`, and the duplicates it
folded and its cache's counters are read on every scrape (zero while no client watches).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from .cache import CacheStats

    #: What a client reports: duplicates folded, and its cache's stats (or None).
    ClientSavings = Callable[[], tuple[int, CacheStats | None]]

from .pool import BackendPool, Outcome, PoolEvent

__all__ = ["METRIC_NAMES", "PrometheusMetrics"]

#: Every metric family this module exports (the Grafana dashboard is checked against it).
METRIC_NAMES = (
    "embedbalance_requests_total",
    "embedbalance_request_duration_seconds",
    "embedbalance_in_flight",
    "embedbalance_backend_healthy",
    "embedbalance_ejections_total",
    "embedbalance_retries_total",
    "embedbalance_hedges_total",
    "embedbalance_retry_budget_exhausted_total",
    "embedbalance_duplicates_folded_total",
    "embedbalance_cache_hits_total",
    "embedbalance_cache_misses_total",
    "embedbalance_cache_evictions_total",
    "embedbalance_cache_entries",
    "embedbalance_cache_bytes",
    "embedbalance_cache_max_bytes",
)

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class PrometheusMetrics:
    """A metrics sink for :class:`~embedbalance.BalancingTransport` and its async twin.

    One sink serves one transport (it reads that transport's pool at scrape time).
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        try:
            import prometheus_client as pc
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError(
                "PrometheusMetrics needs prometheus_client: pip install 'embedbalance[prometheus]'"
            ) from exc
        reg = registry if registry is not None else pc.REGISTRY
        self._registry = reg
        self._pool: BackendPool | None = None
        self.requests = pc.Counter(
            "embedbalance_requests",
            "Attempts sent to each backend, by outcome (success, failure, overloaded, cancelled).",
            ["backend", "outcome"],
            registry=reg,
        )
        self.duration = pc.Histogram(
            "embedbalance_request_duration_seconds",
            "Latency of attempts that got an HTTP answer, per backend.",
            ["backend"],
            buckets=LATENCY_BUCKETS,
            registry=reg,
        )
        self.ejections = pc.Counter(
            "embedbalance_ejections",
            "Ejections per backend (passive outlier detection and canary checks).",
            ["backend"],
            registry=reg,
        )
        self.retries = pc.Counter(
            "embedbalance_retries", "Retries sent to another backend.", registry=reg
        )
        self.hedges = pc.Counter(
            "embedbalance_hedges", "Hedged (duplicate) requests sent.", registry=reg
        )
        self.exhausted = pc.Counter(
            "embedbalance_retry_budget_exhausted",
            "Retries refused because the retry budget was spent.",
            registry=reg,
        )
        self._savings = _ClientSavings()
        reg.register(self._savings)

    def bind(self, pool: BackendPool) -> None:
        if self._pool is not None:
            raise ValueError(
                "a PrometheusMetrics sink serves one transport; make one per transport"
            )
        self._pool = pool
        self._registry.register(_PoolGauges(pool))
        pool.add_listener(self._on_event)

    def watch_client(self, read: ClientSavings) -> None:
        """Export what a client saved (called by the client given this sink): ``read``
        returns the duplicates folded so far and its cache's stats, or ``None``."""
        if self._savings.read is not None:
            raise ValueError("a PrometheusMetrics sink serves one client; make one per client")
        self._savings.read = read

    def _on_event(self, event: PoolEvent) -> None:
        if event.kind == "ejected":
            self.ejections.labels(event.url).inc()
        elif event.kind == "released":
            for outcome in Outcome:
                with contextlib.suppress(KeyError):
                    self.requests.remove(event.url, outcome.value)
            for metric in (self.duration, self.ejections):
                with contextlib.suppress(KeyError):
                    metric.remove(event.url)

    def request(self, url: str, outcome: str, latency: float | None) -> None:
        self.requests.labels(url, outcome).inc()
        if latency is not None:
            self.duration.labels(url).observe(latency)

    def retry(self) -> None:
        self.retries.inc()

    def hedge(self) -> None:
        self.hedges.inc()

    def budget_exhausted(self) -> None:
        self.exhausted.inc()


class _PoolGauges:
    """``embedbalance_in_flight`` and ``embedbalance_backend_healthy``, read from the
    pool on every scrape: one sample per backend in the pool, none for those gone."""

    def __init__(self, pool: BackendPool) -> None:
        self._pool = pool

    def describe(self) -> list[Any]:
        return list(self._families([]))

    def collect(self) -> Iterator[Any]:
        yield from self._families(self._pool.gauges())

    @staticmethod
    def _families(rows: list[tuple[str, int, bool]]) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        in_flight = GaugeMetricFamily(
            "embedbalance_in_flight", "Attempts in flight per backend.", labels=["backend"]
        )
        healthy = GaugeMetricFamily(
            "embedbalance_backend_healthy",
            "1 while a backend may be picked, 0 while ejected or failing health checks.",
            labels=["backend"],
        )
        for url, pending, ok in rows:
            in_flight.add_metric([url], pending)
            healthy.add_metric([url], 1.0 if ok else 0.0)
        yield in_flight
        yield healthy


class _ClientSavings:
    """Duplicates folded and cache counters, read from the client on every scrape."""

    def __init__(self) -> None:
        self.read: ClientSavings | None = None

    def describe(self) -> list[Any]:
        return list(self._families(0, None))

    def collect(self) -> Iterator[Any]:
        duplicates, cache = self.read() if self.read is not None else (0, None)
        yield from self._families(duplicates, cache)

    @staticmethod
    def _families(duplicates: int, cache: CacheStats | None) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        yield CounterMetricFamily(
            "embedbalance_duplicates_folded",
            "Texts answered with an identical text's row of the same call, not sent.",
            value=duplicates,
        )
        counters = {
            "hits": "Texts the embedding cache answered.",
            "misses": "Texts looked up in the embedding cache and not found.",
            "evictions": "Cache entries dropped to stay within max_bytes.",
        }
        for name, doc in counters.items():
            value = getattr(cache, name) if cache is not None else 0
            yield CounterMetricFamily(f"embedbalance_cache_{name}", doc, value=value)
        gauges = {
            "entries": "Embeddings held in the cache.",
            "bytes": "Bytes the cache holds (vectors plus per-entry overhead).",
            "max_bytes": "The cache's bound in bytes (0: no cache).",
        }
        for name, doc in gauges.items():
            value = getattr(cache, name) if cache is not None else 0
            yield GaugeMetricFamily(f"embedbalance_cache_{name}", doc, value=value)
