"""Active health checks: ``GET /health`` on every backend, on a jittered interval.

The sync runner is one daemon thread per transport (checks of one round run
concurrently on a small thread pool, so one hanging backend cannot delay the
verdict on the others); the async runner is an anyio task that does the same with
a task group. Both only *observe*: verdicts go to :meth:`BackendPool.report_check`,
where the rise/fall policy lives.
"""

from __future__ import annotations

import logging
import random
import threading
from concurrent.futures import ThreadPoolExecutor

import anyio
import httpx

from ._backend import Backend
from .health import HealthCheck
from .pool import BackendPool

__all__ = ["HealthChecker", "run_async_checks"]

log = logging.getLogger("embedbalance.health")


def _check_url(backend: Backend, policy: HealthCheck) -> str:
    return backend.url + policy.path


def _next_interval(policy: HealthCheck, rng: random.Random) -> float:
    if policy.jitter <= 0:
        return policy.interval
    return policy.interval * (1.0 + rng.uniform(-policy.jitter, policy.jitter))


class HealthChecker:
    """Runs active checks for one pool in a daemon thread until :meth:`stop`."""

    def __init__(
        self,
        pool: BackendPool,
        policy: HealthCheck,
        *,
        transport: httpx.BaseTransport | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.pool = pool
        self.policy = policy
        self._rng = rng or random.Random()
        self._stop = threading.Event()
        self._client = httpx.Client(
            transport=transport or httpx.HTTPTransport(),
            timeout=policy.timeout,
            follow_redirects=False,
        )
        self._thread: threading.Thread | None = None
        self._executor: ThreadPoolExecutor | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Start the checking thread (idempotent)."""
        if self.running:
            return
        self._stop.clear()
        self._executor = ThreadPoolExecutor(max_workers=8, thread_name_prefix="embedbalance-check")
        self._thread = threading.Thread(target=self._run, name="embedbalance-health", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop and join the thread; no thread survives this call."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None
        self._client.close()

    def check(self, backend: Backend) -> bool:
        """One check: 2xx within the timeout is healthy; anything else is not."""
        try:
            response = self._client.get(_check_url(backend, self.policy))
        except httpx.HTTPError as exc:
            log.debug("health check of %s failed: %r", backend.url, exc)
            return False
        return 200 <= response.status_code < 300

    def run_round(self) -> None:
        """Check every current backend once, concurrently, and report the verdicts."""
        backends = self.pool.backends
        if not backends:
            return
        executor = self._executor
        if executor is None:
            results = [self.check(b) for b in backends]
        else:
            results = list(executor.map(self.check, backends))
        for backend, ok in zip(backends, results, strict=True):
            self.pool.report_check(backend, ok)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_round()
            except Exception:  # a bug here must not kill health checking silently
                log.exception("health check round failed")
            self._stop.wait(_next_interval(self.policy, self._rng))


async def _acheck(client: httpx.AsyncClient, backend: Backend, policy: HealthCheck) -> bool:
    try:
        with anyio.fail_after(policy.timeout):
            response = await client.get(_check_url(backend, policy))
    except (httpx.HTTPError, TimeoutError) as exc:
        log.debug("health check of %s failed: %r", backend.url, exc)
        return False
    return 200 <= response.status_code < 300


async def run_async_checks(
    pool: BackendPool,
    policy: HealthCheck,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    rng: random.Random | None = None,
) -> None:
    """Check every backend each interval until cancelled (run it in a task group)."""
    rng = rng or random.Random()
    async with httpx.AsyncClient(
        transport=transport or httpx.AsyncHTTPTransport(), timeout=policy.timeout
    ) as client:
        while True:
            backends = pool.backends
            results: dict[str, bool] = {}

            async def one(backend: Backend, results: dict[str, bool] = results) -> None:
                results[backend.url] = await _acheck(client, backend, policy)

            try:
                async with anyio.create_task_group() as tg:
                    for backend in backends:
                        tg.start_soon(one, backend)
                for backend in backends:
                    pool.report_check(backend, results.get(backend.url, False))
            except Exception:
                log.exception("health check round failed")
            await anyio.sleep(_next_interval(policy, rng))
