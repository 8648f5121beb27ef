"""Priorities on the wire: the transports send ``PRIORITY_EXTENSION`` as ``X-Priority``,
the clients mark bulk work, and a bulk client's adaptive limit bounds what it has in
flight. Real servers on loopback (a TEI stand-in, an echo server); no model needed."""

from __future__ import annotations

import time
from collections.abc import Iterator

import anyio
import httpx
import pytest
from tests.helpers.control_proc import ControlServer, free_port
from tests.helpers.echo_server import EchoServer, echo_servers
from tests.helpers.tei_stub import TeiStub

import embedbalance as eb

TEXTS = [f"text number {i} with a few words" for i in range(40)]


@pytest.fixture
def stub() -> Iterator[TeiStub]:
    server = TeiStub()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def echo() -> Iterator[EchoServer]:
    with echo_servers(1) as started:
        yield started[0]


def _embed_priorities(stub: TeiStub) -> list[str | None]:
    return [s.headers.get("x-priority") for s in stub.seen if s.path == "/embed"]


def test_transport_sends_the_priority_extension_as_a_header(echo: EchoServer) -> None:
    """extensions={"embedbalance.priority": "bulk"} arrives as X-Priority: bulk, and a
    request without it carries no X-Priority. If this fails, the worker cannot tell a
    re-index from a user's query and serves them in arrival order."""
    transport = eb.BalancingTransport([echo.url], health_check=None)
    with httpx.Client(transport=transport, base_url="http://embeddings") as http:
        http.post("/embed", json={}, extensions={eb.PRIORITY_EXTENSION: "bulk"})
        http.post("/embed", json={}, extensions={eb.PRIORITY_EXTENSION: "interactive"})
        http.post("/embed", json={})
        with pytest.raises(ValueError, match="priority"):
            http.post("/embed", json={}, extensions={eb.PRIORITY_EXTENSION: "urgent"})
    assert [s.headers.get("x-priority") for s in echo.seen] == ["bulk", "interactive", None]


@pytest.mark.anyio
async def test_async_transport_sends_the_priority_header(echo: EchoServer) -> None:
    """The async twin sends X-Priority the same way. If this fails, async apps (FastAPI)
    cannot mark bulk work."""
    transport = eb.AsyncBalancingTransport([echo.url], health_check=None)
    async with httpx.AsyncClient(transport=transport, base_url="http://embeddings") as http:
        await http.post("/embed", json={}, extensions={eb.PRIORITY_EXTENSION: "bulk"})
        with pytest.raises(ValueError, match="priority"):
            await http.post("/embed", json={}, extensions={eb.PRIORITY_EXTENSION: 3})
    assert [s.headers.get("x-priority") for s in echo.seen] == ["bulk"]


def test_bulk_client_marks_every_request_and_the_default_marks_none(stub: TeiStub) -> None:
    """EmbeddingClient(priority="bulk") sends X-Priority: bulk on every sub-batch; the
    default client sends no X-Priority (servers treat its absence as interactive). If
    this fails, a bulk job competes with users as if it were one of them."""
    with eb.EmbeddingClient([stub.url], priority="bulk", batch_size=8) as bulk:
        rows = bulk.embed(TEXTS)
    assert rows.shape == (len(TEXTS), stub.dim)
    marks = _embed_priorities(stub)
    assert len(marks) >= 5
    assert set(marks) == {"bulk"}
    stub.seen.clear()
    with eb.EmbeddingClient([stub.url], batch_size=8) as interactive:
        interactive.embed(TEXTS)
    assert set(_embed_priorities(stub)) == {None}


@pytest.mark.anyio
async def test_async_bulk_client_marks_every_request(stub: TeiStub) -> None:
    """AsyncEmbeddingClient(priority="bulk") sends X-Priority: bulk too. If this fails,
    the async twin has drifted from the sync one."""
    async with eb.AsyncEmbeddingClient([stub.url], priority="bulk", batch_size=8) as bulk:
        await bulk.embed(TEXTS)
    assert set(_embed_priorities(stub)) == {"bulk"}


def test_unknown_client_priority_is_a_value_error(stub: TeiStub) -> None:
    """A priority other than interactive or bulk is refused at construction. If this
    fails, the mistake surfaces as a 400 from every worker instead."""
    with pytest.raises(ValueError, match="priority"):
        eb.EmbeddingClient([stub.url], priority="urgent")  # type: ignore[arg-type]


def test_bulk_limit_bounds_what_a_bulk_client_has_in_flight(stub: TeiStub) -> None:
    """With BulkLimit(max_limit=2), a bulk client allowed 8 concurrent sub-batches never
    has more than 2 at the server, and still embeds everything. If this fails, the
    adaptive limit is not applied and a bulk job floods the pool."""
    stub.delay = 0.02
    limit = eb.BulkLimit(initial=2, max_limit=2)
    with eb.EmbeddingClient(
        [stub.url], priority="bulk", bulk_limit=limit, batch_size=2, max_concurrency=8
    ) as bulk:
        rows = bulk.embed(TEXTS)
    assert rows.shape[0] == len(TEXTS)
    assert stub.max_in_flight <= 2
    stub.max_in_flight = 0
    with eb.EmbeddingClient(
        [stub.url], priority="bulk", bulk_limit=None, batch_size=2, max_concurrency=8
    ) as unlimited:
        unlimited.embed(TEXTS)
    assert stub.max_in_flight > 2  # the same job without the limit: the bound was real


@pytest.mark.anyio
async def test_async_bulk_limit_bounds_in_flight(stub: TeiStub) -> None:
    """The async bulk client holds the same bound. If this fails, async bulk jobs are
    not limited."""
    stub.delay = 0.02
    limit = eb.BulkLimit(initial=2, max_limit=2)
    async with eb.AsyncEmbeddingClient(
        [stub.url], priority="bulk", bulk_limit=limit, batch_size=2, max_concurrency=8
    ) as bulk:
        rows = await bulk.embed(TEXTS)
    assert rows.shape[0] == len(TEXTS)
    assert 1 <= stub.max_in_flight <= 2


def _refusing_server() -> ControlServer:
    """A control server that answers bulk requests 429 (Retry-After 0.2 s)."""
    server = ControlServer(mode="429bulk")
    server.control(retry_after=0.2)
    return server


def test_bulk_client_waits_out_429s_and_loses_no_rows() -> None:
    """A replica that refuses bulk work (429, Retry-After) until it has room: the bulk
    client waits and resends, and embed() returns every row in input order. If this
    fails, a re-index aborts on the worker's designed push-back."""
    server = _refusing_server()
    texts = [t * (i + 1) for i, t in enumerate(TEXTS[:6])]
    waits: list[float] = []
    try:
        with eb.EmbeddingClient([server.url], priority="bulk", batch_size=2) as bulk:
            assert bulk._gate is not None

            def sleep(seconds: float) -> None:  # the replica gets room while we wait
                waits.append(seconds)
                server.control(mode="ok")
                time.sleep(seconds)

            bulk._gate._sleep = sleep
            rows = bulk.embed(texts)
    finally:
        server.stop()
    assert waits  # each wait: the Retry-After, or what is left of it for a sub-batch
    assert all(0 <= w <= 0.2 for w in waits)  # that found the replica still refusing
    assert rows[:, 0].tolist() == [float(len(t)) for t in texts]


@pytest.mark.anyio
async def test_async_bulk_client_waits_out_429s() -> None:
    """The async bulk client waits and resends the same way. If this fails, async bulk
    jobs abort on 429s."""
    server = _refusing_server()
    texts = [t * (i + 1) for i, t in enumerate(TEXTS[:6])]
    waits: list[float] = []
    try:
        async with eb.AsyncEmbeddingClient([server.url], priority="bulk", batch_size=2) as bulk:
            assert bulk._gate is not None

            async def sleep(seconds: float) -> None:
                waits.append(seconds)
                await anyio.to_thread.run_sync(lambda: server.control(mode="ok"))
                await anyio.sleep(seconds)

            bulk._gate._sleep = sleep
            rows = await bulk.embed(texts)
    finally:
        server.stop()
    assert waits
    assert rows[:, 0].tolist() == [float(len(t)) for t in texts]


def test_bulk_limit_bounds_count_only_usable_replicas(stub: TeiStub) -> None:
    """Two of three members are unhealthy (no panic mode): the bulk limit's floor is one
    request (one usable replica), and its ceiling that of a one-replica pool. If this fails, a bulk
    client keeps one request in flight per dead replica, all on the live one."""
    dead = [f"http://127.0.0.1:{free_port()}" for _ in range(2)]
    with eb.EmbeddingClient([stub.url], priority="bulk", health_check=None) as alone:
        assert alone._gate is not None
        alone.embed(TEXTS[:2])
        single = alone._gate.limiter
    with eb.EmbeddingClient(
        [stub.url, *dead], priority="bulk", health_check=None, panic_threshold=0.0
    ) as bulk:
        assert bulk._gate is not None
        pool = bulk.transport.pool
        for url in dead:
            for _ in range(pool.health_check.fall):
                pool.report_check(url, ok=False)
        rows = bulk.embed(TEXTS[:4])
        limiter = bulk._gate.limiter
    assert rows.shape[0] == 4
    assert (limiter.min_limit, limiter.max_limit) == (1, single.max_limit)


@pytest.mark.anyio
async def test_async_bulk_limit_bounds_count_only_usable_replicas(stub: TeiStub) -> None:
    """The async bulk client sizes its limit by usable replicas too. If this fails,
    async bulk jobs count dead replicas into their floor."""
    dead = [f"http://127.0.0.1:{free_port()}" for _ in range(2)]
    async with eb.AsyncEmbeddingClient(
        [stub.url, *dead], priority="bulk", health_check=None, panic_threshold=0.0
    ) as bulk:
        assert bulk._gate is not None
        pool = bulk.transport.pool
        for url in dead:
            for _ in range(pool.health_check.fall):
                pool.report_check(url, ok=False)
        rows = await bulk.embed(TEXTS[:4])
        assert rows.shape[0] == 4
        assert bulk._gate.limiter.min_limit == 1
