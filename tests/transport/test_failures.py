"""Failure scenarios against real server processes on loopback, sync and async."""

from __future__ import annotations

import threading
import time

import anyio
import httpx
import pytest

import embedbalance as eb

from ._load import run_async, run_sync

pytestmark = pytest.mark.timeout(180)

FAST_CHECKS = eb.HealthCheck(interval=0.2, timeout=0.5, rise=2, fall=2, jitter=0.0)


def _transport_kwargs() -> dict[str, object]:
    return {
        "health_check": FAST_CHECKS,
        "outlier_detection": eb.OutlierDetection(consecutive_failures=3),
        "slow_start": eb.SlowStart(window=1.0),
    }


class _Watch:
    """Snapshot a backend's request count when it is ejected or marked unhealthy."""

    def __init__(self, pool: eb.BackendPool, url: str) -> None:
        self.pool, self.url = pool, url
        self.requests_at_removal: int | None = None
        pool.add_listener(self)

    def __call__(self, event: eb.PoolEvent) -> None:
        if (
            event.url == self.url
            and event.kind in ("ejected", "unhealthy")
            and self.requests_at_removal is None
        ):
            self.row_at_removal = self.pool.stats().by_url()[self.url]
            self.requests_at_removal = self.row_at_removal.requests
            self.kind = event.kind


def _wait_healthy_sync(
    transport: eb.BalancingTransport, url: str, timeout: float = 10.0
) -> eb.BackendStats:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = transport.stats().pool.by_url()[url]
        if row.state == "healthy":
            return row
        time.sleep(0.05)
    raise AssertionError(f"{url} never re-admitted: {transport.stats().pool.by_url()[url]}")


def test_kill_mid_run_loses_nothing_sync(servers):
    """A backend SIGKILLed mid-run costs no request, gets no traffic after ejection, and is re-admitted with slow start after a restart."""
    backends = servers(4, delay=0.002)
    victim = backends[0]
    transport = eb.BalancingTransport([s.url for s in backends], **_transport_kwargs())
    watch = _Watch(transport.pool, victim.url)
    killed = threading.Event()

    def progress(i: int) -> None:
        if i == 500 and not killed.is_set():
            killed.set()
            victim.kill()

    with httpx.Client(transport=transport, base_url="http://embeddings") as client:
        result = run_sync(client, 2000, 32, on_progress=progress)
        assert killed.is_set()
        assert result.failed == 0, result.errors[:5]
        assert result.ok == 2000
        assert watch.requests_at_removal is not None, "the killed backend was never taken out"
        after = transport.stats().pool.by_url()[victim.url]
        assert after.requests == watch.requests_at_removal, (
            watch.kind,
            watch.row_at_removal,
            after,
        )
        victim.start()
        row = _wait_healthy_sync(transport, victim.url)
        assert row.effective_weight < 1.0, "a re-admitted backend must slow-start"
        served = 0
        deadline = time.monotonic() + 20
        while served == 0 and time.monotonic() < deadline:  # traffic returns to it
            more = run_sync(client, 200, 8)
            assert more.failed == 0
            served = more.backends.get(victim.url, 0)
        assert served > 0
    assert transport.stats().pool.in_flight == 0


@pytest.mark.anyio
async def test_kill_mid_run_loses_nothing_async(servers):
    """The async twin loses no request when a backend is SIGKILLed mid-run, and re-admits it after a restart."""
    backends = servers(4, delay=0.002)
    victim = backends[0]
    transport = eb.AsyncBalancingTransport([s.url for s in backends], **_transport_kwargs())
    watch = _Watch(transport.pool, victim.url)
    killed: list[bool] = []

    def progress(i: int) -> None:
        if i == 500 and not killed:
            killed.append(True)
            victim.kill()

    async with httpx.AsyncClient(transport=transport, base_url="http://embeddings") as client:
        result = await run_async(client, 2000, 32, on_progress=progress)
        assert killed
        assert result.failed == 0, result.errors[:5]
        assert watch.requests_at_removal is not None
        assert transport.stats().pool.by_url()[victim.url].requests == watch.requests_at_removal
        await anyio.to_thread.run_sync(victim.start)
        with anyio.fail_after(10):
            while transport.stats().pool.by_url()[victim.url].state != "healthy":
                await anyio.sleep(0.05)
        assert transport.stats().pool.by_url()[victim.url].effective_weight < 1.0
        served = 0
        deadline = time.monotonic() + 20
        while served == 0 and time.monotonic() < deadline:  # traffic returns to it
            more = await run_async(client, 200, 8)
            assert more.failed == 0
            served = more.backends.get(victim.url, 0)
        assert served > 0
    assert transport.stats().pool.in_flight == 0


def test_hanging_backend_times_out_and_is_ejected_sync(servers):
    """Attempts on a backend that accepts and never answers time out, succeed elsewhere, and get it ejected."""
    ok = servers(2)
    hung = servers(1, mode="hang")[0]
    transport = eb.BalancingTransport(
        [s.url for s in [*ok, hung]],
        health_check=None,
        outlier_detection=eb.OutlierDetection(consecutive_failures=3),
        attempt_timeout=1.0,
        balancer=eb.RoundRobin(),
    )
    with httpx.Client(transport=transport, base_url="http://e") as client:
        result = run_sync(client, 60, 2)
    assert result.failed == 0, result.errors[:3]
    row = transport.stats().pool.by_url()[hung.url]
    assert row.state == "ejected"
    assert 3 <= row.failures <= 4  # two users: one more may be in flight at ejection
    assert hung.stats()["requests"] <= 4
    transport.close()


@pytest.mark.anyio
async def test_hanging_backend_times_out_and_is_ejected_async(servers):
    """The async twin abandons attempts on a hung backend after the attempt timeout and ejects it."""
    ok = servers(2)
    hung = servers(1, mode="hang")[0]
    transport = eb.AsyncBalancingTransport(
        [s.url for s in [*ok, hung]],
        health_check=None,
        outlier_detection=eb.OutlierDetection(consecutive_failures=3),
        attempt_timeout=1.0,
        balancer=eb.RoundRobin(),
    )
    async with httpx.AsyncClient(transport=transport, base_url="http://e") as client:
        result = await run_async(client, 60, 2)
    assert result.failed == 0, result.errors[:3]
    row = transport.stats().pool.by_url()[hung.url]
    assert row.state == "ejected"
    assert 3 <= row.failures <= 4


def _dead_urls(n: int) -> list[str]:
    from control_proc import free_port

    return [f"http://127.0.0.1:{free_port()}" for _ in range(n)]


def test_all_down_fails_with_a_documented_error_sync():
    """With every backend down, a request ends in a documented error naming each backend tried once, never a hang (how fast is a benchmark's business)."""
    dead = _dead_urls(3)
    transport = eb.BalancingTransport(dead)
    with httpx.Client(transport=transport, base_url="http://e") as client:
        for _ in range(5):
            with pytest.raises((eb.NoBackendAvailable, eb.AllAttemptsFailed)) as info:
                client.post("/embed", json={"inputs": ["x"]})
            if isinstance(info.value, eb.AllAttemptsFailed):
                urls = [a.url for a in info.value.attempts]
                assert urls
                assert len(set(urls)) == len(urls) <= 3
                assert set(urls) <= set(dead)
                assert all("Connect" in a.error for a in info.value.attempts)
            else:
                assert {r.url for r in info.value.reasons} <= set(dead)
    assert transport.stats().pool.in_flight == 0


@pytest.mark.anyio
async def test_all_down_fails_with_a_documented_error_async():
    """The async twin ends in a documented error naming distinct backends when every backend is down."""
    dead = _dead_urls(3)
    async with (
        eb.AsyncBalancingTransport(dead) as transport,
        httpx.AsyncClient(transport=transport, base_url="http://e") as client,
    ):
        for _ in range(5):
            with pytest.raises((eb.NoBackendAvailable, eb.AllAttemptsFailed)) as info:
                await client.post("/embed", json={"inputs": ["x"]})
            if isinstance(info.value, eb.AllAttemptsFailed):
                urls = [a.url for a in info.value.attempts]
                assert len(set(urls)) == len(urls) >= 1
                assert set(urls) <= set(dead)
        assert transport.stats().pool.in_flight == 0


def test_retry_budget_bounds_attempts_when_all_fail(servers):
    """When every backend answers 503, total attempts stay within requests + the retry budget."""
    failing = servers(3, mode="503")
    transport = eb.BalancingTransport(
        [s.url for s in failing],
        health_check=None,
        outlier_detection=None,
        retry=eb.Retry(
            attempts=5, budget=eb.RetryBudgetPolicy(ratio=0.2, window=10.0, min_per_second=1.0)
        ),
    )
    n = 200
    with httpx.Client(transport=transport, base_url="http://e") as client:
        for _ in range(n):
            assert client.post("/embed", json={"inputs": ["x"]}).status_code == 503
    received = sum(s.stats()["requests"] for s in failing)
    budget = 1.0 * 10.0 + 0.2 * n
    assert n < received <= n + budget
    assert transport.stats().budget_exhausted > 0


def test_overloaded_backend_is_avoided_not_ejected_sync(servers):
    """A 429 with Retry-After moves traffic away for exactly that long on the transport's clock, without ejecting the backend."""
    clock = eb.ManualClock(0.0)
    fine = servers(2)
    busy = servers(1, mode="429")[0]
    busy.control(retry_after=1.5)
    transport = eb.BalancingTransport(
        [s.url for s in [*fine, busy]], health_check=None, balancer=eb.RoundRobin(), clock=clock
    )
    with httpx.Client(transport=transport, base_url="http://e") as client:
        first = run_sync(client, 60, 1)
        assert first.failed == 0
        assert busy.stats()["requests"] == 1
        row = transport.stats().pool.by_url()[busy.url]
        assert row.state == "overloaded"
        assert row.ejections == 0
        busy.control(mode="ok")
        clock.advance(1.25)  # past the 1 s default back-off, short of Retry-After
        assert run_sync(client, 30, 1).backends.get(busy.url, 0) == 0
        clock.advance(0.25)
        second = run_sync(client, 30, 1)
        assert second.backends.get(busy.url, 0) >= 5
    transport.close()


@pytest.mark.anyio
async def test_overloaded_backend_is_avoided_not_ejected_async(servers):
    """The async twin honours Retry-After on 429 for exactly that long on its clock and keeps the backend in the pool."""
    clock = eb.ManualClock(0.0)
    fine = servers(2)
    busy = servers(1, mode="429")[0]
    busy.control(retry_after=1.5)
    transport = eb.AsyncBalancingTransport(
        [s.url for s in [*fine, busy]], health_check=None, balancer=eb.RoundRobin(), clock=clock
    )
    async with httpx.AsyncClient(transport=transport, base_url="http://e") as client:
        first = await run_async(client, 60, 1)
        assert first.failed == 0
        assert busy.stats()["requests"] == 1
        assert transport.stats().pool.by_url()[busy.url].ejections == 0
        busy.control(mode="ok")
        clock.advance(1.25)
        assert (await run_async(client, 30, 1)).backends.get(busy.url, 0) == 0
        clock.advance(0.25)
        second = await run_async(client, 30, 1)
        assert second.backends.get(busy.url, 0) >= 5


def test_an_attempt_past_its_deadline_stops_reading_by_that_deadline_sync(servers):
    """A request to a hung backend with ``attempt_timeout=0.3`` fails at the deadline
    (the backend's slot is freed then); the attempt's own thread, left reading, gives
    up by then too (every httpx phase of a raced attempt is capped at the time left)
    and is free for the next attempt within seconds, not at the caller's 30 s timeout.
    If this fails, every request abandoned at its deadline keeps a thread blocked on
    a dead socket for the caller's whole timeout (a thread per request, piling up)."""
    hung = servers(1, mode="hang")[0]
    transport = eb.BalancingTransport(
        [hung.url], health_check=None, outlier_detection=None, attempt_timeout=0.3, retry=1
    )
    with httpx.Client(transport=transport, base_url="http://e", timeout=30) as client:
        with pytest.raises(eb.AllAttemptsFailed, match="timed out"):
            client.post("/embed", json={"inputs": ["a"]})
        assert transport.stats().pool.in_flight == 0
        deadline = time.monotonic() + 5  # well under the caller's 30 s
        while transport._runner.idle == 0 and time.monotonic() < deadline:
            time.sleep(0.05)  # bounded: the abandoned attempt ends by its capped read
        assert transport._runner.idle == 1
    transport.close()
