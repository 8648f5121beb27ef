"""DnsDiscovery against a real dnsmasq: records become backends, changes reach the pool
within a TTL, failures keep the last good set, and traffic follows without loss."""

from __future__ import annotations

import logging
import re
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from ipaddress import ip_address

import anyio
import dns.exception
import dns.resolver
import httpx
import pytest
from dnsmasq_server import DOMAIN, TTL, Dnsmasq, free_port, system_binary
from tests.helpers.waiting import wait_until

from embedbalance._backend import Backend
from embedbalance._clock import ManualClock
from embedbalance.balancers import RoundRobin
from embedbalance.dns import DnsDiscovery, DnsTarget, Resolution
from embedbalance.pool import BackendPool, Outcome

GPU = f"gpu.{DOMAIN}."
CPU = f"cpu.{DOMAIN}."
SRV = f"_http._tcp.workers.{DOMAIN}."


def urls(backends: tuple[Backend, ...]) -> set[str]:
    return {b.url for b in backends}


def discovery(server: Dnsmasq, targets: object, **kwargs: object) -> DnsDiscovery:
    kwargs.setdefault("timeout", 0.5)
    kwargs.setdefault("min_ttl", 0.1)
    return DnsDiscovery(targets, nameservers=server.nameservers, **kwargs)  # type: ignore[arg-type]


class RecordingPool:
    """The smallest pool: remembers each update, so tests see exactly what was applied."""

    def __init__(self) -> None:
        self.updates: list[set[str]] = []

    def update(self, backends: object) -> None:
        self.updates.append({b.url for b in backends})  # type: ignore[attr-defined]


def test_a_records_become_backends_on_the_given_port(dnsmasq: Dnsmasq) -> None:
    """Each A and AAAA record of a name becomes one backend URL on the configured port."""
    dnsmasq.set_hosts({GPU: ["127.0.0.2", "127.0.0.3", "::1"]})
    found = discovery(dnsmasq, DnsTarget(GPU, port=8000)).resolve()
    assert urls(found.backends) == {
        "http://127.0.0.2:8000",
        "http://127.0.0.3:8000",
        "http://[::1]:8000",
    }
    assert found.errors == ()
    assert all(b.labels["dns_name"] == GPU for b in found.backends)


def test_srv_records_bring_their_own_ports(dnsmasq: Dnsmasq) -> None:
    """A name without a port is looked up as SRV; each record's target and port make a backend."""
    dnsmasq.set_hosts({f"w1.{DOMAIN}": ["127.0.0.2"], f"w2.{DOMAIN}": ["127.0.0.3"]})
    dnsmasq.set_srv({SRV: [(f"w1.{DOMAIN}", 8001), (f"w2.{DOMAIN}", 8002)]})
    found = discovery(dnsmasq, SRV).resolve()
    assert urls(found.backends) == {"http://127.0.0.2:8001", "http://127.0.0.3:8002"}


def test_names_map_to_tiers_and_weights(dnsmasq: Dnsmasq) -> None:
    """A GPU and a CPU name become tier-0 and tier-1 backends with their own weights; a shared
    address keeps the earlier name."""
    dnsmasq.set_hosts({GPU: ["127.0.0.2", "127.0.0.4"], CPU: ["127.0.0.3", "127.0.0.4"]})
    found = discovery(
        dnsmasq,
        [DnsTarget(GPU, tier=0, weight=4.0), DnsTarget(CPU, tier=1)],
        port=8000,
    ).resolve()
    by_url = {b.url: b for b in found.backends}
    assert {u: (b.tier, b.weight) for u, b in by_url.items()} == {
        "http://127.0.0.2:8000": (0, 4.0),
        "http://127.0.0.4:8000": (0, 4.0),
        "http://127.0.0.3:8000": (1, 1.0),
    }


@pytest.mark.parametrize(
    ("min_ttl", "max_ttl", "expected"),
    [(0.1, 30.0, float(TTL)), (5.0, 30.0, 5.0), (0.1, 0.5, 0.5)],
    ids=["record-ttl", "floor", "ceiling"],
)
def test_refresh_follows_the_record_ttl_within_floor_and_ceiling(
    dnsmasq: Dnsmasq, min_ttl: float, max_ttl: float, expected: float
) -> None:
    """The next refresh is due one record TTL later, clamped to [min_ttl, max_ttl], on the injected
    clock."""
    dnsmasq.set_hosts({GPU: ["127.0.0.2"]})
    clock = ManualClock(100.0)
    source = discovery(dnsmasq, GPU, port=8000, min_ttl=min_ttl, max_ttl=max_ttl, clock=clock)
    assert source.refresh(RecordingPool()) == pytest.approx(expected)
    assert source.next_refresh == pytest.approx(100.0 + expected)


def test_pod_added_and_removed_reach_the_pool(dnsmasq: Dnsmasq) -> None:
    """After dnsmasq rereads its records (SIGHUP), the next refresh adds the new pod to a real pool
    and removes the gone one."""
    dnsmasq.set_hosts({GPU: ["127.0.0.2", "127.0.0.3"]})
    pool = BackendPool()
    source = discovery(dnsmasq, GPU, port=8000)
    source.refresh(pool)
    assert urls(pool.backends) == {"http://127.0.0.2:8000", "http://127.0.0.3:8000"}
    lease = pool.acquire()
    dnsmasq.set_hosts({GPU: ["127.0.0.3", "127.0.0.5"]})
    source.refresh(pool)
    assert urls(pool.backends) == {"http://127.0.0.3:8000", "http://127.0.0.5:8000"}
    # A lease taken before the removal still releases cleanly (the pool drains it).
    pool.release(lease, Outcome.SUCCESS)


def test_server_gone_keeps_the_last_good_set_and_logs(
    dnsmasq: Dnsmasq, caplog: pytest.LogCaptureFixture
) -> None:
    """When the DNS server stops answering, the pool keeps its backends, the failure is logged once,
    and retries back off."""
    dnsmasq.set_hosts({GPU: ["127.0.0.2", "127.0.0.3"]})
    pool = RecordingPool()
    source = discovery(dnsmasq, GPU, port=8000, min_ttl=0.2, max_ttl=1.0, timeout=0.3)
    source.refresh(pool)
    dnsmasq.stop()
    with caplog.at_level(logging.DEBUG, logger="embedbalance.dns"):
        delays = [source.refresh(pool) for _ in range(3)]
    assert pool.updates[-1] == {"http://127.0.0.2:8000", "http://127.0.0.3:8000"}
    assert delays == pytest.approx([0.2, 0.4, 0.8])
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    failed = (
        # the lookup's own error, named (dnspython's class, not an empty or None one)
        rf"^DNS lookup of {re.escape(GPU)} failed \(A: (?!NoneType)[A-Z]\w+: .+\); "
        r"keeping its 2 last known backends$"
    )
    assert re.match(failed, warnings[0].getMessage(), re.DOTALL), warnings[0].getMessage()
    debug = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
    still = [
        m for m in debug if re.match(rf"^DNS lookup of {re.escape(GPU)} still failing: A: \w+", m)
    ]
    assert len(still) == 2, debug
    # Back again, with a change: picked up on the next round, and the log says so, once.
    dnsmasq.set_hosts({GPU: ["127.0.0.3"]})
    dnsmasq.start()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="embedbalance.dns"):
        assert source.refresh(pool) == pytest.approx(TTL)
        assert pool.updates[-1] == {"http://127.0.0.3:8000"}
        assert f"DNS lookup of {GPU} recovered: 1 backends" in [
            r.getMessage() for r in caplog.records
        ]
        caplog.clear()
        source.refresh(pool)
        assert not any("recovered" in r.getMessage() for r in caplog.records)


def test_a_name_that_never_resolved_fails_with_nothing_kept(
    dnsmasq: Dnsmasq, caplog: pytest.LogCaptureFixture
) -> None:
    """A first lookup that fails leaves that name with no backends and says so (0 kept);
    nothing crashes. If this fails, a discovery started while DNS is down raises instead
    of waiting for it."""
    dnsmasq.stop()
    pool = RecordingPool()
    source = discovery(dnsmasq, GPU, port=8000, min_ttl=0.2, max_ttl=1.0, timeout=0.3)
    with caplog.at_level(logging.WARNING, logger="embedbalance.dns"):
        assert source.refresh(pool) == pytest.approx(0.2)
    message = next(r.getMessage() for r in caplog.records)
    assert message.endswith("; keeping its 0 last known backends"), message
    assert source.backends == ()


class FlakyResolver(dns.resolver.Resolver):
    """A real resolver aimed at dnsmasq that fails, on demand, for chosen names."""

    def __init__(self, server: Dnsmasq) -> None:
        super().__init__(configure=False)
        self.nameservers = server.resolver().nameservers
        self.broken: set[str] = set()

    def resolve(self, qname: object, *args: object, **kwargs: object) -> dns.resolver.Answer:  # type: ignore[override]
        if str(qname) in self.broken:
            raise dns.exception.Timeout(timeout=0.0)
        return super().resolve(qname, *args, **kwargs)  # type: ignore[arg-type]


def test_one_failing_name_keeps_its_backends_while_others_update(dnsmasq: Dnsmasq) -> None:
    """Through a resolver= override, a name whose lookup fails keeps its last answer while a name
    that resolves is updated."""
    dnsmasq.set_hosts({GPU: ["127.0.0.2"], CPU: ["127.0.0.3"]})
    resolver = FlakyResolver(dnsmasq)
    source = DnsDiscovery(
        [DnsTarget(GPU, tier=0), DnsTarget(CPU, tier=1)], port=8000, resolver=resolver
    )
    pool = RecordingPool()
    source.refresh(pool)
    resolver.broken.add(GPU)
    dnsmasq.set_hosts({CPU: ["127.0.0.4"]})
    found = source.resolve()
    assert isinstance(found, Resolution)
    assert len(found.errors) == 1
    assert GPU in found.errors[0]
    assert {(b.url, b.tier) for b in found.backends} == {
        ("http://127.0.0.2:8000", 0),
        ("http://127.0.0.4:8000", 1),
    }


def test_a_name_without_records_loses_its_backends_but_the_pool_is_never_emptied(
    dnsmasq: Dnsmasq, caplog: pytest.LogCaptureFixture
) -> None:
    """NXDOMAIN for one tier removes that tier's backends; an answer that would empty the pool is
    refused unless allow_empty, and the refusal is logged with the names and the way out.
    Each change of membership is logged once, with what was added and removed."""
    dnsmasq.set_hosts({GPU: ["127.0.0.2"], CPU: ["127.0.0.3"]})
    targets = [DnsTarget(GPU, tier=0), DnsTarget(CPU, tier=1)]
    guarded, permissive = RecordingPool(), RecordingPool()
    sources = [
        (discovery(dnsmasq, targets, port=8000), guarded),
        (discovery(dnsmasq, targets, port=8000, allow_empty=True), permissive),
    ]
    for source, pool in sources:
        source.refresh(pool)
    dnsmasq.set_hosts({GPU: ["127.0.0.2"]})
    with caplog.at_level(logging.INFO, logger="embedbalance.dns"):
        for source, pool in sources:
            source.refresh(pool)
            assert pool.updates[-1] == {"http://127.0.0.2:8000"}
        changes = [r.getMessage() for r in caplog.records if r.name == "embedbalance.dns"]
        assert changes == ["DNS discovery: 1 backends (+0 -1)"] * 2
        caplog.clear()
        for source, pool in sources:
            source.refresh(pool)  # the same answer: nothing to log
        assert [r for r in caplog.records if r.name == "embedbalance.dns"] == []
    dnsmasq.set_hosts({})
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="embedbalance.dns"):
        for source, pool in sources:
            source.refresh(pool)
    messages = [r.getMessage() for r in caplog.records if r.name == "embedbalance.dns"]
    assert (
        f"DNS answers for {GPU}, {CPU} would remove all 1 backends; keeping them "
        "(pass allow_empty=True to allow scaling to zero)"
    ) in messages
    assert "DNS discovery: 0 backends (+0 -1)" in messages
    assert guarded.updates[-1] == {"http://127.0.0.2:8000"}
    assert sources[0][0].backends
    assert not sources[1][0].backends
    assert permissive.updates[-1] == set()


def test_start_fills_the_pool_synchronously_and_stop_leaves_no_thread(dnsmasq: Dnsmasq) -> None:
    """start() returns with the pool filled, its thread applies a change within a TTL, and stop()
    joins it."""
    dnsmasq.set_hosts({GPU: ["127.0.0.2"]})
    pool = BackendPool()
    source = discovery(dnsmasq, GPU, port=8000)
    source.start(pool)
    try:
        assert urls(pool.backends) == {"http://127.0.0.2:8000"}
        with pytest.raises(RuntimeError, match="already running"):
            source.start(pool)
        dnsmasq.set_hosts({GPU: ["127.0.0.2", "127.0.0.3"]})
        assert wait_until(lambda: len(pool.backends) == 2, timeout=TTL + 2.0)
    finally:
        source.stop()
    assert not [t for t in threading.enumerate() if t.name == "embedbalance-dns"]


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.mark.anyio
async def test_arun_reports_started_after_resolving_and_refreshes_until_cancelled(
    dnsmasq: Dnsmasq,
) -> None:
    """On asyncio and trio, arun fills the pool before started(), follows a change, and stops on
    cancellation."""
    dnsmasq.set_hosts({GPU: ["127.0.0.2"]})
    pool = BackendPool()
    source = discovery(dnsmasq, GPU, port=8000)
    async with anyio.create_task_group() as tg:
        await tg.start(source.arun, pool)
        assert urls(pool.backends) == {"http://127.0.0.2:8000"}
        await anyio.to_thread.run_sync(dnsmasq.set_hosts, {GPU: ["127.0.0.3"]})
        with anyio.fail_after(TTL + 2.0):
            while urls(pool.backends) != {"http://127.0.0.3:8000"}:
                await anyio.sleep(0.02)
        tg.cancel_scope.cancel()
    # Cancelled cleanly: the same source may run again.
    async with anyio.create_task_group() as tg:
        await tg.start(source.arun, pool)
        tg.cancel_scope.cancel()


class _Replica(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = self.server.server_address[0].encode()  # type: ignore[index]
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def replicas() -> Iterator[tuple[int, list[str]]]:
    """Three tiny HTTP servers on 127.0.0.2-4, all on one port, as pods of one Service."""
    addresses = ["127.0.0.2", "127.0.0.3", "127.0.0.4"]
    port = free_port()
    servers = [ThreadingHTTPServer((a, port), _Replica) for a in addresses]
    threads = [
        threading.Thread(target=s.serve_forever, kwargs={"poll_interval": 0.05}) for s in servers
    ]
    for t in threads:
        t.start()
    try:
        yield port, addresses
    finally:
        for s in servers:
            s.shutdown()
            s.server_close()
        for t in threads:
            t.join(timeout=5)


def test_traffic_follows_dns_within_a_ttl_and_nothing_is_lost(
    dnsmasq: Dnsmasq, replicas: tuple[int, list[str]]
) -> None:
    """Requests balanced over DNS-discovered replicas move off a removed pod and onto an added one
    within a TTL, and every request succeeds."""
    port, (a, b, c) = replicas
    dnsmasq.set_hosts({GPU: [a, b]})
    # Round-robin without slow start, so "traffic follows" is visible within seconds;
    # slow start ramps a new pod's share over its window and is the pool's own concern.
    pool = BackendPool(balancer=RoundRobin(), slow_start=None)
    source = discovery(dnsmasq, GPU, port=port)
    source.start(pool)
    served: list[tuple[float, str]] = []
    failures = 0
    try:
        with httpx.Client(timeout=2.0) as client:

            def send() -> None:
                nonlocal failures
                lease = pool.acquire()
                # Guard before sending: no request may leave the loopback network.
                assert ip_address(lease.backend.host).is_loopback
                try:
                    response = client.get(lease.backend.url + "/embed")
                    response.raise_for_status()
                except httpx.HTTPError:
                    failures += 1
                    pool.release(lease, Outcome.FAILURE)
                    return
                pool.release(lease, Outcome.SUCCESS)
                served.append((time.monotonic(), response.text))

            for _ in range(40):
                send()
            changed_at = time.monotonic()
            dnsmasq.set_hosts({GPU: [b, c]})  # pod a removed, pod c added
            deadline = changed_at + TTL + 3.0
            while time.monotonic() < deadline:
                send()
                time.sleep(0.005)
    finally:
        source.stop()
    assert failures == 0
    before = Counter(host for t, host in served if t < changed_at)
    assert set(before) == {a, b}
    # Within one TTL plus a refresh floor and some scheduling slack, traffic has moved.
    settle = changed_at + TTL + 1.0
    after = Counter(host for t, host in served if t >= settle)
    assert set(after) == {b, c}
    assert all(ip_address(h).is_loopback for _, h in served)


def test_missing_dnsmasq_skips_locally_but_fails_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the binary the DNS tests skip with a reason, except under CI=true: they fail."""
    monkeypatch.setenv("PATH", "")
    missing = "embedbalance-no-such-binary"
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="not installed"):
        system_binary(missing)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true"):
        system_binary(missing)


def test_transport_balances_over_dns_discovered_pods(
    dnsmasq: Dnsmasq, replicas: tuple[int, list[str]]
) -> None:
    """A BalancingTransport built on DnsDiscovery resolves before its first request, follows a
    pod change within a TTL, loses nothing, and stops the discovery thread on close."""
    from embedbalance.transport import BalancingTransport

    port, (a, b, c) = replicas
    dnsmasq.set_hosts({GPU: [a, b]})
    transport = BalancingTransport(
        discovery(dnsmasq, GPU, port=port),
        balancer=RoundRobin(),
        slow_start=None,
        health_check=None,
    )
    hosts: list[tuple[float, str]] = []
    with httpx.Client(transport=transport, base_url="http://workers") as client:
        for _ in range(20):
            hosts.append((time.monotonic(), client.get("/embed").text))
        changed_at = time.monotonic()
        dnsmasq.set_hosts({GPU: [b, c]})
        while time.monotonic() < changed_at + TTL + 2.5:
            hosts.append((time.monotonic(), client.get("/embed").text))
            time.sleep(0.01)
    assert {h for t, h in hosts if t < changed_at} == {a, b}
    assert {h for t, h in hosts if t >= changed_at + TTL + 1.0} == {b, c}
    assert not [t for t in threading.enumerate() if "dns" in t.name.lower() and t.is_alive()]


@pytest.mark.anyio
async def test_async_transport_balances_over_dns_discovered_pods(
    dnsmasq: Dnsmasq, replicas: tuple[int, list[str]]
) -> None:
    """The async transport runs DnsDiscovery in its background task: resolved before the first
    request, and a removed pod gets no traffic after a TTL."""
    from embedbalance.transport import AsyncBalancingTransport

    port, (a, b, c) = replicas
    dnsmasq.set_hosts({GPU: [a, b, c]})
    source = discovery(dnsmasq, GPU, port=port)
    async with (
        AsyncBalancingTransport(
            source, balancer=RoundRobin(), slow_start=None, health_check=None
        ) as transport,
        httpx.AsyncClient(transport=transport, base_url="http://workers") as client,
    ):
        first = {(await client.get("/embed")).text for _ in range(9)}
        assert first == {a, b, c}
        dnsmasq.set_hosts({GPU: [a]})
        await anyio.sleep(TTL + 1.0)
        later = {(await client.get("/embed")).text for _ in range(9)}
        assert later == {a}
