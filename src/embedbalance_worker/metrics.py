"""Prometheus metrics for one app, in a registry of its own.

Why a registry per app: tests and benchmarks run many apps in one process, and the
global registry would refuse the second set of names.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

PREFIX = "embedbalance_worker_"

# The names as queried: counters with their ``_total`` suffix, histograms by base name
# (``_bucket``/``_sum``/``_count`` follow). Dashboards are checked against this tuple.
METRIC_NAMES: tuple[str, ...] = (
    "embedbalance_worker_batch_size",
    "embedbalance_worker_batch_tokens",
    "embedbalance_worker_bulk_queue_depth",
    "embedbalance_worker_in_flight",
    "embedbalance_worker_inference_duration_seconds",
    "embedbalance_worker_queue_depth",
    "embedbalance_worker_queue_time_seconds",
    "embedbalance_worker_request_duration_seconds",
    "embedbalance_worker_requests_total",
    "embedbalance_worker_tokens_total",
)

CONTENT_TYPE = CONTENT_TYPE_LATEST

_LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)
_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
_TOKEN_BUCKETS = (16, 64, 256, 1024, 2048, 4096, 8192, 16384, 32768, 65536)


class WorkerMetrics:
    """The worker's metric families; the app updates them, ``/metrics`` renders them."""

    def __init__(
        self,
        queue_depth: Callable[[], float],
        in_flight: Callable[[], float],
        bulk_queue_depth: Callable[[], float] | None = None,
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            PREFIX + "requests",
            "HTTP requests answered, by route and status code.",
            ["route", "status"],
            registry=r,
        )
        self.request_duration = Histogram(
            PREFIX + "request_duration_seconds",
            "Time from request start to the end of the response, by route.",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_time = Histogram(
            PREFIX + "queue_time_seconds",
            "Time a request waited until its last text entered a forward pass.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.inference_duration = Histogram(
            PREFIX + "inference_duration_seconds",
            "Wall time of one batched forward pass.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            PREFIX + "batch_size",
            "Texts per forward pass.",
            buckets=_SIZE_BUCKETS,
            registry=r,
        )
        self.batch_tokens = Histogram(
            PREFIX + "batch_tokens",
            "Padded tokens per forward pass.",
            buckets=_TOKEN_BUCKETS,
            registry=r,
        )
        self.tokens = Counter(
            PREFIX + "tokens",
            "Real (unpadded) tokens embedded.",
            registry=r,
        )
        self.queue_depth = Gauge(
            PREFIX + "queue_depth",
            "Requests waiting in the batcher, not yet in a forward pass.",
            registry=r,
        )
        self.queue_depth.set_function(queue_depth)
        self.bulk_queue_depth = Gauge(
            PREFIX + "bulk_queue_depth",
            "Bulk-priority requests waiting in the batcher (part of queue_depth).",
            registry=r,
        )
        self.bulk_queue_depth.set_function(bulk_queue_depth or (lambda: 0.0))
        self.in_flight = Gauge(
            PREFIX + "in_flight",
            "Embedding requests admitted and not yet answered.",
            registry=r,
        )
        self.in_flight.set_function(in_flight)

    def render(self) -> bytes:
        """The Prometheus text exposition of this app's registry."""
        return generate_latest(self.registry)
