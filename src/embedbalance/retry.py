"""Retry and hedging policies, and the budget that keeps them from becoming a storm.

Pure: the transports ask these objects *whether* to retry or hedge; they never do
I/O or read a clock of their own.
"""

from __future__ import annotations

import math
import threading
from collections import deque

import attrs

from ._clock import Clock, monotonic
from ._state import nearest_rank

__all__ = ["Hedge", "LatencyWindow", "Retry", "RetryBudget", "RetryBudgetPolicy"]

#: Statuses retried on another backend by default: overload (429), a failed model on
#: that replica (Hugging Face TEI's 424), server errors and gateway failures.
RETRY_STATUSES = frozenset({424, 429, 500, 502, 503, 504})
#: Methods safe to resend after the request reached a server (RFC 9110), plus POST to
#: the embedding routes, which are idempotent by nature.
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
IDEMPOTENT_PATHS = ("/embed", "/v1/embeddings", "/embeddings")


@attrs.frozen
class RetryBudgetPolicy:
    """Retries may add at most ``ratio`` of recent requests (over ``window`` seconds),
    plus ``min_per_second`` so low traffic can still retry (Finagle's and tower's
    budget). ``ratio=0`` with ``min_per_second=0`` forbids retries entirely."""

    ratio: float = 0.2
    window: float = 10.0
    min_per_second: float = 10.0

    def __attrs_post_init__(self) -> None:
        if self.ratio < 0 or self.min_per_second < 0 or self.window <= 0:
            raise ValueError("ratio and min_per_second must be >= 0, window > 0")


@attrs.frozen
class Retry:
    """How failed requests are retried — always on a *different* backend.

    - ``attempts``: total tries per request, the first included (1 = no retries).
    - ``statuses``: HTTP statuses that count as retryable failures.
    - ``idempotent_methods`` / ``idempotent_paths``: what may be resent after it
      reached a server. Anything else is retried only when the request provably never
      left (a connect error). Mark one request with
      ``extensions["embedbalance.idempotent"] = True`` to allow it.
    - ``budget``: the retry budget shared by all requests of one transport.
    """

    attempts: int = 3
    statuses: frozenset[int] = RETRY_STATUSES
    idempotent_methods: frozenset[str] = IDEMPOTENT_METHODS
    idempotent_paths: tuple[str, ...] = IDEMPOTENT_PATHS
    budget: RetryBudgetPolicy = RetryBudgetPolicy()

    def __attrs_post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"attempts must be >= 1, got {self.attempts!r}")

    @classmethod
    def coerce(cls, value: Retry | int | bool | None) -> Retry:
        """``None``/``True``: defaults; ``False`` or ``0``: never retry; an int: attempts."""
        if isinstance(value, Retry):
            return value
        if value is None or value is True:
            return cls()
        if value is False or value == 0:
            return cls(attempts=1)
        return cls(attempts=int(value))

    def is_idempotent(self, method: str, path: str) -> bool:
        """Whether a request may be resent after a server may have seen it."""
        if method.upper() in self.idempotent_methods:
            return True
        return method.upper() == "POST" and any(
            path == p or path.endswith(p) for p in self.idempotent_paths
        )


@attrs.frozen
class Hedge:
    """Send a second copy to another backend when the first is late; the first answer
    wins ("The Tail at Scale"'s hedged requests, Finagle's backup requests). The late
    copy is not cancelled: its server is working on it anyway, so it stays counted as
    that backend's work and settles with its own answer. On by default for idempotent
    requests (embedding calls are).

    *Late* is judged against the backend the attempt went to: ``multiple`` × its recent
    ``percentile`` latency (at least ``min_delay`` seconds). A pool-wide yardstick would
    hedge every request to a slower replica (its normal answers sit above the pool's
    p95) while missing a straggler on a fast one; per backend, only answers far out in
    that backend's own tail are hedged (about 1% where latencies are steady), and a
    request stuck on a hung or straggling replica is answered elsewhere
    after a few of that replica's usual latencies rather than the caller's timeout.
    Until a backend has ``min_samples`` answers the transport-wide window stands in;
    ``per_backend=False`` uses only that (the classic rule, hedge at the pool's p95).
    A hung backend shows sooner than that: from its own ``percentile`` on (before the
    multiple), a copy whose backend holds other requests and has answered nothing for
    that long is hedged then (into a free slot, like every hedge).

    Hedges spend their own budget: at most ``budget_ratio`` of requests, measured like
    the retry budget, so they cannot double the load when everything is slow at once.
    """

    percentile: float = 90.0
    multiple: float = attrs.field(default=2.0)
    per_backend: bool = True
    min_delay: float = 0.005
    min_samples: int = 20
    budget_ratio: float = 0.05

    def __attrs_post_init__(self) -> None:
        if not 0 < self.percentile < 100:
            raise ValueError(f"percentile must be in (0, 100), got {self.percentile!r}")
        if not (self.multiple > 0 and math.isfinite(self.multiple)):
            raise ValueError(f"multiple must be a finite number > 0, got {self.multiple!r}")


@attrs.define
class RetryBudget:
    """Token accounting behind :class:`RetryBudgetPolicy`, thread-safe.

    Time is split into ten buckets per window; a request deposits one count, a retry
    withdraws one. A retry is allowed while
    ``retries < min_per_second × window + ratio × requests`` over the window.
    """

    policy: RetryBudgetPolicy = RetryBudgetPolicy()
    clock: Clock = monotonic
    _buckets: deque[list[float]] = attrs.field(factory=deque, init=False)
    _lock: threading.Lock = attrs.field(factory=threading.Lock, init=False)
    exhausted: int = attrs.field(default=0, init=False)

    def _bucket(self, now: float) -> list[float]:
        width = self.policy.window / 10.0
        start = math.floor(now / width) * width
        while self._buckets and self._buckets[0][0] <= now - self.policy.window:
            self._buckets.popleft()
        if not self._buckets or self._buckets[-1][0] != start:
            self._buckets.append([start, 0.0, 0.0])
        return self._buckets[-1]

    def deposit(self) -> None:
        """Count one original request."""
        with self._lock:
            self._bucket(self.clock())[1] += 1

    def try_withdraw(self) -> bool:
        """Take one retry from the budget; False (and counted) when it is spent."""
        with self._lock:
            now = self.clock()
            bucket = self._bucket(now)
            requests = sum(b[1] for b in self._buckets)
            retries = sum(b[2] for b in self._buckets)
            allowed = self.policy.min_per_second * self.policy.window + self.policy.ratio * requests
            if retries + 1 > allowed:
                self.exhausted += 1
                return False
            bucket[2] += 1
            return True

    def refund(self) -> None:
        """Give back the latest withdrawal (a hedge that found no free slot to go to)."""
        with self._lock:
            for bucket in reversed(self._buckets):
                if bucket[2] > 0:
                    bucket[2] -= 1
                    return


@attrs.define
class LatencyWindow:
    """Recent latencies and a cached percentile, for hedging decisions.

    The percentile is recomputed every ``refresh`` samples, not on every request:
    sorting 1,024 floats per request would cost more than the balancing itself.
    """

    size: int = 1024
    refresh: int = 64
    _samples: deque[float] = attrs.field(init=False)
    _since: int = attrs.field(default=0, init=False)
    _cache: dict[float, float] = attrs.field(factory=dict, init=False)
    _lock: threading.Lock = attrs.field(factory=threading.Lock, init=False)

    def __attrs_post_init__(self) -> None:
        self._samples = deque(maxlen=self.size)

    def add(self, latency: float) -> None:
        with self._lock:
            self._samples.append(latency)
            self._since += 1
            if self._since >= self.refresh:
                self._cache.clear()
                self._since = 0

    def __len__(self) -> int:
        return len(self._samples)

    def percentile(self, q: float) -> float | None:
        """The ``q``-th percentile (0–100) of the window, or None while empty."""
        with self._lock:
            if not self._samples:
                return None
            cached = self._cache.get(q)
            if cached is None:
                cached = self._cache[q] = nearest_rank(self._samples, q)
            return cached
