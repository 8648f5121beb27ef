"""DnsDiscovery's smaller promises against a real dnsmasq: its repr, its refresh thread,
and the async loop's cadence (one lookup per TTL, never a busy loop)."""

from __future__ import annotations

import threading

import anyio
import pytest
from dnsmasq_server import DOMAIN, Dnsmasq

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
    source.stop()
    source.start(pool)
    try:
        assert pool.urls == {"http://127.0.0.2:8000", "http://127.0.0.4:8000"}
        assert "embedbalance-dns" in {t.name for t in threading.enumerate()}
    finally:
        source.stop()


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
