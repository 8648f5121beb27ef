"""Pure unit tests of request rewriting and retry rules (inner transport mocked)."""

from __future__ import annotations

import httpx
import pytest

import embedbalance as eb


def _echo(seen: list[httpx.Request], status: int = 200) -> httpx.MockTransport:
    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(status, json={"ok": True}, headers={"X-Queue-Depth": "3"})

    return httpx.MockTransport(handler)


def test_rewrites_host_keeps_path_query_headers_body():
    """The request reaches the backend's scheme/host/port with its path, query, headers and body intact."""
    seen: list[httpx.Request] = []
    transport = eb.BalancingTransport(
        ["https://10.1.2.3:8443"], transport=_echo(seen), health_check=None
    )
    with httpx.Client(transport=transport, base_url="http://embeddings") as client:
        response = client.post("/embed?x=1&y=2", json={"inputs": ["a"]}, headers={"X-Trace": "t1"})
    assert response.status_code == 200
    sent = seen[0]
    assert str(sent.url) == "https://10.1.2.3:8443/embed?x=1&y=2"
    assert sent.headers["host"] == "10.1.2.3:8443"
    assert sent.headers["x-trace"] == "t1"
    assert sent.read() == b'{"inputs":["a"]}'
    assert response.extensions[eb.BACKEND_EXTENSION] == eb.Backend("https://10.1.2.3:8443")
    assert transport.stats().pool.backends[0].queue_depth == 3.0


def test_backend_path_prefix_is_prepended():
    """A backend URL with a path mounts every request under that prefix."""
    seen: list[httpx.Request] = []
    transport = eb.BalancingTransport(
        ["http://127.0.0.1:9000/v2"], transport=_echo(seen), health_check=None
    )
    with httpx.Client(transport=transport, base_url="http://e") as client:
        client.get("/info")
    assert seen[0].url.path == "/v2/info"


def test_cost_extension_reaches_the_pool():
    """The cost given in request extensions is what the pool accounts as outstanding while the request runs."""
    observed: list[float] = []
    holder: list[eb.BalancingTransport] = []

    def handler(request: httpx.Request) -> httpx.Response:
        observed.append(holder[0].stats().pool.backends[0].outstanding_cost)
        return httpx.Response(200, json=[])

    transport = eb.BalancingTransport(
        ["http://127.0.0.1:9"],
        transport=httpx.MockTransport(handler),
        health_check=None,
        balancer=eb.LeastOutstandingTokens(),
    )
    holder.append(transport)
    with httpx.Client(transport=transport, base_url="http://e") as client:
        client.post("/embed", json={}, extensions={eb.COST_EXTENSION: 123})
    assert observed == [123.0]
    assert transport.stats().pool.backends[0].outstanding_cost == 0.0


def test_bad_cost_is_a_clear_error():
    """A non-numeric cost raises ValueError naming the extension instead of failing deep inside."""
    transport = eb.BalancingTransport(
        ["http://127.0.0.1:9"], transport=_echo([]), health_check=None
    )
    with (
        httpx.Client(transport=transport, base_url="http://e") as client,
        pytest.raises(ValueError, match=r"embedbalance\.cost"),
    ):
        client.post("/embed", json={}, extensions={eb.COST_EXTENSION: "lots"})


def test_non_idempotent_request_is_not_resent_after_it_was_sent():
    """A POST to a route not marked idempotent that got a 503 is not sent to a second backend."""
    seen: list[httpx.Request] = []
    transport = eb.BalancingTransport(
        ["http://127.0.0.1:1", "http://127.0.0.1:2"],
        transport=_echo(seen, status=503),
        health_check=None,
    )
    with httpx.Client(transport=transport, base_url="http://e") as client:
        response = client.post("/orders", json={})
    assert response.status_code == 503  # the answer comes back, as from a proxy
    assert len(seen) == 1
    assert len(response.extensions[eb.ATTEMPTS_EXTENSION]) == 1


def test_idempotent_marker_allows_resend():
    """Marking a request idempotent lets a 503 be retried on another backend."""
    seen: list[httpx.Request] = []
    transport = eb.BalancingTransport(
        ["http://127.0.0.1:1", "http://127.0.0.1:2"],
        transport=_echo(seen, status=503),
        health_check=None,
    )
    with httpx.Client(transport=transport, base_url="http://e") as client:
        response = client.post("/orders", json={}, extensions={eb.IDEMPOTENT_EXTENSION: True})
    assert response.status_code == 503
    assert {r.url.port for r in seen} == {1, 2}


def test_connect_error_is_retried_for_any_method():
    """A request that never left (connect error) is retried elsewhere even when it is not idempotent."""
    calls: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.port or 0)
        if request.url.port == 1:
            raise httpx.ConnectError("refused", request=request)
        return httpx.Response(200, json={})

    transport = eb.BalancingTransport(
        ["http://127.0.0.1:1", "http://127.0.0.1:2"],
        transport=httpx.MockTransport(handler),
        health_check=None,
        balancer=eb.RoundRobin(),
    )
    with httpx.Client(transport=transport, base_url="http://e") as client:
        response = client.post("/orders", json={})
    assert response.status_code == 200
    assert calls == [1, 2]


def test_errors_list_every_attempt():
    """When every attempt fails, the error names each backend tried and what went wrong, in order."""

    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError(f"refused by {request.url.port}", request=request)

    transport = eb.BalancingTransport(
        [f"http://127.0.0.1:{p}" for p in (1, 2, 3)],
        transport=httpx.MockTransport(handler),
        health_check=None,
        balancer=eb.RoundRobin(),
    )
    with (
        httpx.Client(transport=transport, base_url="http://e") as client,
        pytest.raises(eb.AllAttemptsFailed) as info,
    ):
        client.post("/embed", json={})
    urls = [a.url for a in info.value.attempts]
    assert sorted(urls) == [f"http://127.0.0.1:{p}" for p in (1, 2, 3)]  # each backend once
    assert all("ConnectError" in a.error for a in info.value.attempts)
    assert isinstance(info.value.__cause__, httpx.ConnectError)


@pytest.mark.parametrize("status", [500, 424])
def test_server_failure_is_retried_elsewhere_and_counts_as_failure(status):
    """A 500, or TEI's 424 (its model failed), is a failure of that replica: retried on the
    other one, counted toward ejection, and the last answer comes back when all fail."""
    seen: list[httpx.Request] = []
    transport = eb.BalancingTransport(
        ["http://127.0.0.1:1", "http://127.0.0.1:2"],
        transport=_echo(seen, status=status),
        health_check=None,
    )
    with httpx.Client(transport=transport, base_url="http://e") as client:
        response = client.post("/embed", json={})
    assert response.status_code == status
    assert {r.url.port for r in seen} == {1, 2}
    assert sum(b.failures for b in transport.stats().pool.backends) == 2


def test_client_error_is_returned_at_once_and_is_no_failure():
    """A 4xx other than 424/429 is the request's fault: not retried, not held against the backend."""
    seen: list[httpx.Request] = []
    transport = eb.BalancingTransport(
        ["http://127.0.0.1:1", "http://127.0.0.1:2"],
        transport=_echo(seen, status=422),
        health_check=None,
    )
    with httpx.Client(transport=transport, base_url="http://e") as client:
        response = client.post("/embed", json={})
    assert response.status_code == 422
    assert len(seen) == 1
    assert sum(b.failures for b in transport.stats().pool.backends) == 0


@pytest.mark.anyio
async def test_async_twin_rewrites_the_same_way():
    """The async transport rewrites requests exactly like the sync one."""
    seen: list[httpx.Request] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={})

    transport = eb.AsyncBalancingTransport(
        ["http://10.9.8.7:81/p"], transport=httpx.MockTransport(handler), health_check=None
    )
    async with httpx.AsyncClient(transport=transport, base_url="http://e") as client:
        await client.post("/embed?q=1", json={"inputs": []})
    assert str(seen[0].url) == "http://10.9.8.7:81/p/embed?q=1"
    assert seen[0].headers["host"] == "10.9.8.7:81"


def test_closed_transport_refuses_requests():
    """After close() the transport says so and refuses new requests instead of silently reopening."""
    transport = eb.BalancingTransport(
        ["http://127.0.0.1:9"], transport=_echo([]), health_check=None
    )
    assert not transport.closed
    transport.close()
    assert transport.closed
    client = httpx.Client(transport=transport, base_url="http://e")
    with pytest.raises(RuntimeError, match=r"^transport is closed$"):
        client.get("/")
    with pytest.raises(RuntimeError, match=r"^transport is closed$"):
        transport.start()


@pytest.mark.anyio
async def test_closed_async_transport_refuses_requests():
    """After aclose() the async transport says so and refuses new requests."""

    async def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={})

    transport = eb.AsyncBalancingTransport(
        ["http://127.0.0.1:9"], transport=httpx.MockTransport(handler), health_check=None
    )
    async with httpx.AsyncClient(transport=transport, base_url="http://e") as client:
        assert (await client.get("/")).status_code == 200
    assert transport.closed
    client = httpx.AsyncClient(transport=transport, base_url="http://e")
    with pytest.raises(RuntimeError, match=r"^transport is closed$"):
        await client.get("/")
    with pytest.raises(RuntimeError, match=r"^transport is closed$"):
        await transport.start()


@pytest.mark.parametrize(
    ("error", "described"),
    [
        (httpx.ReadError("connection reset by peer"), "ReadError: connection reset by peer"),
        (httpx.ReadError(""), "ReadError"),
    ],
)
def test_a_transport_error_is_described_by_its_class_and_its_message(
    error: httpx.TransportError, described: str
) -> None:
    """``AllAttemptsFailed.attempts`` names each backend with the error's class and, when
    it has one, its message (never a bare ``ReadError: `` nor the message alone). If
    this fails, the error a user reads loses what went wrong or where."""

    def handler(request: httpx.Request) -> httpx.Response:
        raise error

    transport = eb.BalancingTransport(
        ["http://127.0.0.1:1"],
        transport=httpx.MockTransport(handler),
        health_check=None,
        retry=False,
    )
    with (
        httpx.Client(transport=transport, base_url="http://e") as client,
        pytest.raises(eb.AllAttemptsFailed) as failed,
    ):
        client.post("/embed", json={})
    assert [str(a) for a in failed.value.attempts] == [f"http://127.0.0.1:1: {described}"]


@pytest.mark.parametrize(
    ("timeout", "expected"),
    [
        # the caller's tighter read timeout stays; the looser phases get the attempt's
        (httpx.Timeout(10.0, read=0.25), {"connect": 2.0, "read": 0.25, "write": 2.0, "pool": 2.0}),
        # no timeout at all from the caller: every phase gets the attempt's
        (httpx.Timeout(None), {"connect": 2.0, "read": 2.0, "write": 2.0, "pool": 2.0}),
    ],
)
def test_each_timeout_phase_is_capped_by_the_attempt_deadline_not_raised(
    timeout: httpx.Timeout, expected: dict[str, float]
) -> None:
    """With ``attempt_timeout=2``, each of httpx's timeout phases on the request sent
    is the smaller of the caller's and 2 s; a phase the caller left unbounded gets
    2 s. If this fails, the attempt deadline overrides a caller's tighter timeout (a
    0.25 s read waits 2 s), or an unbounded phase crashes the attempt or stays
    unbounded."""
    seen: list[httpx.Request] = []
    transport = eb.BalancingTransport(
        ["http://127.0.0.1:9000"], transport=_echo(seen), health_check=None, attempt_timeout=2.0
    )
    with httpx.Client(transport=transport, base_url="http://e", timeout=timeout) as client:
        assert client.get("/info").status_code == 200
    # 2 s is the attempt's deadline less the moment spent picking a backend
    assert seen[0].extensions["timeout"] == pytest.approx(expected, abs=0.05)


@pytest.mark.parametrize("raced", [False, True], ids=["plain", "raced"])
def test_a_bug_in_an_inner_transport_reaches_the_caller_and_frees_the_slot(raced: bool) -> None:
    """An inner transport that raises something other than an httpx transport error
    (a bug, not a network failure): the caller gets that exception, it is not retried,
    and the backend's slot is released, whether the attempt ran inline or raced
    against a deadline on a thread. If this fails, a bug is retried as if the network
    had failed, or each such request leaks a slot until the backend looks full."""
    calls: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        raise LookupError("a bug in the inner transport")

    transport = eb.BalancingTransport(
        ["http://127.0.0.1:1", "http://127.0.0.1:2"],
        transport=httpx.MockTransport(handler),
        health_check=None,
        attempt_timeout=5.0 if raced else None,
        hedge=None,
    )
    with (
        httpx.Client(transport=transport, base_url="http://e") as client,
        pytest.raises(LookupError, match="a bug in the inner transport"),
    ):
        client.post("/embed", json={"inputs": ["a"]})
    assert len(calls) == 1
    assert transport.stats().pool.in_flight == 0


def test_an_answer_carries_the_request_as_sent_to_its_backend() -> None:
    """Called directly (as a proxy or a framework's own client would), the transport's
    response holds the request as it went to the backend: its host, port and path
    prefix, not the caller's placeholder host. If this fails, ``response.request``
    raises for direct callers, or names a host nothing was sent to."""
    transport = eb.BalancingTransport(
        ["http://127.0.0.1:9000/v2"], transport=_echo([]), health_check=None
    )
    request = httpx.Request("POST", "http://embeddings/embed", json={"inputs": ["a"]})
    response = transport.handle_request(request)
    assert str(response.request.url) == "http://127.0.0.1:9000/v2/embed"
    assert response.request.headers["host"] == "127.0.0.1:9000"
    transport.close()


@pytest.mark.anyio
async def test_an_async_answer_carries_the_request_as_sent_to_its_backend() -> None:
    """The async twin of the test above: called directly, its response holds the
    request as it went to the backend. If this fails, ``response.request`` names the
    caller's placeholder host on the async side only."""
    transport = eb.AsyncBalancingTransport(
        ["http://127.0.0.1:9000/v2"], transport=_echo([]), health_check=None
    )
    request = httpx.Request("POST", "http://embeddings/embed", json={"inputs": ["a"]})
    response = await transport.handle_async_request(request)
    assert str(response.request.url) == "http://127.0.0.1:9000/v2/embed"
    assert response.request.headers["host"] == "127.0.0.1:9000"
    await transport.aclose()


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_both_transports_give_the_pool_their_zone(kind: str) -> None:
    """``zone=`` reaches the pool of either transport: its picks prefer that zone (the
    pool's locality names it), and without one there is none. If this fails, a caller's
    zone is silently ignored by one transport and traffic crosses zones for nothing."""
    backends = [
        eb.Backend("http://a.test:8000", zone="a"),
        eb.Backend("http://b.test:8000", zone="b"),
    ]
    factory = eb.BalancingTransport if kind == "sync" else eb.AsyncBalancingTransport
    zoned = factory(backends, zone="a", health_check=None)
    plain = factory(backends, health_check=None)
    assert zoned.pool.locality is not None
    assert zoned.pool.locality.zone == "a"
    assert plain.pool.locality is None
