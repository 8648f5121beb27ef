"""https backends behind a private CA (a throwaway one from trustme): every request the
library makes, health checks included, goes through the user's inner transport (its TLS
trust) with the user's headers, and a backend reached by address can name the server
name its certificate is issued for."""

from __future__ import annotations

import ssl
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from tei_stub import TeiStub, tei_vector

import embedbalance as eb

pytestmark = pytest.mark.timeout(60)

Stubs = Callable[..., list[TeiStub]]
KEY = "sekret-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


def _context(ca: Any) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


def _checks(**kwargs: Any) -> eb.HealthCheck:
    """Fast checks that mark a backend unhealthy at the first failed one."""
    return eb.HealthCheck(**{"interval": 0.1, "timeout": 2.0, "rise": 1, "fall": 1, **kwargs})


def _wait_for_checks(replicas: list[TeiStub], n: int = 3, limit: float = 10.0) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if all(s.health_checks >= n for s in replicas):
            return
        time.sleep(0.05)
    raise AssertionError(f"health checks did not arrive: {[s.health_checks for s in replicas]}")


def _states(stats: eb.TransportStats) -> set[str]:
    return {b.state for b in stats.pool.backends}


@pytest.mark.parametrize("shape", ["shared", "factory"])
def test_private_ca_backends_stay_healthy_with_authorised_checks(
    stubs: Stubs, ca: Any, shape: str
) -> None:
    """https replicas signed by a private CA, whose health route needs a bearer token, stay healthy when the user's inner transport trusts the CA and HealthCheck carries the header (else the pool marks every replica unhealthy and panics although requests succeed)."""
    cert = ca.issue_cert("127.0.0.1")
    replicas = stubs(3, tls=cert, api_key=KEY, health_auth=True)
    context = _context(ca)
    inner: Any = (
        httpx.HTTPTransport(verify=context)
        if shape == "shared"
        else (lambda backend: httpx.HTTPTransport(verify=context))
    )
    transport = eb.BalancingTransport(
        [s.url for s in replicas], transport=inner, health_check=_checks(headers=AUTH)
    )
    with httpx.Client(
        transport=transport, base_url="http://tei", headers=AUTH, timeout=10
    ) as client:
        transport.start()
        _wait_for_checks(replicas)
        rows = [client.post("/embed", json={"inputs": [f"t{i}"]}).json()[0] for i in range(6)]
        stats = transport.stats()
    assert rows == [tei_vector(f"t{i}") for i in range(6)]
    assert _states(stats) == {"healthy"}
    assert stats.pool.panic is False
    assert sum(s.health_unauthorized for s in replicas) == 0


@pytest.mark.anyio
async def test_private_ca_backends_stay_healthy_async(stubs: Stubs, ca: Any) -> None:
    """The async twin's health checks also go through the user's inner transport with its headers (else async apps panic behind a private CA)."""
    cert = ca.issue_cert("127.0.0.1")
    replicas = stubs(2, tls=cert, api_key=KEY, health_auth=True)
    inner = httpx.AsyncHTTPTransport(verify=_context(ca))
    transport = eb.AsyncBalancingTransport(
        [s.url for s in replicas], transport=inner, health_check=_checks(headers=AUTH)
    )
    import anyio

    async with httpx.AsyncClient(
        transport=transport, base_url="http://tei", headers=AUTH, timeout=10
    ) as client:
        await transport.start()
        with anyio.fail_after(10):
            while not all(s.health_checks >= 3 for s in replicas):
                await anyio.sleep(0.05)
        r = await client.post("/embed", json={"inputs": ["x"]})
        stats = transport.stats()
    assert r.json() == [tei_vector("x")]
    assert _states(stats) == {"healthy"}
    assert sum(s.health_unauthorized for s in replicas) == 0


def test_health_checks_without_the_header_mark_backends_unhealthy(stubs: Stubs, ca: Any) -> None:
    """Without the header the same checks fail (so the test above proves the header is sent, and a 401 is not taken for health)."""
    cert = ca.issue_cert("127.0.0.1")
    replicas = stubs(2, tls=cert, api_key=KEY, health_auth=True)
    transport = eb.BalancingTransport(
        [s.url for s in replicas],
        transport=httpx.HTTPTransport(verify=_context(ca)),
        health_check=_checks(),
    )
    with transport:
        _wait_for_checks(replicas)
        stats = transport.stats()
    assert _states(stats) == {"unhealthy"}
    assert sum(s.health_unauthorized for s in replicas) >= 4


def test_tls_server_name_verifies_the_certificates_name_while_connecting_by_address(
    stubs: Stubs, ca: Any
) -> None:
    """A backend reached at 127.0.0.1 with a certificate for tei.internal answers requests when it names tls_server_name, which is also sent as Host (else pods behind a headless Service cannot use https)."""
    cert = ca.issue_cert("tei.internal")
    (stub,) = stubs(1, tls=cert)
    backend = eb.Backend(stub.url, tls_server_name="tei.internal")
    transport = eb.BalancingTransport(
        [backend], transport=httpx.HTTPTransport(verify=_context(ca)), health_check=None
    )
    with httpx.Client(transport=transport, base_url="http://tei", timeout=10) as client:
        r = client.post("/embed", json={"inputs": ["named"]})
    assert r.json() == [tei_vector("named")]
    embed_hosts = {s.headers.get("host") for s in stub.seen if s.path == "/embed"}
    assert embed_hosts == {f"tei.internal:{stub.port}"}


def test_health_checks_use_the_tls_server_name_too(stubs: Stubs, ca: Any) -> None:
    """Health checks of a backend with tls_server_name verify that name too, so the backend stays healthy (else every such backend is marked unhealthy although its requests succeed)."""
    cert = ca.issue_cert("tei.internal")
    (stub,) = stubs(1, tls=cert)
    backend = eb.Backend(stub.url, tls_server_name="tei.internal")
    transport = eb.BalancingTransport(
        [backend], transport=httpx.HTTPTransport(verify=_context(ca)), health_check=_checks()
    )
    with transport:
        _wait_for_checks([stub])
        stats = transport.stats()
    assert _states(stats) == {"healthy"}
    checks = [s for s in stub.seen if s.path == "/health"]
    assert {s.headers.get("host") for s in checks} == {f"tei.internal:{stub.port}"}


def test_without_tls_server_name_the_address_does_not_verify(stubs: Stubs, ca: Any) -> None:
    """The same backend without tls_server_name fails verification with an httpx error (so the test above proves the name is what makes it work)."""
    cert = ca.issue_cert("tei.internal")
    (stub,) = stubs(1, tls=cert)
    transport = eb.BalancingTransport(
        [stub.url],
        transport=httpx.HTTPTransport(verify=_context(ca)),
        health_check=None,
        outlier_detection=None,
    )
    with (
        httpx.Client(transport=transport, base_url="http://tei", timeout=10) as client,
        pytest.raises(eb.AllAttemptsFailed) as caught,
    ):
        client.post("/embed", json={"inputs": ["x"]})
    assert isinstance(caught.value.__cause__, httpx.ConnectError)


@pytest.mark.system
@pytest.mark.parametrize("server_name", [True, "tei-pods.internal"])
def test_dns_target_names_the_tls_server(
    stubs: Stubs, ca: Any, dnsmasq: Any, server_name: bool | str
) -> None:
    """An https DnsTarget resolved by a real dnsmasq to 127.0.0.1 verifies its pods' certificate against the target name (True) or the given name (else DNS discovery cannot be used with https)."""
    from dnsmasq_server import DOMAIN

    name = f"tei.{DOMAIN}"
    cert_name = name if server_name is True else str(server_name)
    cert = ca.issue_cert(cert_name)
    (stub,) = stubs(1, tls=cert)
    dnsmasq.set_hosts({name: ["127.0.0.1"]})
    discovery = eb.DnsDiscovery(
        [eb.DnsTarget(name + ".", port=stub.port, scheme="https", tls_server_name=server_name)],
        nameservers=dnsmasq.nameservers,
        timeout=0.5,
        min_ttl=0.1,
    )
    transport = eb.BalancingTransport(
        discovery, transport=httpx.HTTPTransport(verify=_context(ca)), health_check=None
    )
    with httpx.Client(transport=transport, base_url="http://tei", timeout=10) as client:
        r = client.post("/embed", json={"inputs": ["dns"]})
        backends = transport.pool.backends
    assert r.json() == [tei_vector("dns")]
    assert {b.tls_server_name for b in backends} == {cert_name}
    assert {s.headers.get("host") for s in stub.seen if s.path == "/embed"} == {
        f"{cert_name}:{stub.port}"
    }
