"""Active health checks: ``GET /health`` on every backend, on a jittered interval.

The sync runner is one daemon thread per transport (checks of one round run
concurrently on a small thread pool, so one hanging backend cannot delay the
verdict on the others); the async runner is an anyio task that does the same with
a task group. Both only *observe*: verdicts go to :meth:`BackendPool.report_check`,
where the rise/fall policy lives.

How a check is sent is a *probe*, a function ``Backend -> bool``. The transports pass
one that goes through their own inner transport (the same TLS trust, client
certificates and proxies as real requests) with the policy's headers; used alone,
the runners build one over a plain httpx transport.
"""

from __future__ import annotations

import logging
import os
import random
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor

import anyio
import httpx

from . import _tracing
from ._backend import Backend
from .health import HealthCheck
from .pool import BackendPool

__all__ = ["AsyncProbe", "HealthChecker", "Probe", "http_probe", "run_async_checks"]

log = logging.getLogger("embedbalance.health")

#: A sync check of one backend: True when healthy.
Probe = Callable[[Backend], bool]
#: An async check of one backend: True when healthy.
AsyncProbe = Callable[[Backend], Awaitable[bool]]


def check_request(backend: Backend, policy: HealthCheck) -> httpx.Request:
    """The check as sent: ``GET <backend><path>`` with the policy's headers and its
    timeout on every phase."""
    t = policy.timeout
    extensions: dict[str, object] = {"timeout": {"connect": t, "read": t, "write": t, "pool": t}}
    headers = list(policy.headers)
    name = backend.tls_server_name
    if name is not None:
        # Checked as it is used: the certificate names the server, not the address.
        extensions["sni_hostname"] = name
        default_port = 443 if backend.scheme == "https" else 80
        host = name if backend.port == default_port else f"{name}:{backend.port}"
        headers.append(("Host", host))
    return httpx.Request("GET", backend.url + policy.path, headers=headers, extensions=extensions)


def verdict(backend: Backend, status: int | None, error: BaseException | None = None) -> bool:
    """2xx is healthy; any other status, or an error, is not (logged at debug)."""
    if error is not None:
        log.debug("health check of %s failed: %r", backend.url, error)
        return False
    assert status is not None
    if not 200 <= status < 300:
        log.debug("health check of %s answered HTTP %d", backend.url, status)
        return False
    return True


def http_probe(
    policy: HealthCheck, transport_for: Callable[[Backend], httpx.BaseTransport]
) -> Probe:
    """A sync probe sending the check through ``transport_for(backend)``."""

    def probe(backend: Backend) -> bool:
        try:
            with _tracing.suppressed():
                response = transport_for(backend).handle_request(check_request(backend, policy))
            try:
                response.read()
            finally:
                response.close()
        except httpx.HTTPError as exc:
            return verdict(backend, None, exc)
        return verdict(backend, response.status_code)

    return probe


def async_http_probe(
    policy: HealthCheck, transport_for: Callable[[Backend], httpx.AsyncBaseTransport]
) -> AsyncProbe:
    """An async probe sending the check through ``transport_for(backend)``, bounded by
    the policy's timeout as a whole (not only per phase)."""

    async def probe(backend: Backend) -> bool:
        try:
            with anyio.fail_after(policy.timeout):
                transport = transport_for(backend)
                with _tracing.suppressed():
                    response = await transport.handle_async_request(check_request(backend, policy))
                try:
                    await response.aread()
                finally:
                    await response.aclose()
        except (httpx.HTTPError, TimeoutError) as exc:
            return verdict(backend, None, exc)
        return verdict(backend, response.status_code)

    return probe


def _next_interval(policy: HealthCheck, rng: random.Random) -> float:
    if policy.jitter <= 0:
        return policy.interval
    return policy.interval * (1.0 + rng.uniform(-policy.jitter, policy.jitter))


class HealthChecker:
    """Runs active checks for one pool in a daemon thread until :meth:`stop`.

    ``probe`` sends one check; without it, checks go through ``transport`` (a plain
    ``httpx.HTTPTransport`` when that is not given either, closed by :meth:`stop`).
    """

    def __init__(
        self,
        pool: BackendPool,
        policy: HealthCheck,
        *,
        transport: httpx.BaseTransport | None = None,
        probe: Probe | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.pool = pool
        self.policy = policy
        self._rng = rng or random.Random()
        self._stop = threading.Event()
        self._owned: httpx.BaseTransport | None = None
        if probe is None:
            if transport is None:
                transport = self._owned = httpx.HTTPTransport()
            shared = transport
            probe = http_probe(policy, lambda backend: shared)
        self._probe = probe
        self._thread: threading.Thread | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._pid = os.getpid()

    @property
    def running(self) -> bool:
        return self._pid == os.getpid() and self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Start the checking thread (idempotent; after a ``fork`` it starts afresh)."""
        if self.running:
            return
        self._pid = os.getpid()
        self._stop = threading.Event()
        self._executor = ThreadPoolExecutor(max_workers=8, thread_name_prefix="embedbalance-check")
        self._thread = threading.Thread(target=self._run, name="embedbalance-health", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop and join the thread; no thread survives this call."""
        self._stop.set()
        if self._pid == os.getpid():
            if self._thread is not None:
                self._thread.join()
            if self._executor is not None:
                self._executor.shutdown(wait=True, cancel_futures=True)
        self._thread = None
        self._executor = None
        if self._owned is not None:
            self._owned.close()

    def check(self, backend: Backend) -> bool:
        """One check: 2xx within the timeout is healthy; anything else is not."""
        try:
            return self._probe(backend)
        except Exception:  # a probe must never take the checker down
            log.exception("health probe of %s raised", backend.url)
            return False

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
        stop = self._stop
        while not stop.is_set():
            try:
                self.run_round()
            except Exception:  # a bug here must not kill health checking silently
                log.exception("health check round failed")
            stop.wait(_next_interval(self.policy, self._rng))


async def run_async_checks(
    pool: BackendPool,
    policy: HealthCheck,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    probe: AsyncProbe | None = None,
    rng: random.Random | None = None,
) -> None:
    """Check every backend each interval until cancelled (run it in a task group).

    ``probe`` sends one check; without it, checks go through ``transport`` (a plain
    ``httpx.AsyncHTTPTransport`` when that is not given either, closed on exit).
    """
    rng = rng or random.Random()
    owned: httpx.AsyncBaseTransport | None = None
    if probe is None:
        if transport is None:
            transport = owned = httpx.AsyncHTTPTransport()
        shared = transport
        probe = async_http_probe(policy, lambda backend: shared)
    the_probe = probe
    try:
        while True:
            backends = pool.backends
            results: dict[str, bool] = {}

            async def one(backend: Backend, results: dict[str, bool] = results) -> None:
                try:
                    results[backend.url] = await the_probe(backend)
                except Exception:
                    log.exception("health probe of %s raised", backend.url)
                    results[backend.url] = False

            try:
                async with anyio.create_task_group() as tg:
                    for backend in backends:
                        tg.start_soon(one, backend)
                for backend in backends:
                    pool.report_check(backend, results.get(backend.url, False))
            except Exception:
                log.exception("health check round failed")
            await anyio.sleep(_next_interval(policy, rng))
    finally:
        if owned is not None:
            with anyio.CancelScope(shield=True):
                await owned.aclose()
