"""examples/fastapi_app.py through FastAPI's TestClient (as a context manager, so the
lifespan runs), against two real workers, on asyncio and on trio."""

from __future__ import annotations

from collections.abc import Iterator

import anyio
import pytest
from examples import fastapi_app
from fastapi import FastAPI
from fastapi.testclient import TestClient
from tests.integrations._checks import (
    BACKENDS_ENV,
    TEXTS,
    Reference,
    check_embeddings,
    dead_url,
    per_backend_requests,
)

from embedbalance import AsyncEmbeddingClient


@pytest.fixture(params=["asyncio", "trio"])
def loop_backend(request: pytest.FixtureRequest) -> str:
    """The event loop the app's lifespan and requests run on."""
    return str(request.param)


@pytest.fixture(scope="module")
def app(backends_env: str) -> FastAPI:
    """The example app, configured the way a user does it: through the environment."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(BACKENDS_ENV, backends_env)
        return fastapi_app.create_app()


@pytest.fixture
def served(app: FastAPI, loop_backend: str) -> Iterator[TestClient]:
    """The app with its lifespan running for the test's duration."""
    with TestClient(app, backend=loop_backend) as client:
        yield client


def test_lifespan_builds_the_client_from_the_environment(
    served: TestClient, app: FastAPI, urls: list[str]
) -> None:
    """Starting the app creates one AsyncEmbeddingClient over the workers named in
    EMBEDBALANCE_BACKENDS."""
    client = app.state.embedder
    assert isinstance(client, AsyncEmbeddingClient)
    assert sorted(b.url for b in client.transport.pool.backends) == sorted(urls)


def test_embed_returns_the_workers_embeddings(served: TestClient, reference: Reference) -> None:
    """POST /embed answers one normalised 384-wide row per text, equal to a direct
    worker request for that text."""
    texts = TEXTS[:5]
    response = served.post("/embed", json={"texts": texts})
    assert response.status_code == 200, response.text
    check_embeddings(response.json(), texts, reference)


def test_stats_show_work_spread_over_both_workers(served: TestClient, reference: Reference) -> None:
    """Large requests are split into sub-batches that both workers answer, and /stats
    exposes the transport's per-backend counts."""
    texts = TEXTS[:40]
    for _ in range(3):
        response = served.post("/embed", json={"texts": texts})
        assert response.status_code == 200, response.text
        check_embeddings(response.json(), texts, reference)
    stats = served.get("/stats").json()
    counts = per_backend_requests(stats)
    assert len(counts) == 2
    assert all(n > 0 for n in counts.values()), counts
    assert sum(counts.values()) == stats["requests"] - stats["retries"] - stats["hedges"]


def test_metrics_route_uses_its_own_registry(served: TestClient, urls: list[str]) -> None:
    """GET /metrics exposes the app's registry: health gauges for both workers and the
    request counters."""
    assert served.post("/embed", json={"texts": [TEXTS[0]]}).status_code == 200
    text = served.get("/metrics").text
    for url in urls:
        assert f'embedbalance_backend_healthy{{backend="{url}"}} 1.0' in text
    assert "embedbalance_requests_total{" in text


@pytest.mark.parametrize("body", [{"texts": []}, {"texts": [""]}, {"text": "x"}])
def test_bad_input_is_a_422(served: TestClient, body: object) -> None:
    """A malformed body is refused by validation, never sent to a backend."""
    assert served.post("/embed", json=body).status_code == 422


def test_shutdown_closes_the_client(app: FastAPI, loop_backend: str) -> None:
    """Leaving the TestClient context runs the lifespan's exit: the client and its
    transport are closed and refuse further use."""
    with TestClient(app, backend=loop_backend) as served:
        assert served.post("/embed", json={"texts": [TEXTS[1]]}).status_code == 200
        client: AsyncEmbeddingClient = app.state.embedder
    with pytest.raises(RuntimeError, match="the client is closed"):
        anyio.run(client.embed, [TEXTS[1]])
    with pytest.raises(RuntimeError, match="transport is closed"):
        anyio.run(client.transport.start)


def test_every_start_gets_a_fresh_client(app: FastAPI, loop_backend: str) -> None:
    """A second startup of the same app (another server run, another event loop) builds
    a new client instead of reusing the closed one."""
    with TestClient(app, backend=loop_backend):
        first = app.state.embedder
    with TestClient(app, backend=loop_backend) as served:
        assert app.state.embedder is not first
        assert served.post("/embed", json={"texts": [TEXTS[2]]}).status_code == 200


def test_no_backend_answering_is_a_503(loop_backend: str) -> None:
    """When no backend can answer, /embed says 503 instead of raising a 500."""
    down = fastapi_app.create_app([dead_url()])
    with TestClient(down, backend=loop_backend) as served:
        response = served.post("/embed", json={"texts": ["hello"]})
    assert response.status_code == 503
    assert "no embedding backend" in response.json()["detail"]
