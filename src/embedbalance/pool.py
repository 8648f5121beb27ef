"""The pool: backends, their live state, a balancer and the health policies.

It is the one place where state changes, under one lock, with no I/O and no
sleeping: the I/O edges (transports, health-check runners, discovery) call
:meth:`BackendPool.acquire`, :meth:`~BackendPool.release`,
:meth:`~BackendPool.report_check` and :meth:`~BackendPool.update`. Time comes from
the injected clock and randomness from the injected rng, so a test can drive it
through hours of traffic in milliseconds.
"""

from __future__ import annotations

import enum
import logging
import math
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Collection, Iterable, Sequence
from typing import Any

import attrs
import numpy as np

from . import _forksafe
from ._backend import Backend, BackendLike, as_backend
from ._clock import Clock, monotonic
from ._hints import ServerHints
from ._state import BackendState
from .balancers import Balancer, ShortestExpectedDelay
from .discovery import diff
from .exceptions import EmbedbalanceError, NoBackendAvailable, Unavailability
from .health import (
    HealthCheck,
    OutlierDetection,
    SlowStart,
    ejection_duration,
    max_ejectable,
)
from .load import DEFAULT_FAILURE_DECAY
from .locality import Locality

__all__ = [
    "BackendPool",
    "BackendStats",
    "Lease",
    "ModelStats",
    "Outcome",
    "PoolEvent",
    "PoolStats",
]

log = logging.getLogger("embedbalance")

#: How long a backend is avoided after an overload answer without ``Retry-After``.
DEFAULT_OVERLOAD_BACKOFF = 1.0
#: Answers a backend needs before its own p99 judges whether it answers warm.
_WARM_HISTORY = 20


class Outcome(enum.Enum):
    """How a request placed on a backend ended."""

    SUCCESS = "success"
    #: Connect error, reset, timeout, 5xx other than overload: counts toward ejection.
    FAILURE = "failure"
    #: 429, or 503 with ``Retry-After``: the backend is busy, not dead.
    OVERLOADED = "overloaded"
    #: Abandoned by the caller (a hedge that lost the race): no health effect.
    CANCELLED = "cancelled"


# Module-level aliases: an Enum member lookup is an attribute access through the
# metaclass, measurable on a path that runs for every request.
_SUCCESS = Outcome.SUCCESS
_FAILURE = Outcome.FAILURE
_OVERLOADED = Outcome.OVERLOADED


@attrs.define(slots=True, eq=False)
class Lease:
    """One request placed on one backend; release it exactly once."""

    backend: Backend
    cost: float
    started_at: float
    _state: BackendState = attrs.field(repr=False, alias="state")
    #: Work in flight on the backend when this request was placed, its own included
    #: (outstanding cost): how many requests its latency was shared with.
    load_at_start: float = 1.0
    released: bool = False
    #: How many attempts of the same request started before this one (0: the first).
    attempt: int = 0
    #: Whether this attempt is a hedge (a copy raced against one still in flight).
    hedge: bool = False
    #: The attempt's tracing span while it is open (see the transports); opaque here.
    span: Any = attrs.field(default=None, repr=False)
    #: The model the request asked for (``None``: any), for per-model counts.
    model: str | None = None
    #: Whether the request is bulk priority: its overload answers (429, a timeout
    #: behind interactive work) keep only bulk requests away from the backend.
    bulk: bool = False
    #: How many backends it was picked among (1: no other could take a copy now).
    choices: int = 1
    #: Whether it was placed to re-test a backend its balancer's record calls slow
    #: (see :meth:`Balancer.is_probe`): hedging judges it by the pool's latency.
    probe: bool = False


@attrs.frozen
class PoolEvent:
    """A change worth logging or counting: ``kind`` is one of ``added``, ``removed``,
    ``released``, ``updated``, ``ejected``, ``readmitted``, ``unhealthy``, ``healthy``,
    ``overloaded``, ``panic``, ``calm``. Canary checks eject and re-admit with a
    ``detail`` that starts with ``canary:``; a replica's first passing canary is
    ``healthy``.

    ``released`` follows ``removed`` once the backend holds no request in flight (at
    once when it was idle): from then on nothing will use it, so whatever was kept for
    it (a connection pool, metric series) should be let go."""

    kind: str
    url: str
    at: float
    detail: str = ""


@attrs.frozen
class BackendStats:
    """A snapshot of one backend (latencies in seconds, over its last 1,024 successes)."""

    url: str
    tier: int
    weight: float
    effective_weight: float
    state: str  # "healthy", "ejected", "unhealthy", "overloaded", "draining", "pending"
    pending: int
    outstanding_cost: float
    requests: int
    successes: int
    failures: int
    overloads: int
    cancelled: int
    ejections: int
    ejected_until: float | None
    rtt_estimate: float | None
    latency_p50: float | None
    latency_p99: float | None
    queue_depth: float | None
    #: The balancer's learned latency for one unit of work (seconds): peak-EWMA's
    #: estimate, or the default's service time on a free slot; None if it learns none.
    estimate: float | None = None
    #: The learned concurrency (knee, in units of cost), for balancers that learn one.
    concurrency: float | None = None
    #: About the p99 of recent latencies (seconds), a streaming estimate.
    latency_high: float | None = None
    #: The canary's last word (``"canary: cosine 0.12 < 0.99 vs majority of 3"``), or
    #: None when canary checks are off. A replica it rejects is ``"ejected"``, one it
    #: has not yet passed ``"pending"``.
    canary: str | None = None
    #: The model it serves, where known (given, or learned from ``/info``).
    model: str | None = None
    #: Its zone (``Backend.zone``).
    zone: str | None = None


@attrs.frozen
class ModelStats:
    """Requests that named one model (attempts, as in :class:`BackendStats`; latencies
    in seconds over its last 1,024 successes)."""

    model: str
    requests: int
    successes: int
    failures: int
    overloads: int
    cancelled: int
    latency_p50: float | None
    latency_p99: float | None


@attrs.define(slots=True)
class _ModelCounters:
    requests: int = 0
    successes: int = 0
    failures: int = 0
    overloads: int = 0
    cancelled: int = 0
    latencies: deque[float] = attrs.Factory(lambda: deque(maxlen=1024))


@attrs.frozen
class PoolStats:
    """A snapshot of the whole pool; ``models`` counts requests per model they named."""

    at: float
    panic: bool
    backends: tuple[BackendStats, ...]
    models: tuple[ModelStats, ...] = ()

    def by_url(self) -> dict[str, BackendStats]:
        return {b.url: b for b in self.backends}

    def by_model(self) -> dict[str, ModelStats]:
        return {m.model: m for m in self.models}

    def requests_by_zone(self) -> dict[str | None, int]:
        """Attempts sent to each zone (``None``: backends in no zone)."""
        counts: dict[str | None, int] = {}
        for b in self.backends:
            counts[b.zone] = counts.get(b.zone, 0) + b.requests
        return counts

    @property
    def in_flight(self) -> int:
        return sum(b.pending for b in self.backends)


class BackendPool:
    """Backends plus everything needed to choose among them, thread-safe.

    - ``balancer``: who gets picked (default :class:`~embedbalance.ShortestExpectedDelay`):
      a :class:`~embedbalance.Balancer`, or a factory (the class itself, a lambda) the
      pool calls once — a balancer learns per-pool state, so an instance already used
      by another pool is refused.
    - ``outlier_detection``: passive ejection from real traffic (``None`` disables).
    - ``health_check``: the active-check policy whose ``rise``/``fall`` apply to
      :meth:`report_check` (the checks themselves run in an I/O edge). With its
      ``canary`` on, a backend is picked only once :meth:`report_canary` says it agrees
      — not before its first canary, and not in panic mode either: a wrong answer is
      worse than none.
    - ``slow_start``: weight ramp for (re)admitted backends (``None`` disables).
    - ``panic_threshold``: when fewer than this share of backends is healthy, the pool
      balances over all of them rather than crush the survivors (Envoy's panic mode;
      0 disables).
    - ``zone``: the caller's zone (a name, or a :class:`~embedbalance.Locality` to tune
      when traffic spills): backends in it are preferred while they can carry the
      traffic, within each priority tier (``None``: no preference).
    - ``clock``, ``rng``: injected time and randomness.

    Requests that name a model (:meth:`acquire`'s ``model``) go only to backends
    serving it; a backend whose model is not known serves any request.
    """

    def __init__(
        self,
        backends: Iterable[BackendLike] = (),
        *,
        balancer: Balancer | Callable[[], Balancer] | None = None,
        outlier_detection: OutlierDetection | None = OutlierDetection(),
        health_check: HealthCheck | None = None,
        slow_start: SlowStart | None = SlowStart(),
        panic_threshold: float = 0.5,
        zone: Locality | str | None = None,
        clock: Clock = monotonic,
        rng: random.Random | None = None,
    ) -> None:
        if not 0.0 <= panic_threshold <= 1.0:
            raise ValueError(f"panic_threshold must be between 0 and 1, got {panic_threshold!r}")
        self.balancer = _make_balancer(balancer)
        self.locality = Locality.coerce(zone)
        # Without a zone the pick path stays what it was: pick() directly.
        self._choose = self.balancer.pick
        if self.locality is not None:
            self.balancer.use_locality(self.locality)
            self._choose = self.balancer.choose
        self.outlier_detection = outlier_detection or OutlierDetection(enabled=False)
        self.health_check = health_check or HealthCheck()
        self.slow_start = slow_start or SlowStart(window=0.0)
        self.panic_threshold = panic_threshold
        # Keep each backend's leases in order only for balancers that read the age of the
        # oldest one: it costs a deque append and pop per request.
        self._track_age = bool(getattr(self.balancer, "needs_oldest", False))
        # Asked after each pick only of balancers that can probe.
        probes = type(self.balancer).is_probe is not Balancer.is_probe
        self._is_probe = self.balancer.is_probe if probes else None
        # Failures are added with the same time constant the balancer reads them with.
        self.failure_decay = getattr(self.balancer.metric, "failure_decay", DEFAULT_FAILURE_DECAY)
        self.clock = clock
        self.rng = rng if rng is not None else random.Random()
        self._lock = threading.Lock()
        _forksafe.register(self)
        self._states: dict[str, BackendState] = {}
        self._draining: dict[str, BackendState] = {}
        self._listeners: list[Callable[[PoolEvent], None]] = []
        # cache of usable backends, rebuilt on membership/health change or expiry
        self._usable: list[BackendState] = []
        self._live: list[BackendState] = []
        self._checked: list[BackendState] = []
        self._healthy: list[BackendState] = []
        self._panic = False
        self._dirty = True
        self._next_expiry = math.inf
        # Per model named by requests: (usable, live) of the backends serving it, rebuilt
        # with the usable list, so a balancer sees the same list objects between changes.
        self._by_model: dict[str, tuple[list[BackendState], list[BackendState]]] = {}
        self._models: dict[str, _ModelCounters] = {}
        # The pool's largest p99, rescanned at most once a second: the yardstick of a
        # newcomer's first answers during slow start.
        self._pool_high: float | None = None
        self._pool_high_at = -math.inf
        now = self.clock()
        for b in backends:
            backend = as_backend(b)
            if backend.url in self._states:
                raise ValueError(f"backend {backend.url} given twice")
            # The initial set starts warm: slow start is for late arrivals.
            self._states[backend.url] = self._new_state(backend, now - self.slow_start.window)

    def __repr__(self) -> str:
        return f"<BackendPool {len(self._states)} backends, balancer={self.balancer!r}>"

    @property
    def clock(self) -> Clock:
        """The pool's time source."""
        return self._clock

    @clock.setter
    def clock(self, clock: Clock) -> None:
        self._clock = clock
        # The default clock is a thin wrapper; the hot path calls what it wraps.
        self._now: Clock = time.monotonic if clock is monotonic else clock

    # -- membership ---------------------------------------------------------------

    def _new_state(self, backend: Backend, admitted_at: float) -> BackendState:
        return BackendState(
            backend=backend,
            weight=backend.weight,
            tier=backend.tier,
            admitted_at=admitted_at,
            slow_start=self.slow_start,
        )

    @property
    def backends(self) -> tuple[Backend, ...]:
        """The current members (not the draining ones)."""
        with self._lock:
            return tuple(s.backend for s in self._states.values())

    def add(self, backend: BackendLike) -> None:
        """Add a backend (slow-started); adding an existing URL updates it."""
        b = as_backend(backend)
        with self._lock:
            events = self._apply_add_or_update(b, self.clock())
        self._emit(events)

    def remove(self, backend: BackendLike) -> None:
        """Remove a backend: no new requests; its in-flight leases still release."""
        url = as_backend(backend).url
        with self._lock:
            events = self._apply_remove(url, self.clock())
        self._emit(events)

    def update(self, backends: Iterable[BackendLike]) -> None:
        """Make membership exactly ``backends`` (what discovery sources call)."""
        wanted = [as_backend(b) for b in backends]
        with self._lock:
            now = self.clock()
            events: list[PoolEvent] = []
            for change in diff([s.backend for s in self._states.values()], wanted):
                if change.kind == "remove":
                    events += self._apply_remove(change.backend.url, now)
                else:
                    events += self._apply_add_or_update(change.backend, now)
        self._emit(events)

    def _apply_add_or_update(self, b: Backend, now: float) -> list[PoolEvent]:
        state = self._states.get(b.url)
        self._dirty = True
        if state is not None:
            if state.backend == b and dict(state.backend.labels) == dict(b.labels):
                return []
            if state.backend.model != b.model:
                # Another model at this address: what /info said no longer holds.
                state.learned_model, state.model_known = None, False
            state.backend, state.weight, state.tier = b, b.weight, b.tier
            return [PoolEvent("updated", b.url, now, repr(b))]
        state = self._draining.pop(b.url, None)
        if state is not None:
            state.removed = False
            state.canary, state.canary_detail = None, "canary: pending"  # a new arrival
            state.backend, state.weight, state.tier = b, b.weight, b.tier
            state.admitted_at = now
        else:
            state = self._new_state(b, now)
        self._states[b.url] = state
        return [PoolEvent("added", b.url, now, repr(b))]

    def _apply_remove(self, url: str, now: float) -> list[PoolEvent]:
        state = self._states.pop(url, None)
        if state is None:
            return []
        self._dirty = True
        state.removed = True
        events = [PoolEvent("removed", url, now, f"{state.pending} in flight")]
        if state.pending > 0:
            self._draining[url] = state
        else:
            events.append(PoolEvent("released", url, now, "left the pool"))
        return events

    # -- listeners ----------------------------------------------------------------

    def add_listener(self, listener: Callable[[PoolEvent], None]) -> None:
        """Call ``listener(event)`` for every :class:`PoolEvent` (outside the lock)."""
        self._listeners.append(listener)

    def _emit(self, events: list[PoolEvent]) -> None:
        for event in events:
            level = (
                logging.INFO
                if event.kind in ("added", "updated", "readmitted", "healthy", "calm")
                else logging.WARNING
            )
            if event.kind in ("overloaded", "released"):
                level = logging.DEBUG
            log.log(
                level,
                "backend %s %s%s",
                event.url,
                event.kind,
                f" ({event.detail})" if event.detail else "",
            )
            for listener in self._listeners:
                listener(event)

    # -- picking ------------------------------------------------------------------

    def _refresh(self, now: float, events: list[PoolEvent]) -> None:
        """Rebuild the usable list: expired ejections re-admit, overloads lapse."""
        live = list(self._states.values())
        healthy: list[BackendState] = []
        next_expiry = math.inf
        if self.health_check.canary is not None:
            # Not even panic mode serves a replica whose answers are wrong or unchecked.
            checked = [s for s in live if s.canary is True]
        else:
            checked = live
        for s in checked:
            if s.ejected_until is not None:
                if s.ejected_until <= now:
                    self._readmit(s, now)
                    events.append(PoolEvent("readmitted", s.url, now, "ejection time over"))
                else:
                    next_expiry = min(next_expiry, s.ejected_until)
                    continue
            if s.active.healthy is False:
                continue
            healthy.append(s)
        panic = bool(checked) and len(healthy) < self.panic_threshold * len(checked)
        if panic != self._panic:
            self._panic = panic
            events.append(
                PoolEvent(
                    "panic" if panic else "calm",
                    "*",
                    now,
                    f"{len(healthy)} of {len(checked)} backends healthy",
                )
            )
        base = checked if panic else healthy
        usable = []
        for s in base:
            if s.overloaded_until is not None:
                if s.overloaded_until > now:
                    next_expiry = min(next_expiry, s.overloaded_until)
                    continue
                s.overloaded_until = None
            usable.append(s)
        self._live = live
        self._usable = usable
        self._checked = checked
        self._healthy = healthy
        self._by_model = {}
        self._next_expiry = next_expiry
        self._dirty = False

    def _serving(self, model: str) -> tuple[list[BackendState], list[BackendState]]:
        """Usable and live backends that serve ``model`` (or whose model is unknown).

        A pool whose backends all serve one model that nobody configured (learned from
        ``/info``) routes a request for any other name anyway: a single-model deployment
        that never named its model must not start refusing the names its callers have
        always sent (the server decides, as it did without routing)."""
        cached = self._by_model.get(model)
        if cached is None:
            live = [s for s in self._live if s.model is None or model_matches(model, s.model)]
            if len(live) < len(self._live) and self._one_learned_model():
                cached = (self._usable, self._live)
            else:

                def serves(s: BackendState) -> bool:
                    return s.model is None or model_matches(model, s.model)

                usable = [s for s in self._usable if serves(s)]
                # Panic mode per model: a small model's replicas going down must not
                # crush its survivors because a larger model keeps the pool as a whole
                # above the threshold (nor leave the model with nothing when it is all
                # down while a single-model pool would have panicked and served it).
                checked = [s for s in self._checked if serves(s)]
                healthy = sum(1 for s in self._healthy if serves(s))
                if not self._panic and checked and healthy < self.panic_threshold * len(checked):
                    usable = [s for s in checked if s.overloaded_until is None]
                cached = (usable, live)
            self._by_model[model] = cached
        return cached

    def _one_learned_model(self) -> bool:
        """Whether every member's model is unknown or learned, and at most one is known."""
        learned = set()
        for s in self._live:
            if s.backend.model is not None:
                return False
            if s.learned_model is not None:
                learned.add(s.learned_model)
        return len(learned) <= 1

    def _served_models(self) -> list[str]:
        return sorted({m for s in self._live if (m := s.model) is not None})

    def _unavailability(
        self,
        now: float,
        exclude: Collection[str],
        live: Sequence[BackendState] | None = None,
        bulk: bool = False,
    ) -> list[Unavailability]:
        reasons = []
        for s in self._live if live is None else live:
            if s.url in exclude:
                reasons.append(Unavailability(s.url, "excluded"))
            elif s.ejected_until is not None and s.ejected_until > now:
                reasons.append(Unavailability(s.url, "ejected", s.ejected_until))
            elif s.active.healthy is False:
                reasons.append(Unavailability(s.url, "unhealthy"))
            elif self._canary_blocks(s):
                reasons.append(Unavailability(s.url, s.canary_detail))
            elif s.overloaded_until is not None and s.overloaded_until > now:
                reasons.append(Unavailability(s.url, "overloaded", s.overloaded_until))
            elif bulk and _bulk_overloaded(s, now):
                reasons.append(Unavailability(s.url, "overloaded (bulk)", s.bulk_overloaded_until))
        for url in self._draining:
            reasons.append(Unavailability(url, "draining"))
        return reasons

    def acquire_spare(
        self,
        cost: float = 1.0,
        exclude: Collection[str] = (),
        *,
        model: str | None = None,
        bulk: bool = False,
        near: Lease | None = None,
    ) -> Lease | None:
        """Like :meth:`acquire`, but only onto a free slot: None (and nothing leased)
        when the backend the balancer picks has no room for ``cost`` — by its learned
        concurrency where the balancer learns one (the default does), else when it
        already has a request in flight. For hedges: a copy placed in a queue adds load
        to a busy pool, so at high utilisation hedging raised everyone's median for a
        shorter tail; into spare capacity it costs nobody anything. With ``near`` (the
        attempt a hedge copies) and a zone preference, only in that attempt's zone: a
        hedge is extra traffic, and with one replica per zone every late answer would
        otherwise cross zones.
        """
        zone = near.backend.zone if near is not None and self.locality is not None else None
        try:
            return self._acquire(cost, exclude, model, bulk, spare=True, zone=zone)
        except NoBackendAvailable:
            return None

    def _has_room(self, s: BackendState, cost: float) -> bool:
        knee = self.balancer.concurrency(s)
        if knee is None:
            return s.pending == 0
        return s.outstanding_cost + cost <= knee

    def acquire(
        self,
        cost: float = 1.0,
        exclude: Collection[str] = (),
        *,
        model: str | None = None,
        bulk: bool = False,
    ) -> Lease:
        """Pick a backend for one request of ``cost`` (tokens, say), avoiding the URLs
        in ``exclude`` (where earlier attempts of the same request failed); with
        ``model``, only among backends serving it or of unknown model. A ``bulk``
        request also avoids backends that refused bulk work lately (see :meth:`release`);
        only bulk requests do.

        Raises :class:`~embedbalance.NoBackendAvailable` naming every backend and why
        (and, for a model no backend serves, the model and those served), and
        ``ValueError`` for a cost that is not a finite number >= 0 (a NaN would
        poison every estimate it touched).
        """
        lease = self._acquire(cost, exclude, model, bulk)
        assert lease is not None
        return lease

    def _acquire(
        self,
        cost: float,
        exclude: Collection[str],
        model: str | None,
        bulk: bool,
        spare: bool = False,
        zone: str | None = None,
    ) -> Lease | None:
        if not 0.0 <= cost < math.inf:
            raise ValueError(f"cost must be a finite number >= 0, got {cost!r}")
        events: list[PoolEvent] | None = None
        lease: Lease | None = None
        with self._lock:
            now = self._now()
            if self._dirty or now >= self._next_expiry:
                events = []
                self._refresh(now, events)
            candidates: Sequence[BackendState] = self._usable
            population: Sequence[BackendState] = self._live
            if model is not None:
                candidates, population = self._serving(model)
            if exclude:
                candidates = [s for s in candidates if s.url not in exclude]
            if bulk:
                candidates = [s for s in candidates if not _bulk_overloaded(s, now)]
            if zone is not None:
                candidates = [s for s in candidates if s.backend.zone == zone]
            if not candidates:
                if model is None:
                    error = NoBackendAvailable(self._unavailability(now, exclude, bulk=bulk))
                else:
                    error = NoBackendAvailable(
                        self._unavailability(now, exclude, population, bulk) if population else (),
                        model=model,
                        served=self._served_models(),
                    )
            else:
                state = self._choose(
                    candidates, cost=cost, now=now, rng=self.rng, population=population
                )
                if not spare or self._has_room(state, cost):
                    # Judged before this request counts as the backend's own news.
                    probe = self._is_probe is not None and self._is_probe(state, now)
                    state.pending += 1
                    state.outstanding_cost += cost
                    state.requests += 1
                    # Every field by position, in Lease's order: keywords cost twice as
                    # much here, on every request (released, attempt, hedge, span are
                    # their defaults).
                    lease = Lease(
                        state.backend,
                        cost,
                        now,
                        state,
                        state.outstanding_cost,
                        False,
                        0,
                        False,
                        None,
                        model,
                        bulk,
                        len(candidates),
                        probe,
                    )
                    if model is not None:
                        counters = self._models.get(model)
                        if counters is None:
                            counters = self._models[model] = _ModelCounters()
                        counters.requests += 1
                    if self._track_age:
                        state.in_flight.append(lease)
        if events:
            self._emit(events)
        if not candidates:
            raise error
        return lease  # None only for ``spare``: the pick had no free slot

    def release(
        self,
        lease: Lease,
        outcome: Outcome = Outcome.SUCCESS,
        *,
        latency: float | None = None,
        retry_after: float | None = None,
        queue_depth: float | None = None,
        hints: ServerHints | None = None,
    ) -> None:
        """Report how a leased request ended.

        ``latency`` defaults to the pool clock's time since :meth:`acquire` (a given one
        must be a finite number; negative reads as 0); ``retry_after`` (seconds) is
        honoured for :attr:`Outcome.OVERLOADED` (for a bulk lease, by bulk requests
        only: a server that pushes back on bulk work first may still take interactive
        requests, and a bulk ``Retry-After`` counts everything queued); ``queue_depth``
        is the server-reported queue length, where it sent one; ``hints`` every load
        hint of the response (:func:`~embedbalance._hints.parse_hints`), which the
        balancer trusts over its guesses (its ``queue_depth`` stands in for a missing
        ``queue_depth``).
        """
        if latency is not None and not -math.inf < latency < math.inf:
            raise ValueError(f"latency must be a finite number, got {latency!r}")
        events: list[PoolEvent] | None = None
        with self._lock:
            if lease.released:
                raise EmbedbalanceError(f"lease on {lease.backend.url} released twice")
            lease.released = True
            if self._track_age:
                queue = lease._state.in_flight
                while queue and queue[0].released:
                    queue.popleft()
            now = self._now()
            s = lease._state
            s.pending -= 1
            s.outstanding_cost -= lease.cost
            if s.pending == 0:
                s.outstanding_cost = 0.0  # no float drift while idle
                if s.removed and self._draining.pop(s.url, None) is not None:
                    # The last request of a backend that left: whoever holds resources
                    # for it (connections, metric series) may free them now.
                    events = [PoolEvent("released", s.url, now, "drained")]
            if hints is not None:
                s.hints = hints
                if queue_depth is None:
                    queue_depth = hints.queue_depth
            elif queue_depth is not None:
                hints = ServerHints(queue_depth=queue_depth)
            if queue_depth is not None:
                s.queue_depth = queue_depth
            counters = self._models.get(lease.model) if lease.model is not None else None
            if counters is not None:
                self._count_model(counters, outcome, latency, now - lease.started_at)
            if outcome is _SUCCESS:
                if latency is None:
                    latency = now - lease.started_at
                if latency < 0.0:
                    latency = 0.0  # a clock step back: the answer took no time, not less
                s.successes += 1
                s.consecutive_failures = 0
                s.answered_at = now
                if now - s.admitted_at < s.slow_start.window and s.slow_start.warm_answers:
                    self._warm_credit(s, latency)
                s.observe_latency(latency)
                self.balancer.observe(s, latency, now, lease.load_at_start, lease.cost, hints)
            elif outcome is _FAILURE:
                s.failures += 1
                s.consecutive_failures += 1
                s.add_penalty(now, self.failure_decay)
                if not s.removed:
                    events = events or []
                    self._maybe_eject(s, now, events)
            elif outcome is _OVERLOADED:
                s.overloads += 1
                backoff = retry_after if retry_after is not None else DEFAULT_OVERLOAD_BACKOFF
                until = now + max(backoff, 0.0)
                if lease.bulk:
                    if s.bulk_overloaded_until is None or until > s.bulk_overloaded_until:
                        s.bulk_overloaded_until = until
                        overloaded = PoolEvent(
                            "overloaded", s.url, now, f"bulk only, for {backoff:g}s"
                        )
                        events = [*(events or ()), overloaded]
                elif s.overloaded_until is None or until > s.overloaded_until:
                    s.overloaded_until = until
                    self._dirty = True
                    overloaded = PoolEvent("overloaded", s.url, now, f"for {backoff:g}s")
                    events = [*(events or ()), overloaded]
            else:
                s.cancelled += 1
        if events:
            self._emit(events)

    @staticmethod
    def _count_model(
        counters: _ModelCounters, outcome: Outcome, latency: float | None, elapsed: float
    ) -> None:
        if outcome is _SUCCESS:
            counters.successes += 1
            counters.latencies.append(max(0.0, elapsed if latency is None else latency))
        elif outcome is _FAILURE:
            counters.failures += 1
        elif outcome is _OVERLOADED:
            counters.overloads += 1
        else:
            counters.cancelled += 1

    def _warm_credit(self, s: BackendState, latency: float) -> None:
        """An answer during slow start as fast as the backend's usual p99 (its own
        from before; the pool's largest for one with no history) moves its ramp on:
        the backend has shown it is warm. Caller holds the lock."""
        if s.latency_high_samples >= _WARM_HISTORY:
            usual = s.latency_high
        else:
            now = self._now()
            if now - self._pool_high_at >= 1.0:  # a scan at most once a second
                highs = [o.latency_high for o in self._states.values() if o.latency_high_samples]
                self._pool_high = max(highs, default=None)
                self._pool_high_at = now
            if self._pool_high is None:
                return
            usual = self._pool_high
        if latency <= usual:
            s.admitted_at -= s.slow_start.credit()

    @staticmethod
    def _readmit(s: BackendState, now: float) -> None:
        """Back in service: forget old failures (their penalty would stack on top of
        slow start and starve the backend) and ramp its weight up from now."""
        s.ejected_until = None
        s.consecutive_failures = 0
        s.penalty = 0.0
        s.admitted_at = now

    def _maybe_eject(self, s: BackendState, now: float, events: list[PoolEvent]) -> None:
        policy = self.outlier_detection
        if not policy.enabled or s.consecutive_failures < policy.consecutive_failures:
            return
        if s.ejected_until is not None and s.ejected_until > now:
            return
        ejected = sum(
            1
            for o in self._states.values()
            if o.ejected_until is not None and o.ejected_until > now
        )
        if ejected >= max_ejectable(policy, len(self._states)):
            return
        if now - s.last_ejected_at > policy.max_ejection_time + ejection_duration(
            policy, s.ejections
        ):
            s.ejections = 0  # it stayed in long enough: start the multiplier afresh
        s.ejections += 1
        s.total_ejections += 1
        duration = ejection_duration(policy, s.ejections)
        s.ejected_until = now + duration
        s.last_ejected_at = now
        s.consecutive_failures = 0
        # Early re-admission needs ``rise`` checks passed *after* the ejection, not a
        # streak that began before the traffic started failing.
        s.active.streak = min(s.active.streak, 0)
        self._dirty = True
        events.append(
            PoolEvent(
                "ejected", s.url, now, f"{policy.consecutive_failures} failures, for {duration:g}s"
            )
        )

    def report_check(self, backend: BackendLike, ok: bool) -> None:
        """Record one active health check result for ``backend`` (rise/fall applies)."""
        url = as_backend(backend).url
        events: list[PoolEvent] = []
        with self._lock:
            s = self._states.get(url)
            if s is None:
                return
            now = self.clock()
            was = s.active.healthy
            changed = s.active.record(ok, self.health_check)
            if changed:
                self._dirty = True
                if s.active.healthy:
                    if was is False:
                        # Slow start is for a comeback; the first verdict on a backend
                        # that has been serving all along (None -> True) keeps its weight.
                        self._readmit(s, now)
                        # A replica back from the dead may be a new one at the same
                        # address, serving another model: read its /info again, and
                        # trust its answers only once a new canary passes.
                        s.model_known = False
                        self._canary_again(s)
                    events.append(
                        PoolEvent("healthy", url, now, f"{self.health_check.rise} checks passed")
                    )
                else:
                    events.append(
                        PoolEvent("unhealthy", url, now, f"{self.health_check.fall} checks failed")
                    )
            if (
                ok
                and s.active.healthy
                and s.ejected_until is not None
                and s.ejected_until > now
                and self.health_check.uneject_on_success
                and s.active.streak >= self.health_check.rise
            ):
                self._readmit(s, now)
                self._dirty = True
                events.append(PoolEvent("readmitted", url, now, "active checks passed"))
        if events:
            self._emit(events)

    def _canary_blocks(self, s: BackendState) -> bool:
        return self.health_check.canary is not None and s.canary is not True

    def _canary_again(self, s: BackendState) -> None:
        """Make ``s`` wait for a new canary (when canary checks are on)."""
        if self.health_check.canary is not None:
            s.canary, s.canary_detail = None, "canary: pending"
            self._dirty = True

    def awaiting_canary(self) -> tuple[Backend, ...]:
        """Members whose first canary has not passed yet (empty with canary checks off):
        the health runner checks these every round rather than every canary interval."""
        if self.health_check.canary is None:
            return ()
        with self._lock:
            return tuple(s.backend for s in self._states.values() if s.canary is None)

    def report_canary(self, backend: BackendLike, agrees: bool | None, detail: str) -> None:
        """Record one canary verdict for ``backend``, ``detail`` naming the check.

        ``True`` admits a pending backend or re-admits one the canary had ejected;
        ``False`` ejects it until a later canary agrees; ``None`` (no answer, or
        nothing to compare with) changes nothing (a pending backend shows ``detail``).
        """
        url = as_backend(backend).url
        events: list[PoolEvent] = []
        with self._lock:
            s = self._states.get(url)
            if s is None:
                return
            now = self.clock()
            was = s.canary
            if agrees is None:
                if was is None:  # keep an ejection's reason; show why one still waits
                    s.canary_detail = detail
                return
            s.canary_detail = detail
            if agrees == was:
                return
            s.canary = agrees
            self._dirty = True
            if agrees and was is None:
                events.append(PoolEvent("healthy", url, now, detail))
            elif agrees:
                s.admitted_at = now  # a comeback: slow start from now
                events.append(PoolEvent("readmitted", url, now, detail))
            else:
                s.total_ejections += 1
                events.append(PoolEvent("ejected", url, now, detail))
        self._emit(events)

    def wants_model(self, backend: BackendLike) -> bool:
        """Whether ``backend``'s model is still unknown (not given, ``/info`` not read):
        what the health checker asks before reading ``GET /info``."""
        url = as_backend(backend).url
        with self._lock:
            s = self._states.get(url)
            return s is not None and s.backend.model is None and not s.model_known

    def learn_model(self, backend: BackendLike, model: str | None) -> None:
        """Record the model ``backend``'s ``/info`` reports (``None``: it answered but
        names none, so it keeps serving any request and is not asked again)."""
        url = as_backend(backend).url
        events: list[PoolEvent] = []
        with self._lock:
            s = self._states.get(url)
            if s is None:
                return
            s.model_known = True
            if model != s.learned_model:
                if s.backend.model is None and (s.learned_model is not None or s.canary is False):
                    # Another model than before: the old verdict is void. A first model
                    # learned gives an ejected replica a new chance (it may have been
                    # judged against another model's replicas before its model was known).
                    self._canary_again(s)
                s.learned_model = model
                self._dirty = True
                if s.backend.model is None and model is not None:
                    events.append(PoolEvent("updated", url, self.clock(), f"serves {model!r}"))
        self._emit(events)

    def model_of(self, backend: BackendLike) -> str | None:
        """The model ``backend`` serves as far as the pool knows (given, or learned from
        ``/info``); None when unknown or not a member."""
        url = as_backend(backend).url
        with self._lock:
            s = self._states.get(url)
            return None if s is None else s.model

    def canary_groups(self) -> tuple[dict[str | None, list[str]], list[str]]:
        """Members grouped by the model they serve, as canary checks compare them, and
        the members left out for now.

        Replicas of two models never give the same vectors, so the canary compares
        answers within a group only. Spellings that :func:`model_matches` joins
        (``org/name`` and ``name``) are one group, named by the full spelling. A pool
        of at most one known model is a single group holding every member (keyed by
        that model, or None). In a pool of several models, members that answered
        ``/info`` without naming a model form the group ``None``, and members whose
        model is still unknown (``/info`` not read yet) are left out: judged against
        either model they would be ejected, admitted unchecked they might be wrong.
        """
        with self._lock:
            members = [
                (s.url, s.backend.model is not None or s.model_known, s.model)
                for s in self._states.values()
            ]
        names = {m for _, known, m in members if known and m is not None}
        full: dict[str, list[str]] = {}
        for name in names:
            if "/" in name:
                full.setdefault(name.rpartition("/")[2], []).append(name)

        def key(name: str) -> str:
            if "/" in name:
                return name
            spelled = full.get(name, [])
            return spelled[0] if len(spelled) == 1 else name

        keys = {key(n) for n in names}
        if len(keys) <= 1:
            only = next(iter(keys), None)
            return {only: [url for url, _, _ in members]}, []
        groups: dict[str | None, list[str]] = {}
        unknown: list[str] = []
        for url, known, model in members:
            if not known:
                unknown.append(url)
            else:
                groups.setdefault(None if model is None else key(model), []).append(url)
        return groups, unknown

    # -- introspection ------------------------------------------------------------

    def stats(self) -> PoolStats:
        """A consistent snapshot of every backend (members, then draining ones)."""
        with self._lock:
            now = self.clock()
            if self._dirty or now >= self._next_expiry:
                events: list[PoolEvent] = []
                self._refresh(now, events)
            else:
                events = []
            rows = [self._backend_stats(s, now) for s in self._states.values()]
            rows += [self._backend_stats(s, now) for s in self._draining.values()]
            models = tuple(_model_stats(m, c) for m, c in sorted(self._models.items()))
            snapshot = PoolStats(at=now, panic=self._panic, backends=tuple(rows), models=models)
        if events:
            self._emit(events)
        return snapshot

    def gauges(self) -> list[tuple[str, int, bool]]:
        """``(url, requests in flight, may be picked)`` for every backend, draining ones
        included: what metrics exporters read at scrape time, cheaper than :meth:`stats`."""
        with self._lock:
            now = self.clock()
            rows = [
                (
                    s.url,
                    s.pending,
                    not (s.ejected_until is not None and s.ejected_until > now)
                    and s.active.healthy is not False
                    and not self._canary_blocks(s),
                )
                for s in self._states.values()
            ]
            rows += [(s.url, s.pending, False) for s in self._draining.values()]
        return rows

    def usable_count(self, model: str | None = None) -> int:
        """How many members a request (for ``model``: those serving it, or of unknown
        model) may be sent to now, passing overloads aside: healthy, not ejected, past
        their canary where canary checks are on (in panic mode, every canary-passed
        member, as :meth:`acquire` then picks among them).

        What sizes per-replica quantities (a bulk client's limit on requests in flight):
        ``len(backends)`` also counts replicas that take no traffic now and replicas of
        other models. An overload lasts seconds, so an overloaded replica still counts.
        """
        events: list[PoolEvent] = []
        with self._lock:
            now = self.clock()
            if self._dirty or now >= self._next_expiry:
                self._refresh(now, events)
            live = self._live if model is None else self._serving(model)[1]
            count = sum(
                1
                for s in live
                if not self._canary_blocks(s)
                and (
                    self._panic
                    or (
                        not (s.ejected_until is not None and s.ejected_until > now)
                        and s.active.healthy is not False
                    )
                )
            )
        self._emit(events)
        return count

    def has(self, url: str) -> bool:
        """Whether ``url`` is a member (draining ones are not)."""
        return url in self._states

    def _backend_stats(self, s: BackendState, now: float) -> BackendStats:
        if s.removed:
            state = "draining"
        elif s.ejected_until is not None and s.ejected_until > now:
            state = "ejected"
        elif s.active.healthy is False:
            state = "unhealthy"
        elif self._canary_blocks(s):
            state = "ejected" if s.canary is False else "pending"
        elif s.overloaded_until is not None and s.overloaded_until > now:
            state = "overloaded"
        else:
            state = "healthy"
        p50 = p99 = None
        estimate = self.balancer.estimate(s, now)
        if s.latencies:
            p50, p99 = (float(x) for x in np.percentile(np.fromiter(s.latencies, float), [50, 99]))
        return BackendStats(
            url=s.url,
            tier=s.tier,
            weight=s.weight,
            effective_weight=s.effective_weight(now),
            state=state,
            pending=s.pending,
            outstanding_cost=s.outstanding_cost,
            requests=s.requests,
            successes=s.successes,
            failures=s.failures,
            overloads=s.overloads,
            cancelled=s.cancelled,
            ejections=s.total_ejections,
            ejected_until=s.ejected_until if state == "ejected" else None,
            rtt_estimate=estimate,
            latency_p50=p50,
            latency_p99=p99,
            queue_depth=s.queue_depth,
            estimate=estimate,
            concurrency=self.balancer.concurrency(s),
            latency_high=s.latency_high if s.latency_high_samples else None,
            canary=s.canary_detail if self.health_check.canary is not None else None,
            model=s.model,
            zone=s.backend.zone,
        )

    def quiet(self, lease: Lease, quiet_for: float) -> bool:
        """Whether ``lease``'s backend has gone quiet: it holds other requests besides
        this one and has answered nothing for ``quiet_for`` seconds, while this one has
        been out at least that long. A backend that works answers something within its
        own usual latency when it holds several requests; one that holds them silently
        is hung, and a copy stuck there is worth hedging before its full hedge delay."""
        with self._lock:
            s = lease._state
            now = self._now()
            return (
                not lease.released
                and s.pending >= 2
                and now - lease.started_at >= quiet_for
                and now - s.answered_at >= quiet_for
            )

    def silent_since(self, lease: Lease) -> bool:
        """Whether ``lease``'s backend has answered nothing since the lease was taken:
        a request stuck there is on a hung backend, not a slow one (a slow backend
        still answers its other requests)."""
        return lease._state.answered_at < lease.started_at

    def recent_latency(
        self, backend: BackendLike, percentile: float, min_samples: int = 20
    ) -> float | None:
        """The ``percentile`` (0-100) of ``backend``'s recent answers' latencies, in
        seconds; None until it has ``min_samples`` of them (or when it is not in the
        pool). For hedging: whether an attempt is late depends on where it went."""
        url = as_backend(backend).url
        with self._lock:
            s = self._states.get(url) or self._draining.get(url)
            if s is None or len(s.latencies) < max(min_samples, 1):
                return None
            return s.recent_percentile(percentile)

    def attempt_deadline(
        self, backend: BackendLike, *, multiple: float = 3.0, ceiling: float | None = None
    ) -> float | None:
        """Seconds to give one attempt on ``backend`` before answering it elsewhere:
        ``multiple`` × its recent p99 (a streaming estimate over its answers), at most
        ``ceiling`` (the caller's timeout). Before it has answered 20 times, the largest
        p99 among the pool's backends stands in; with no answer anywhere, ``ceiling``.

        For a transport's adaptive per-attempt deadline and hedge delay: a request stuck
        on a straggler or a hung backend is retried or hedged after about the pool's
        p99, not after the caller's whole timeout.
        """
        if not (multiple > 0 and math.isfinite(multiple)):
            raise ValueError(f"multiple must be a finite number > 0, got {multiple!r}")
        url = as_backend(backend).url
        with self._lock:
            s = self._states.get(url) or self._draining.get(url)
            if s is not None and s.latency_high_samples >= 20:
                high = s.latency_high
            else:
                highs = [o.latency_high for o in self._states.values() if o.latency_high_samples]
                if not highs:
                    return ceiling
                high = max(highs)
        deadline = multiple * high
        return deadline if ceiling is None or deadline < ceiling else ceiling


def _bulk_overloaded(s: BackendState, now: float) -> bool:
    until = s.bulk_overloaded_until
    return until is not None and until > now


def model_matches(requested: str, served: str) -> bool:
    """Whether a request for ``requested`` may go to a backend serving ``served``: the
    same name, or the same without the organisation (``all-MiniLM-L6-v2`` is
    ``sentence-transformers/all-MiniLM-L6-v2``, as callers and servers often spell it)."""
    if requested == served:
        return True
    if "/" in requested:
        return "/" not in served and requested.rpartition("/")[2] == served
    return served.rpartition("/")[2] == requested


def _model_stats(model: str, c: _ModelCounters) -> ModelStats:
    p50 = p99 = None
    if c.latencies:
        p50, p99 = (float(x) for x in np.percentile(np.fromiter(c.latencies, float), [50, 99]))
    return ModelStats(
        model=model,
        requests=c.requests,
        successes=c.successes,
        failures=c.failures,
        overloads=c.overloads,
        cancelled=c.cancelled,
        latency_p50=p50,
        latency_p99=p99,
    )


def _make_balancer(balancer: Balancer | Callable[[], Balancer] | None) -> Balancer:
    """The pool's own balancer: the default, a fresh one from a factory, or the given
    instance if no other pool has claimed it (its learned state is per pool)."""
    if balancer is None:
        made: object = ShortestExpectedDelay()
    elif isinstance(balancer, Balancer):
        made = balancer
    elif callable(balancer):
        made = balancer()
    else:
        raise TypeError(f"balancer must be a Balancer or a factory of one, got {balancer!r}")
    if not isinstance(made, Balancer):
        raise TypeError(f"the balancer factory returned {made!r}, not a Balancer")
    if getattr(made, "_claimed", False):
        raise ValueError(
            f"{made!r} already balances another pool; pass a factory (the class, say) so "
            "that each pool learns its own backends"
        )
    made._claimed = True
    return made
