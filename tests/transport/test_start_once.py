"""Starting a transport once, however many callers ask at the same time, and closing it
while it starts. Why: a web app's first requests arrive together and each may be the
one that starts the transport; a second start would run a second health checker (twice
the probes, a thread or task nobody stops), and a close racing a start must leave
nothing running and no transport that says it runs. Real control servers on loopback.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import anyio
import httpx
import pytest
from control_proc import ControlServer

import embedbalance as eb

pytestmark = pytest.mark.timeout(60)

SLOW_CHECKS = eb.HealthCheck(interval=60)  # one round within the test, no second


def _health_threads() -> int:
    return sum(t.name == "embedbalance-health" for t in threading.enumerate())


def test_start_from_many_threads_at_once_starts_one_health_checker(
    servers: Callable[..., list[ControlServer]],
) -> None:
    """Sixteen threads released together each call ``start()``: one health-check
    thread exists afterwards. If this fails, the start lock is replaced while callers
    hold it and the first requests of a busy app each start their own checker."""
    server = servers(1)[0]
    transport = eb.BalancingTransport([server.url], health_check=SLOW_CHECKS)
    before = _health_threads()
    gate = threading.Barrier(16, timeout=10)

    def start() -> None:
        gate.wait()
        transport.start()

    threads = [threading.Thread(target=start) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    try:
        assert _health_threads() - before == 1
    finally:
        transport.close()
    assert _health_threads() == before


class CountingDiscovery:
    """A discovery source that counts how many of its background runs are alive, and
    holds each run's start until ``release`` is set (so a test can act mid-start)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.started = self.running = 0
        self.release = anyio.Event()

    def start(self, pool: eb.BackendPool) -> None:
        pool.update([eb.Backend(self.url)])

    def stop(self) -> None:
        return None

    async def arun(self, pool: eb.BackendPool, *, task_status: Any = None) -> None:
        self.started += 1
        self.running += 1
        try:
            await self.release.wait()
            pool.update([eb.Backend(self.url)])
            task_status.started()
            await anyio.sleep_forever()
        finally:
            self.running -= 1


@pytest.mark.anyio
async def test_concurrent_async_starts_run_one_background() -> None:
    """Eight tasks call ``start()`` at once: all return, and one background runs
    (one discovery run, still alive until ``aclose()``). If this fails, a start that
    finds another in progress raises, or does not see it and starts a second
    background (two discovery loops, two health checkers)."""
    source = CountingDiscovery("http://127.0.0.1:9")
    transport = eb.AsyncBalancingTransport(source, health_check=None)  # type: ignore[arg-type]
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            for _ in range(8):
                tg.start_soon(transport.start)
            await anyio.lowlevel.checkpoint()
            source.release.set()
        assert (source.started, source.running) == (1, 1)
        await transport.aclose()
    assert source.running == 0


class StoppableDiscovery:
    """A sync discovery source that records whether it was stopped."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.started = self.stopped = 0

    def start(self, pool: eb.BackendPool) -> None:
        self.started += 1
        pool.update([eb.Backend(self.url)])

    def stop(self) -> None:
        self.stopped += 1

    async def arun(self, pool: eb.BackendPool, *, task_status: Any = None) -> None:
        raise AssertionError("the sync transport never runs the async loop")


def test_closing_a_started_sync_transport_stops_its_discovery() -> None:
    """``close()`` stops the discovery that ``start()`` started — once — and a transport
    never started stops nothing. If this fails, a closed transport leaves its DNS
    refresh thread running (one per transport a process ever made)."""
    source = StoppableDiscovery("http://127.0.0.1:9")
    transport = eb.BalancingTransport(source, health_check=None)  # type: ignore[arg-type]
    transport.start()
    transport.close()
    transport.close()
    assert (source.started, source.stopped) == (1, 1)
    idle = StoppableDiscovery("http://127.0.0.1:9")
    eb.BalancingTransport(idle, health_check=None).close()  # type: ignore[arg-type]
    assert (idle.started, idle.stopped) == (0, 0)


@pytest.mark.anyio
async def test_a_second_start_of_a_running_async_transport_starts_nothing() -> None:
    """``start()`` on a transport already running returns at once: still one discovery
    run (``async with`` on a transport a request already started, say). If this fails,
    each later ``start()`` starts another background."""
    source = CountingDiscovery("http://127.0.0.1:9")
    transport = eb.AsyncBalancingTransport(source, health_check=None)  # type: ignore[arg-type]
    with anyio.fail_after(10):
        source.release.set()
        await transport.start()
        await transport.start()
        async with transport:
            assert (source.started, source.running) == (1, 1)
    assert source.running == 0


@pytest.mark.anyio
@pytest.mark.parametrize("background_ran", [True, False])
async def test_aclose_while_start_is_starting_leaves_nothing_running(
    background_ran: bool,
) -> None:
    """``aclose()`` called while another task's ``start()`` waits for the background
    (discovery has not answered yet; or, the background has not taken its first step
    yet): both return within a bound, the start raises
    "transport is closed", the background is gone, and a request is refused as on any
    closed transport. If this fails, closing during a start hangs, leaves discovery
    and health checks running, or leaves a transport that says it runs on closed
    connections."""
    source = CountingDiscovery("http://127.0.0.1:9")
    transport = eb.AsyncBalancingTransport(source, health_check=None)  # type: ignore[arg-type]
    outcome: list[BaseException | None] = []

    async def start() -> None:
        try:
            await transport.start()
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(start)
            await anyio.lowlevel.checkpoint()  # start() has spawned the background
            while background_ran and source.started == 0:  # bounded by fail_after
                await anyio.lowlevel.checkpoint()
            await transport.aclose()
    assert source.running == 0
    assert len(outcome) == 1
    assert isinstance(outcome[0], RuntimeError)
    assert str(outcome[0]) == "transport is closed"
    request = httpx.Request("POST", "http://embed/embed", json={"inputs": ["x"]})
    with pytest.raises(RuntimeError, match="closed"):
        await transport.handle_async_request(request)
