"""Request rewriting seen from a real server's side of a loopback socket, sync and async.

The mock-transport routing tests check the request object the transport builds; these
check what actually arrives: the Host header, the path under a backend's prefix, the
query, the headers and the body — a streamed body included — as parsed by uvicorn.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from echo_server import EchoServer, echo_servers

import embedbalance as eb

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def server() -> Iterator[EchoServer]:
    with echo_servers(1) as (started,):
        yield started


def _transport(*backends: str) -> eb.BalancingTransport:
    return eb.BalancingTransport(list(backends), health_check=None)


def _atransport(*backends: str) -> eb.AsyncBalancingTransport:
    return eb.AsyncBalancingTransport(list(backends), health_check=None)


def test_server_sees_its_own_host_and_the_callers_path_query_headers_body(
    server: EchoServer,
) -> None:
    """The backend receives its own host:port as Host, and the caller's path, query, headers and body byte for byte."""
    with httpx.Client(transport=_transport(server.url), base_url="http://embeddings") as client:
        response = client.post(
            "/embed?x=1&y=a%20b", json={"inputs": ["héllo"]}, headers={"X-Trace": "t1"}
        )
    assert response.status_code == 200
    (seen,) = server.seen
    assert seen.host == f"127.0.0.1:{server.port}"
    assert (seen.method, seen.path, seen.query) == ("POST", "/embed", b"x=1&y=a%20b")
    assert seen.headers["x-trace"] == "t1"
    assert json.loads(seen.body) == {"inputs": ["héllo"]}
    assert response.extensions[eb.BACKEND_EXTENSION].url == server.url
    assert response.json()["host"] == seen.host


def test_backend_path_prefix_mounts_every_request(server: EchoServer) -> None:
    """A backend URL with a path puts every request under that prefix on the wire, query kept."""
    with httpx.Client(transport=_transport(server.url + "/v2"), base_url="http://e") as client:
        client.get("/info?verbose=1")
        client.post("/embed", json={"inputs": []})
    assert [(s.method, s.path, s.query) for s in server.seen] == [
        ("GET", "/v2/info", b"verbose=1"),
        ("POST", "/v2/embed", b""),
    ]


def test_percent_encoded_path_arrives_unchanged(server: EchoServer) -> None:
    """An encoded path segment is forwarded as the caller encoded it, not decoded or double-encoded."""
    with httpx.Client(transport=_transport(server.url), base_url="http://e") as client:
        client.get("/models/a%2Fb%20c/info")
    assert server.seen[0].raw_path == b"/models/a%2Fb%20c/info"


def test_streamed_request_body_arrives_whole(server: EchoServer) -> None:
    """A request body from a generator is streamed to the backend (chunked) and arrives complete and in order."""
    parts = [b'{"inputs": [', b'"one", ', b'"two"', b"]}"]

    def body() -> Iterator[bytes]:
        yield from parts

    with httpx.Client(transport=_transport(server.url), base_url="http://e") as client:
        response = client.post("/embed", content=body())
    assert response.status_code == 200
    (seen,) = server.seen
    assert seen.body == b"".join(parts)
    assert seen.headers.get("transfer-encoding") == "chunked"


def test_response_status_headers_and_body_come_back_as_sent(server: EchoServer) -> None:
    """The caller gets the backend's status, headers and body unchanged, and its queue depth reaches the pool."""
    server.answer(201, {"X-Queue-Depth": "5", "X-Custom": "yes"})
    transport = _transport(server.url)
    with httpx.Client(transport=transport, base_url="http://e") as client:
        response = client.post("/embed?q=2", content=b"raw")
    assert response.status_code == 201
    assert response.headers["x-custom"] == "yes"
    assert response.json() == {
        "method": "POST",
        "path": "/embed",
        "query": "q=2",
        "host": f"127.0.0.1:{server.port}",
        "body": "raw",
    }
    assert transport.stats().pool.by_url()[server.url].queue_depth == 5.0


def test_compressed_response_is_decoded_once(server: EchoServer) -> None:
    """A gzip-encoded answer reaches the caller decoded exactly once (the transport passes raw bytes on)."""
    server.answer(200, {"Content-Encoding": "gzip"})
    server.compress = True
    with httpx.Client(transport=_transport(server.url), base_url="http://e") as client:
        response = client.post("/embed", content=b"zip me")
    assert response.headers["content-encoding"] == "gzip"
    assert response.json()["body"] == "zip me"


@pytest.mark.anyio
async def test_async_server_sees_host_prefix_query_and_body(server: EchoServer) -> None:
    """The async twin delivers the same Host, prefixed path, query and body to a real server."""
    transport = _atransport(server.url + "/p")
    async with httpx.AsyncClient(transport=transport, base_url="http://e") as client:
        response = await client.post("/embed?q=1", json={"inputs": ["a"]})
    assert response.status_code == 200
    (seen,) = server.seen
    assert seen.host == f"127.0.0.1:{server.port}"
    assert (seen.path, seen.query) == ("/p/embed", b"q=1")
    assert json.loads(seen.body) == {"inputs": ["a"]}
    assert response.json()["path"] == "/p/embed"


@pytest.mark.anyio
async def test_async_streamed_request_body_arrives_whole(server: EchoServer) -> None:
    """An async-generator body is streamed to the backend and arrives complete."""
    parts = [b"alpha ", b"beta ", b"gamma"]

    async def body() -> AsyncIterator[bytes]:
        for part in parts:
            yield part

    async with httpx.AsyncClient(transport=_atransport(server.url), base_url="http://e") as client:
        response = await client.post("/embed", content=body())
    assert response.status_code == 200
    assert server.seen[0].body == b"".join(parts)
    assert response.json()["body"] == "alpha beta gamma"


def test_a_timed_out_post_to_a_route_not_marked_idempotent_is_not_resent() -> None:
    """An attempt that timed out was sent: a POST the server may have acted on is not
    sent again elsewhere (embedding routes are idempotent; ``/orders`` is not). If this
    fails, a timed-out non-idempotent request is executed twice."""
    with echo_servers(2) as (hung, good):
        hung.hang = True
        transport = eb.BalancingTransport(
            [hung.url, good.url],
            health_check=None,
            balancer=eb.RoundRobin(),
            attempt_timeout=0.2,
            retry=eb.Retry(attempts=3),
        )
        outcomes: list[str] = []
        with httpx.Client(transport=transport, base_url="http://e") as client:
            for _ in range(2):  # round-robin: one of the two starts on the hung server
                try:
                    outcomes.append(str(client.post("/orders", json={}).status_code))
                except eb.AllAttemptsFailed as exc:
                    outcomes.append(" | ".join(str(a) for a in exc.attempts))
            hung.hang = False  # the abandoned attempt ends now, not at its read timeout
    assert sorted(outcomes) == sorted(["200", f"{hung.url}: attempt timed out after 0.2s"])
    assert good.hits == 1


@pytest.mark.anyio
async def test_a_large_answer_arrives_whole_through_the_async_transport(
    server: EchoServer,
) -> None:
    """An answer far larger than one socket read (a 300 KB echo, read in many chunks)
    reaches the async caller byte for byte. If this fails, the async transport joins
    or drops the chunks of a long answer wrongly (a big batch of embeddings arrives
    corrupted), which small test answers never show."""
    payload = bytes(range(256)) * 1200
    async with httpx.AsyncClient(transport=_atransport(server.url), base_url="http://e") as client:
        response = await client.post("/embed", content=payload)
    assert response.status_code == 200
    assert response.json()["body"].encode("latin-1") == payload


def test_a_large_answer_arrives_whole_through_the_sync_transport(server: EchoServer) -> None:
    """The sync twin of the test above: a 300 KB echo, read from the socket in many
    chunks, reaches the caller byte for byte. If this fails, the sync transport joins
    the chunks of a long answer wrongly."""
    payload = bytes(range(256)) * 1200
    with httpx.Client(transport=_transport(server.url), base_url="http://e") as client:
        response = client.post("/embed", content=payload)
    assert response.status_code == 200
    assert response.json()["body"].encode("latin-1") == payload
