"""Per-backend inner transports: one per replica from a factory, each closed when its
replica leaves the pool (sync at once, async at the next chance), over real sockets.

Why: connections are per backend, and pods come and go by the thousand over a
cluster's life; an inner transport kept after its replica left is a leak that grows
with every rollout.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from typing import Any

import anyio
import httpx
import pytest
from echo_server import EchoServer, echo_servers
from tests.helpers.forked import in_child

import embedbalance as eb

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def two() -> Iterator[list[EchoServer]]:
    with echo_servers(2) as started:
        yield started


class Recording(httpx.HTTPTransport):
    """A real HTTP transport that remembers whether it was closed."""

    closed = False

    def close(self) -> None:
        self.closed = True
        super().close()


class ARecording(httpx.AsyncHTTPTransport):
    closed = False

    async def aclose(self) -> None:
        self.closed = True
        await super().aclose()


def _arecording() -> tuple[dict[str, ARecording], Callable[[eb.Backend], ARecording]]:
    """A factory of async inner transports, and what it made, by backend URL."""
    made: dict[str, ARecording] = {}

    def factory(backend: eb.Backend) -> ARecording:
        made[backend.url] = inner = ARecording()
        return inner

    return made, factory


def test_a_factory_gives_each_backend_its_own_transport_closed_when_it_leaves(
    two: list[EchoServer],
) -> None:
    """If this fails, replicas share (or never get) their own connections, or a replica
    that left the pool keeps its connections open for the transport's lifetime."""
    made: dict[str, Recording] = {}

    def factory(backend: eb.Backend) -> httpx.BaseTransport:
        made[backend.url] = inner = Recording()
        return inner

    urls = [s.url for s in two]
    transport = eb.BalancingTransport(
        urls, transport=factory, health_check=None, balancer=eb.RoundRobin()
    )
    with httpx.Client(transport=transport, base_url="http://e") as client:
        for _ in range(4):
            assert client.get("/x").status_code == 200
        assert sorted(made) == sorted(urls)
        assert all(s.hits == 2 for s in two)
        transport.pool.update([urls[0]])
        assert made[urls[1]].closed
        assert not made[urls[0]].closed
        assert client.get("/x").status_code == 200
    assert made[urls[0]].closed  # closing the transport closes the rest


def test_one_shared_transport_serves_every_backend(two: list[EchoServer]) -> None:
    inner = Recording()
    transport = eb.BalancingTransport([s.url for s in two], transport=inner, health_check=None)
    with httpx.Client(transport=transport, base_url="http://e") as client:
        for _ in range(4):
            assert client.get("/x").status_code == 200
        transport.pool.update([two[0].url])
        assert not inner.closed  # shared: still serving the others
    assert inner.closed


@pytest.mark.parametrize("given", [42, "http://x"])
def test_a_transport_that_is_neither_a_transport_nor_a_factory_is_refused(given: object) -> None:
    with pytest.raises(TypeError, match=r"^transport must be an httpx transport or a factory"):
        eb.BalancingTransport(["http://127.0.0.1:9"], transport=given, health_check=None)  # type: ignore[arg-type]


def test_the_async_twin_closes_a_leaving_backends_transport_at_the_next_request(
    two: list[EchoServer],
) -> None:
    """A pool event may come from any thread and closing is async: the async transport
    parks the inner transport and closes it at its next chance. If this fails, async
    apps leak a connection pool per departed replica."""
    made, factory = _arecording()
    urls = [s.url for s in two]

    async def main() -> None:
        transport = eb.AsyncBalancingTransport(
            urls, transport=factory, health_check=None, balancer=eb.RoundRobin()
        )
        async with httpx.AsyncClient(transport=transport, base_url="http://e") as client:
            for _ in range(4):
                assert (await client.get("/x")).status_code == 200
            assert sorted(made) == sorted(urls)
            transport.pool.update([urls[0]])
            assert not made[urls[1]].closed  # parked, not yet closed
            assert (await client.get("/x")).status_code == 200
            assert made[urls[1]].closed
            assert not made[urls[0]].closed
        assert made[urls[0]].closed

    anyio.run(main)


def test_the_async_twin_closes_parked_transports_during_health_rounds(
    two: list[EchoServer],
) -> None:
    """With no request coming, the health-check round closes a parked transport."""
    made, factory = _arecording()
    urls = [s.url for s in two]

    async def main() -> None:
        transport = eb.AsyncBalancingTransport(
            urls, transport=factory, health_check=eb.HealthCheck(interval=0.05, jitter=0.0)
        )
        async with transport:
            with anyio.fail_after(10):
                while len(made) < 2:
                    await anyio.sleep(0.02)
            transport.pool.update([urls[0]])
            with anyio.fail_after(10):
                while not made[urls[1]].closed:
                    await anyio.sleep(0.02)
            assert not made[urls[0]].closed

    anyio.run(main)


def test_a_backend_named_for_tls_carries_its_name_as_sni(two: list[EchoServer]) -> None:
    """The attempt asks the inner transport to verify the certificate's name (SNI), not
    the address. If this fails, TLS pods reached by address fail verification."""
    seen: list[httpx.Request] = []

    class Spy(httpx.HTTPTransport):
        def handle_request(self, request: httpx.Request) -> httpx.Response:
            seen.append(request)
            return super().handle_request(request)

    backend = eb.Backend(two[0].url, tls_server_name="gpu.example")
    transport = eb.BalancingTransport([backend], transport=Spy(), health_check=None)
    with httpx.Client(transport=transport, base_url="http://e") as client:
        assert client.get("/x").status_code == 200
    assert seen[0].extensions["sni_hostname"] == "gpu.example"
    assert two[0].seen[-1].host == "gpu.example:" + str(two[0].url.rsplit(":", 1)[1])


def test_the_async_twin_runs_a_discovery_in_its_background(two: list[EchoServer]) -> None:
    """A Discovery given instead of URLs fills the async transport's pool before the
    first request. If this fails, async apps with discovery start with no backends."""

    async def main() -> None:
        discovery = eb.StaticDiscovery([s.url for s in two])
        async with (
            eb.AsyncBalancingTransport(discovery, health_check=None) as transport,
            httpx.AsyncClient(transport=transport, base_url="http://e") as client,
        ):
            assert sorted(b.url for b in transport.pool.backends) == sorted(s.url for s in two)
            assert (await client.get("/x")).status_code == 200

    anyio.run(main)


@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_a_forked_child_builds_its_own_inner_transports(two: list[EchoServer]) -> None:
    """After a fork (gunicorn --preload), the child makes fresh inner transports: the
    parent's connections must not be shared across processes. If this fails, parent
    and child write to the same sockets, or the child deadlocks on a copied lock."""
    made: list[tuple[int, str]] = []

    def factory(backend: eb.Backend) -> httpx.BaseTransport:
        made.append((os.getpid(), backend.url))
        return httpx.HTTPTransport()

    transport = eb.BalancingTransport(
        [two[0].url], transport=factory, health_check=None, balancer=eb.RoundRobin()
    )
    with httpx.Client(transport=transport, base_url="http://e") as client:
        assert client.get("/x").status_code == 200

        def child() -> list[object]:
            statuses = [client.get("/x").status_code for _ in range(3)]
            return [statuses, sum(pid == os.getpid() for pid, _ in made)]

        # three requests in the child, one inner transport made there and then reused
        assert in_child(child) == [[200, 200, 200], 1]
        assert client.get("/x").status_code == 200
    assert [url for _, url in made] == [two[0].url]  # the parent made one, and kept it


class BrokenDiscovery:
    """A discovery that fails before it can report itself started."""

    def start(self, pool: eb.BackendPool) -> None:
        raise ValueError("no such Service")

    def stop(self) -> None:
        return None

    async def arun(self, pool: eb.BackendPool, *, task_status: object = None) -> None:
        raise ValueError("no such Service")


def test_the_async_twin_raises_a_discovery_that_fails_to_start(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """If this fails, an async app whose discovery cannot start runs on with an empty
    pool (every request: no backend) instead of failing at start-up with the reason."""

    async def main() -> None:
        transport = eb.AsyncBalancingTransport(BrokenDiscovery(), health_check=None)
        with pytest.raises(ValueError, match=r"^no such Service$"):
            await transport.start()
        with pytest.raises(RuntimeError, match="closed"):
            await transport.start()

    with caplog.at_level(logging.ERROR, logger="embedbalance"):
        anyio.run(main)
    assert [r.getMessage() for r in caplog.records] == ["background tasks of the transport failed"]


def test_the_async_twin_learns_each_replicas_model_through_its_own_transport() -> None:
    """The async transport's health rounds read ``/info`` through the inner transport
    the replica's requests use. If this fails, async apps route requests naming a model
    only to replicas whose model was given by hand."""
    from tei_stub import tei_stubs

    made: list[str] = []

    def factory(backend: eb.Backend) -> httpx.AsyncBaseTransport:
        made.append(backend.url)
        return httpx.AsyncHTTPTransport()

    async def main(url: str) -> None:
        policy = eb.HealthCheck(interval=0.05, jitter=0.0)
        async with eb.AsyncBalancingTransport([url], transport=factory, health_check=policy) as t:
            with anyio.fail_after(10):
                while t.pool.model_of(eb.Backend(url)) is None:
                    await anyio.sleep(0.02)
            assert t.pool.model_of(eb.Backend(url)) == "stub/tei-minilm"

    with tei_stubs(1) as (stub,):
        anyio.run(main, stub.url)
    assert made == [stub.url]  # one inner transport, shared by checks and /info


def test_start_unwraps_nested_one_member_groups_but_keeps_a_real_group() -> None:
    """The error ``start()`` raises is the discovery's own, however many task groups
    wrapped it; a group of several errors is kept whole (no error is dropped)."""
    from embedbalance.transport import _single_error

    try:
        from builtins import ExceptionGroup  # Python 3.11+
    except ImportError:  # 3.10: the backport anyio depends on
        from exceptiongroup import ExceptionGroup

    cause = ValueError("no such Service")
    nested = ExceptionGroup("outer", [ExceptionGroup("inner", [cause])])
    assert _single_error(nested) is cause
    several = ExceptionGroup("outer", [cause, KeyError("k")])
    assert _single_error(several) is several
    assert _single_error(cause) is cause


@pytest.mark.parametrize("twin", ["sync", "async"])
def test_a_member_keeps_its_inner_transport_through_ejection_and_recovery(
    two: list[EchoServer], twin: str
) -> None:
    """Only leaving the pool retires a replica's inner transport: one that fails its
    checks, is ejected, or is overloaded keeps its connections and gets them back when
    it recovers. If this fails, every health flap or 429 closes a replica's connection
    pool (and the async twin opens a new one each time)."""
    made: list[tuple[str, Any]] = []

    def factory(backend: eb.Backend) -> Any:
        inner = Recording() if twin == "sync" else ARecording()
        made.append((backend.url, inner))
        return inner

    urls = [s.url for s in two]
    kwargs: dict[str, Any] = {
        "transport": factory,
        "health_check": eb.HealthCheck(rise=1, fall=1),
        "balancer": eb.RoundRobin(),
        "slow_start": None,
    }

    before: list[int] = []

    def flap(pool: eb.BackendPool) -> None:
        """Through every event a member can have short of leaving."""
        pool.report_check(urls[1], ok=False)  # unhealthy
        pool.report_check(urls[1], ok=True)  # healthy again
        pool.report_canary(urls[1], False, "wrong answer")  # ejected
        pool.report_canary(urls[1], True, "right answer")  # readmitted
        assert pool.stats().by_url()[urls[1]].state == "healthy"
        before.append(two[1].hits)

    if twin == "sync":
        transport = eb.BalancingTransport(urls, **kwargs)
        with httpx.Client(transport=transport, base_url="http://e") as client:
            for _ in range(4):
                assert client.get("/x").status_code == 200
            flap(transport.pool)
            for _ in range(4):
                assert client.get("/x").status_code == 200
    else:

        async def main() -> None:
            transport = eb.AsyncBalancingTransport(urls, **kwargs)
            async with httpx.AsyncClient(transport=transport, base_url="http://e") as client:
                for _ in range(4):
                    assert (await client.get("/x")).status_code == 200
                flap(transport.pool)
                for _ in range(4):
                    assert (await client.get("/x")).status_code == 200
                assert not any(inner.closed for _, inner in made)

        anyio.run(main)
    assert sorted(url for url, _ in made) == sorted(urls)  # one each, never replaced
    assert two[1].hits > before[0]  # served again after recovering
