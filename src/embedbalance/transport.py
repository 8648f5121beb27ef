"""httpx transports that balance, health-check, retry and hedge: sync and async twins.

Swap the transport of any ``httpx.Client`` / ``httpx.AsyncClient`` and every request
goes to the best backend in the pool: scheme, host and port are rewritten (path,
query, headers and body are kept), the outcome flows back into the pool, and
failures are retried on a *different* backend inside a retry budget.

Every decision (which backend next, when to hedge, when to give up, what the caller
gets) lives once, in :mod:`embedbalance._attempts`; :class:`_Core` adds what needs
httpx (reading requests and responses); the two transport classes only send and wait.

What each answer means (``docs/transports.md`` has the table):

- 2xx/3xx, and 4xx other than 424 and 429: the backend did its job; returned as is.
- 429, and 503 with ``Retry-After``: overload — the backend is busy, not broken: it is
  avoided for the ``Retry-After`` time and the request retried elsewhere.
- 424 (Hugging Face TEI's answer when its model fails) and 5xx: a failure of that
  backend — retried elsewhere and counted toward ejection.
- When every attempt failed, the last HTTP answer is returned as the response (as a
  proxy would); only when there was none does the transport raise.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import math
import os
import random
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, wait
from types import TracebackType
from typing import Any, Generic, Literal, Protocol, TypeVar

import anyio
import anyio.abc
import attrs
import httpx
from anyio.streams.memory import MemoryObjectSendStream

from . import _tracing
from ._attempts import AttemptPolicy, AttemptResult, Flow, Step
from ._backend import Backend, BackendLike
from ._clock import Clock, monotonic
from ._hints import parse_hints, parse_retry_after
from ._threads import Runner
from .balancers import Balancer
from .discovery import Discovery
from .exceptions import EmbedbalanceError
from .health import HealthCheck, OutlierDetection, SlowStart
from .health_runner import (
    HealthChecker,
    async_http_canary_probe,
    async_http_info,
    async_http_probe,
    http_canary_probe,
    http_info,
    http_probe,
    run_async_checks,
)
from .locality import Locality
from .pool import BackendPool, Lease, Outcome, PoolEvent, PoolStats
from .priority import BULK, PRIORITY_HEADER, check_priority
from .retry import Hedge, Retry

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
    "AsyncBalancingTransport",
    "BalancingTransport",
    "MetricsSink",
    "TransportStats",
]

log = logging.getLogger("embedbalance")

#: ``request.extensions`` key: the request's cost (tokens, say) for token-aware balancers.
COST_EXTENSION = "embedbalance.cost"
#: ``request.extensions`` key: the model the request is for; it goes only to backends
#: serving that model (or of unknown model). Without it, a JSON ``POST`` to a path
#: ending in ``/embeddings`` (OpenAI's API) is routed by its body's ``model`` field.
MODEL_EXTENSION = "embedbalance.model"
#: ``request.extensions`` key: ``True`` marks a request safe to resend after it was sent.
IDEMPOTENT_EXTENSION = "embedbalance.idempotent"
#: ``request.extensions`` key: ``"interactive"`` or ``"bulk"``, sent to the server as the
#: ``X-Priority`` header (a priority-aware worker serves interactive work first).
PRIORITY_EXTENSION = "embedbalance.priority"
#: ``request.extensions`` key: seconds this request may take in all, retries included.
TOTAL_TIMEOUT_EXTENSION = "embedbalance.total_timeout"
#: ``request.extensions`` key: a function that checks a 2xx answer's content and raises
#: ``ValueError`` (or an :class:`~embedbalance.EmbedbalanceError`) when it is wrong; a
#: wrong answer is a failure of that backend and is retried elsewhere.
VALIDATE_EXTENSION = "embedbalance.validate"
#: ``response.extensions`` key: what the validator returned for this answer.
VALIDATED_EXTENSION = "embedbalance.validated"
#: ``response.extensions`` key: the :class:`Backend` that answered.
BACKEND_EXTENSION = "embedbalance.backend"
#: ``response.extensions`` key: the failed attempts before this answer, in order.
ATTEMPTS_EXTENSION = "embedbalance.attempts"

Validator = Callable[[httpx.Response], Any]


class MetricsSink(Protocol):
    """What the transports report to (``embedbalance.metrics.PrometheusMetrics`` is one).

    ``bind`` is called once with the pool; a sink that keeps per-backend state should
    listen for its ``released`` events and drop that backend's state then.
    """

    def bind(self, pool: BackendPool) -> None: ...
    def request(self, url: str, outcome: str, latency: float | None) -> None: ...
    def retry(self) -> None: ...
    def hedge(self) -> None: ...
    def budget_exhausted(self) -> None: ...


class _NoMetrics:
    def bind(self, pool: BackendPool) -> None: ...
    def request(self, url: str, outcome: str, latency: float | None) -> None: ...
    def retry(self) -> None: ...
    def hedge(self) -> None: ...
    def budget_exhausted(self) -> None: ...


@attrs.frozen
class TransportStats:
    """A snapshot: the pool's per-backend view plus the transport's own counters."""

    pool: PoolStats
    requests: int
    retries: int
    hedges: int
    budget_exhausted: int
    hedge_budget_exhausted: int
    #: Hedges not sent because no other backend had a free slot.
    hedges_declined: int = 0


def request_model(request: httpx.Request) -> str | None:
    """The model a request is for: :data:`MODEL_EXTENSION`, else the ``model`` field of
    an OpenAI-style body (a JSON ``POST`` to ``.../embeddings``), else ``None`` (any).

    The body is read only for such requests, only when it is in memory already, and
    only parsed when it mentions ``"model"`` at all; a malformed body names no model and
    is sent on untouched, for the server to answer. Raises ``ValueError`` for an
    extension that is not a non-empty string.
    """
    given = request.extensions.get(MODEL_EXTENSION)
    if given is not None:
        if not isinstance(given, str) or not given:
            raise ValueError(f"{MODEL_EXTENSION} must be a non-empty string, got {given!r}")
        return given
    if request.method != "POST" or not request.url.path.endswith("/embeddings"):
        return None
    stream = request.stream
    if not isinstance(stream, httpx.ByteStream):
        return None  # a streamed body is not read ahead of sending
    if "json" not in request.headers.get("content-type", ""):
        return None
    body = b"".join(stream)
    if b'"model"' not in body:
        return None
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    model = payload.get("model") if isinstance(payload, dict) else None
    return model if isinstance(model, str) and model else None


def _is_discovery(value: object) -> bool:
    return not isinstance(value, (str, Backend)) and isinstance(value, Discovery)


T = TypeVar("T")


class _Inner(Generic[T]):
    """The inner transport(s): one shared instance, or one per backend from a factory.

    Per-backend ones live exactly as long as their backend: the pool's ``released``
    event retires one (a rollout through DNS discovery would otherwise keep a
    connection pool for every pod address ever seen). After a ``fork`` the parent's
    are dropped unclosed: their sockets belong to the parent too, and closing a TLS
    connection would speak on the parent's session.
    """

    def __init__(self, given: T | Callable[[Backend], T] | None, default: Callable[[], T]) -> None:
        self._lock = threading.Lock()
        self._shared: T | None = None
        self._factory: Callable[[Backend], T]
        self._per_backend: dict[str, T] = {}
        self._retired: list[T] = []
        self._pid = os.getpid()
        if given is None:
            self._factory = lambda backend: default()
        elif isinstance(given, (httpx.BaseTransport, httpx.AsyncBaseTransport)):
            self._shared = given
        elif callable(given):
            self._factory = given
        else:
            raise TypeError(f"transport must be an httpx transport or a factory, got {given!r}")

    def get(self, backend: Backend) -> T:
        if self._shared is not None:
            return self._shared
        if self._pid != os.getpid():
            self._after_fork()
        inner = self._per_backend.get(backend.url)
        if inner is None:
            with self._lock:
                inner = self._per_backend.get(backend.url)
                if inner is None:
                    inner = self._per_backend[backend.url] = self._factory(backend)
        return inner

    def _after_fork(self) -> None:
        self._lock = threading.Lock()
        self._per_backend = {}
        self._retired = []
        self._pid = os.getpid()

    def __len__(self) -> int:
        return len(self._per_backend)

    def retire(self, url: str) -> T | None:
        """Forget ``url``'s inner transport and hand it back to be closed."""
        with self._lock:
            return self._per_backend.pop(url, None)

    def park(self, inner: T) -> None:
        """Keep a retired inner transport until the next chance to close it (async)."""
        with self._lock:
            self._retired.append(inner)

    def take_parked(self) -> list[T]:
        with self._lock:
            parked, self._retired = self._retired, []
            return parked

    @property
    def has_parked(self) -> bool:
        return bool(self._retired)

    def all(self) -> list[T]:
        with self._lock:
            if self._shared is not None:
                return [self._shared]
            inners = [*self._per_backend.values(), *self._retired]
            self._per_backend.clear()
            self._retired = []
            return inners


class _Core:
    """The request and response handling both twins share (no waiting, no sending)."""

    def __init__(
        self,
        backends: Iterable[BackendLike] | Discovery,
        *,
        balancer: Balancer | None,
        health_check: HealthCheck | None,
        outlier_detection: OutlierDetection | None,
        slow_start: SlowStart | None,
        panic_threshold: float,
        zone: Locality | str | None,
        retry: Retry | int | bool | None,
        hedge: Hedge | None,
        attempt_timeout: float | Literal["auto"] | None,
        total_timeout: float | None,
        metrics: MetricsSink | None,
        clock: Clock,
        rng: random.Random | None,
    ) -> None:
        self.discovery: Discovery | None = None
        initial: Iterable[BackendLike] = ()
        if _is_discovery(backends):
            self.discovery = backends  # type: ignore[assignment]
        else:
            initial = list(backends)  # type: ignore[arg-type]
        self.rng = rng or random.Random()
        self.pool = BackendPool(
            initial,
            balancer=balancer,
            outlier_detection=outlier_detection,
            health_check=health_check,
            slow_start=slow_start,
            panic_threshold=panic_threshold,
            zone=zone,
            clock=clock,
            rng=self.rng,
        )
        self.health_check = health_check
        self.retry = Retry.coerce(retry)
        self.metrics: MetricsSink = metrics or _NoMetrics()
        self.policy = AttemptPolicy(
            pool=self.pool,
            retry=self.retry,
            hedge=hedge,
            attempt_timeout=attempt_timeout,
            total_timeout=total_timeout,
            on_retry=self.metrics.retry,
            on_hedge=self.metrics.hedge,
            on_budget_exhausted=self.metrics.budget_exhausted,
        )
        self.metrics.bind(self.pool)
        self.clock = clock
        #: Named in each attempt's tracing span.
        self.balancer_name = type(self.pool.balancer).__name__

    # -- per request ----------------------------------------------------------------

    def begin(self, request: httpx.Request) -> Flow:
        """Read what the request asks for (cost, resendability, deadline) and start."""
        ext = request.extensions
        raw_cost = ext.get(COST_EXTENSION, 1.0)
        try:
            cost = float(raw_cost)
        except (TypeError, ValueError):
            cost = math.nan
        if not (math.isfinite(cost) and cost >= 0):
            raise ValueError(f"{COST_EXTENSION} must be a finite number >= 0, got {raw_cost!r}")
        replayable = isinstance(request.stream, httpx.ByteStream)
        marked = ext.get(IDEMPOTENT_EXTENSION)
        idempotent = (
            bool(marked)
            if marked is not None
            else self.retry.is_idempotent(request.method, request.url.path)
        )
        total = ext.get(TOTAL_TIMEOUT_EXTENSION)
        bulk = PRIORITY_EXTENSION in ext and check_priority(ext[PRIORITY_EXTENSION]) == BULK
        return self.policy.begin(
            cost, replayable and idempotent, total, request_model(request), bulk=bulk
        )

    def route(self, request: httpx.Request, lease: Lease, timeout: float | None) -> httpx.Request:
        """The request as sent to the lease's backend: new scheme/host/port, same
        everything else; every phase of httpx's timeout capped at ``timeout`` (the
        attempt's deadline). The attempt's span starts here, in the caller's context."""
        backend = lease.backend
        target, host_header = _target(backend, request.url.raw_path)
        headers = request.headers.copy()
        headers["Host"] = host_header
        extensions = dict(request.extensions)
        if PRIORITY_EXTENSION in extensions:
            headers[PRIORITY_HEADER] = extensions[PRIORITY_EXTENSION]
        if timeout is not None:
            phases = dict(extensions.get("timeout") or {})
            for key in ("connect", "read", "write", "pool"):
                current = phases.get(key)
                phases[key] = timeout if current is None else min(current, timeout)
            extensions["timeout"] = phases
        if backend.tls_server_name is not None:
            extensions["sni_hostname"] = backend.tls_server_name
        _tracing.start_attempt(request, lease, target, self.balancer_name)
        return httpx.Request(
            request.method, target, headers=headers, stream=request.stream, extensions=extensions
        )

    def settle_response(
        self,
        lease: Lease,
        response: httpx.Response,
        body: bytes,
        routed: httpx.Request,
        validate: Validator | None,
    ) -> AttemptResult:
        """Classify one answer, report it to the pool, and rebuild it for the caller."""
        status = response.status_code
        headers = response.headers
        retry_after = None
        if status == 429 or (status == 503 and "retry-after" in headers):
            outcome, retryable = Outcome.OVERLOADED, True
            retry_after = parse_retry_after(headers.get("retry-after"))
        elif status >= 500 or status == 424:
            outcome, retryable = Outcome.FAILURE, True
        else:
            outcome, retryable = Outcome.SUCCESS, False
        retryable = retryable and status in self.retry.statuses
        rebuilt = httpx.Response(
            status,
            headers=headers,
            stream=httpx.ByteStream(body),
            extensions={**response.extensions, BACKEND_EXTENSION: lease.backend},
            request=routed,
        )
        description = f"HTTP {status}"
        if validate is not None and outcome is Outcome.SUCCESS and 200 <= status < 300:
            rebuilt.read()  # in memory already: this only marks the content as read
            try:
                rebuilt.extensions[VALIDATED_EXTENSION] = validate(rebuilt)
            except (ValueError, EmbedbalanceError) as exc:
                outcome, retryable = Outcome.FAILURE, True
                description = f"invalid answer: {exc}"
            except BaseException:
                # A bug in the check, not in the answer: the caller sees it, and the
                # lease is released with no health effect rather than leaked.
                self.abandon(lease)
                raise
        latency = self.clock() - lease.started_at
        _tracing.end_attempt(
            lease,
            outcome.value,
            status,
            None if outcome is Outcome.SUCCESS else description,
        )
        # Metrics first: the release may end the backend's life, and its series with it.
        self.metrics.request(lease.backend.url, outcome.value, latency)
        self.pool.release(
            lease,
            outcome,
            latency=latency,
            retry_after=retry_after,
            hints=parse_hints(headers),
        )
        if outcome is Outcome.SUCCESS:
            self.policy.latencies.add(latency)
        return AttemptResult(lease, outcome, description, response=rebuilt, retryable=retryable)

    def settle_error(self, lease: Lease, exc: httpx.TransportError) -> AttemptResult:
        """A transport error: a failure of the backend; resendable when never sent. A
        bulk attempt's read or write timeout is an overload (see :meth:`timed_out`)."""
        sent = not isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout))
        outcome = (
            Outcome.OVERLOADED
            if lease.bulk and isinstance(exc, (httpx.ReadTimeout, httpx.WriteTimeout))
            else Outcome.FAILURE
        )
        _tracing.end_attempt(lease, outcome.value, error=type(exc).__name__)
        self.metrics.request(lease.backend.url, outcome.value, None)
        self.pool.release(lease, outcome)
        return AttemptResult(
            lease,
            outcome,
            f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__,
            error=exc,
            retryable=True,
            sent=sent,
        )

    def timed_out(self, lease: Lease, timeout: float | None) -> AttemptResult:
        """An attempt past its deadline: abandoned, and a failure of its backend (a
        backend that hangs must be ejected like one that refuses).

        Except for a bulk attempt: a priority-aware worker holds bulk work back while
        interactive work waits, so a slow bulk answer is the worker doing its job. It
        counts as an overload (bulk requests avoid the backend a while; no failure, no
        ejection); a hung backend is still found by interactive traffic and checks."""
        error = httpx.ReadTimeout(f"attempt timed out after {timeout:.3g}s")
        outcome = Outcome.OVERLOADED if lease.bulk else Outcome.FAILURE
        _tracing.end_attempt(lease, outcome.value, error="timeout")
        self.abandon(lease, outcome)
        return AttemptResult(lease, outcome, str(error), error=error, retryable=True, sent=True)

    def abandon(self, lease: Lease, outcome: Outcome = Outcome.CANCELLED) -> None:
        """Release a lease whose attempt will not be waited for (a cancelled caller's,
        one cut off at transport close)."""
        _tracing.end_attempt(lease, outcome.value)
        if not lease.released:
            self.metrics.request(lease.backend.url, outcome.value, None)
            self.pool.release(lease, outcome)

    def settle_late(
        self,
        lease: Lease,
        routed: httpx.Request,
        exchanged: tuple[httpx.Response, bytes] | None,
        error: BaseException | None,
    ) -> None:
        """Settle an attempt that finished after its request was answered by another
        copy (a hedge's loser): its real outcome, for the pool's books only."""
        try:
            self.settle(lease, routed, exchanged, error, None)
        except BaseException:
            self.abandon(lease)

    def settle(
        self,
        lease: Lease,
        routed: httpx.Request,
        exchanged: tuple[httpx.Response, bytes] | None,
        error: BaseException | None,
        validate: Validator | None,
    ) -> AttemptResult:
        """Settle one raced attempt from what its sender produced; other errors (a bug in
        an inner transport) release the lease and propagate."""
        if exchanged is not None:
            return self.settle_response(lease, exchanged[0], exchanged[1], routed, validate)
        if isinstance(error, httpx.TransportError):
            return self.settle_error(lease, error)
        self.abandon(lease)
        assert error is not None
        raise error

    def respond(self, flow: Flow) -> httpx.Response:
        """What the caller gets: the flow's answer with its failed attempts attached."""
        response: httpx.Response = flow.finish()
        if flow.attempts:
            response.extensions[ATTEMPTS_EXTENSION] = tuple(flow.attempts)
        return response

    def stats(self) -> TransportStats:
        policy = self.policy
        return TransportStats(
            pool=self.pool.stats(),
            requests=policy.requests,
            retries=policy.retries,
            hedges=policy.hedges,
            budget_exhausted=policy.budget.exhausted,
            hedge_budget_exhausted=policy.hedge_budget.exhausted,
            hedges_declined=policy.hedges_declined,
        )


_DOC_PARAMS = """
    - ``backends``: URL strings, :class:`~embedbalance.Backend` objects, or a
      discovery source (:class:`~embedbalance.DnsDiscovery`).
    - ``balancer``: default :class:`~embedbalance.ShortestExpectedDelay`.
    - ``health_check``: active ``GET /health`` checks (``None``: passive detection only).
      Checks go through the same inner transport as requests, with the policy's headers.
    - ``outlier_detection``, ``slow_start``, ``panic_threshold``: see the pool.
    - ``zone``: the caller's zone (a name, or a :class:`~embedbalance.Locality`):
      backends with that ``Backend.zone`` take the traffic while they can carry it,
      the rest spills to other zones (``docs/locality.md``). ``None``: no preference.
    - ``retry``: a :class:`~embedbalance.Retry`, an attempt count, or False.
    - ``hedge``: a :class:`~embedbalance.Hedge`: a late attempt of an idempotent request
      (an embedding call) gets a second copy on another backend, the first answer
      wins. On by default (``Hedge()``: after twice the chosen backend's recent p90,
      within 5% of requests), so a request stuck on a hung or straggling replica is
      answered elsewhere after a few of its usual latencies, not the caller's timeout.
      ``None`` turns it off.
    - ``attempt_timeout``: seconds one attempt may take in all (connect, send, answer)
      before it is abandoned, counted as a failure of its backend and retried elsewhere
      (Envoy's per-try timeout). ``"auto"``: four times what that backend has shown
      (its recent p99; the pool's before it has one), at least 0.1 s, so a straggler or
      a hung backend costs about the pool's tail, not the caller's whole timeout. ``None``: only
      httpx's per-phase timeouts apply.
    - ``total_timeout``: seconds a request may take in all, every attempt included
      (Envoy's route timeout); per request, ``extensions["embedbalance.total_timeout"]``.
      When it runs out before any answer, :class:`~embedbalance.DeadlineExceeded`.
    - ``transport``: how to talk to backends: one inner transport shared by all, or a
      function ``Backend -> transport`` called once per backend. The default gives each
      backend its own httpx connection pool, closed when the backend leaves the pool:
      httpcore's pool does work proportional to connections × waiting requests on every
      request, so one shared pool across many busy backends costs far more CPU than a
      small pool each (and a dead backend's connections cannot crowd out a live one's).
    - ``metrics``: a sink such as ``embedbalance.metrics.PrometheusMetrics()``.
    - ``clock``, ``rng``: injected time and randomness (the pool's bookkeeping; waiting
      for answers always takes real time).
"""


def _core(backends: Iterable[BackendLike] | Discovery, **kwargs: Any) -> _Core:
    return _Core(backends, **kwargs)


class BalancingTransport(httpx.BaseTransport):
    """An ``httpx`` transport for sync code (Flask, Django, scripts, threads).

    Thread-safe: share one per process. Health checks run in one daemon thread,
    started on first use (or :meth:`start`), restarted after a ``fork``, and stopped by
    :meth:`close`. Attempts with a deadline or a hedge run on daemon threads that are
    started as needed, so neither limits how many requests run at once.
    """

    __doc__ = (__doc__ or "") + _DOC_PARAMS

    def __init__(
        self,
        backends: Iterable[BackendLike] | Discovery,
        *,
        balancer: Balancer | None = None,
        health_check: HealthCheck | None = HealthCheck(),
        outlier_detection: OutlierDetection | None = OutlierDetection(),
        slow_start: SlowStart | None = SlowStart(),
        panic_threshold: float = 0.5,
        zone: Locality | str | None = None,
        retry: Retry | int | bool | None = None,
        hedge: Hedge | None = Hedge(),
        attempt_timeout: float | Literal["auto"] | None = None,
        total_timeout: float | None = None,
        transport: httpx.BaseTransport | Callable[[Backend], httpx.BaseTransport] | None = None,
        metrics: MetricsSink | None = None,
        clock: Clock = monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self._core = _core(
            backends,
            balancer=balancer,
            health_check=health_check,
            outlier_detection=outlier_detection,
            slow_start=slow_start,
            panic_threshold=panic_threshold,
            zone=zone,
            retry=retry,
            hedge=hedge,
            attempt_timeout=attempt_timeout,
            total_timeout=total_timeout,
            metrics=metrics,
            clock=clock,
            rng=rng,
        )
        self._inner = _Inner(transport, httpx.HTTPTransport)
        self._runner = Runner()
        self._core.pool.add_listener(self._on_pool_event)
        self._start_lock = threading.Lock()
        self._started_pid: int | None = None
        self._checker: HealthChecker | None = None
        self._closed = False

    @property
    def pool(self) -> BackendPool:
        return self._core.pool

    def stats(self) -> TransportStats:
        """Per-backend state and counters; needs no Prometheus."""
        return self._core.stats()

    @property
    def closed(self) -> bool:
        """True once :meth:`close` has run; a closed transport refuses requests."""
        return self._closed

    def _on_pool_event(self, event: PoolEvent) -> None:
        if event.kind == "released":
            inner = self._inner.retire(event.url)
            if inner is not None:
                inner.close()

    def _probe_transport(self, backend: Backend) -> httpx.BaseTransport:
        return self._inner.get(backend)

    def start(self) -> None:
        """Resolve discovery and start health checks now rather than on first use."""
        if self._started_pid == os.getpid():
            return
        if self._started_pid is not None:  # a forked child: the parent's lock may be held
            self._start_lock = threading.Lock()
        with self._start_lock:
            if self._started_pid == os.getpid():
                return
            if self._closed:
                raise RuntimeError("transport is closed")
            core = self._core
            if core.discovery is not None:
                core.discovery.start(core.pool)
            if core.health_check is not None:
                # After a fork the parent's thread does not exist here: start afresh.
                policy = core.health_check
                probe = http_probe(policy, self._probe_transport)
                canary = http_canary_probe(policy, self._probe_transport) if policy.canary else None
                info = http_info(policy, self._probe_transport)
                self._checker = HealthChecker(
                    core.pool, policy, probe=probe, canary_probe=canary, info=info, rng=core.rng
                )
                self._checker.start()
            self._started_pid = os.getpid()

    def __enter__(self) -> BalancingTransport:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None = None,
        exc_value: BaseException | None = None,
        traceback: TracebackType | None = None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Stop health checks and discovery and close connections; joins those threads.

        Attempts abandoned earlier (hedge losers, timed-out attempts) run on daemon
        threads that end with their connection."""
        with self._start_lock:
            self._closed = True
            if self._checker is not None:
                self._checker.stop()
                self._checker = None
            if self._core.discovery is not None and self._started_pid is not None:
                self._core.discovery.stop()
            self._started_pid = None
        for inner in self._inner.all():
            inner.close()
        self._runner.shutdown()

    # -- sending --------------------------------------------------------------------

    def _exchange(self, lease: Lease, routed: httpx.Request) -> tuple[httpx.Response, bytes]:
        """Send and read the whole answer (not decompressed: the headers still say how)."""
        with _tracing.activate(lease):
            response = self._inner.get(lease.backend).handle_request(routed)
        try:
            # An inner transport may hand back an answer already in memory (a mock, a
            # cache): its raw stream is spent, its content is the body.
            body = (
                response.content if hasattr(response, "_content") else b"".join(response.iter_raw())
            )
        finally:
            response.close()
        return response, body

    def _attempt(
        self, request: httpx.Request, lease: Lease, validate: Validator | None
    ) -> AttemptResult:
        """One attempt in the caller's thread (no deadline, no hedge)."""
        core = self._core
        routed = core.route(request, lease, None)
        try:
            response, body = self._exchange(lease, routed)
        except httpx.TransportError as exc:
            return core.settle_error(lease, exc)
        except BaseException:
            core.abandon(lease)
            raise
        return core.settle_response(lease, response, body, routed, validate)

    def _race(
        self, request: httpx.Request, flow: Flow, step: Step, validate: Validator | None
    ) -> None:
        """One step with a deadline and/or a hedge: attempts run on daemon threads while
        this thread waits for the first to settle the request, the hedge delay, or the
        deadline — whichever comes first. A fast failure ends the wait at once."""
        core = self._core
        wall = time.monotonic
        start = wall()
        deadline = start + step.timeout if step.timeout is not None else math.inf
        hedge_at = start + step.hedge_after if step.hedge_after is not None else math.inf
        live: dict[Future[tuple[httpx.Response, bytes]], tuple[Lease, httpx.Request]] = {}

        def launch(lease: Lease) -> None:
            left = None if deadline == math.inf else max(deadline - wall(), 0.001)
            routed = core.route(request, lease, left)
            live[self._runner.submit(self._exchange, lease, routed)] = (lease, routed)

        launch(step.lease)
        try:
            while live:
                wake = min(deadline, hedge_at)
                left = None if wake == math.inf else max(0.0, wake - wall())
                done, _ = wait(list(live), timeout=left, return_when=FIRST_COMPLETED)
                for future in done:
                    lease, routed = live.pop(future)
                    error = future.exception()
                    exchanged = None if error is not None else future.result()
                    if flow.record(core.settle(lease, routed, exchanged, error, validate)):
                        return
                if not live:
                    return
                now = wall()
                if now >= deadline:
                    for lease, _ in live.values():
                        flow.record(core.timed_out(lease, step.timeout))
                    live.clear()
                    return
                if now >= hedge_at:
                    second = flow.hedge_lease()
                    if second is not None:
                        launch(second)
                    hedge_at = flow.next_hedge_check(now, step)
        finally:
            for future, (lease, routed) in live.items():
                if flow.settled:
                    future.add_done_callback(functools.partial(self._finish_late, lease, routed))
                else:
                    core.abandon(lease)

    def _finish_late(
        self, lease: Lease, routed: httpx.Request, future: Future[tuple[httpx.Response, bytes]]
    ) -> None:
        """A hedge's loser, once it ends: see :meth:`AsyncBalancingTransport._race`."""
        if future.cancelled() or self._closed:  # closing cut it off: not the backend's fault
            self._core.abandon(lease)
            return
        error = future.exception()
        self._core.settle_late(lease, routed, None if error is not None else future.result(), error)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.start()
        core = self._core
        flow = core.begin(request)
        validate = request.extensions.get(VALIDATE_EXTENSION)
        while (step := flow.next_step()) is not None:
            if step.timeout is None and step.hedge_after is None:
                flow.record(self._attempt(request, step.lease, validate))
            else:
                self._race(request, flow, step, validate)
        return core.respond(flow)

    @classmethod
    def from_env(
        cls,
        prefix: str = "EMBEDBALANCE_",
        *,
        environ: dict[str, str] | None = None,
        **overrides: Any,
    ) -> BalancingTransport:
        """Build from ``EMBEDBALANCE_*`` environment variables (``docs/config.md`` lists
        them); keyword ``overrides`` win (objects such as ``metrics=``, ``transport=``).
        Raises :class:`~embedbalance.config.ConfigError` naming a wrong variable."""
        from .config import from_env

        return cls(**{**from_env(prefix, environ).transport_kwargs(), **overrides})

    @classmethod
    def from_config(cls, mapping: dict[str, Any], **overrides: Any) -> BalancingTransport:
        """Build from a plain mapping (a YAML or JSON file loaded into one; keys in
        ``docs/config.md``); keyword ``overrides`` win. Raises
        :class:`~embedbalance.config.ConfigError` naming a wrong setting."""
        from .config import from_config

        return cls(**{**from_config(mapping).transport_kwargs(), **overrides})


class AsyncBalancingTransport(httpx.AsyncBaseTransport):
    """The async twin, for asyncio and trio apps (FastAPI, Starlette, anyio code).

    Health checks and discovery run in one background task started on first use or
    by ``async with`` and stopped by :meth:`aclose`; no task survives it.
    """

    __doc__ = (__doc__ or "") + _DOC_PARAMS

    def __init__(
        self,
        backends: Iterable[BackendLike] | Discovery,
        *,
        balancer: Balancer | None = None,
        health_check: HealthCheck | None = HealthCheck(),
        outlier_detection: OutlierDetection | None = OutlierDetection(),
        slow_start: SlowStart | None = SlowStart(),
        panic_threshold: float = 0.5,
        zone: Locality | str | None = None,
        retry: Retry | int | bool | None = None,
        hedge: Hedge | None = Hedge(),
        attempt_timeout: float | Literal["auto"] | None = None,
        total_timeout: float | None = None,
        transport: httpx.AsyncBaseTransport
        | Callable[[Backend], httpx.AsyncBaseTransport]
        | None = None,
        metrics: MetricsSink | None = None,
        clock: Clock = monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self._core = _core(
            backends,
            balancer=balancer,
            health_check=health_check,
            outlier_detection=outlier_detection,
            slow_start=slow_start,
            panic_threshold=panic_threshold,
            zone=zone,
            retry=retry,
            hedge=hedge,
            attempt_timeout=attempt_timeout,
            total_timeout=total_timeout,
            metrics=metrics,
            clock=clock,
            rng=rng,
        )
        self._ainner = _Inner(transport, httpx.AsyncHTTPTransport)
        self._core.pool.add_listener(self._on_pool_event)
        self._state = "new"  # new -> starting -> running -> closed
        self._started: anyio.Event | None = None
        self._stopped: anyio.Event | None = None
        self._scope: anyio.CancelScope | None = None
        self._failure: BaseException | None = None
        #: Raced attempts in flight (hedge losers included), cancelled by aclose().
        self._attempts: set[anyio.CancelScope] = set()
        self._attempts_gone: anyio.Event | None = None  # set by the last one, on aclose()

    @property
    def pool(self) -> BackendPool:
        return self._core.pool

    def stats(self) -> TransportStats:
        """Per-backend state and counters; needs no Prometheus."""
        return self._core.stats()

    @property
    def closed(self) -> bool:
        """True once :meth:`aclose` has run; a closed transport refuses requests."""
        return self._state == "closed"

    def _on_pool_event(self, event: PoolEvent) -> None:
        # Closing is async and this may run in any thread: park it for the next request
        # (or the health-check round, or aclose) to close.
        if event.kind == "released":
            inner = self._ainner.retire(event.url)
            if inner is not None:
                self._ainner.park(inner)

    async def _close_parked(self) -> None:
        for inner in self._ainner.take_parked():
            with anyio.CancelScope(shield=True):
                await inner.aclose()

    def _probe_transport(self, backend: Backend) -> httpx.AsyncBaseTransport:
        return self._ainner.get(backend)

    @property
    def _needs_background(self) -> bool:
        return self._core.discovery is not None or self._core.health_check is not None

    async def start(self) -> None:
        """Start discovery and health checks now (``async with`` does this)."""
        if self._state == "running":
            return
        if self._state == "closed":
            raise RuntimeError("transport is closed")
        if self._state == "starting":
            assert self._started is not None
            await self._started.wait()
            return
        self._state = "starting"
        self._started, self._stopped = anyio.Event(), anyio.Event()
        if self._needs_background:
            _spawn(self._background)
            await self._started.wait()
            if self._failure is not None:
                self._state = "closed"
                raise self._failure
            if self._state == "closed":  # aclose() ran while the background started
                raise RuntimeError("transport is closed")
        else:
            self._started.set()
            self._stopped.set()
        self._state = "running"

    async def _background(self) -> None:
        assert self._started is not None
        assert self._stopped is not None
        core = self._core
        try:
            with anyio.CancelScope() as scope:
                self._scope = scope
                if self._state == "closed":  # aclose() came first
                    scope.cancel()
                async with anyio.create_task_group() as tg:
                    if core.discovery is not None:
                        await tg.start(_run_discovery, core.discovery, core.pool)
                    if core.health_check is not None:
                        # With a canary, started once the first round has checked answers.
                        await tg.start(self._run_checks, core.health_check)
                    self._started.set()
        except Exception as exc:  # discovery failed before it could start
            log.exception("background tasks of the transport failed")
            self._failure = _single_error(exc)
        finally:
            self._started.set()
            self._stopped.set()

    async def _run_checks(
        self, policy: HealthCheck, *, task_status: anyio.abc.TaskStatus[None]
    ) -> None:
        probe = async_http_probe(policy, self._probe_transport)
        canary = async_http_canary_probe(policy, self._probe_transport) if policy.canary else None

        async def probe_and_tidy(backend: Backend) -> bool:
            if self._ainner.has_parked:
                await self._close_parked()
            return await probe(backend)

        core = self._core
        await run_async_checks(
            core.pool,
            policy,
            probe=probe_and_tidy,
            canary_probe=canary,
            info=async_http_info(policy, self._probe_transport),
            rng=random.Random(core.rng.random()),
            task_status=task_status,
        )

    async def __aenter__(self) -> AsyncBalancingTransport:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None = None,
        exc_value: BaseException | None = None,
        traceback: TracebackType | None = None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Cancel the background task and raced attempts still running (hedge losers)
        and wait until they are gone; close connections."""
        previous, self._state = self._state, "closed"
        if previous in ("starting", "running") and self._stopped is not None:
            # Not waiting for the background to have started: discovery may take as
            # long as a DNS timeout to answer, and a close must not wait for that. A
            # background that has not run yet sees the state and ends at once.
            if self._scope is not None:
                self._scope.cancel()
            await self._stopped.wait()
        for scope in list(self._attempts):
            scope.cancel()
        # They end at their next scheduling point: wait for them (bounded), so that
        # nothing is left in flight once aclose() returns.
        if self._attempts:
            self._attempts_gone = anyio.Event()
            with anyio.move_on_after(5.0):
                await self._attempts_gone.wait()
        for inner in self._ainner.all():
            await inner.aclose()

    # -- sending --------------------------------------------------------------------

    async def _exchange(self, lease: Lease, routed: httpx.Request) -> tuple[httpx.Response, bytes]:
        """Send and read the whole answer (not decompressed: the headers still say how)."""
        with _tracing.activate(lease):
            response = await self._ainner.get(lease.backend).handle_async_request(routed)
        try:
            if hasattr(response, "_content"):  # in memory already (see the sync twin)
                body = response.content
            else:
                body = b"".join([chunk async for chunk in response.aiter_raw()])
        finally:
            await response.aclose()
        return response, body

    async def _attempt(
        self,
        request: httpx.Request,
        lease: Lease,
        validate: Validator | None,
        deadline: float | None = None,
    ) -> AttemptResult:
        """One attempt awaited directly, within ``deadline`` seconds when there is one (no hedge:
        a cancel scope is all a deadline needs here, no task group)."""
        core = self._core
        routed = core.route(request, lease, deadline)
        result: AttemptResult | None = None
        scope: anyio.CancelScope | None = None
        try:
            with anyio.move_on_after(math.inf if deadline is None else deadline) as scope:
                try:
                    response, body = await self._exchange(lease, routed)
                except httpx.TransportError as exc:
                    result = core.settle_error(lease, exc)
                else:
                    result = core.settle_response(lease, response, body, routed, validate)
        finally:
            if result is None and not (scope is not None and scope.cancelled_caught):
                core.abandon(lease)  # an error or the caller's cancellation is on its way
        return result if result is not None else core.timed_out(lease, deadline)

    async def _race(
        self, request: httpx.Request, flow: Flow, step: Step, validate: Validator | None
    ) -> None:
        """The async :meth:`BalancingTransport._race`: the same rules.

        Attempts run as tasks of their own rather than in a task group: when one copy
        answers, the others are *not* cancelled. The server is still working on them
        (closing a connection does not stop a batch on a GPU), so their leases stay
        open and settle with their real outcome — the balancer keeps counting the work
        each backend holds and learns the latency it shows, and a hung backend is
        charged a failure when the attempt's own timeout ends it. Cancelling would
        make a backend holding a straggler look idle, draw new work into a busy server
        and raise everyone's median. Only a deadline, the caller's cancellation or
        :meth:`aclose` cancels an attempt.
        """
        core = self._core
        wall = time.monotonic
        start = wall()
        deadline = start + step.timeout if step.timeout is not None else math.inf
        hedge_at = start + step.hedge_after if step.hedge_after is not None else math.inf
        send, receive = anyio.create_memory_object_stream[_Exchanged](max_buffer_size=math.inf)
        live: dict[int, tuple[Lease, anyio.CancelScope]] = {}
        racing = [True]
        failure: Exception | None = None  # raised after the race, not wrapped

        def launch(lease: Lease) -> None:
            left = None if deadline == math.inf else max(deadline - wall(), 0.001)
            scope = anyio.CancelScope()
            live[id(lease)] = (lease, scope)
            self._attempts.add(scope)
            routed = core.route(request, lease, left)
            _spawn(functools.partial(self._run_attempt, lease, routed, scope, send, racing))

        launch(step.lease)
        try:
            while live:
                wake = min(deadline, hedge_at)
                got = None
                with anyio.move_on_after(math.inf if wake == math.inf else wake - wall()):
                    got = await receive.receive()
                if got is not None:
                    lease, routed, exchanged, error = got
                    del live[id(lease)]
                    try:
                        result = core.settle(lease, routed, exchanged, error, validate)
                    except Exception as exc:
                        failure = exc
                        break
                    if flow.record(result):
                        break
                    continue
                now = wall()
                if now >= deadline:
                    for lease, scope in live.values():
                        flow.record(core.timed_out(lease, step.timeout))
                        scope.cancel()
                    live.clear()
                    break
                if now >= hedge_at:
                    second = flow.hedge_lease()
                    if second is not None:
                        launch(second)
                    hedge_at = flow.next_hedge_check(now, step)
        finally:
            racing[0] = False
            settled = flow.settled
            for lease, scope in live.values():
                if not settled:  # the caller gave up or failed: nobody will wait
                    scope.cancel()
                    core.abandon(lease)
            # Answers that arrived after the one that settled it, not yet read.
            while True:
                try:
                    lease, routed, exchanged, error = receive.receive_nowait()
                except (anyio.WouldBlock, anyio.EndOfStream):
                    break
                core.settle_late(lease, routed, exchanged, error)
            send.close()
            receive.close()
        if failure is not None:
            raise failure

    async def _run_attempt(
        self,
        lease: Lease,
        routed: httpx.Request,
        scope: anyio.CancelScope,
        send: MemoryObjectSendStream[_Exchanged],
        racing: list[bool],
    ) -> None:
        """One raced attempt, in a task of its own: hands its end to the race while the
        race waits, else settles it itself (a hedge's loser)."""
        exchanged: tuple[httpx.Response, bytes] | None = None
        error: Exception | None = None
        try:
            with scope:
                try:
                    exchanged = await self._exchange(lease, routed)
                except Exception as exc:
                    error = exc
            if scope.cancelled_caught:
                self._core.abandon(lease)
            elif racing[0]:
                send.send_nowait((lease, routed, exchanged, error))
            else:
                self._core.settle_late(lease, routed, exchanged, error)
        except BaseException:
            self._core.abandon(lease)
            raise
        finally:
            self._attempts.discard(scope)
            if not self._attempts and self._attempts_gone is not None:
                self._attempts_gone.set()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self._state != "running":
            await self.start()
        if self._ainner.has_parked:
            await self._close_parked()
        core = self._core
        flow = core.begin(request)
        validate = request.extensions.get(VALIDATE_EXTENSION)
        while (step := flow.next_step()) is not None:
            if step.hedge_after is None:
                flow.record(await self._attempt(request, step.lease, validate, step.timeout))
            else:
                await self._race(request, flow, step, validate)
        return core.respond(flow)

    @classmethod
    def from_env(
        cls,
        prefix: str = "EMBEDBALANCE_",
        *,
        environ: dict[str, str] | None = None,
        **overrides: Any,
    ) -> AsyncBalancingTransport:
        """Build from ``EMBEDBALANCE_*`` environment variables (``docs/config.md`` lists
        them); keyword ``overrides`` win (objects such as ``metrics=``, ``transport=``).
        Raises :class:`~embedbalance.config.ConfigError` naming a wrong variable."""
        from .config import from_env

        return cls(**{**from_env(prefix, environ).transport_kwargs(), **overrides})

    @classmethod
    def from_config(cls, mapping: dict[str, Any], **overrides: Any) -> AsyncBalancingTransport:
        """Build from a plain mapping (a YAML or JSON file loaded into one; keys in
        ``docs/config.md``); keyword ``overrides`` win. Raises
        :class:`~embedbalance.config.ConfigError` naming a wrong setting."""
        from .config import from_config

        return cls(**{**from_config(mapping).transport_kwargs(), **overrides})


def _single_error(exc: Exception) -> Exception:
    """The one error inside task-group wrappers: ``start()`` raises what the discovery
    raised (a ``ValueError`` naming a wrong Service, say), not an exception group."""
    inner = getattr(exc, "exceptions", None)
    while isinstance(inner, tuple) and len(inner) == 1 and isinstance(inner[0], Exception):
        exc = inner[0]
        inner = getattr(exc, "exceptions", None)
    return exc


async def _run_discovery(discovery: Discovery, pool: BackendPool, *, task_status: Any) -> None:
    await discovery.arun(pool, task_status=task_status)


@functools.lru_cache(maxsize=4096)
def _target(backend: Backend, raw_path: bytes) -> tuple[httpx.URL, str]:
    """The URL and Host header for ``raw_path`` (path and query) on ``backend``.

    Memoised because building an ``httpx.URL`` re-parses and re-validates it (about
    17 µs, more than the whole balancing decision) while the set of paths an
    embedding client uses is tiny; URLs are immutable, so sharing them is safe.
    """
    prefix = backend.path_prefix.encode()
    url = httpx.URL(
        scheme=backend.scheme, host=backend.host, port=backend.port, raw_path=prefix + raw_path
    )
    default_port = 443 if backend.scheme == "https" else 80
    name = backend.tls_server_name or backend.host
    host = name if ":" not in name else f"[{name}]"
    return url, host if backend.port == default_port else f"{host}:{backend.port}"


_TASKS: set[asyncio.Task[None]] = set()
#: What a raced attempt hands back: its lease, the request sent, and the answer
#: (response, body) or the error.
_Exchanged = tuple[Lease, httpx.Request, tuple[httpx.Response, bytes] | None, Exception | None]


def _spawn(fn: Callable[[], Any]) -> None:
    """Start ``fn()`` as a task that outlives the caller's scope, on asyncio or trio.

    A transport is created in one task and closed in another, so its background work
    cannot live in a caller's task group; it runs as a loop-level task instead and is
    cancelled through its own cancel scope by ``aclose()``.
    """
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        import trio

        trio.lowlevel.spawn_system_task(fn)
        return
    task = loop.create_task(fn())
    _TASKS.add(task)
    task.add_done_callback(_TASKS.discard)
