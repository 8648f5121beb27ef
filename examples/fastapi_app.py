"""FastAPI: one async balanced client per process, opened and closed by the lifespan.

Start two workers and the app::

    embedbalance-worker --port 8001 &
    embedbalance-worker --port 8002 &
    export EMBEDBALANCE_BACKENDS=http://127.0.0.1:8001,http://127.0.0.1:8002
    uvicorn examples.fastapi_app:app --port 8000     # from the repository root

Routes:

- ``POST /embed`` ``{"texts": [...]}`` -> ``{"embeddings": [[...], ...], "dimension": 384}``
- ``GET /stats`` -> the transport's snapshot (per-backend requests, latencies, ejections)
- ``GET /metrics`` -> Prometheus text, from a registry that belongs to this app

Why the lifespan: the async transport's health checks are a task on the server's event
loop, so the client must be created inside that loop and closed before it stops. With
``uvicorn --workers 4`` (or gunicorn's ``UvicornWorker``) each worker process runs its
own lifespan and so gets its own client.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Annotated, Any

import attrs
from fastapi import Depends, FastAPI, HTTPException, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from pydantic import BaseModel, Field

from embedbalance import (
    AllAttemptsFailed,
    AsyncEmbeddingClient,
    EmbedbalanceError,
    NoBackendAvailable,
    PrometheusMetrics,
    config,
)

#: Comma-separated backend URLs; every other ``EMBEDBALANCE_*`` variable of
#: docs/config.md (balancer, retry, hedge, timeouts...) is read too.
BACKENDS_ENV = "EMBEDBALANCE_BACKENDS"
#: Two workers started with ``embedbalance-worker --port 8001`` / ``--port 8002``.
DEFAULT_BACKENDS = "http://127.0.0.1:8001,http://127.0.0.1:8002"
#: Texts accepted in one request: a guard against one caller filling every backend.
MAX_TEXTS = 256


#: The example's own choices; any ``EMBEDBALANCE_*`` variable overrides them.
CLIENT_DEFAULTS: dict[str, Any] = {
    "truncate": True,  # cut over-long texts instead of failing the request
    "timeout": 30.0,
}


def client_options_from_env() -> dict[str, Any]:
    """``AsyncEmbeddingClient`` keywords from the ``EMBEDBALANCE_*`` variables (validated
    by :mod:`embedbalance.config`, whose errors name the variable), over the example's
    defaults; the two local workers when neither backends nor DNS names are given."""
    environ = dict(os.environ)
    if not environ.get(BACKENDS_ENV, "").strip() and not environ.get("EMBEDBALANCE_DNS"):
        environ[BACKENDS_ENV] = DEFAULT_BACKENDS
    return {**CLIENT_DEFAULTS, **config.from_env(environ=environ).client_kwargs()}


def backends_from_env() -> list[str]:
    """The backend URLs the environment names, or the documented default."""
    return [backend.url for backend in client_options_from_env()["backends"]]


class EmbedRequest(BaseModel):
    texts: list[Annotated[str, Field(min_length=1)]] = Field(min_length=1, max_length=MAX_TEXTS)


class EmbedResponse(BaseModel):
    embeddings: list[list[float]]
    dimension: int


def get_client(request: Request) -> AsyncEmbeddingClient:
    """The client the lifespan stored on the app (a dependency, so tests can override it)."""
    client: AsyncEmbeddingClient = request.app.state.embedder
    return client


Client = Annotated[AsyncEmbeddingClient, Depends(get_client)]


def create_app(backends: Sequence[str] | None = None) -> FastAPI:
    """The app: backends from the argument, or everything from the ``EMBEDBALANCE_*``
    variables, read (and validated) now; the client itself is built when the server
    starts."""
    options = (
        client_options_from_env()
        if backends is None
        else {**CLIENT_DEFAULTS, "backends": list(backends)}
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # A registry per app, not the global one: two apps in one process (tests, or
        # mounted sub-apps) would otherwise collide on metric names.
        registry = CollectorRegistry()
        client = AsyncEmbeddingClient(**options, metrics=PrometheusMetrics(registry=registry))
        # ``async with`` starts health checks now and, on shutdown, cancels them and
        # closes every connection before the event loop goes away.
        async with client:
            app.state.embedder = client
            app.state.registry = registry
            yield

    app = FastAPI(title="embedbalance example", lifespan=lifespan)

    @app.post("/embed")
    async def embed(body: EmbedRequest, client: Client) -> EmbedResponse:
        """Embed the posted texts; backend trouble becomes a 503 or 502 so that callers
        can tell it from their own mistakes (422)."""
        try:
            rows = await client.embed(body.texts)
        except (NoBackendAvailable, AllAttemptsFailed) as exc:
            raise HTTPException(503, f"no embedding backend could answer: {exc}") from exc
        except EmbedbalanceError as exc:
            raise HTTPException(502, str(exc)) from exc
        return EmbedResponse(embeddings=rows.tolist(), dimension=int(rows.shape[1]))

    @app.get("/stats")
    async def stats(client: Client) -> dict[str, Any]:
        """The transport's snapshot as JSON: cheap, needs no Prometheus."""
        return attrs.asdict(client.transport.stats())

    @app.get("/metrics")
    async def metrics(request: Request) -> Response:
        """Prometheus exposition of this app's registry (one per worker process)."""
        registry: CollectorRegistry = request.app.state.registry
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return app


#: For ``uvicorn examples.fastapi_app:app``; building it starts nothing.
app = create_app()
