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

With the policy's ``canary`` on, a round also embeds the canary texts — on every
backend once per canary interval, and on backends that have not passed one yet in
every round — through a *canary probe* (``Backend -> CanaryAnswer``) built the same
way; :class:`CanaryRounds` (no I/O) decides whom to ask and turns the answers into
verdicts for :meth:`BackendPool.report_canary`. With it on, the sync checker runs its
first round before :meth:`HealthChecker.start` returns and the async runner reports
itself started only after its first round, so the first request already has checked
replicas to go to.

Admission is also where a backend's model is learned: once a backend whose
``Backend.model`` is not given passes a check, its ``GET /info`` is read once (TEI's
``model_id``, also the reference worker's) and the pool routes requests that name a
model by it. A server without ``/info`` keeps serving any request. A round reads
``/info`` before it sends the canary, whose answers are compared within each model.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import anyio
import anyio.abc
import attrs
import httpx

from . import _tracing
from ._backend import Backend
from ._clock import Clock
from ._wire import FloatMatrix, Options, api_for
from .canary import Canary, CanaryVerdict, judge
from .exceptions import ResponseFormatError
from .health import HealthCheck
from .pool import BackendPool, model_matches

__all__ = [
    "AsyncCanaryProbe",
    "AsyncInfoProbe",
    "AsyncProbe",
    "CanaryAnswer",
    "CanaryProbe",
    "CanaryRounds",
    "HealthChecker",
    "InfoProbe",
    "Probe",
    "async_http_canary_probe",
    "http_canary_probe",
    "http_probe",
    "model_from_info",
    "run_async_checks",
    "speaking_as",
]

log = logging.getLogger("embedbalance.health")

#: A sync check of one backend: True when healthy.
Probe = Callable[[Backend], bool]
#: An async check of one backend: True when healthy.
AsyncProbe = Callable[[Backend], Awaitable[bool]]
#: Reads one backend's ``/info``: ``(answered, model)``; not answered means "ask again".
InfoProbe = Callable[[Backend], tuple[bool, str | None]]
AsyncInfoProbe = Callable[[Backend], Awaitable[tuple[bool, str | None]]]


@attrs.frozen(eq=False)
class CanaryAnswer:
    """What one backend answered to the canary: its ``rows``, or why there are none.

    ``wrong`` marks an answer that came back but is not embeddings of the canary
    texts (rows of NaN, the wrong count, not JSON): that is a disagreement. No answer
    at all (a timeout, a refused connection, an HTTP error) is ``wrong=False``: the
    liveness check judges that, the canary has no verdict.
    """

    rows: FloatMatrix | None = None
    error: str = ""
    wrong: bool = False


#: A sync canary request to one backend.
CanaryProbe = Callable[[Backend], CanaryAnswer]
#: An async canary request to one backend.
AsyncCanaryProbe = Callable[[Backend], Awaitable[CanaryAnswer]]


def _request(
    method: str, backend: Backend, path: str, policy: HealthCheck, timeout: float, **kwargs: Any
) -> httpx.Request:
    t = timeout
    extensions: dict[str, object] = {"timeout": {"connect": t, "read": t, "write": t, "pool": t}}
    headers = list(policy.headers)
    name = backend.tls_server_name
    if name is not None:
        # Checked as it is used: the certificate names the server, not the address.
        extensions["sni_hostname"] = name
        default_port = 443 if backend.scheme == "https" else 80
        host = name if backend.port == default_port else f"{name}:{backend.port}"
        headers.append(("Host", host))
    return httpx.Request(
        method, backend.url + path, headers=headers, extensions=extensions, **kwargs
    )


def check_request(backend: Backend, policy: HealthCheck, path: str | None = None) -> httpx.Request:
    """The check as sent: ``GET <backend><path>`` with the policy's headers and its
    timeout on every phase (``path``: another one than the policy's, like ``/info``)."""
    return _request("GET", backend, policy.path if path is None else path, policy, policy.timeout)


def canary_request(backend: Backend, policy: HealthCheck, canary: Canary) -> httpx.Request:
    """The canary as sent: the canary texts to the API's path, with the health check's
    headers and the canary's timeout on every phase. The model named (OpenAI's
    ``model``) is the backend's own where it has one, else the canary's: a server that
    refuses a model it does not serve would never pass a canary in another's name."""
    api = api_for(canary.api, canary.path)
    model = backend.model if backend.model is not None else canary.model
    body = api.body(list(canary.texts), Options(model=model))
    return _request("POST", backend, api.path, policy, canary.timeout, json=body)


def canary_answer(canary: Canary, url: str, status: int, content: bytes) -> CanaryAnswer:
    """Read a canary's HTTP answer strictly (the client's own rules, ``_wire``)."""
    if not 200 <= status < 300:
        return CanaryAnswer(error=f"HTTP {status}")
    api = api_for(canary.api, canary.path)
    try:
        payload = json.loads(content)
    except ValueError as exc:
        return CanaryAnswer(error=f"invalid JSON: {exc}", wrong=True)
    try:
        rows = api.rows(payload, url)
    except ResponseFormatError as exc:
        return CanaryAnswer(error=str(exc), wrong=True)
    if rows.shape[0] != len(canary.texts):
        why = f"{rows.shape[0]} rows for {len(canary.texts)} texts"
        return CanaryAnswer(error=why, wrong=True)
    return CanaryAnswer(rows=rows)


def speaking_as(
    policy: HealthCheck | None, api: str, path: str | None, model: str | None
) -> HealthCheck | None:
    """``policy`` with its canary asking in the embedding client's own API, path and
    model, where the canary was left at its defaults (TEI's ``/embed``, no model): a
    client of an OpenAI-only server should not need to say it twice, and a canary
    sent where the server does not listen would never pass."""
    canary = None if policy is None else policy.canary
    if policy is None or canary is None or api not in ("tei", "openai"):
        return policy
    if (canary.api, canary.path, canary.model) != ("tei", None, None):
        return policy  # the user chose: keep it
    return attrs.evolve(policy, canary=attrs.evolve(canary, api=api, path=path, model=model))


def _no_answer(backend: Backend, exc: BaseException) -> CanaryAnswer:
    log.debug("canary of %s got no answer: %r", backend.url, exc)
    return CanaryAnswer(error=type(exc).__name__)


def http_canary_probe(
    policy: HealthCheck, transport_for: Callable[[Backend], httpx.BaseTransport]
) -> CanaryProbe:
    """A sync canary probe sending through ``transport_for(backend)``."""
    canary = policy.canary
    if canary is None:
        raise ValueError("this health check has no canary")

    def probe(backend: Backend) -> CanaryAnswer:
        try:
            request = canary_request(backend, policy, canary)
            with _tracing.suppressed():
                response = transport_for(backend).handle_request(request)
            try:
                content = response.read()
            finally:
                response.close()
        except httpx.HTTPError as exc:
            return _no_answer(backend, exc)
        return canary_answer(canary, backend.url, response.status_code, content)

    return probe


def async_http_canary_probe(
    policy: HealthCheck, transport_for: Callable[[Backend], httpx.AsyncBaseTransport]
) -> AsyncCanaryProbe:
    """An async canary probe sending through ``transport_for(backend)``, bounded by the
    canary's timeout as a whole."""
    canary = policy.canary
    if canary is None:
        raise ValueError("this health check has no canary")

    async def probe(backend: Backend) -> CanaryAnswer:
        try:
            with anyio.fail_after(canary.timeout):
                request = canary_request(backend, policy, canary)
                with _tracing.suppressed():
                    response = await transport_for(backend).handle_async_request(request)
                try:
                    content = await response.aread()
                finally:
                    await response.aclose()
        except (httpx.HTTPError, TimeoutError) as exc:
            return _no_answer(backend, exc)
        return canary_answer(canary, backend.url, response.status_code, content)

    return probe


def _as_served(pool: BackendPool, backend: Backend) -> Backend:
    """``backend`` with the model the pool knows it serves (learned from ``/info``),
    so that its canary asks in that model's name."""
    if backend.model is not None:
        return backend
    model = pool.model_of(backend)
    return backend if model is None else attrs.evolve(backend, model=model)


class CanaryRounds:
    """Whom to send the canary to in a round, and what the answers say (no I/O).

    Both runners use it, so the sync and async checks cannot drift. It keeps each
    member's latest answer: a backend asked alone (a newcomer) is judged against the
    others' latest, so it need not wait for a full round to be admitted.
    """

    def __init__(self, canary: Canary, *, clock: Clock = time.monotonic) -> None:
        self.canary = canary
        self._clock = clock
        self._next_full = -math.inf
        self.latest: dict[str, FloatMatrix] = {}

    def targets(self, backends: Iterable[Backend], awaiting: Iterable[Backend]) -> set[str]:
        """Every backend when a canary round is due, else those awaiting their first."""
        now = self._clock()
        if now >= self._next_full:
            self._next_full = now + self.canary.interval
            return {b.url for b in backends}
        return {b.url for b in awaiting}

    def settle(
        self,
        pool: BackendPool,
        members: Iterable[Backend],
        answers: dict[str, CanaryAnswer],
        awaiting: set[str],
    ) -> None:
        """Judge this round's answers (with the others' latest) and tell the pool.

        Answers are compared within each model the pool serves
        (:meth:`BackendPool.canary_groups`): the reference, if any, judges the group of
        the canary's model (every member when the pool serves one model), a majority
        vote the others. A member whose model is not known yet in a pool of several
        models gets no verdict. A backend awaiting its first canary that answers well
        but cannot be judged (a lone replica, a tie, no reference) is admitted:
        nothing says it is wrong. The latest answers of members the pool has made
        pending again (a comeback, a changed model) are dropped.
        """
        urls = {b.url for b in members}
        # A pending member's earlier answer may be another pod's (a comeback at the
        # same address) or another model's: only what it answers now votes.
        redo = {b.url for b in pool.awaiting_canary()}
        self.latest = {u: rows for u, rows in self.latest.items() if u in urls and u not in redo}
        for url, answer in answers.items():
            if answer.rows is not None:
                self.latest[url] = answer.rows
            elif answer.wrong:
                self.latest.pop(url, None)  # garbage does not vote
        groups, unknown = pool.canary_groups()
        canary = self.canary
        verdicts: dict[str, CanaryVerdict] = {}
        for model, group in groups.items():
            own = len(groups) == 1 or (
                canary.model is not None
                and model is not None
                and model_matches(canary.model, model)
            )
            latest = {u: self.latest[u] for u in group if u in self.latest}
            verdicts.update(
                judge(latest, canary.threshold, canary.reference_matrix if own else None)
            )
        waiting = set(unknown)
        for url, answer in answers.items():
            if answer.rows is None:
                if answer.wrong:
                    pool.report_canary(url, False, f"canary: wrong answer ({answer.error})")
                else:
                    pending = "pending, " if url in awaiting else ""
                    pool.report_canary(url, None, f"canary: {pending}no answer ({answer.error})")
                continue
            if url in waiting:
                pool.report_canary(url, None, "canary: pending, model not known yet")
                continue
            verdict = verdicts.get(url)
            if verdict is None:  # no longer a member
                continue
            agrees = verdict.agrees
            if agrees is None and url in awaiting:
                agrees = True
            pool.report_canary(url, agrees, verdict.detail)


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
            with _tracing.suppressed():
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
                with _tracing.suppressed():
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

    ``probe`` sends one check and ``canary_probe`` one canary (when the policy has
    one); without them, they go through ``transport`` (a plain ``httpx.HTTPTransport``
    when that is not given either, closed by :meth:`stop`).
    ``info`` reads a healthy backend's model once, where the pool does not know it.
    """

    def __init__(
        self,
        pool: BackendPool,
        policy: HealthCheck,
        *,
        transport: httpx.BaseTransport | None = None,
        probe: Probe | None = None,
        canary_probe: CanaryProbe | None = None,
        info: InfoProbe | None = None,
        rng: random.Random | None = None,
        clock: Clock = time.monotonic,
    ) -> None:
        self.pool = pool
        self.policy = policy
        self._rng = rng or random.Random()
        self._stop = threading.Event()
        self._owned: httpx.BaseTransport | None = None
        needs_canary = policy.canary is not None and canary_probe is None
        if probe is None or needs_canary:
            if transport is None:
                transport = self._owned = httpx.HTTPTransport()
            shared = transport
            if probe is None:
                probe = http_probe(policy, lambda backend: shared)
            if needs_canary:
                canary_probe = http_canary_probe(policy, lambda backend: shared)
        self._probe = probe
        self._canary_probe = canary_probe
        self._rounds = CanaryRounds(policy.canary, clock=clock) if policy.canary else None
        self._info = info
        self._thread: threading.Thread | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._pid = os.getpid()

    @property
    def running(self) -> bool:
        return self._pid == os.getpid() and self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Start the checking thread (idempotent; after a ``fork`` it starts afresh).

        With a canary, the first round runs before this returns: replicas get traffic
        only once their canary passed, and the first request should find some."""
        if self.running:
            return
        self._pid = os.getpid()
        self._stop = threading.Event()
        self._executor = ThreadPoolExecutor(max_workers=8, thread_name_prefix="embedbalance-check")
        first_done = False
        if self._rounds is not None:
            try:
                self.run_round()
                first_done = True
            except Exception:
                log.exception("health check round failed")
        self._thread = threading.Thread(
            target=self._run, args=(first_done,), name="embedbalance-health", daemon=True
        )
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

    def canary(self, backend: Backend) -> CanaryAnswer:
        """One canary request (the policy must have a canary)."""
        assert self._canary_probe is not None
        try:
            return self._canary_probe(backend)
        except Exception as exc:  # as for checks: log, never die
            log.exception("canary probe of %s raised", backend.url)
            return CanaryAnswer(error=repr(exc))

    def run_round(self) -> None:
        """Check every current backend once, concurrently, and report the verdicts;
        then read ``/info`` where the model is unknown, and only then send the
        canaries that are due to the backends that passed, so that they are judged
        by the model each serves."""
        backends = self.pool.backends
        if not backends:
            return
        executor = self._executor
        if executor is None:
            oks = [self.check(b) for b in backends]
        else:
            oks = list(executor.map(self.check, backends))
        for backend, ok in zip(backends, oks, strict=True):
            self.pool.report_check(backend, ok)
        live = [b for b, ok in zip(backends, oks, strict=True) if ok]
        if self._info is not None:
            for backend in live:
                if self.pool.wants_model(backend):
                    self._learn(backend, self._info)
        rounds = self._rounds
        if rounds is None:
            return
        awaiting = {b.url for b in self.pool.awaiting_canary()}
        targets = rounds.targets(backends, self.pool.awaiting_canary())
        asked = [_as_served(self.pool, b) for b in live if b.url in targets]
        if executor is None:
            got = [self.canary(b) for b in asked]
        else:
            got = list(executor.map(self.canary, asked))
        answers = {b.url: answer for b, answer in zip(asked, got, strict=True)}
        rounds.settle(self.pool, backends, answers, awaiting)

    def _learn(self, backend: Backend, info: InfoProbe) -> None:
        try:
            answered, model = info(backend)
        except Exception:  # like a probe, never take the checker down
            log.exception("GET /info of %s raised", backend.url)
            return
        if answered:
            self.pool.learn_model(backend, model)

    def _run(self, skip_first: bool = False) -> None:
        stop = self._stop
        if skip_first:
            stop.wait(_next_interval(self.policy, self._rng))
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
    canary_probe: AsyncCanaryProbe | None = None,
    info: AsyncInfoProbe | None = None,
    rng: random.Random | None = None,
    clock: Clock = time.monotonic,
    task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Check every backend each interval until cancelled (run it in a task group).

    ``probe`` sends one check and ``canary_probe`` one canary (when the policy has
    one); without them, they go through ``transport`` (a plain
    ``httpx.AsyncHTTPTransport`` when that is not given either, closed on exit).
    Started with ``task_group.start``, it reports itself started at once — or, with a
    canary, after its first round.

    ``info`` reads a healthy backend's model once, where the pool does not know it.
    """
    rng = rng or random.Random()
    owned: httpx.AsyncBaseTransport | None = None
    needs_canary = policy.canary is not None and canary_probe is None
    if probe is None or needs_canary:
        if transport is None:
            transport = owned = httpx.AsyncHTTPTransport()
        shared = transport
        if probe is None:
            probe = async_http_probe(policy, lambda backend: shared)
        if needs_canary:
            canary_probe = async_http_canary_probe(policy, lambda backend: shared)
    the_probe = probe
    the_canary = canary_probe
    rounds = CanaryRounds(policy.canary, clock=clock) if policy.canary else None
    reported = rounds is None
    if reported:
        task_status.started()
    try:
        while True:
            backends = pool.backends
            results: dict[str, bool] = {}
            answers: dict[str, CanaryAnswer] = {}

            async def check(backend: Backend, results: dict[str, bool] = results) -> None:
                try:
                    results[backend.url] = await the_probe(backend)
                except Exception:
                    log.exception("health probe of %s raised", backend.url)
                    results[backend.url] = False

            async def ask(backend: Backend, answers: dict[str, CanaryAnswer] = answers) -> None:
                assert the_canary is not None
                try:
                    answers[backend.url] = await the_canary(backend)
                except Exception as exc:
                    log.exception("canary probe of %s raised", backend.url)
                    answers[backend.url] = CanaryAnswer(error=repr(exc))

            try:
                # Liveness first, then /info where the model is unknown, then the
                # canaries: each is judged by the model its replica serves.
                async with anyio.create_task_group() as tg:
                    for backend in backends:
                        tg.start_soon(check, backend)
                for backend in backends:
                    pool.report_check(backend, results.get(backend.url, False))
                live = [b for b in backends if results.get(b.url)]
                if info is not None:
                    for backend in live:
                        if pool.wants_model(backend):
                            try:
                                answered, model = await info(backend)
                            except Exception:
                                log.exception("GET /info of %s raised", backend.url)
                                continue
                            if answered:
                                pool.learn_model(backend, model)
                if rounds is not None:
                    awaiting = {b.url for b in pool.awaiting_canary()}
                    targets = rounds.targets(backends, pool.awaiting_canary())
                    async with anyio.create_task_group() as tg:
                        for backend in live:
                            if backend.url in targets:
                                tg.start_soon(ask, _as_served(pool, backend))
                    rounds.settle(pool, backends, answers, awaiting)
            except Exception:
                log.exception("health check round failed")
            if not reported:
                reported = True
                task_status.started()
            await anyio.sleep(_next_interval(policy, rng))
    finally:
        if owned is not None:
            with anyio.CancelScope(shield=True):
                await owned.aclose()
