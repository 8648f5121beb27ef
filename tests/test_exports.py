"""The public surface of ``embedbalance`` is pinned: changing it must be deliberate."""

from __future__ import annotations

import embedbalance

EXPECTED = [
    "ATTEMPTS_EXTENSION",
    "BACKEND_EXTENSION",
    "COST_EXTENSION",
    "IDEMPOTENT_EXTENSION",
    "MODEL_EXTENSION",
    "PRIORITY_EXTENSION",
    "TOTAL_TIMEOUT_EXTENSION",
    "VALIDATED_EXTENSION",
    "VALIDATE_EXTENSION",
    "AllAttemptsFailed",
    "AsyncBalancingTransport",
    "AsyncEmbeddingClient",
    "Attempt",
    "Backend",
    "BackendPool",
    "BackendStats",
    "BackendView",
    "Balancer",
    "BalancingTransport",
    "BatchEvent",
    "BulkLimit",
    "BulkLimiter",
    "CacheStats",
    "Canary",
    "CanaryVerdict",
    "ClientStats",
    "ConfigError",
    "DeadlineExceeded",
    "DimensionMismatch",
    "Discovery",
    "DnsDiscovery",
    "DnsTarget",
    "EmbedbalanceError",
    "EmbeddingCache",
    "EmbeddingClient",
    "EmbeddingRequestError",
    "GpuPriority",
    "HealthCheck",
    "Hedge",
    "Lease",
    "LeastConnections",
    "LeastOutstandingTokens",
    "Locality",
    "ManualClock",
    "ModelStats",
    "NoBackendAvailable",
    "Outcome",
    "OutlierDetection",
    "PeakEwma",
    "PoolEvent",
    "PoolStats",
    "PowerOfTwoChoices",
    "PrometheusMetrics",
    "Random",
    "ResponseFormatError",
    "Retry",
    "RetryBudgetPolicy",
    "RoundRobin",
    "ServerHints",
    "ShortestExpectedDelay",
    "SlowStart",
    "StaticDiscovery",
    "TransportStats",
    "Unavailability",
    "WeightedRoundRobin",
]


def test_all_is_exactly_the_expected_names() -> None:
    """``__all__`` lists exactly the documented public names: additions and removals show here."""
    assert embedbalance.__all__ == EXPECTED


def _isort_key(name: str) -> tuple[int, str]:
    # The order ruff's RUF022 keeps: CONSTANTS, then CamelCase names, then the rest.
    if name.isupper():
        return (0, name)
    if name[:1].isupper():
        return (1, name)
    return (2, name)


def test_all_is_sorted() -> None:
    """``__all__`` stays sorted (constants first, then classes) so that diffs of the public
    surface are easy to read."""
    assert embedbalance.__all__ == sorted(embedbalance.__all__, key=_isort_key)


def test_every_name_is_importable() -> None:
    """Every name in ``__all__`` resolves to a real object on the package."""
    for name in embedbalance.__all__:
        assert getattr(embedbalance, name) is not None, name
    namespace: dict[str, object] = {}
    exec("from embedbalance import *", namespace)
    assert set(EXPECTED) <= set(namespace)
