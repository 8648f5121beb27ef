"""DnsDiscovery's smaller promises against a real dnsmasq: its repr, its refresh thread,
and the async loop's cadence (one lookup per TTL, never a busy loop)."""

from __future__ import annotations

import logging
import socket
import threading
import time

import anyio
import pytest
from dnsmasq_server import DOMAIN, Dnsmasq
from tests.helpers.forked import in_child
from tests.helpers.waiting import wait_until

from embedbalance.dns import DnsDiscovery, DnsTarget

GPU = f"gpu.{DOMAIN}."
CPU = f"cpu.{DOMAIN}."


class Pool:
    """The smallest pool: keeps the last membership it was given."""

    def __init__(self) -> None:
        self.urls: set[str] = set()

    def update(self, backends: object) -> None:
        self.urls = {b.url for b in backends}  # type: ignore[attr-defined]


class CountingClock:
    """A frozen clock that counts how often it is read (once per refresh, and per loop turn)."""

    def __init__(self) -> None:
        self.reads = 0

    def __call__(self) -> float:
        self.reads += 1
        return 100.0


def _discovery(server: Dnsmasq, **kwargs: object) -> DnsDiscovery:
    kwargs.setdefault("timeout", 0.5)
    targets = [DnsTarget(GPU, port=8000), DnsTarget(CPU, port=8000)]
    return DnsDiscovery(targets, nameservers=server.nameservers, **kwargs)  # type: ignore[arg-type]


def test_repr_names_the_targets_and_what_was_resolved(dnsmasq: Dnsmasq) -> None:
    """The repr (what logs and errors show) names every target and says 'unresolved' until the first lookup, then the backend count."""
    dnsmasq.set_hosts({GPU: ["127.0.0.2", "127.0.0.3"], CPU: ["127.0.0.4"]})
    source = _discovery(dnsmasq)
    assert repr(source) == f"<DnsDiscovery {GPU}, {CPU}: unresolved>"
    source.refresh(Pool())
    assert repr(source) == f"<DnsDiscovery {GPU}, {CPU}: 3 backends>"


def test_refresh_thread_is_a_named_daemon_and_restartable(dnsmasq: Dnsmasq) -> None:
    """start() refreshes in a daemon thread named embedbalance-dns (an app can exit with it running); after stop() it can start again."""
    dnsmasq.set_hosts({GPU: ["127.0.0.2"], CPU: ["127.0.0.4"]})
    source = _discovery(dnsmasq)
    pool = Pool()
    for _ in range(2):
        source.start(pool)
        try:
            threads = {t.name: t for t in threading.enumerate()}
            assert threads["embedbalance-dns"].daemon
            assert pool.urls == {"http://127.0.0.2:8000", "http://127.0.0.4:8000"}
        finally:
            source.stop()
        assert "embedbalance-dns" not in {t.name for t in threading.enumerate()}


class FailingOncePool(Pool):
    """A pool whose first update raises (an app's bug), then behaves."""

    def __init__(self) -> None:
        super().__init__()
        self.failures = 1

    def update(self, backends: object) -> None:
        if self.failures:
            self.failures -= 1
            raise ValueError("the app's pool refused the update")
        super().update(backends)


def test_a_start_that_failed_can_be_stopped_and_started_again(dnsmasq: Dnsmasq) -> None:
    """start() whose first refresh raises leaves no thread and no 'running' mark: stop()
    is a no-op and the next start() runs. If this fails, one failed start leaves the
    discovery unusable ('already running') or stop() crashes on the thread never made."""
    dnsmasq.set_hosts({GPU: ["127.0.0.2"], CPU: ["127.0.0.4"]})
    source = _discovery(dnsmasq)
    pool = FailingOncePool()
    with pytest.raises(ValueError, match="refused the update"):
        source.start(pool)
    assert "embedbalance-dns" not in {t.name for t in threading.enumerate()}
    source.start(pool)  # at once, without a stop() in between
    try:
        assert pool.urls == {"http://127.0.0.2:8000", "http://127.0.0.4:8000"}
        assert "embedbalance-dns" in {t.name for t in threading.enumerate()}
    finally:
        source.stop()
    pool.failures = 1
    with pytest.raises(ValueError, match="refused the update"):
        source.start(pool)
    source.stop()  # nothing to stop: no error
    source.start(pool)
    source.stop()


class CountingPool(Pool):
    """Counts updates; from the ``fail_from``-th on, each raises (an app's bug)."""

    def __init__(self, fail_from: int | None = None) -> None:
        super().__init__()
        self.updates = 0
        self.fail_from = fail_from

    def update(self, backends: object) -> None:
        self.updates += 1
        if self.fail_from is not None and self.updates >= self.fail_from:
            raise ValueError("the app's pool refused the update")
        super().update(backends)


def test_a_refresh_that_raises_in_the_thread_is_logged_and_retried_after_max_ttl(
    dnsmasq: Dnsmasq, caplog: pytest.LogCaptureFixture
) -> None:
    """A bug in a refresh (here the app's pool raising) is logged, the thread lives on
    and tries again after max_ttl, not at once. If this fails, one bad update ends
    discovery for good (pods come and go unseen) or the thread spins on the error."""
    dnsmasq.set_hosts({GPU: ["127.0.0.2"], CPU: ["127.0.0.4"]})
    # A frozen clock: only the thread's own waits (max_ttl each) space the refreshes.
    source = _discovery(dnsmasq, min_ttl=0.05, max_ttl=0.05, clock=lambda: 100.0)
    pool = CountingPool(fail_from=2)
    with caplog.at_level(logging.ERROR, logger="embedbalance.dns"):
        source.start(pool)
        try:
            assert wait_until(lambda: pool.updates >= 4, 5.0), "the thread stopped refreshing"
            seen = pool.updates
            time.sleep(0.2)
            # About four more at one per 50 ms; a thread that does not wait makes hundreds.
            assert pool.updates - seen <= 20
            assert any(t.name == "embedbalance-dns" for t in threading.enumerate())
        finally:
            source.stop()
    assert "DNS discovery refresh failed unexpectedly" in [r.getMessage() for r in caplog.records]


def test_a_refresh_that_is_due_runs_at_once(dnsmasq: Dnsmasq) -> None:
    """When the next refresh is already due (the clock moved past it), the thread looks
    up again without waiting. If this fails, discovery falls behind its TTLs by a fixed
    delay on every round that ran late."""
    dnsmasq.set_hosts({GPU: ["127.0.0.2"], CPU: ["127.0.0.4"]})
    ticks = iter(range(0, 10**9, 1000))
    source = _discovery(dnsmasq, min_ttl=1.0, max_ttl=1.0, clock=lambda: float(next(ticks)))
    pool = CountingPool()
    source.start(pool)
    try:
        # Every clock read is 1000 s later, so every refresh is overdue: five take
        # milliseconds; with a one-second floor on each wait they would take four.
        assert wait_until(lambda: pool.updates >= 5, 3.0)
    finally:
        source.stop()


def test_a_forked_child_can_start_its_own_refresh_thread(dnsmasq: Dnsmasq) -> None:
    """A discovery running in the parent starts afresh in a forked child (gunicorn
    --preload): a new lock, stop event and thread; a failed start there can be stopped
    and retried. If this fails, every preloaded worker process raises 'already
    running', deadlocks on the parent's lock, or cannot recover from one failed start."""
    dnsmasq.set_hosts({GPU: ["127.0.0.2"], CPU: ["127.0.0.4"]})
    source = _discovery(dnsmasq)
    source.start(Pool())
    try:

        def child() -> list[str]:
            pool = FailingOncePool()
            try:
                source.start(pool)
            except ValueError:
                pass
            else:
                raise AssertionError("the child's first start did not fail")
            source.stop()
            source.start(pool)
            try:
                names = [t.name for t in threading.enumerate()]
                assert names.count("embedbalance-dns") == 1, names
            finally:
                source.stop()
            return sorted(pool.urls)

        assert in_child(child) == ["http://127.0.0.2:8000", "http://127.0.0.4:8000"]
        assert any(t.name == "embedbalance-dns" for t in threading.enumerate())
    finally:
        source.stop()


@pytest.mark.anyio
async def test_cancelling_the_async_loop_abandons_a_lookup_in_flight() -> None:
    """A lookup waiting on a nameserver that never answers does not hold up the
    cancellation of ``arun`` (the lookup's thread is abandoned). If this fails, an async
    app's shutdown waits out the DNS timeout."""
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # bound, never answers
    silent.bind(("127.0.0.1", 0))
    try:
        source = DnsDiscovery(
            [DnsTarget(GPU, port=8000)], nameservers=[silent.getsockname()], timeout=3.0
        )
        started = time.monotonic()
        async with anyio.create_task_group() as tg:
            tg.start_soon(source.arun, Pool())
            await anyio.sleep(0.2)
            tg.cancel_scope.cancel()
        assert time.monotonic() - started < 2.0
    finally:
        silent.close()


@pytest.mark.anyio
async def test_async_loop_waits_a_ttl_between_lookups(dnsmasq: Dnsmasq) -> None:
    """With a long TTL the async loop looks up once and then sleeps, instead of spinning on lookups."""
    dnsmasq.set_hosts({GPU: ["127.0.0.2"], CPU: ["127.0.0.4"]})
    clock = CountingClock()
    source = _discovery(dnsmasq, min_ttl=30.0, max_ttl=30.0, clock=clock)
    async with anyio.create_task_group() as tg:
        await tg.start(source.arun, Pool())
        await anyio.sleep(0.5)
        tg.cancel_scope.cancel()
    assert clock.reads <= 3


@pytest.mark.anyio
async def test_async_loop_follows_a_short_ttl(dnsmasq: Dnsmasq) -> None:
    """A TTL below a second is honoured: the async loop looks up again every TTL, not at most once a second."""
    dnsmasq.set_hosts({GPU: ["127.0.0.2"], CPU: ["127.0.0.4"]})
    clock = CountingClock()
    source = _discovery(dnsmasq, min_ttl=0.1, max_ttl=0.1, clock=clock)
    async with anyio.create_task_group() as tg:
        await tg.start(source.arun, Pool())
        await anyio.sleep(1.0)
        tg.cancel_scope.cancel()
    assert clock.reads >= 6  # about 2 per lookup; 1 s at a 0.1 s TTL is ~10 lookups
