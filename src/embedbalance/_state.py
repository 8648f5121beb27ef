"""Live, mutable state of one backend inside a pool.

The pool owns these records and mutates them under its lock; load metrics and
balancers read them. Fields are plain attributes (slots, no properties on the hot
path) because a pick reads a handful of them for every candidate.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable
from typing import Any

import attrs

from ._backend import Backend
from ._hints import ServerHints
from .health import ActiveCheckState, SlowStart

__all__ = ["BackendState", "BackendView"]

LATENCY_WINDOW = 1024
PERCENTILE_REFRESH = 32
#: Relative step of the streaming high-percentile estimate.
QUANTILE_STEP = 0.1


def nearest_rank(samples: Iterable[float], q: float) -> float:
    """The ``q``-th percentile (0-100) of ``samples`` (at least one) by nearest rank:
    an observed value, never an interpolation between two."""
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100.0 * len(ordered)) - 1))]


@attrs.define(slots=True, eq=False, repr=False)
class BackendState:
    """Everything the pool knows about one backend right now."""

    backend: Backend
    weight: float
    tier: int
    admitted_at: float
    slow_start: SlowStart
    # load: generic facts every metric may read
    pending: int = 0
    outstanding_cost: float = 0.0
    penalty: float = 0.0  # decaying count of recent failures
    penalty_stamp: float = 0.0
    queue_depth: float | None = None  # server-reported, from response headers
    hints: ServerHints | None = None  # the last response's load hints
    answered_at: float = -math.inf  # when the last success arrived
    swrr_current: float = 0.0  # smooth weighted round-robin accumulator
    #: The load metric's own record of this backend (its type is the metric's business).
    metric_state: Any = None
    #: Streaming estimate of a high percentile (about p99) of recent latencies, seconds.
    latency_high: float = 0.0
    latency_high_samples: int = 0
    # Leases in acquisition order (released ones are dropped from the front), so the
    # age of the oldest request still in flight is an O(1) read.
    in_flight: deque[Any] = attrs.Factory(deque)
    # health
    consecutive_failures: int = 0
    ejected_until: float | None = None
    ejections: int = 0
    last_ejected_at: float = -math.inf
    overloaded_until: float | None = None
    #: Until when bulk requests avoid it: a 429 to a bulk request (whose Retry-After
    #: counts all the work queued ahead of bulk) says nothing about interactive ones.
    bulk_overloaded_until: float | None = None
    active: ActiveCheckState = attrs.Factory(ActiveCheckState)
    #: The canary's word when canary checks are on: None until the first passes,
    #: then whether the last verdict agreed; ``canary_detail`` says why.
    canary: bool | None = None
    canary_detail: str = "canary: pending"
    removed: bool = False
    # what it serves: ``Backend.model`` when given, else what its ``/info`` said
    learned_model: str | None = None
    #: Whether its ``/info`` answered (with a model or not): asked once, not per check.
    model_known: bool = False
    # counters
    requests: int = 0
    successes: int = 0
    failures: int = 0
    overloads: int = 0
    cancelled: int = 0
    total_ejections: int = 0
    latencies: deque[float] = attrs.Factory(lambda: deque(maxlen=LATENCY_WINDOW))
    #: Percentiles of ``latencies`` by rank, recomputed after ``PERCENTILE_REFRESH``
    #: answers rather than sorted on every request (``percentile_age`` counts them).
    percentiles: dict[float, float] = attrs.Factory(dict)
    percentile_age: int = 0
    _view: BackendView | None = None

    def __repr__(self) -> str:
        return (
            f"<BackendState {self.backend.url} pending={self.pending} "
            f"metric={self.metric_state!r} ejected_until={self.ejected_until}>"
        )

    @property
    def view(self) -> BackendView:
        """The read-only public view of this record (one per record, made on first use)."""
        view = self._view
        if view is None:
            view = self._view = BackendView(self)
        return view

    @property
    def url(self) -> str:
        return self.backend.url

    @property
    def model(self) -> str | None:
        """The model this backend serves, where known (given, or learned from ``/info``)."""
        given = self.backend.model
        return given if given is not None else self.learned_model

    def oldest_age(self, now: float) -> float:
        """Seconds the oldest request still in flight has been waiting (0 when idle):
        a lower bound on how long this backend takes to drain what it holds."""
        queue = self.in_flight
        while queue and queue[0].released:
            queue.popleft()
        return now - queue[0].started_at if queue else 0.0

    def oldest_started(self) -> float:
        """When the oldest request still in flight was placed (-inf when idle)."""
        queue = self.in_flight
        while queue and queue[0].released:
            queue.popleft()
        return float(queue[0].started_at) if queue else -math.inf

    def observe_latency(self, latency: float) -> None:
        """Feed one success's latency into the streaming high-percentile estimate.

        A stochastic-approximation quantile: above the estimate it rises by
        ``QUANTILE_STEP × 0.99`` of itself, below it falls by ``QUANTILE_STEP × 0.01``,
        so it settles where about 1% of answers exceed it, in O(1) per answer.
        """
        self.latencies.append(latency)
        self.percentile_age += 1
        n = self.latency_high_samples
        self.latency_high_samples = n + 1
        high = self.latency_high
        if n == 0:
            self.latency_high = 2.0 * latency
        elif latency > high:
            self.latency_high = high + max(high, 1e-6) * QUANTILE_STEP * 0.99
            if latency > self.latency_high and n < 16:
                self.latency_high = latency  # while young, catch up with what it sees
        else:
            self.latency_high = high - high * QUANTILE_STEP * 0.01

    def recent_percentile(self, q: float) -> float:
        """The ``q``-th percentile of recent latencies (needs at least one); sorted at
        most once per ``PERCENTILE_REFRESH`` answers."""
        if self.percentile_age >= PERCENTILE_REFRESH:
            self.percentiles.clear()
            self.percentile_age = 0
        cached = self.percentiles.get(q)
        if cached is None:
            cached = self.percentiles[q] = nearest_rank(self.latencies, q)
        return cached

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


class BackendView:
    """A read-only window on one backend's live state, what :meth:`Balancer.score
    <embedbalance.Balancer.score>` receives: enough to score by, nothing to corrupt.

    The pool's own record is mutable and private (its fields change with every
    request); a user's scoring code reads this instead, so it cannot break the
    pool's bookkeeping by assigning to it.
    """

    __slots__ = ("_state",)
    _state: BackendState

    def __init__(self, state: BackendState) -> None:
        object.__setattr__(self, "_state", state)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"BackendView is read-only (tried to set {name!r})")

    def __repr__(self) -> str:
        s = self._state
        return f"<BackendView {s.backend.url} pending={s.pending}>"

    @property
    def backend(self) -> Backend:
        return self._state.backend

    @property
    def url(self) -> str:
        return self._state.backend.url

    @property
    def weight(self) -> float:
        return self._state.weight

    @property
    def tier(self) -> int:
        return self._state.tier

    @property
    def model(self) -> str | None:
        """The model it serves, where known (given, or learned from ``/info``)."""
        return self._state.model

    @property
    def zone(self) -> str | None:
        return self._state.backend.zone

    @property
    def pending(self) -> int:
        """Requests in flight from this pool."""
        return self._state.pending

    @property
    def outstanding_cost(self) -> float:
        """Cost (tokens, say) in flight from this pool."""
        return self._state.outstanding_cost

    @property
    def queue_depth(self) -> float | None:
        """The server-reported queue depth from the last response that carried one."""
        return self._state.queue_depth

    @property
    def hints(self) -> ServerHints | None:
        """Every load hint of the last response that carried any."""
        return self._state.hints

    @property
    def admitted_at(self) -> float:
        return self._state.admitted_at

    @property
    def requests(self) -> int:
        return self._state.requests

    @property
    def failures(self) -> int:
        return self._state.failures

    @property
    def latency_high(self) -> float | None:
        """About the p99 of recent latencies (seconds), None before the first answer."""
        s = self._state
        return s.latency_high if s.latency_high_samples else None

    def effective_weight(self, now: float) -> float:
        """Weight scaled by slow start."""
        return self._state.effective_weight(now)

    def penalty_factor(self, now: float, decay: float) -> float:
        """``1 + recent failures``, decaying with time constant ``decay``."""
        return self._state.penalty_factor(now, decay)
