"""Prometheus metrics for the client side (extra ``prometheus``).

Names follow Prometheus conventions (``embedbalance_`` prefix, ``_total`` counters,
``_seconds`` units). Pass ``registry=`` to keep them out of the global registry (one
per test, or one per transport when an app has several).
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

from .pool import BackendPool, PoolEvent

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
)

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class PrometheusMetrics:
    """A metrics sink for :class:`~embedbalance.BalancingTransport` and its async twin."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        try:
            import prometheus_client as pc
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError(
                "PrometheusMetrics needs prometheus_client: pip install 'embedbalance[prometheus]'"
            ) from exc
        reg = registry if registry is not None else pc.REGISTRY
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
        self.in_flight_gauge = pc.Gauge(
            "embedbalance_in_flight", "Attempts in flight per backend.", ["backend"], registry=reg
        )
        self.healthy = pc.Gauge(
            "embedbalance_backend_healthy",
            "1 while a backend may be picked, 0 while ejected or failing health checks.",
            ["backend"],
            registry=reg,
        )
        self.ejections = pc.Counter(
            "embedbalance_ejections", "Passive ejections per backend.", ["backend"], registry=reg
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

    def bind(self, pool: BackendPool) -> None:
        for backend in pool.backends:
            self.healthy.labels(backend.url).set(1)
        pool.add_listener(self._on_event)

    def _on_event(self, event: PoolEvent) -> None:
        if event.kind in ("added", "healthy", "readmitted"):
            self.healthy.labels(event.url).set(1)
        elif event.kind in ("ejected", "unhealthy"):
            self.healthy.labels(event.url).set(0)
            if event.kind == "ejected":
                self.ejections.labels(event.url).inc()
        elif event.kind == "removed":
            for metric in (self.healthy, self.in_flight_gauge):
                with contextlib.suppress(KeyError):
                    metric.remove(event.url)

    def request(self, url: str, outcome: str, latency: float | None) -> None:
        self.requests.labels(url, outcome).inc()
        if latency is not None:
            self.duration.labels(url).observe(latency)

    def in_flight(self, url: str, delta: int) -> None:
        self.in_flight_gauge.labels(url).inc(delta)

    def retry(self) -> None:
        self.retries.inc()

    def hedge(self) -> None:
        self.hedges.inc()

    def budget_exhausted(self) -> None:
        self.exhausted.inc()
