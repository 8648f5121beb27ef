"""Errors follow httpx, and bad input is refused at the boundary: what code written for
plain httpx (``except httpx.HTTPError``, retry libraries, SDK retry loops) sees when the
balancing transport is swapped in, credentials in URLs, and poisonous request costs."""

from __future__ import annotations

import math
from collections.abc import Callable

import httpx
import pytest
from control_proc import free_port
from tei_stub import TeiStub

import embedbalance as eb

from .conftest import quiet

pytestmark = pytest.mark.timeout(60)

Stubs = Callable[..., list[TeiStub]]


def test_no_answer_from_any_backend_is_an_httpx_transport_error() -> None:
    """Every backend refusing connections raises AllAttemptsFailed, which `except httpx.HTTPError` catches (else httpx-based retry logic never sees it)."""
    urls = [f"http://127.0.0.1:{free_port()}" for _ in range(2)]
    transport = eb.BalancingTransport(urls, **quiet())
    with (
        httpx.Client(transport=transport, base_url="http://tei", timeout=5) as client,
        pytest.raises(httpx.HTTPError) as caught,
    ):
        client.post("/embed", json={"inputs": ["a"]})
    error = caught.value
    assert isinstance(error, eb.AllAttemptsFailed)
    assert isinstance(error, httpx.TransportError)
    assert isinstance(error, eb.EmbedbalanceError)
    assert not isinstance(error, httpx.TimeoutException)
    assert {a.url for a in error.attempts} == set(urls)


@pytest.mark.anyio
async def test_no_answer_from_any_backend_is_an_httpx_transport_error_async() -> None:
    """The async twin raises the same AllAttemptsFailed, an httpx.TransportError (else async callers need another except clause)."""
    urls = [f"http://127.0.0.1:{free_port()}" for _ in range(2)]
    transport = eb.AsyncBalancingTransport(urls, **quiet())
    async with httpx.AsyncClient(transport=transport, base_url="http://tei", timeout=5) as client:
        with pytest.raises(eb.AllAttemptsFailed) as caught:
            await client.post("/embed", json={"inputs": ["a"]})
    assert isinstance(caught.value, httpx.TransportError)


def test_no_backend_available_is_an_httpx_connect_error() -> None:
    """An empty pool raises NoBackendAvailable, an httpx.ConnectError (else callers cannot tell 'never sent' the httpx way)."""
    transport = eb.BalancingTransport([], **quiet())
    with (
        httpx.Client(transport=transport, base_url="http://tei") as client,
        pytest.raises(httpx.ConnectError) as caught,
    ):
        client.get("/info")
    assert isinstance(caught.value, eb.NoBackendAvailable)
    assert isinstance(caught.value, eb.EmbedbalanceError)


def test_deadline_exceeded_is_an_httpx_timeout() -> None:
    """DeadlineExceeded is both an AllAttemptsFailed and an httpx.TimeoutException (else timeout handlers miss the overall deadline)."""
    assert issubclass(eb.DeadlineExceeded, eb.AllAttemptsFailed)
    assert issubclass(eb.DeadlineExceeded, httpx.TimeoutException)


# -- credentials in backend URLs are refused, the password never shown ---------------


@pytest.mark.parametrize(
    "url",
    [
        "http://user:s3cr3t-pw@127.0.0.1:8080",
        "https://user:s3cr3t-pw@tei.internal",
        "http://token@127.0.0.1:1",
    ],
)
def test_credentials_in_backend_urls_are_refused_without_showing_them(url: str) -> None:
    """A backend URL with credentials is refused with a ValueError that does not contain the password (else credentials leak into logs and metric labels, or health checks use them while requests do not)."""
    with pytest.raises(ValueError, match="credentials") as caught:
        eb.Backend(url)
    assert "s3cr3t-pw" not in str(caught.value)
    with pytest.raises(ValueError, match="credentials") as through_transport:
        eb.BalancingTransport([url], **quiet())
    assert "s3cr3t-pw" not in str(through_transport.value)


def test_credentials_are_refused_when_the_pool_is_updated() -> None:
    """Credentials are refused on a later pool update too, not only at construction (else discovery-fed URLs slip through)."""
    transport = eb.BalancingTransport(["http://127.0.0.1:1"], **quiet())
    with pytest.raises(ValueError, match="credentials") as caught:
        transport.pool.update(["http://admin:hunter2@127.0.0.1:2"])
    assert "hunter2" not in str(caught.value)
    assert [b.url for b in transport.pool.backends] == ["http://127.0.0.1:1"]


# -- request costs: finite and >= 0, refused at the boundary -------------------------


@pytest.mark.parametrize("cost", [math.nan, math.inf, -math.inf, -1.0, "many"])
def test_a_poisonous_cost_is_refused_and_the_balancer_keeps_working(
    stubs: Stubs, cost: object
) -> None:
    """A NaN, infinite, negative or non-numeric cost is a ValueError at the boundary and later requests still balance (else one bad cost poisons the default balancer for good)."""
    a, b = stubs(2)
    transport = eb.BalancingTransport([a.url, b.url], **quiet())
    with httpx.Client(transport=transport, base_url="http://tei", timeout=10) as client:
        with pytest.raises(ValueError, match="cost"):
            client.post("/embed", json={"inputs": ["x"]}, extensions={eb.COST_EXTENSION: cost})
        for i in range(6):
            r = client.post("/embed", json={"inputs": [f"t{i}"]}, extensions={eb.COST_EXTENSION: 3})
            assert r.status_code == 200
    assert transport.stats().pool.in_flight == 0
    assert a.embed_requests + b.embed_requests == 6


@pytest.mark.anyio
async def test_a_poisonous_cost_is_refused_async(stubs: Stubs) -> None:
    """The async twin refuses a NaN cost the same way (else async apps poison their balancer)."""
    (a,) = stubs(1)
    transport = eb.AsyncBalancingTransport([a.url], **quiet())
    async with httpx.AsyncClient(transport=transport, base_url="http://tei", timeout=10) as client:
        with pytest.raises(ValueError, match="cost"):
            await client.post(
                "/embed", json={"inputs": ["x"]}, extensions={eb.COST_EXTENSION: math.nan}
            )
        assert (await client.post("/embed", json={"inputs": ["y"]})).status_code == 200
