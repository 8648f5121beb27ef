"""embedbalance: balance embedding-model traffic over many replicas, inside your app.

This module only re-exports; the code lives in the private and layer modules.
"""

from typing import TYPE_CHECKING, Any

from ._backend import Backend
from ._clock import ManualClock
from ._hints import ServerHints
from ._state import BackendView
from .balancers import (
    Balancer,
    GpuPriority,
    LeastConnections,
    LeastOutstandingTokens,
    PeakEwma,
    PowerOfTwoChoices,
    Random,
    RoundRobin,
    ShortestExpectedDelay,
    WeightedRoundRobin,
)
from .cache import CacheStats, EmbeddingCache
from .canary import Canary, CanaryVerdict
from .client import (
    AsyncEmbeddingClient,
    BatchEvent,
    ClientStats,
    EmbeddingClient,
    EmbeddingRequestError,
)
from .discovery import Discovery, StaticDiscovery
from .exceptions import (
    AllAttemptsFailed,
    Attempt,
    ConfigError,
    DeadlineExceeded,
    DimensionMismatch,
    EmbedbalanceError,
    NoBackendAvailable,
    ResponseFormatError,
    Unavailability,
)
from .health import HealthCheck, OutlierDetection, SlowStart
from .locality import Locality
from .metrics import PrometheusMetrics
from .pool import BackendPool, BackendStats, Lease, ModelStats, Outcome, PoolEvent, PoolStats
from .priority import BulkLimit, BulkLimiter
from .retry import Hedge, Retry, RetryBudgetPolicy
from .transport import (
    ATTEMPTS_EXTENSION,
    BACKEND_EXTENSION,
    COST_EXTENSION,
    IDEMPOTENT_EXTENSION,
    MODEL_EXTENSION,
    PRIORITY_EXTENSION,
    TOTAL_TIMEOUT_EXTENSION,
    VALIDATE_EXTENSION,
    VALIDATED_EXTENSION,
    AsyncBalancingTransport,
    BalancingTransport,
    TransportStats,
)

if TYPE_CHECKING:
    from .dns import DnsDiscovery, DnsTarget

__version__ = "0.1.0"

_LAZY = {"DnsDiscovery": "dns", "DnsTarget": "dns"}


def __getattr__(name: str) -> Any:
    """Import optional-extra names on first use, so ``import embedbalance`` needs no
    dnspython unless DNS discovery is used."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'embedbalance' has no attribute {name!r}")
    from importlib import import_module

    value = getattr(import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


__all__ = [
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
