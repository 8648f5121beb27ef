"""Live, mutable state of one backend inside a pool.

The pool owns these records and mutates them under its lock; load metrics and
balancers read them. Fields are plain attributes (slots, no properties on the hot
path) because a pick reads a handful of them for every candidate.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any

import attrs

from ._backend import Backend
from .health import ActiveCheckState, SlowStart

__all__ = ["BackendState"]

LATENCY_WINDOW = 1024


@attrs.define(slots=True, eq=False, repr=False)
class BackendState:
    """Everything the pool knows about one backend right now."""

    backend: Backend
    weight: float
    tier: int
    admitted_at: float
    slow_start: SlowStart
    # load
    pending: int = 0
    outstanding_cost: float = 0.0
    rtt: float = 0.0  # peak-EWMA estimate, seconds; 0.0 until the metric seeds it
    rtt_stamp: float = 0.0
    rtt_samples: int = 0
    penalty: float = 0.0  # decaying count of recent failures
    penalty_stamp: float = 0.0
    queue_depth: float | None = None  # server-reported, from response headers
    swrr_current: float = 0.0  # smooth weighted round-robin accumulator
    delay_unit: float = 0.0  # expected-delay metric: seconds per unit of work in flight
    delay_stamp: float = 0.0
    delay_samples: int = 0
    # Leases in acquisition order (released ones are dropped from the front), so the
    # age of the oldest request still in flight is an O(1) read.
    in_flight: deque[Any] = attrs.Factory(deque)
    # health
    consecutive_failures: int = 0
    ejected_until: float | None = None
    ejections: int = 0
    last_ejected_at: float = -math.inf
    overloaded_until: float | None = None
    active: ActiveCheckState = attrs.Factory(ActiveCheckState)
    removed: bool = False
    # counters
    requests: int = 0
    successes: int = 0
    failures: int = 0
    overloads: int = 0
    cancelled: int = 0
    total_ejections: int = 0
    latencies: deque[float] = attrs.Factory(lambda: deque(maxlen=LATENCY_WINDOW))

    def __repr__(self) -> str:
        return (
            f"<BackendState {self.backend.url} pending={self.pending} "
            f"rtt={self.rtt * 1000:.1f}ms ejected_until={self.ejected_until}>"
        )

    @property
    def url(self) -> str:
        return self.backend.url

    def oldest_age(self, now: float) -> float:
        """Seconds the oldest request still in flight has been waiting (0 when idle):
        a lower bound on how long this backend takes to drain what it holds."""
        queue = self.in_flight
        while queue and queue[0].released:
            queue.popleft()
        return now - queue[0].started_at if queue else 0.0

    def effective_weight(self, now: float) -> float:
        """Weight scaled by slow start: a just-admitted backend counts for less."""
        elapsed = now - self.admitted_at
        if elapsed >= self.slow_start.window:
            return self.weight
        return self.weight * self.slow_start.factor(elapsed)

    def penalty_factor(self, now: float, decay: float) -> float:
        """``1 + recent failures`` (decaying with time constant ``decay``): multiplies
        load so that a backend failing fast never looks idle."""
        if self.penalty <= 0.0:
            return 1.0
        return 1.0 + self.penalty * math.exp(-(now - self.penalty_stamp) / decay)

    def add_penalty(self, now: float, decay: float) -> None:
        """Record one failure in the decaying penalty."""
        current = self.penalty_factor(now, decay) - 1.0
        self.penalty = current + 1.0
        self.penalty_stamp = now
