"""The transports' headline promises, each pinned directly against real servers on loopback.

Every test here would pass by luck under a weaker implementation unless it forces the
situation: a balancer that strongly prefers the failing backend (so only the exclusion
of tried backends keeps a retry away from it), a manual clock (so ``Retry-After: N``
is told apart from the default back-off or from N ± ε), a health server flipped on
command (so both checkers' verdicts are observed, not assumed).
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator

import anyio
import httpx
import pytest
from echo_server import EchoServer, echo_servers

import embedbalance as eb
from embedbalance.health_runner import HealthChecker, run_async_checks

pytestmark = pytest.mark.timeout(60)


class Favourite(eb.Balancer):
    """Full scan on a score that makes one backend look a million times idler."""

    def __init__(self, url: str) -> None:
        self.url = url

    def score(self, state, now: float) -> float:  # type: ignore[no-untyped-def]
        return 0.0 if state.backend.url == self.url else 1e6


@pytest.fixture
def three() -> Iterator[list[EchoServer]]:
    with echo_servers(3) as started:
        yield started


def _quiet(**kwargs: object) -> dict[str, object]:
    """No background checks and no ejection unless a test asks: only the promise under test acts."""
    return {"health_check": None, "outlier_detection": None, **kwargs}


# -- a retry never goes to a backend already tried -----------------------------------


def test_retry_never_revisits_a_backend_sync(three: list[EchoServer]) -> None:
    """Each attempt of one request goes to a different backend even when the balancer keeps preferring the one that failed (else retries hammer a dead backend)."""
    for server in three:
        server.answer(503)
    favourite = three[0].url
    transport = eb.BalancingTransport(
        [s.url for s in three], balancer=Favourite(favourite), **_quiet(retry=eb.Retry(attempts=3))
    )
    with httpx.Client(transport=transport, base_url="http://e") as client:
        response = client.post("/embed", json={"inputs": ["a"]})
    assert response.status_code == 503  # every attempt failed: the last answer comes back
    urls = [a.url for a in response.extensions[eb.ATTEMPTS_EXTENSION]]
    assert urls[0] == favourite
    assert sorted(urls) == sorted(s.url for s in three)
    assert [s.hits for s in three] == [1, 1, 1]


def test_more_attempts_than_backends_still_never_revisits_sync(three: list[EchoServer]) -> None:
    """With attempts to spare, a request stops after every backend failed once instead of going round again."""
    for server in three:
        server.answer(502)
    transport = eb.BalancingTransport(
        [s.url for s in three],
        balancer=Favourite(three[1].url),
        **_quiet(retry=eb.Retry(attempts=6)),
    )
    with httpx.Client(transport=transport, base_url="http://e") as client:
        response = client.post("/embed", json={"inputs": ["a"]})
    attempts = response.extensions[eb.ATTEMPTS_EXTENSION]
    assert len(attempts) == 3
    assert len({a.url for a in attempts}) == 3
    assert [s.hits for s in three] == [1, 1, 1]


def test_retry_lands_on_another_backend_and_succeeds_sync(three: list[EchoServer]) -> None:
    """When the preferred backend fails, the retry goes elsewhere and the caller gets that backend's answer."""
    three[0].answer(503)
    transport = eb.BalancingTransport(
        [s.url for s in three], balancer=Favourite(three[0].url), **_quiet()
    )
    with httpx.Client(transport=transport, base_url="http://e") as client:
        response = client.post("/embed", json={"inputs": ["a"]})
    assert response.status_code == 200
    assert response.extensions[eb.BACKEND_EXTENSION].url != three[0].url
    assert three[0].hits == 1
    assert three[1].hits + three[2].hits == 1
    assert transport.stats().retries == 1


@pytest.mark.anyio
async def test_retry_never_revisits_a_backend_async(three: list[EchoServer]) -> None:
    """The async twin also sends each attempt of one request to a different backend, whatever the balancer prefers."""
    for server in three:
        server.answer(503)
    favourite = three[2].url
    transport = eb.AsyncBalancingTransport(
        [s.url for s in three], balancer=Favourite(favourite), **_quiet(retry=eb.Retry(attempts=5))
    )
    async with httpx.AsyncClient(transport=transport, base_url="http://e") as client:
        response = await client.post("/embed", json={"inputs": ["a"]})
    assert response.status_code == 503
    urls = [a.url for a in response.extensions[eb.ATTEMPTS_EXTENSION]]
    assert urls[0] == favourite
    assert sorted(urls) == sorted(s.url for s in three)
    assert [s.hits for s in three] == [1, 1, 1]


# -- Retry-After on a manual clock ---------------------------------------------------


def _overload_run_sync(busy: EchoServer, other: EchoServer, status: int) -> None:
    """``busy`` (the balancer's favourite) answers ``status`` + ``Retry-After: 7`` once;
    it must get nothing for exactly 7 clock seconds, then traffic again."""
    clock = eb.ManualClock(100.0)
    busy.answer(status, {"Retry-After": "7"})
    transport = eb.BalancingTransport(
        [busy.url, other.url],
        balancer=Favourite(busy.url),
        clock=clock,
        health_check=None,
        outlier_detection=eb.OutlierDetection(consecutive_failures=1),
    )
    with httpx.Client(transport=transport, base_url="http://e") as client:
        first = client.post("/embed", json={"inputs": ["a"]})
        assert first.status_code == 200
        assert first.extensions[eb.BACKEND_EXTENSION].url == other.url
        assert busy.hits == 1
        busy.answer(200)
        row = transport.stats().pool.by_url()[busy.url]
        assert (row.state, row.overloads, row.failures, row.ejections) == ("overloaded", 1, 0, 0)
        clock.advance(6.5)  # well past the 1 s default back-off, short of Retry-After
        for _ in range(5):
            assert client.post("/embed", json={"inputs": ["a"]}).status_code == 200
        assert busy.hits == 1
        clock.advance(0.5)  # exactly Retry-After seconds after the answer
        response = client.post("/embed", json={"inputs": ["a"]})
        assert response.extensions[eb.BACKEND_EXTENSION].url == busy.url
        assert busy.hits == 2
        assert transport.stats().pool.by_url()[busy.url].ejections == 0
    transport.close()


def test_retry_after_on_429_keeps_a_backend_out_exactly_that_long_sync() -> None:
    """A 429 with Retry-After: 7 keeps its backend out for 7 clock seconds, no less (not the 1 s default) and no more."""
    with echo_servers(2) as (busy, other):
        _overload_run_sync(busy, other, 429)


def test_503_with_retry_after_is_overload_never_ejection_sync() -> None:
    """A 503 carrying Retry-After (a draining worker's answer) is load: honoured like a 429 and never ejects, even with a one-failure ejection policy."""
    with echo_servers(2) as (busy, other):
        _overload_run_sync(busy, other, 503)


def test_503_without_retry_after_is_a_failure_sync() -> None:
    """The contrast: a bare 503 is a failure and ejects under a one-failure policy (so the test above can tell the two apart)."""
    with echo_servers(2) as (busy, other):
        busy.answer(503)
        transport = eb.BalancingTransport(
            [busy.url, other.url],
            balancer=Favourite(busy.url),
            clock=eb.ManualClock(0.0),
            health_check=None,
            outlier_detection=eb.OutlierDetection(consecutive_failures=1),
        )
        with httpx.Client(transport=transport, base_url="http://e") as client:
            assert client.post("/embed", json={"inputs": ["a"]}).status_code == 200
        row = transport.stats().pool.by_url()[busy.url]
        assert (row.state, row.failures, row.overloads, row.ejections) == ("ejected", 1, 0, 1)
        transport.close()


@pytest.mark.anyio
@pytest.mark.parametrize("status", [429, 503])
async def test_retry_after_keeps_a_backend_out_exactly_that_long_async(status: int) -> None:
    """The async twin honours Retry-After (on 429 and on 503) for exactly N clock seconds and never ejects for it."""
    clock = eb.ManualClock(50.0)
    with echo_servers(2) as (busy, other):
        busy.answer(status, {"Retry-After": "4"})
        transport = eb.AsyncBalancingTransport(
            [busy.url, other.url],
            balancer=Favourite(busy.url),
            clock=clock,
            health_check=None,
            outlier_detection=eb.OutlierDetection(consecutive_failures=1),
        )
        async with httpx.AsyncClient(transport=transport, base_url="http://e") as client:
            first = await client.post("/embed", json={"inputs": ["a"]})
            assert first.extensions[eb.BACKEND_EXTENSION].url == other.url
            busy.answer(200)
            clock.advance(3.5)
            for _ in range(3):
                await client.post("/embed", json={"inputs": ["a"]})
            assert busy.hits == 1
            clock.advance(0.5)
            again = await client.post("/embed", json={"inputs": ["a"]})
            assert again.extensions[eb.BACKEND_EXTENSION].url == busy.url
        row = transport.stats().pool.by_url()[busy.url]
        assert (row.overloads, row.failures, row.ejections) == (1, 0, 0)


# -- both health checkers against a real server --------------------------------------

POLICY = eb.HealthCheck(interval=0.02, timeout=2.0, rise=2, fall=3, jitter=0.0)


def _state(pool: eb.BackendPool, url: str) -> str:
    return pool.stats().by_url()[url].state


def test_sync_health_checker_falls_on_503_and_rises_on_200() -> None:
    """The thread-based checker marks a backend unhealthy after exactly `fall` 503 answers and healthy after exactly `rise` 200 answers."""
    with echo_servers(2) as (server, steady):
        pool = eb.BackendPool(
            [server.url, steady.url], health_check=POLICY, clock=eb.ManualClock(0.0)
        )
        checker = HealthChecker(pool, POLICY, rng=random.Random(1))
        try:
            checker.run_round()
            assert _state(pool, server.url) == "healthy"
            server.health_status = 503
            for _ in range(POLICY.fall - 1):
                checker.run_round()
                assert _state(pool, server.url) == "healthy"
            checker.run_round()
            assert _state(pool, server.url) == "unhealthy"
            assert _state(pool, steady.url) == "healthy"
            server.health_status = 200
            for _ in range(POLICY.rise - 1):
                checker.run_round()
                assert _state(pool, server.url) == "unhealthy"
            checker.run_round()
            assert _state(pool, server.url) == "healthy"
            assert server.health_checks == 1 + POLICY.fall + POLICY.rise
        finally:
            checker.stop()


def test_sync_health_checker_treats_errors_and_redirects_as_unhealthy() -> None:
    """A refused connection or a non-2xx answer (even a redirect) fails a check; any 2xx passes."""
    from control_proc import free_port

    dead = f"http://127.0.0.1:{free_port()}"
    with echo_servers(1) as (server,):
        pool = eb.BackendPool([server.url, dead], health_check=POLICY)
        checker = HealthChecker(pool, POLICY)
        try:
            server.health_status = 301
            for _ in range(POLICY.fall):
                checker.run_round()
            assert _state(pool, dead) == "unhealthy"
            assert _state(pool, server.url) == "unhealthy"
            server.health_status = 299
            for _ in range(POLICY.rise):
                checker.run_round()
            assert _state(pool, server.url) == "healthy"
        finally:
            checker.stop()


def test_sync_health_checker_thread_runs_rounds_until_stopped() -> None:
    """start() runs rounds in a thread that reaches a verdict on its own, and stop() ends the checks."""
    with echo_servers(1) as (server,):
        pool = eb.BackendPool([server.url], health_check=POLICY, panic_threshold=0.0)
        server.health_status = 503
        checker = HealthChecker(pool, POLICY)
        checker.start()
        try:
            deadline = time.monotonic() + 10
            while _state(pool, server.url) != "unhealthy":
                assert time.monotonic() < deadline, "the checker thread never reached a verdict"
                time.sleep(0.01)
            assert checker.running
        finally:
            checker.stop()
        assert not checker.running
        seen = server.health_checks
        time.sleep(0.1)
        assert server.health_checks == seen


class _CountingRandom(random.Random):
    """A seeded rng that counts the jitter draws made from it."""

    def __init__(self) -> None:
        super().__init__(7)
        self.draws = 0

    def uniform(self, a: float, b: float) -> float:
        self.draws += 1
        return super().uniform(a, b)


def test_sync_health_checker_jitters_its_interval_with_the_given_rng() -> None:
    """With ``jitter`` on, the checker thread's intervals are drawn from the ``rng`` it
    was given (injected randomness, as everywhere here), round after round. If this
    fails, the seed a caller passed is ignored (runs cannot be reproduced), or the
    thread dies at its first jittered wait and health checking stops silently."""
    policy = eb.HealthCheck(interval=0.02, timeout=2.0, rise=2, fall=3, jitter=0.5)
    rng = _CountingRandom()
    with echo_servers(1) as (server,):
        pool = eb.BackendPool([server.url], health_check=policy)
        checker = HealthChecker(pool, policy, rng=rng)
        checker.start()
        try:
            deadline = time.monotonic() + 10
            while server.health_checks < 3 or rng.draws < 2:
                assert time.monotonic() < deadline, "the checker thread stopped checking"
                time.sleep(0.01)
            assert checker.running
        finally:
            checker.stop()


@pytest.mark.anyio
async def test_async_health_checks_fall_on_503_and_rise_on_200() -> None:
    """The anyio checker takes a backend out on 503 answers and brings it back on 200s, after at least `fall`/`rise` checks."""
    with echo_servers(2) as (server, steady):
        pool = eb.BackendPool([server.url, steady.url], health_check=POLICY)
        async with anyio.create_task_group() as tg:
            tg.start_soon(run_async_checks, pool, POLICY)
            with anyio.fail_after(10):
                while server.health_checks < 1:
                    await anyio.sleep(0.005)
            assert _state(pool, server.url) == "healthy"
            server.health_status = 503
            before = server.health_checks
            with anyio.fail_after(10):
                while _state(pool, server.url) != "unhealthy":
                    await anyio.sleep(0.005)
            assert server.health_checks - before >= POLICY.fall
            assert _state(pool, steady.url) == "healthy"
            server.health_status = 200
            before = server.health_checks
            with anyio.fail_after(10):
                while _state(pool, server.url) != "healthy":
                    await anyio.sleep(0.005)
            assert server.health_checks - before >= POLICY.rise
            tg.cancel_scope.cancel()


def test_health_checks_carry_the_policy_headers_sync_and_async() -> None:
    """Both checkers send the policy's headers (an auth token, say) with every check."""
    policy = eb.HealthCheck(headers={"Authorization": "Bearer t0k"}, rise=1, fall=1)
    with echo_servers(1) as (server,):
        pool = eb.BackendPool([server.url], health_check=policy)
        checker = HealthChecker(pool, policy)
        try:
            checker.run_round()
        finally:
            checker.stop()

        async def one_async_round() -> None:
            async with anyio.create_task_group() as tg:
                tg.start_soon(run_async_checks, pool, policy)
                with anyio.fail_after(10):
                    while server.health_checks < 2:
                        await anyio.sleep(0.005)
                tg.cancel_scope.cancel()

        anyio.run(one_async_round)
    assert [h.get("authorization") for h in server.health_headers[:2]] == ["Bearer t0k"] * 2


@pytest.mark.anyio
async def test_async_check_that_hangs_counts_as_failed_after_the_timeout() -> None:
    """A /health that never answers fails the async check once the policy timeout passes, so a hung backend is marked unhealthy instead of stalling every round."""
    policy = eb.HealthCheck(interval=0.02, timeout=0.2, rise=1, fall=2, jitter=0.0)
    with echo_servers(2) as (hung, fine):
        hung.health_hang = True
        pool = eb.BackendPool([hung.url, fine.url], health_check=policy, panic_threshold=0.0)
        async with anyio.create_task_group() as tg:
            tg.start_soon(run_async_checks, pool, policy)
            with anyio.fail_after(20):
                while _state(pool, hung.url) != "unhealthy":
                    await anyio.sleep(0.01)
            assert _state(pool, fine.url) == "healthy"
            assert fine.health_checks >= policy.fall
            tg.cancel_scope.cancel()


def test_sync_checker_runs_in_named_daemon_threads() -> None:
    """The checker's thread is a daemon named embedbalance-health and its checks run on embedbalance-check threads (so an app can exit, and tools can tell them apart)."""
    import threading

    with echo_servers(1) as (server,):
        pool = eb.BackendPool([server.url], health_check=POLICY)
        checker = HealthChecker(pool, POLICY)
        checker.start()
        try:
            deadline = time.monotonic() + 10
            while server.health_checks < 2:
                assert time.monotonic() < deadline
                time.sleep(0.01)
            names = {t.name: t for t in threading.enumerate()}
            assert names["embedbalance-health"].daemon
            assert any(n.startswith("embedbalance-check") for n in names)
        finally:
            checker.stop()
        assert "embedbalance-health" not in {t.name for t in threading.enumerate()}


@pytest.mark.parametrize(
    ("statuses", "answered", "attempts"),
    [(frozenset({503}), 500, 1), (frozenset({500, 503}), 200, 2)],
)
def test_only_the_statuses_named_are_retried(
    three: list[EchoServer], statuses: frozenset[int], answered: int, attempts: int
) -> None:
    """``Retry(statuses=...)`` decides which failures are retried: a 500 from the
    backend the balancer prefers is handed to the caller as is when 500 is not named
    (one attempt), and retried on another backend when it is. If this fails, a status
    the user chose not to retry (a 500 that would fail the same way anywhere) costs a
    second replica's time, or a named one is not retried."""
    three[0].answer(500)
    transport = eb.BalancingTransport(
        [s.url for s in three],
        balancer=Favourite(three[0].url),
        **_quiet(retry=eb.Retry(attempts=3, statuses=statuses)),
    )
    with httpx.Client(transport=transport, base_url="http://e") as client:
        response = client.post("/embed", json={"inputs": ["a"]})
    transport.close()
    assert response.status_code == answered
    assert sum(s.hits for s in three) == attempts


@pytest.mark.parametrize("twin", ["sync", "async"])
def test_stats_count_each_budgets_refusals_apart(twin: str) -> None:
    """``stats()`` reports retries and hedges refused by their own budgets, each from
    its own budget: three hedges refused and one retry read as 3 and 1, not mixed and
    not missing. If this fails, a dashboard cannot tell "hedging is throttled" from
    "retries are throttled". (The budgets are spent directly: the plumbing is the
    promise here; spending them through traffic is ``test_load.py``'s.)"""
    cls = eb.BalancingTransport if twin == "sync" else eb.AsyncBalancingTransport
    no_retries = eb.Retry(budget=eb.RetryBudgetPolicy(ratio=0, min_per_second=0))
    transport = cls(["http://127.0.0.1:9"], **_quiet(retry=no_retries))  # type: ignore[arg-type]
    policy = transport._core.policy
    granted = [policy.hedge_budget.try_withdraw() for _ in range(13)]
    assert granted == [True] * 10 + [False] * 3  # 1 hedge a second over a 10 s window
    assert not policy.budget.try_withdraw()
    stats = transport.stats()
    assert (stats.hedge_budget_exhausted, stats.budget_exhausted) == (3, 1)
