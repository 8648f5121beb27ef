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

Admission is also where a backend's model is learned: once a backend whose
``Backend.model`` is not given passes a check, its ``GET /info`` is read once (TEI's
``model_id``, also the reference worker's) and the pool routes requests that name a
model by it. A server without ``/info`` keeps serving any request.
"""

from __future__ import annotations

import json
import logging
import os
import random
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor

import anyio
import httpx

from ._backend import Backend
from .health import HealthCheck
from .pool import BackendPool

__all__ = [
    "AsyncInfoProbe",
    "AsyncProbe",
    "HealthChecker",
    "InfoProbe",
    "Probe",
    "http_probe",
    "model_from_info",
    "run_async_checks",
]

log = logging.getLogger("embedbalance.health")

#: A sync check of one backend: True when healthy.
Probe = Callable[[Backend], bool]
#: An async check of one backend: True when healthy.
AsyncProbe = Callable[[Backend], Awaitable[bool]]
#: Reads one backend's ``/info``: ``(answered, model)``; not answered means "ask again".
InfoProbe = Callable[[Backend], tuple[bool, str | None]]
AsyncInfoProbe = Callable[[Backend], Awaitable[tuple[bool, str | None]]]


def check_request(backend: Backend, policy: HealthCheck, path: str | None = None) -> httpx.Request:
    """The check as sent: ``GET <backend><path>`` with the policy's headers and its
    timeout on every phase (``path``: another one than the policy's, like ``/info``)."""
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
    url = backend.url + (policy.path if path is None else path)
    return httpx.Request("GET", url, headers=headers, extensions=extensions)


def model_from_info(status: int, body: bytes) -> tuple[bool, str | None]:
    """``(answered, model)`` from an ``/info`` answer: TEI's ``model_id`` (the reference
    worker's too), else a ``model`` field. Any HTTP answer counts as answered (a server
    without ``/info`` is not asked again); a malformed body names no model."""
    if not 200 <= status < 300:
        return True, None
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return True, None
    if not isinstance(payload, dict):
        return True, None
    for key in ("model_id", "model"):
        value = payload.get(key)
        if isinstance(value, str) and value:
            return True, value
    return True, None


def http_info(
    policy: HealthCheck, transport_for: Callable[[Backend], httpx.BaseTransport]
) -> InfoProbe:
    """A sync ``GET /info`` through ``transport_for(backend)``, as checks are sent."""

    def info(backend: Backend) -> tuple[bool, str | None]:
        try:
            response = transport_for(backend).handle_request(
                check_request(backend, policy, "/info")
            )
            try:
                body = response.read()
            finally:
                response.close()
        except httpx.HTTPError as exc:
            log.debug("GET /info of %s failed: %r", backend.url, exc)
            return False, None
        return model_from_info(response.status_code, body)

    return info


def async_http_info(
    policy: HealthCheck, transport_for: Callable[[Backend], httpx.AsyncBaseTransport]
) -> AsyncInfoProbe:
    """The async twin of :func:`http_info`, bounded by the policy's timeout."""

    async def info(backend: Backend) -> tuple[bool, str | None]:
        try:
            with anyio.fail_after(policy.timeout):
                transport = transport_for(backend)
                response = await transport.handle_async_request(
                    check_request(backend, policy, "/info")
                )
                try:
                    body = await response.aread()
                finally:
                    await response.aclose()
        except (httpx.HTTPError, TimeoutError) as exc:
            log.debug("GET /info of %s failed: %r", backend.url, exc)
            return False, None
        return model_from_info(response.status_code, body)

    return info


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
    ``info`` reads a healthy backend's model once, where the pool does not know it.
    """

    def __init__(
        self,
        pool: BackendPool,
        policy: HealthCheck,
        *,
        transport: httpx.BaseTransport | None = None,
        probe: Probe | None = None,
        info: InfoProbe | None = None,
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
        self._info = info
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
        if self._info is not None:
            for backend, ok in zip(backends, results, strict=True):
                if ok and self.pool.wants_model(backend):
                    self._learn(backend, self._info)

    def _learn(self, backend: Backend, info: InfoProbe) -> None:
        try:
            answered, model = info(backend)
        except Exception:  # like a probe, never take the checker down
            log.exception("GET /info of %s raised", backend.url)
            return
        if answered:
            self.pool.learn_model(backend, model)

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
    info: AsyncInfoProbe | None = None,
    rng: random.Random | None = None,
) -> None:
    """Check every backend each interval until cancelled (run it in a task group).

    ``probe`` sends one check; without it, checks go through ``transport`` (a plain
    ``httpx.AsyncHTTPTransport`` when that is not given either, closed on exit).
    ``info`` reads a healthy backend's model once, where the pool does not know it.
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
                if info is not None:
                    for backend in backends:
                        if results.get(backend.url) and pool.wants_model(backend):
                            try:
                                answered, model = await info(backend)
                            except Exception:
                                log.exception("GET /info of %s raised", backend.url)
                                continue
                            if answered:
                                pool.learn_model(backend, model)
            except Exception:
                log.exception("health check round failed")
            await anyio.sleep(_next_interval(policy, rng))
    finally:
        if owned is not None:
            with anyio.CancelScope(shield=True):
                await owned.aclose()
