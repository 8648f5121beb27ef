"""What DnsDiscovery and DnsTarget accept, and the clear errors for what they do not.

Why: discovery is configured once, often from environment variables or YAML; a typo
must fail at construction with a message naming the setting, not as a resolver error
minutes later (or, worse, as a pool that silently stays empty).
"""

from __future__ import annotations

import re
from pathlib import Path

import dns.name
import dns.nameserver
import dns.resolver
import pytest
from dnsmasq_server import DOMAIN, Dnsmasq

from embedbalance.dns import DnsDiscovery, DnsTarget

GPU = f"gpu.{DOMAIN}."


@pytest.mark.parametrize("port", [1, 8000, 65535, None])
def test_ports_from_1_to_65535_or_none_are_accepted(port: int | None) -> None:
    assert DnsTarget("a.", port=port).port == port
    assert DnsDiscovery("a.", port=port, nameservers="127.0.0.1").port == port


@pytest.mark.parametrize("port", [0, -1, 65536, True, "80", 80.0])
def test_other_ports_are_refused_naming_the_setting(port: object) -> None:
    """If this fails, a port of 0 or 65536 (or a string from an env var) reaches the
    URLs, and every request to the discovered pods fails."""
    message = f"port must be a TCP port (1-65535) or None, got {port!r}"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        DnsTarget("a.", port=port)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        DnsDiscovery("a.", port=port)  # type: ignore[arg-type]


def test_targets_are_a_name_a_target_or_several() -> None:
    one = DnsDiscovery("a.", nameservers="127.0.0.1")
    assert one.targets == (DnsTarget("a."),)
    target = DnsTarget("b.", port=81, tier=1)
    assert DnsDiscovery(target, nameservers="127.0.0.1").targets == (target,)
    mixed = DnsDiscovery(["a.", target], nameservers="127.0.0.1")
    assert mixed.targets == (DnsTarget("a."), target)
    assert DnsTarget("c.", labels=None).labels == {}  # type: ignore[arg-type]
    assert dict(DnsTarget("c.", labels={"k": "v"}).labels) == {"k": "v"}


def test_no_target_or_a_wrong_one_is_refused() -> None:
    with pytest.raises(ValueError, match=r"^DnsDiscovery needs at least one name$"):
        DnsDiscovery([])
    with pytest.raises(TypeError) as wrong:
        DnsDiscovery(["a.", 42])  # type: ignore[list-item]
    assert str(wrong.value) == "expected a name or a DnsTarget, got int"


def test_nameservers_are_addresses_with_port_53_by_default() -> None:
    """If this fails, a nameserver given as a plain address is queried on the wrong port
    (or a name is accepted where dnspython needs an address)."""
    assert DnsDiscovery("a.", nameservers="127.0.0.1").nameservers == (("127.0.0.1", 53),)
    assert DnsDiscovery("a.", nameservers=["127.0.0.1", ("::1", 5353)]).nameservers == (
        ("127.0.0.1", 53),
        ("::1", 5353),
    )
    with pytest.raises(ValueError, match="does not appear to be an IPv4 or IPv6 address"):
        DnsDiscovery("a.", nameservers=["dns.example"])


def test_the_resolver_asks_only_the_given_nameservers_uncached_within_the_timeout() -> None:
    """If this fails, lookups hit a cache (records never seem to change) or run past the
    configured timeout."""
    source = DnsDiscovery("a.", nameservers=[("127.0.0.1", 5353)], timeout=0.7)
    resolver = source._resolver
    assert [(str(n.address), n.port) for n in resolver.nameservers] == [("127.0.0.1", 5353)]  # type: ignore[union-attr]
    assert resolver.cache is None
    assert (resolver.timeout, resolver.lifetime) == (0.7, 0.7)
    # Nothing read from the system's resolv.conf: no search list, the root as domain.
    assert (resolver.search, resolver.domain) == ([], dns.name.root)


def test_without_nameservers_the_systems_are_used() -> None:
    conf = Path("/etc/resolv.conf")
    if not conf.exists() or "nameserver" not in conf.read_text():
        pytest.skip("this machine has no /etc/resolv.conf nameserver to read")
    assert DnsDiscovery("a.")._resolver.nameservers


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"min_ttl": 0.0}, "need 0 < min_ttl <= max_ttl, got min_ttl=0.0, max_ttl=30.0"),
        (
            {"min_ttl": 5.0, "max_ttl": 4.0},
            "need 0 < min_ttl <= max_ttl, got min_ttl=5.0, max_ttl=4.0",
        ),
        ({"timeout": 0.0}, "timeout must be > 0, got 0.0"),
        ({"timeout": -1.0}, "timeout must be > 0, got -1.0"),
    ],
)
def test_bad_ttls_and_timeouts_are_refused(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        DnsDiscovery("a.", nameservers="127.0.0.1", **kwargs)  # type: ignore[arg-type]
    assert DnsDiscovery("a.", nameservers="127.0.0.1", min_ttl=4.0, max_ttl=4.0).min_ttl == 4.0


class Pool:
    def __init__(self) -> None:
        self.urls: set[str] = set()

    def update(self, backends: object) -> None:
        self.urls = {b.url for b in backends}  # type: ignore[attr-defined]


def test_a_name_with_only_aaaa_records_gives_bracketed_ipv6_urls(dnsmasq: Dnsmasq) -> None:
    """A name without A records still has its AAAA ones looked up; the URL brackets the
    address and drops a trailing slash of the path. If this fails, IPv6-only pods are
    never found, or their URLs do not parse."""
    dnsmasq.set_hosts({GPU: ["::1", "::2"]})
    source = DnsDiscovery(
        DnsTarget(GPU, port=8000, path="/v1-X/"), nameservers=dnsmasq.nameservers, timeout=2.0
    )
    pool = Pool()
    source.refresh(pool)
    # Only the trailing slash goes (not a character of the path before it).
    assert pool.urls == {"http://[::1]:8000/v1-X", "http://[::2]:8000/v1-X"}


def test_each_backend_carries_its_targets_tls_name_model_and_zone(dnsmasq: Dnsmasq) -> None:
    """If this fails, TLS pods found by DNS are verified against their address, or
    requests naming a model (or a zone) find none of the discovered replicas."""
    dnsmasq.set_hosts({GPU: ["127.0.0.2"]})
    target = DnsTarget(GPU, port=8443, scheme="https", tls_server_name=True, model="bge", zone="z1")
    source = DnsDiscovery(target, nameservers=dnsmasq.nameservers, timeout=2.0)
    (backend,) = source.resolve().backends
    assert backend.url == "https://127.0.0.2:8443"
    assert (backend.tls_server_name, backend.model, backend.zone) == (GPU.rstrip("."), "bge", "z1")
    assert dict(backend.labels) == {"dns_name": GPU}


def test_a_name_without_srv_records_has_no_backends(dnsmasq: Dnsmasq) -> None:
    """A portless name with no SRV records resolves to nothing, without an error."""
    dnsmasq.set_hosts({GPU: ["127.0.0.2"]})
    source = DnsDiscovery(GPU, nameservers=dnsmasq.nameservers, timeout=2.0)
    resolution = source.resolve()
    assert (resolution.backends, resolution.errors) == ((), ())


def test_a_relative_name_is_completed_by_the_resolvers_search_list(dnsmasq: Dnsmasq) -> None:
    """With a resolver of the app's own (say one reading the pod's resolv.conf), a short
    name such as a Service's is completed by its search domains, as the system
    resolver would. If this fails, ``DnsTarget("embed-workers")`` finds nothing in a
    cluster where ``getent hosts embed-workers`` does."""
    dnsmasq.set_hosts({GPU: ["127.0.0.2"]})
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = [
        dns.nameserver.Do53Nameserver(host, port) for host, port in dnsmasq.nameservers
    ]
    resolver.search = [dns.name.from_text(DOMAIN)]
    resolver.cache = None
    source = DnsDiscovery(DnsTarget("gpu", port=8000), resolver=resolver, timeout=2.0)
    assert [b.url for b in source.resolve().backends] == ["http://127.0.0.2:8000"]


def test_srv_targets_use_the_answers_addresses_and_look_up_only_the_rest(
    dnsmasq: Dnsmasq,
) -> None:
    """A target whose addresses came with the SRV answer is not looked up again; one
    without is (here it has none); a "." target (no service) is skipped, not the end.
    If this fails, each refresh sends a query per pod (thousands in a large Service),
    or one "." record hides every pod listed after it."""
    srv = f"_http._tcp.mixed.{DOMAIN}"
    dnsmasq.set_hosts({f"w1.{DOMAIN}": ["127.0.0.2"]})
    dnsmasq.set_srv({srv: [(f"w1.{DOMAIN}", 8001), (f"gone.{DOMAIN}", 8002), (".", 0)]})
    before = dnsmasq.queries("A", f"w1.{DOMAIN}"), dnsmasq.queries("A", f"gone.{DOMAIN}")
    resolution = DnsDiscovery(srv, nameservers=dnsmasq.nameservers, timeout=2.0).resolve()
    assert [b.url for b in resolution.backends] == ["http://127.0.0.2:8001"]
    assert resolution.errors == ()
    after = dnsmasq.queries("A", f"w1.{DOMAIN}"), dnsmasq.queries("A", f"gone.{DOMAIN}")
    assert (after[0] - before[0], after[1] - before[1]) == (0, 1)
