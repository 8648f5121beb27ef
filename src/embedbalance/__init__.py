"""embedbalance: balance embedding-model traffic over many replicas, inside your app.

This module only re-exports; the code lives in the private and layer modules.
"""

from ._backend import Backend
from ._clock import ManualClock
from .balancers import (
    Balancer,
    GpuPriority,
    LeastConnections,
    LeastOutstandingTokens,
    PeakEwma,
    PowerOfTwoChoices,
    Random,
    RoundRobin,
    WeightedRoundRobin,
)
from .discovery import Discovery, StaticDiscovery
from .exceptions import (
    AllAttemptsFailed,
    Attempt,
    DimensionMismatch,
    EmbedbalanceError,
    NoBackendAvailable,
    ResponseFormatError,
    Unavailability,
)
from .health import HealthCheck, OutlierDetection, SlowStart
from .pool import BackendPool, BackendStats, Lease, Outcome, PoolEvent, PoolStats
from .retry import Hedge, Retry, RetryBudgetPolicy
from .transport import (
    BACKEND_EXTENSION,
    COST_EXTENSION,
    IDEMPOTENT_EXTENSION,
    AsyncBalancingTransport,
    BalancingTransport,
    TransportStats,
)

__version__ = "0.1.0"

__all__ = [
    "BACKEND_EXTENSION",
    "COST_EXTENSION",
    "IDEMPOTENT_EXTENSION",
    "AllAttemptsFailed",
    "AsyncBalancingTransport",
    "Attempt",
    "Backend",
    "BackendPool",
    "BackendStats",
    "Balancer",
    "BalancingTransport",
    "DimensionMismatch",
    "Discovery",
    "EmbedbalanceError",
    "GpuPriority",
    "HealthCheck",
    "Hedge",
    "Lease",
    "LeastConnections",
    "LeastOutstandingTokens",
    "ManualClock",
    "NoBackendAvailable",
    "Outcome",
    "OutlierDetection",
    "PeakEwma",
    "PoolEvent",
    "PoolStats",
    "PowerOfTwoChoices",
    "Random",
    "ResponseFormatError",
    "Retry",
    "RetryBudgetPolicy",
    "RoundRobin",
    "SlowStart",
    "StaticDiscovery",
    "TransportStats",
    "Unavailability",
    "WeightedRoundRobin",
]
