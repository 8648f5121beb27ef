"""A bulk request's push-back must not cost interactive traffic anything, on real
control-server processes: a shared transport carries both kinds."""

from __future__ import annotations

import httpx
import pytest

import embedbalance as eb

pytestmark = pytest.mark.timeout(60)

BULK = {eb.PRIORITY_EXTENSION: "bulk"}


def test_bulk_429_leaves_backends_to_interactive_sync(servers):
    """A worker's 429 to a bulk request (Retry-After 30 s) keeps bulk requests away, and
    an interactive request right after still gets through. If this fails, one bulk 429
    marks the replica overloaded for everyone and interactive callers get
    NoBackendAvailable for as long as the bulk backlog takes to drain."""
    backends = servers(2, mode="429bulk")
    for server in backends:
        server.control(retry_after=30)
    transport = eb.BalancingTransport([s.url for s in backends])
    with httpx.Client(transport=transport, base_url="http://emb") as http:
        refused = http.post("/embed", json={"inputs": ["a"]}, extensions=BULK)
        assert refused.status_code == 429
        answered = http.post("/embed", json={"inputs": ["a"]})
        assert answered.status_code == 200
        with pytest.raises(eb.NoBackendAvailable) as caught:
            http.post("/embed", json={"inputs": ["a"]}, extensions=BULK)
    assert {r.reason for r in caught.value.reasons} == {"overloaded (bulk)"}
    rows = transport.stats().pool.by_url()
    assert all(row.state == "healthy" for row in rows.values())


@pytest.mark.anyio
async def test_bulk_429_leaves_backends_to_interactive_async(servers):
    """The async twin of the test above. If this fails, the async transport lets bulk
    429s lock interactive requests out."""
    backends = servers(2, mode="429bulk")
    for server in backends:
        server.control(retry_after=30)
    transport = eb.AsyncBalancingTransport([s.url for s in backends])
    async with httpx.AsyncClient(transport=transport, base_url="http://emb") as http:
        refused = await http.post("/embed", json={"inputs": ["a"]}, extensions=BULK)
        assert refused.status_code == 429
        answered = await http.post("/embed", json={"inputs": ["a"]})
        assert answered.status_code == 200


def test_interactive_429_still_keeps_bulk_away(servers):
    """An interactive 429 marks the backend overloaded for every request, bulk included.
    If this fails, bulk work piles onto a replica that refuses even interactive work."""
    (server,) = servers(1, mode="429")
    server.control(retry_after=30)
    transport = eb.BalancingTransport([server.url])
    with httpx.Client(transport=transport, base_url="http://emb") as http:
        assert http.post("/embed", json={"inputs": ["a"]}).status_code == 429
        with pytest.raises(eb.NoBackendAvailable):
            http.post("/embed", json={"inputs": ["a"]}, extensions=BULK)


def test_bulk_timeouts_do_not_eject_sync(servers):
    """Bulk attempts past their attempt deadline (a worker serving interactive work
    first holds them back) count as overloads, not failures: the replica is not
    ejected and keeps serving interactive requests. If this fails, every interactive
    burst that delays bulk work ejects healthy replicas."""
    (server,) = servers(1, delay=0.3)
    transport = eb.BalancingTransport(
        [server.url],
        attempt_timeout=0.05,
        retry=False,
        outlier_detection=eb.OutlierDetection(consecutive_failures=2),
    )
    with httpx.Client(transport=transport, base_url="http://emb") as http:
        for _ in range(3):
            with pytest.raises((eb.AllAttemptsFailed, eb.NoBackendAvailable)):
                http.post("/embed", json={"inputs": ["a"]}, extensions=BULK)
        row = transport.stats().pool.by_url()[server.url]
        assert (row.failures, row.ejections) == (0, 0)
        assert row.overloads >= 1
        server.control(delay=0.0)
        assert http.post("/embed", json={"inputs": ["a"]}).status_code == 200


@pytest.mark.anyio
async def test_bulk_timeouts_do_not_eject_async(servers):
    """The async twin of the test above. If this fails, the async transport ejects a
    replica for holding bulk work back."""
    (server,) = servers(1, delay=0.3)
    transport = eb.AsyncBalancingTransport(
        [server.url],
        attempt_timeout=0.05,
        retry=False,
        outlier_detection=eb.OutlierDetection(consecutive_failures=2),
    )
    async with httpx.AsyncClient(transport=transport, base_url="http://emb") as http:
        for _ in range(3):
            with pytest.raises((eb.AllAttemptsFailed, eb.NoBackendAvailable)):
                await http.post("/embed", json={"inputs": ["a"]}, extensions=BULK)
        row = transport.stats().pool.by_url()[server.url]
        assert (row.failures, row.ejections) == (0, 0)
