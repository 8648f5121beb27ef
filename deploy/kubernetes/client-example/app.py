"""A FastAPI app that embeds through every worker pod, GPU first, CPU as overflow.

Configuration comes from the environment (the ConfigMap in fastapi-client.yaml), so the
same image runs in any namespace or cluster.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import httpx
from fastapi import FastAPI
from prometheus_client import make_asgi_app

import embedbalance as eb
from embedbalance.metrics import PrometheusMetrics

PORT = int(os.environ.get("EMBED_WORKER_PORT", "8000"))
GPU_SERVICE = os.environ["EMBED_GPU_SERVICE"]
CPU_SERVICE = os.environ["EMBED_CPU_SERVICE"]
MIN_TTL = float(os.environ.get("EMBED_DNS_MIN_TTL", "1"))
MAX_TTL = float(os.environ.get("EMBED_DNS_MAX_TTL", "30"))


def make_discovery() -> eb.DnsDiscovery:
    """Both headless Services, the GPU one preferred (tier 0) over the CPU one (tier 1)."""
    return eb.DnsDiscovery(
        [
            eb.DnsTarget(GPU_SERVICE, port=PORT, tier=0, weight=4.0),
            eb.DnsTarget(CPU_SERVICE, port=PORT, tier=1),
        ],
        min_ttl=MIN_TTL,
        max_ttl=MAX_TTL,
    )


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    transport = eb.AsyncBalancingTransport(
        make_discovery(), balancer=eb.GpuPriority(), metrics=PrometheusMetrics()
    )
    async with httpx.AsyncClient(transport=transport, base_url="http://embeddings") as client:
        app.state.embeddings = client
        yield


app = FastAPI(lifespan=lifespan)
# The balancer's own series (embedbalance_*) for the dashboard in deploy/grafana.
app.mount("/metrics", make_asgi_app())


@app.post("/search-vectors")
async def search_vectors(texts: list[str]) -> dict[str, list[list[float]]]:
    """Embed the texts on whichever worker is least loaded."""
    client: httpx.AsyncClient = app.state.embeddings
    with anyio.fail_after(10):
        response = await client.post("/embed", json={"inputs": texts})
    response.raise_for_status()
    return {"embeddings": response.json()}


@app.get("/healthz")
async def healthz() -> dict[str, str]:
    """The app's own liveness: it does not depend on any worker being up."""
    return {"status": "ok"}
