"""Fork safety as gunicorn ``--preload`` uses it: a transport used in the parent (so its
discovery thread, health checks and attempt threads exist there) keeps serving in a child
made by ``os.fork()``. The child reports through a pipe; every wait is bounded and a stuck
child is killed by its PID."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from tei_stub import TeiStub
from tests.helpers.forked import in_child

import embedbalance as eb

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning"),
]

Stubs = Callable[..., list[TeiStub]]


def _statuses(transport: eb.BalancingTransport, n: int) -> list[int]:
    # Not closed: closing an httpx.Client closes its transport, which the test closes.
    client = httpx.Client(transport=transport, base_url="http://tei", timeout=10)
    return [client.post("/embed", json={"inputs": [f"c{i}"]}).status_code for i in range(n)]


@pytest.mark.system
def test_forked_child_serves_through_dns_discovery(stubs: Stubs, dnsmasq: Any) -> None:
    """A transport with DnsDiscovery and health checks, started in the parent, serves requests in a forked child (else every request in a gunicorn --preload worker raises 'already running')."""
    from dnsmasq_server import DOMAIN

    replicas = stubs(2)
    name = f"tei.{DOMAIN}"
    dnsmasq.set_hosts({name: ["127.0.0.1"]})
    # One name, two ports: a target per replica, as two headless Services would be.
    discovery = eb.DnsDiscovery(
        [eb.DnsTarget(name + ".", port=s.port) for s in replicas],
        nameservers=dnsmasq.nameservers,
        timeout=0.5,
        min_ttl=0.1,
        max_ttl=0.5,
    )
    transport = eb.BalancingTransport(discovery, health_check=eb.HealthCheck(interval=0.2))
    try:
        assert _statuses(transport, 2) == [200, 200]  # the parent's threads now run
        child = in_child(lambda: _statuses(transport, 6))
        assert child == [200] * 6
        assert _statuses(transport, 2) == [200, 200]  # the parent is unharmed
    finally:
        transport.close()


def test_forked_child_serves_through_a_hedged_transport(stubs: Stubs) -> None:
    """A hedged sync transport forked while one of its attempts is in flight serves hedged requests in the child without blocking (else a --preload worker hangs forever)."""
    replicas = stubs(2)
    transport = eb.BalancingTransport(
        [s.url for s in replicas],
        health_check=eb.HealthCheck(interval=0.2),
        hedge=eb.Hedge(min_samples=3, percentile=50.0, min_delay=0.05),
        attempt_timeout=5.0,
    )
    try:
        assert _statuses(transport, 5) == [200] * 5  # hedging armed
        for stub in replicas:
            stub.delay = 0.3
        busy = threading.Thread(target=_statuses, args=(transport, 1), daemon=True)
        busy.start()
        time.sleep(0.1)  # fork with the parent's attempt thread mid-request
        child = in_child(lambda: _statuses(transport, 4))
        busy.join(timeout=10)
        assert child == [200] * 4
        assert sum(s.embed_requests for s in replicas) >= 5 + 1 + 4
    finally:
        transport.close()
