"""Request priorities, and the adaptive limit on bulk work in flight.

Why priorities: a web app's query embeddings (a person waits) and a nightly re-index (a
job that only cares about throughput) share the same replicas. A worker that knows which
is which serves interactive texts first (``docs/priority.md``); the request says so with
the ``X-Priority: bulk`` header, which the transports send for
``extensions["embedbalance.priority"]``.

Why a limit on bulk in flight as well: a bulk job that sends as much as it may builds a
queue at every replica. A priority-aware worker lets interactive requests overtake that
queue, but the queue still costs memory, triggers 429s, and on servers without
priorities (TEI) it is exactly the wait every interactive request pays. The bulk job
needs only enough in flight to keep each replica's model busy, and it can learn that
amount from what it measures.

How the limit learns (AIMD, as TCP congestion control and Netflix's concurrency-limits
do): every finished bulk request is a sample, and it says "congested" or not.

- When the server reports its bulk backlog (our worker's ``X-Queue-Depth-Bulk``), that
  decides: more than ``max_queue`` bulk requests waiting is congestion. The server
  knows its queue; a latency measured on a shared machine is noisy.
- Otherwise the latency decides. It is compared, per unit of cost (the sub-batch's
  tokens, so small and large sub-batches compare), with the pool's *baseline*: the
  lowest such value over the last ``window`` seconds, what a request costs when it
  waits for nobody. Above ``tolerance`` × baseline is congestion.
- A refusal (429/503, a failed attempt, no answer at all) is always congestion.

A congestion signal multiplies the limit by ``backoff``, at most once per round trip
(samples sent before the last decrease do not count again); any other sample, while
the limit was in use, raises it by ``1 / limit`` (about one more request per round
trip). The limit settles where each replica has one bulk request running and one or
two waiting: busy, with no backlog. It never goes below one request per live backend
(one request per replica queues nothing behind it).

This module is pure: attrs only, time from an injected clock, no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import attrs

__all__ = [
    "BULK",
    "INTERACTIVE",
    "PRIORITIES",
    "PRIORITY_HEADER",
    "BulkLimit",
    "BulkLimiter",
    "Priority",
    "check_priority",
]

#: A request a person is waiting for: served first (the default).
INTERACTIVE = "interactive"
#: A request of a batch job: served when no interactive work waits.
BULK = "bulk"
PRIORITIES: tuple[str, ...] = (INTERACTIVE, BULK)
Priority = Literal["interactive", "bulk"]
#: The request header that carries the priority to the server.
PRIORITY_HEADER = "X-Priority"


def check_priority(value: object) -> Priority:
    """``value`` if it is ``"interactive"`` or ``"bulk"``, else ``ValueError``."""
    if value == INTERACTIVE:
        return "interactive"
    if value == BULK:
        return "bulk"
    raise ValueError(f"priority must be 'interactive' or 'bulk', got {value!r}")


def _at_least_one(instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if value < 1:
        raise ValueError(f"{attribute.name} must be >= 1, got {value!r}")


def _open_unit(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not 0 < value < 1:
        raise ValueError(f"{attribute.name} must be in (0, 1), got {value!r}")


def _above_one(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not (math.isfinite(value) and value > 1):
        raise ValueError(f"{attribute.name} must be a finite number > 1, got {value!r}")


def _positive(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{attribute.name} must be a finite number > 0, got {value!r}")


@attrs.frozen(kw_only=True)
class BulkLimit:
    """How a bulk client's limit on requests in flight adapts (see the module doc).

    - ``initial``: the starting limit; ``None``: one per live backend.
    - ``min_limit``: never fewer in flight; ``None`` (the default): one per usable
      backend (:meth:`~embedbalance.BackendPool.usable_count`), since one bulk
      request per replica keeps it busy and queues nothing behind it (the ceiling
      still wins when it is lower).
    - ``max_limit``: never more; ``None``: the client's ``max_concurrency``.
    - ``tolerance``: a latency up to this many times the baseline is not congestion
      (``3.0``: one request running and one or two waiting per replica is fine; a
      replica needs one waiting to start its next pass at once, and measured latency
      is noisy — interactive passes cut in, a shared machine stalls).
    - ``backoff``: the factor a congestion signal multiplies the limit by.
    - ``window``: seconds a baseline is trusted; older minima are forgotten, so a pool
      that became slower for good (a busy machine, a larger model) is re-learned.
    - ``max_queue``: bulk requests a server may report waiting (``X-Queue-Depth-Bulk``)
      before that counts as congestion. When a server reports it, this replaces the
      latency test (the server knows its backlog; a latency on a shared machine is
      noisy). ``2.0`` (the default): a replica that serves interactive work first
      loses nothing to two bulk requests waiting, and always has its next bulk pass
      ready. ``None`` ignores the header.
    - ``max_resends``: how many times a sub-batch the pool refused for now (429, or no
      replica but overloaded ones) is resent, after the wait the refusal asks for and
      within the client's ``timeout``, before its refusal reaches the caller. ``0``
      hands every refusal back at once.
    """

    initial: int | None = attrs.field(
        default=None, validator=attrs.validators.optional(_at_least_one)
    )
    min_limit: int | None = attrs.field(
        default=None, validator=attrs.validators.optional(_at_least_one)
    )
    max_limit: int | None = attrs.field(
        default=None, validator=attrs.validators.optional(_at_least_one)
    )
    tolerance: float = attrs.field(default=3.0, validator=_above_one)
    backoff: float = attrs.field(default=0.7, validator=_open_unit)
    window: float = attrs.field(default=30.0, validator=_positive)
    max_queue: float | None = attrs.field(default=2.0)
    max_resends: int = attrs.field(default=8)

    def __attrs_post_init__(self) -> None:
        if (
            self.max_limit is not None
            and self.min_limit is not None
            and self.max_limit < self.min_limit
        ):
            raise ValueError(f"max_limit {self.max_limit} is below min_limit {self.min_limit}")
        if self.max_queue is not None and not (
            math.isfinite(self.max_queue) and self.max_queue >= 0
        ):
            raise ValueError(f"max_queue must be a finite number >= 0, got {self.max_queue!r}")
        if isinstance(self.max_resends, bool) or not (
            isinstance(self.max_resends, int) and self.max_resends >= 0
        ):
            raise ValueError(f"max_resends must be an int >= 0, got {self.max_resends!r}")


@attrs.define(repr=False)
class BulkLimiter:
    """The live state of one :class:`BulkLimit`: the limit, requests in flight, the
    baseline. Not thread-safe: the client's gate holds a lock around every call.

    ``try_acquire()`` takes a slot when fewer than ``floor(limit)`` are in flight;
    ``release(...)`` returns it with what the request measured.
    """

    policy: BulkLimit
    clock: Callable[[], float]
    max_limit: int
    #: The floor in force: the policy's ``min_limit``, or the live backends, capped at
    #: ``max_limit``.
    min_limit: int = 1
    limit: float = attrs.field(init=False, default=1.0)
    in_flight: int = 0
    #: Lowest latency in the current and the previous window (None: no sample yet).
    _window_min: float | None = None
    _previous_min: float | None = None
    _window_start: float = attrs.field(init=False, default=0.0)
    _last_decrease: float = -math.inf

    @classmethod
    def create(
        cls,
        policy: BulkLimit,
        *,
        backends: int,
        max_concurrency: int,
        clock: Callable[[], float],
    ) -> BulkLimiter:
        """A limiter for a pool of ``backends`` whose client allows ``max_concurrency``."""
        limiter = cls(policy=policy, clock=clock, max_limit=1)
        limiter.resize(max_concurrency, backends=backends)
        initial = policy.initial if policy.initial is not None else max(1, backends)
        limiter.limit = float(min(max(initial, limiter.min_limit), limiter.max_limit))
        limiter._window_start = clock()
        return limiter

    def __repr__(self) -> str:
        return (
            f"<BulkLimiter limit={self.limit:.2f} in_flight={self.in_flight} "
            f"baseline={self.baseline}>"
        )

    @property
    def baseline(self) -> float | None:
        """The lowest latency per unit of cost over the last one to two windows, or
        None before any sample."""
        mins = [m for m in (self._window_min, self._previous_min) if m is not None]
        return min(mins) if mins else None

    def resize(self, max_limit: int, *, backends: int) -> None:
        """Follow the pool: a new ceiling (the client's concurrency) and, unless the
        policy fixes it, a new floor of one per live backend."""
        policy = self.policy
        if policy.max_limit is not None:
            max_limit = min(max_limit, policy.max_limit)
        self.max_limit = max(1, max_limit)
        floor = policy.min_limit if policy.min_limit is not None else max(1, backends)
        self.min_limit = min(floor, self.max_limit)
        self.limit = min(max(self.limit, float(self.min_limit)), float(self.max_limit))

    @property
    def slots(self) -> int:
        """Requests that may be in flight now: ``floor(limit)``."""
        return int(self.limit)

    def try_acquire(self) -> bool:
        """Take a slot if one is free."""
        if self.in_flight >= self.slots:
            return False
        self.in_flight += 1
        return True

    def abandon(self) -> None:
        """Return a slot without a sample (the caller cancelled: nothing was learned)."""
        self.in_flight = max(0, self.in_flight - 1)

    def release(
        self,
        latency: float | None,
        *,
        cost: float = 1.0,
        overloaded: bool = False,
        queue_depth: float | None = None,
    ) -> None:
        """Return a slot. ``latency``: seconds the request took (None: it never got an
        answer, which counts as overload); ``cost``: its size (the sub-batch's tokens):
        latencies are compared per unit of cost, so a small sub-batch's quick answer
        does not pass for the pool's idle latency; ``overloaded``: it was refused or
        retried; ``queue_depth``: the bulk requests the server reported waiting."""
        busy = self.in_flight
        self.in_flight = max(0, self.in_flight - 1)
        now = self.clock()
        if latency is None or not math.isfinite(latency) or latency < 0:
            self._decrease(now, None)
            return
        unit = cost if math.isfinite(cost) and cost > 0 else 1.0
        self._observe(now, latency / unit)
        baseline = self.baseline
        assert baseline is not None
        max_queue = self.policy.max_queue
        if queue_depth is not None and max_queue is not None:
            # The server counted its bulk backlog: trust that over a noisy latency.
            congested = overloaded or queue_depth > max_queue
        else:
            congested = overloaded or latency / unit > self.policy.tolerance * baseline
        if congested:
            self._decrease(now, latency)
        elif 2 * busy >= self.slots:  # the limit was in use: it is what held us back
            self.limit = min(float(self.max_limit), self.limit + 1.0 / self.limit)

    def _observe(self, now: float, latency: float) -> None:
        if now - self._window_start >= self.policy.window:
            self._previous_min = self._window_min
            self._window_min = None
            self._window_start = now
        if self._window_min is None or latency < self._window_min:
            self._window_min = latency

    def _decrease(self, now: float, latency: float | None) -> None:
        # A request sent before the last decrease saw the old limit: no second cut.
        sent = now - latency if latency is not None else now
        if latency is not None and sent < self._last_decrease:
            return
        self._last_decrease = now
        self.limit = max(float(self.min_limit), self.limit * self.policy.backoff)
