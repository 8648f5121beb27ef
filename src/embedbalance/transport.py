"""httpx transports that balance, health-check, retry and hedge: sync and async twins.

Swap the transport of any ``httpx.Client`` / ``httpx.AsyncClient`` and every request
goes to the best backend in the pool: scheme, host and port are rewritten (path,
query, headers and body are kept), the outcome flows back into the pool, and
failures are retried on a *different* backend inside a retry budget.

Both twins share :class:`_Core`, which holds every decision that needs no I/O; the
two classes below it differ only in how they wait.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import random
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from types import TracebackType
from typing import Any, Generic, Protocol, TypeVar

import anyio
import attrs
import httpx

from ._backend import Backend, BackendLike
from ._clock import Clock, monotonic
from ._hints import parse_queue_depth, parse_retry_after
from .balancers import Balancer
from .discovery import Discovery
from .exceptions import AllAttemptsFailed, Attempt, NoBackendAvailable
from .health import HealthCheck, OutlierDetection, SlowStart
from .health_runner import HealthChecker, run_async_checks
from .pool import BackendPool, Lease, Outcome, PoolStats
from .retry import Hedge, LatencyWindow, Retry, RetryBudget, RetryBudgetPolicy

__all__ = [
    "BACKEND_EXTENSION",
    "COST_EXTENSION",
    "IDEMPOTENT_EXTENSION",
    "AsyncBalancingTransport",
    "BalancingTransport",
    "MetricsSink",
    "TransportStats",
]

log = logging.getLogger("embedbalance")

#: ``request.extensions`` key: the request's cost (tokens, say) for token-aware balancers.
COST_EXTENSION = "embedbalance.cost"
#: ``request.extensions`` key: ``True`` marks a request safe to resend after it was sent.
IDEMPOTENT_EXTENSION = "embedbalance.idempotent"
#: ``response.extensions`` key: the :class:`Backend` that answered.
BACKEND_EXTENSION = "embedbalance.backend"


class MetricsSink(Protocol):
    """What the transports report to (``embedbalance.metrics.PrometheusMetrics`` is one)."""

    def bind(self, pool: BackendPool) -> None: ...
    def request(self, url: str, outcome: str, latency: float | None) -> None: ...
    def in_flight(self, url: str, delta: int) -> None: ...
    def retry(self) -> None: ...
    def hedge(self) -> None: ...
    def budget_exhausted(self) -> None: ...


class _NoMetrics:
    def bind(self, pool: BackendPool) -> None: ...
    def request(self, url: str, outcome: str, latency: float | None) -> None: ...
    def in_flight(self, url: str, delta: int) -> None: ...
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


@attrs.define
class _Plan:
    """What one request needs decided once: its cost and whether it may be resent."""

    cost: float
    resendable: bool
    exclude: set[str] = attrs.Factory(set)
    attempts: list[Attempt] = attrs.Factory(list)


@attrs.define
class _Result:
    """One attempt's end: a fully read response, or an error."""

    lease: Lease
    response: httpx.Response | None = None
    error: BaseException | None = None
    outcome: Outcome = Outcome.SUCCESS
    retryable: bool = False  # worth another backend
    sent: bool = True  # the request may have reached the server

    def describe(self) -> str:
        if self.response is not None:
            return f"HTTP {self.response.status_code}"
        return f"{type(self.error).__name__}: {self.error}" if self.error else "unknown"


def _is_discovery(value: object) -> bool:
    return not isinstance(value, (str, Backend)) and isinstance(value, Discovery)


T = TypeVar("T")


class _Inner(Generic[T]):
    """The inner transport(s): one shared instance, or one per backend from a factory."""

    def __init__(self, given: T | Callable[[Backend], T] | None, default: Callable[[], T]) -> None:
        self._lock = threading.Lock()
        self._shared: T | None = None
        self._factory: Callable[[Backend], T]
        self._per_backend: dict[str, T] = {}
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
        inner = self._per_backend.get(backend.url)
        if inner is None:
            with self._lock:
                inner = self._per_backend.get(backend.url)
                if inner is None:
                    inner = self._per_backend[backend.url] = self._factory(backend)
        return inner

    def all(self) -> list[T]:
        with self._lock:
            if self._shared is not None:
                return [self._shared]
            inners = list(self._per_backend.values())
            self._per_backend.clear()
            return inners


class _Core:
    """The I/O-free half of a transport: pool, policies, budgets and counters."""

    def __init__(
        self,
        backends: Iterable[BackendLike] | Discovery,
        *,
        balancer: Balancer | None,
        health_check: HealthCheck | None,
        outlier_detection: OutlierDetection | None,
        slow_start: SlowStart | None,
        panic_threshold: float,
        retry: Retry | int | bool | None,
        hedge: Hedge | None,
        attempt_timeout: float | None,
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
            clock=clock,
            rng=self.rng,
        )
        self.health_check = health_check
        self.retry = Retry.coerce(retry)
        self.budget = RetryBudget(self.retry.budget, clock)
        self.hedge = hedge
        self.hedge_budget = RetryBudget(
            RetryBudgetPolicy(ratio=hedge.budget_ratio, window=10.0, min_per_second=1.0)
            if hedge
            else RetryBudgetPolicy(),
            clock,
        )
        self.latencies = LatencyWindow()
        if attempt_timeout is not None and attempt_timeout <= 0:
            raise ValueError(f"attempt_timeout must be > 0 or None, got {attempt_timeout!r}")
        self.attempt_timeout = attempt_timeout
        self.metrics: MetricsSink = metrics or _NoMetrics()
        self.metrics.bind(self.pool)
        self.clock = clock
        self._lock = threading.Lock()
        self.requests = 0
        self.retries = 0
        self.hedges = 0

    # -- per request ----------------------------------------------------------------

    def plan(self, request: httpx.Request) -> _Plan:
        with self._lock:
            self.requests += 1
        self.budget.deposit()
        if self.hedge is not None:
            self.hedge_budget.deposit()
        ext = request.extensions
        raw_cost = ext.get(COST_EXTENSION, 1.0)
        try:
            cost = float(raw_cost)
        except (TypeError, ValueError):
            raise ValueError(f"{COST_EXTENSION} must be a number, got {raw_cost!r}") from None
        replayable = isinstance(request.stream, httpx.ByteStream)
        marked = ext.get(IDEMPOTENT_EXTENSION)
        idempotent = (
            bool(marked)
            if marked is not None
            else self.retry.is_idempotent(request.method, request.url.path)
        )
        return _Plan(cost=max(cost, 0.0), resendable=replayable and idempotent)

    def allow_retry(self) -> bool:
        if self.budget.try_withdraw():
            with self._lock:
                self.retries += 1
            self.metrics.retry()
            return True
        self.metrics.budget_exhausted()
        return False

    def hedge_delay(self) -> float | None:
        """Seconds to wait before hedging, or None when not hedging now."""
        if self.hedge is None or len(self.latencies) < self.hedge.min_samples:
            return None
        p = self.latencies.percentile(self.hedge.percentile)
        return None if p is None else max(p, self.hedge.min_delay)

    def allow_hedge(self) -> bool:
        if self.hedge_budget.try_withdraw():
            with self._lock:
                self.hedges += 1
            self.metrics.hedge()
            return True
        return False

    def route(self, request: httpx.Request, backend: Backend) -> httpx.Request:
        """The request as sent to ``backend``: new scheme/host/port, same everything else."""
        target, host_header = _target(backend, request.url.raw_path)
        headers = request.headers.copy()
        headers["Host"] = host_header
        extensions = dict(request.extensions)
        if self.attempt_timeout is not None:
            timeout = dict(extensions.get("timeout") or {})
            for key in ("connect", "read", "write", "pool"):
                current = timeout.get(key)
                timeout[key] = (
                    self.attempt_timeout if current is None else min(current, self.attempt_timeout)
                )
            extensions["timeout"] = timeout
        return httpx.Request(
            request.method, target, headers=headers, stream=request.stream, extensions=extensions
        )

    def finish_response(
        self, lease: Lease, response: httpx.Response, body: bytes, routed: httpx.Request
    ) -> _Result:
        status = response.status_code
        retry_after = None
        if status == 429 or (status == 503 and "retry-after" in response.headers):
            outcome, retryable = Outcome.OVERLOADED, True
            retry_after = parse_retry_after(response.headers.get("retry-after"))
        elif status >= 500:
            outcome, retryable = Outcome.FAILURE, True
        else:
            outcome, retryable = Outcome.SUCCESS, False
        retryable = retryable and status in self.retry.statuses
        latency = self.clock() - lease.started_at
        self.pool.release(
            lease,
            outcome,
            latency=latency,
            retry_after=retry_after,
            queue_depth=parse_queue_depth(response.headers),
        )
        if outcome is Outcome.SUCCESS:
            self.latencies.add(latency)
        self.metrics.request(lease.backend.url, outcome.value, latency)
        extensions = dict(response.extensions)
        extensions[BACKEND_EXTENSION] = lease.backend
        rebuilt = httpx.Response(
            status,
            headers=response.headers,
            stream=httpx.ByteStream(body),
            extensions=extensions,
            request=routed,
        )
        return _Result(lease, response=rebuilt, outcome=outcome, retryable=retryable)

    def finish_error(self, lease: Lease, exc: Exception) -> _Result:
        sent = not isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout))
        if isinstance(exc, httpx.PoolTimeout):
            sent = False
        self.pool.release(lease, Outcome.FAILURE)
        self.metrics.request(lease.backend.url, Outcome.FAILURE.value, None)
        return _Result(lease, error=exc, outcome=Outcome.FAILURE, retryable=True, sent=sent)

    def cancelled(self, lease: Lease) -> None:
        if not lease.released:
            self.pool.release(lease, Outcome.CANCELLED)
            self.metrics.request(lease.backend.url, Outcome.CANCELLED.value, None)

    def record(self, plan: _Plan, result: _Result) -> bool:
        """Note a failed attempt; True when another backend may be tried."""
        plan.attempts.append(Attempt(result.lease.backend.url, result.describe()))
        return result.retryable and (plan.resendable or not result.sent)

    def give_up(self, plan: _Plan, last: _Result | None, why: str) -> AllAttemptsFailed:
        error = AllAttemptsFailed(plan.attempts, why=why)
        if last is not None:
            error.response = last.response  # type: ignore[attr-defined]
        return error

    def stats(self) -> TransportStats:
        return TransportStats(
            pool=self.pool.stats(),
            requests=self.requests,
            retries=self.retries,
            hedges=self.hedges,
            budget_exhausted=self.budget.exhausted,
            hedge_budget_exhausted=self.hedge_budget.exhausted,
        )


_DOC_PARAMS = """
    - ``backends``: URL strings, :class:`~embedbalance.Backend` objects, or a
      discovery source (:class:`~embedbalance.DnsDiscovery`).
    - ``balancer``: default :class:`~embedbalance.ShortestExpectedDelay`.
    - ``health_check``: active ``GET /health`` checks (``None``: passive detection only).
    - ``outlier_detection``, ``slow_start``, ``panic_threshold``: see the pool.
    - ``retry``: a :class:`~embedbalance.Retry`, an attempt count, or False.
    - ``hedge``: a :class:`~embedbalance.Hedge` to send a second copy of slow requests.
    - ``attempt_timeout``: seconds one attempt may take before it is abandoned and
      retried elsewhere (caps httpx's connect/read/write/pool timeouts per attempt).
    - ``transport``: how to talk to backends: one inner transport shared by all, or a
      function ``Backend -> transport`` called once per backend. The default gives each
      backend its own httpx connection pool: httpcore's pool does work proportional to
      connections × waiting requests on every request, so one shared pool across many
      busy backends costs far more CPU than a small pool each (and a dead backend's
      connections cannot crowd out a live one's).
    - ``metrics``: a sink such as ``embedbalance.metrics.PrometheusMetrics()``.
    - ``clock``, ``rng``: injected time and randomness.
"""


class BalancingTransport(httpx.BaseTransport):
    """An ``httpx`` transport for sync code (Flask, Django, scripts, threads).

    Thread-safe: share one per process. Health checks run in one daemon thread,
    started on first use (or :meth:`start`), restarted after a ``fork``, and stopped by
    :meth:`close`.
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
        retry: Retry | int | bool | None = None,
        hedge: Hedge | None = None,
        attempt_timeout: float | None = None,
        transport: httpx.BaseTransport | Callable[[Backend], httpx.BaseTransport] | None = None,
        metrics: MetricsSink | None = None,
        clock: Clock = monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self._core = _Core(
            backends,
            balancer=balancer,
            health_check=health_check,
            outlier_detection=outlier_detection,
            slow_start=slow_start,
            panic_threshold=panic_threshold,
            retry=retry,
            hedge=hedge,
            attempt_timeout=attempt_timeout,
            metrics=metrics,
            clock=clock,
            rng=rng,
        )
        self._inner = _Inner(transport, httpx.HTTPTransport)
        self._start_lock = threading.Lock()
        self._started_pid: int | None = None
        self._checker: HealthChecker | None = None
        self._hedger: ThreadPoolExecutor | None = None
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

    def start(self) -> None:
        """Resolve discovery and start health checks now rather than on first use."""
        if self._started_pid == os.getpid():
            return
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
                self._checker = HealthChecker(core.pool, core.health_check, rng=core.rng)
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
        """Stop health checks and discovery, close connections; joins every thread."""
        with self._start_lock:
            self._closed = True
            if self._checker is not None:
                self._checker.stop()
                self._checker = None
            if self._core.discovery is not None and self._started_pid is not None:
                self._core.discovery.stop()
            self._started_pid = None
            if self._hedger is not None:
                self._hedger.shutdown(wait=True)
                self._hedger = None
        for inner in self._inner.all():
            inner.close()

    # -- sending --------------------------------------------------------------------

    def _send(self, request: httpx.Request, lease: Lease) -> _Result:
        core = self._core
        routed = core.route(request, lease.backend)
        url = lease.backend.url
        core.metrics.in_flight(url, 1)
        try:
            response = self._inner.get(lease.backend).handle_request(routed)
            try:
                body = _raw_body(response)
            finally:
                response.close()
        except httpx.TransportError as exc:
            return core.finish_error(lease, exc)
        except BaseException:
            core.cancelled(lease)
            raise
        finally:
            core.metrics.in_flight(url, -1)
        return core.finish_response(lease, response, body, routed)

    def _send_hedged(self, request: httpx.Request, plan: _Plan, lease: Lease) -> _Result:
        core = self._core
        delay = core.hedge_delay()
        if delay is None or not plan.resendable:
            return self._send(request, lease)
        if self._hedger is None:
            with self._start_lock:
                if self._hedger is None:
                    self._hedger = ThreadPoolExecutor(thread_name_prefix="embedbalance-hedge")
        first = self._hedger.submit(self._send, request, lease)
        done, _ = wait([first], timeout=delay)
        if done or not core.allow_hedge():
            return first.result()
        try:
            second_lease = core.pool.acquire(plan.cost, plan.exclude)
        except NoBackendAvailable:
            return first.result()
        plan.exclude.add(second_lease.backend.url)
        second = self._hedger.submit(self._send, request, second_lease)
        pending: set[Future[_Result]] = {first, second}
        last: _Result | None = None
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                last = future.result()
                if last.outcome is Outcome.SUCCESS or not last.retryable:
                    # The loser finishes in the background and reports its own outcome.
                    return last
        assert last is not None
        return last

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.start()
        core = self._core
        plan = core.plan(request)
        last: _Result | None = None
        why = "all attempts failed"
        for n in range(core.retry.attempts):
            if n and not core.allow_retry():
                why = "retry budget exhausted"
                break
            try:
                lease = core.pool.acquire(plan.cost, plan.exclude)
            except NoBackendAvailable:
                if not plan.attempts:
                    raise
                why = "no other backend to try"
                break
            plan.exclude.add(lease.backend.url)
            result = (
                self._send_hedged(request, plan, lease) if n == 0 else self._send(request, lease)
            )
            if result.response is not None and (
                result.outcome is Outcome.SUCCESS or not result.retryable
            ):
                return result.response
            last = result
            if not core.record(plan, result):
                break
        raise core.give_up(plan, last, why) from (last.error if last else None)


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
        retry: Retry | int | bool | None = None,
        hedge: Hedge | None = None,
        attempt_timeout: float | None = None,
        transport: httpx.AsyncBaseTransport
        | Callable[[Backend], httpx.AsyncBaseTransport]
        | None = None,
        metrics: MetricsSink | None = None,
        clock: Clock = monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self._core = _Core(
            backends,
            balancer=balancer,
            health_check=health_check,
            outlier_detection=outlier_detection,
            slow_start=slow_start,
            panic_threshold=panic_threshold,
            retry=retry,
            hedge=hedge,
            attempt_timeout=attempt_timeout,
            metrics=metrics,
            clock=clock,
            rng=rng,
        )
        self._ainner = _Inner(transport, httpx.AsyncHTTPTransport)
        self._state = "new"  # new -> starting -> running -> closed
        self._started: anyio.Event | None = None
        self._stopped: anyio.Event | None = None
        self._scope: anyio.CancelScope | None = None
        self._failure: BaseException | None = None

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
                async with anyio.create_task_group() as tg:
                    if core.discovery is not None:
                        await tg.start(_run_discovery, core.discovery, core.pool)
                    if core.health_check is not None:
                        tg.start_soon(_run_checks, core.pool, core.health_check, core.rng)
                    self._started.set()
        except Exception as exc:  # discovery failed before it could start
            log.exception("background tasks of the transport failed")
            self._failure = exc
        finally:
            self._started.set()
            self._stopped.set()

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
        """Cancel the background task and wait until it is gone; close connections."""
        previous, self._state = self._state, "closed"
        if previous in ("starting", "running") and self._stopped is not None:
            if self._started is not None:
                await self._started.wait()
            if self._scope is not None:
                self._scope.cancel()
            await self._stopped.wait()
        for inner in self._ainner.all():
            await inner.aclose()

    # -- sending --------------------------------------------------------------------

    async def _send(self, request: httpx.Request, lease: Lease) -> _Result:
        core = self._core
        routed = core.route(request, lease.backend)
        url = lease.backend.url
        core.metrics.in_flight(url, 1)
        try:
            if core.attempt_timeout is not None:
                with anyio.fail_after(core.attempt_timeout):
                    response, body = await self._exchange(lease.backend, routed)
            else:
                response, body = await self._exchange(lease.backend, routed)
        except TimeoutError as exc:
            return core.finish_error(lease, httpx.ReadTimeout(str(exc) or "attempt timed out"))
        except httpx.TransportError as exc:
            return core.finish_error(lease, exc)
        except BaseException:
            core.cancelled(lease)
            raise
        finally:
            core.metrics.in_flight(url, -1)
        return core.finish_response(lease, response, body, routed)

    async def _exchange(
        self, backend: Backend, routed: httpx.Request
    ) -> tuple[httpx.Response, bytes]:
        response = await self._ainner.get(backend).handle_async_request(routed)
        try:
            if hasattr(response, "_content"):  # already in memory (mock transports)
                body = response.content
            else:
                body = b"".join([chunk async for chunk in response.aiter_raw()])
        finally:
            await response.aclose()
        return response, body

    async def _send_hedged(self, request: httpx.Request, plan: _Plan, lease: Lease) -> _Result:
        core = self._core
        delay = core.hedge_delay()
        if delay is None or not plan.resendable:
            return await self._send(request, lease)
        results: list[_Result] = []
        winner: list[_Result] = []

        async with anyio.create_task_group() as tg:

            async def attempt(the_lease: Lease) -> None:
                result = await self._send(request, the_lease)
                results.append(result)
                if not winner and (result.outcome is Outcome.SUCCESS or not result.retryable):
                    winner.append(result)
                    tg.cancel_scope.cancel()

            tg.start_soon(attempt, lease)
            await anyio.sleep(delay)
            if not results and core.allow_hedge():
                try:
                    second = core.pool.acquire(plan.cost, plan.exclude)
                except NoBackendAvailable:
                    second = None
                if second is not None:
                    plan.exclude.add(second.backend.url)
                    tg.start_soon(attempt, second)
        if winner:
            return winner[0]
        return results[-1]

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self._state != "running":
            await self.start()
        core = self._core
        plan = core.plan(request)
        last: _Result | None = None
        why = "all attempts failed"
        for n in range(core.retry.attempts):
            if n and not core.allow_retry():
                why = "retry budget exhausted"
                break
            try:
                lease = core.pool.acquire(plan.cost, plan.exclude)
            except NoBackendAvailable:
                if not plan.attempts:
                    raise
                why = "no other backend to try"
                break
            plan.exclude.add(lease.backend.url)
            if n == 0:
                result = await self._send_hedged(request, plan, lease)
            else:
                result = await self._send(request, lease)
            if result.response is not None and (
                result.outcome is Outcome.SUCCESS or not result.retryable
            ):
                return result.response
            last = result
            if not core.record(plan, result):
                break
        raise core.give_up(plan, last, why) from (last.error if last else None)


async def _run_discovery(discovery: Discovery, pool: BackendPool, *, task_status: Any) -> None:
    await discovery.arun(pool, task_status=task_status)


async def _run_checks(pool: BackendPool, policy: HealthCheck, rng: random.Random) -> None:
    await run_async_checks(pool, policy, rng=random.Random(rng.random()))


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
    host = backend.host if ":" not in backend.host else f"[{backend.host}]"
    return url, host if backend.port == default_port else f"{host}:{backend.port}"


def _raw_body(response: httpx.Response) -> bytes:
    """The body as it came off the wire (not decompressed: the headers still say how)."""
    if hasattr(response, "_content"):  # already in memory (mock transports)
        return response.content
    return b"".join(response.iter_raw())


_TASKS: set[asyncio.Task[None]] = set()


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
