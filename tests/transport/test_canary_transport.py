"""Canary checks through the transports, against TEI stand-ins on loopback: the canary
carries the health check's headers, a missing credential keeps replicas pending (and
says so), and an answer that is not embeddings ejects the replica (async twin too).

The TEI stub answers deterministic vectors per text, so stubs agree with each other as
replicas of one model do; the real-worker cases are in ``tests/client``.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from tei_stub import tei_stubs

import embedbalance as eb

pytestmark = pytest.mark.timeout(60)

CANARY = eb.Canary(interval=0.2, timeout=2.0)
MARKER = "traffic, not a canary"


def test_the_canary_carries_the_health_checks_headers() -> None:
    """Behind an API key, replicas pass their canary only when ``HealthCheck(headers=)``
    has it; without, they stay pending and the error names the 401. If this fails, the
    canary bypasses the user's credentials or fails silently."""
    with tei_stubs(3, api_key="k") as stubs:
        urls = [s.url for s in stubs]
        good = eb.HealthCheck(interval=0.1, headers={"Authorization": "Bearer k"}, canary=CANARY)
        with eb.BalancingTransport(urls, health_check=good) as transport:
            states = {b.state for b in transport.pool.stats().backends}
            assert states == {"healthy"}
            with httpx.Client(transport=transport, base_url="http://embeddings") as client:
                answer = client.post(
                    "/embed", json={"inputs": ["hi"]}, headers={"Authorization": "Bearer k"}
                )
                assert answer.status_code == 200
        canaries = [
            seen
            for stub in stubs
            for seen in stub.seen
            if seen.path == "/embed" and CANARY.texts[0].encode() in seen.body
        ]
        assert len(canaries) >= 3
        assert {seen.headers.get("authorization") for seen in canaries} == {"Bearer k"}
        missing = eb.HealthCheck(interval=0.1, canary=CANARY)
        with eb.BalancingTransport(urls, health_check=missing) as transport:
            rows = transport.pool.stats().backends
            assert {b.state for b in rows} == {"pending"}
            assert {b.canary for b in rows} == {"canary: pending, no answer (HTTP 401)"}
            with (
                httpx.Client(transport=transport, base_url="http://embeddings") as client,
                pytest.raises(eb.NoBackendAvailable, match=r"HTTP 401"),
            ):
                client.post("/embed", json={"inputs": ["hi"]})


@pytest.mark.anyio
async def test_garbage_answers_eject_a_replica_async() -> None:
    """A replica answering rows of ``null`` is ejected by its first canary and gets no
    request (asyncio and trio). If this fails, the async twin admits replicas unchecked."""
    with tei_stubs(3) as stubs:
        bad = stubs[2]
        bad.mode = "null_rows"
        policy = eb.HealthCheck(interval=0.1, canary=CANARY)
        async with eb.AsyncBalancingTransport([s.url for s in stubs], health_check=policy) as t:
            row = t.pool.stats().by_url()[bad.url]
            assert row.state == "ejected"
            assert (row.canary or "").startswith("canary: wrong answer (")
            async with httpx.AsyncClient(transport=t, base_url="http://embeddings") as client:
                for _ in range(20):
                    answer = await client.post("/embed", json={"inputs": [MARKER]})
                    assert answer.status_code == 200
        # Only canaries reached it: none of the traffic's texts.
        assert bad.embed_requests >= 1
        assert not any(MARKER.encode() in seen.body for seen in bad.seen)
        assert sum(MARKER.encode() in seen.body for s in stubs[:2] for seen in s.seen) == 20


def test_two_models_keep_all_their_replicas_through_the_transport() -> None:
    """Three replicas of one model and two of another (other dimension, models learned
    from ``/info``) all pass their canary in the first round, and a request for the
    smaller model is served. If this fails, turning the canary on ejects every replica
    of the model with fewer replicas and its requests get NoBackendAvailable."""
    with tei_stubs(3, model_id="org/a", dim=8) as a, tei_stubs(2, model_id="org/b", dim=16) as b:
        urls = [s.url for s in a + b]
        policy = eb.HealthCheck(interval=0.1, canary=CANARY)
        with eb.BalancingTransport(urls, health_check=policy) as transport:
            rows = transport.pool.stats().backends
            assert {r.state for r in rows} == {"healthy"}, [(r.url, r.canary) for r in rows]
            assert {r.model for r in rows} == {"org/a", "org/b"}
            with httpx.Client(transport=transport, base_url="http://embeddings") as client:
                answer = client.post(
                    "/embed",
                    json={"inputs": ["hi"]},
                    extensions={eb.MODEL_EXTENSION: "b"},
                )
                assert answer.status_code == 200
                assert len(answer.json()[0]) == 16


class _Counting(httpx.AsyncHTTPTransport):
    """A real async transport that remembers the paths it sent."""

    def __init__(self) -> None:
        super().__init__()
        self.paths: list[str] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.paths.append(request.url.path)
        return await super().handle_async_request(request)


class _SyncCounting(httpx.HTTPTransport):
    def __init__(self) -> None:
        super().__init__()
        self.paths: list[str] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.paths.append(request.url.path)
        return super().handle_request(request)


@pytest.mark.parametrize("twin", ["sync", "async"])
def test_the_canary_goes_through_the_replicas_own_inner_transport(twin: str) -> None:
    """The canary of a replica is sent by the inner transport its requests use (the one
    the caller configured: TLS, proxies, credentials live there), like its health
    checks. If this fails, canaries go out on a default transport of their own and
    judge a path the traffic never takes."""
    import anyio

    made: list[Any] = []
    policy = eb.HealthCheck(interval=0.1, canary=CANARY)
    with tei_stubs(1) as (stub,):
        if twin == "sync":

            def factory(backend: eb.Backend) -> httpx.BaseTransport:
                made.append(inner := _SyncCounting())
                return inner

            with eb.BalancingTransport([stub.url], transport=factory, health_check=policy) as t:
                assert t.pool.stats().by_url()[stub.url].state == "healthy"
        else:

            def afactory(backend: eb.Backend) -> httpx.AsyncBaseTransport:
                made.append(inner := _Counting())
                return inner

            async def main() -> None:
                async with eb.AsyncBalancingTransport(
                    [stub.url], transport=afactory, health_check=policy
                ) as t:
                    assert t.pool.stats().by_url()[stub.url].state == "healthy"

            anyio.run(main)
        canaries = [s for s in stub.seen if s.path == "/embed"]
    assert len(made) == 1
    assert canaries, "no canary reached the replica"
    assert made[0].paths.count("/embed") == len(canaries)
