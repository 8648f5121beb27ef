"""The wire contract between the library and the reference worker, pinned end to end:
the library never imports the worker, so only these tests keep the two in step."""

from __future__ import annotations

from collections.abc import Iterator

import anyio
import httpx
import numpy as np
import pytest
from worker_proc import WorkerProcess, start_worker

import embedbalance as eb

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def roomy(standard_workers: tuple[WorkerProcess, ...]) -> WorkerProcess:
    """A worker with default limits: the suite's shared one (tests/conftest.py)."""
    return standard_workers[0]


@pytest.fixture(scope="module")
def cramped() -> Iterator[WorkerProcess]:
    """A slow worker whose queue holds almost nothing, so concurrent load gets 429s."""
    with start_worker(
        "--torch-threads",
        "1",
        "--max-queue-tokens",
        "24",
        "--delay-ms",
        "150",
        "--max-wait-ms",
        "0",
    ) as worker:
        yield worker


def test_queue_depth_header_reaches_the_pool(roomy: WorkerProcess) -> None:
    """The worker's X-Queue-Depth header is read by the transport and shown in the pool's stats."""
    transport = eb.BalancingTransport([roomy.url], health_check=None)
    with httpx.Client(transport=transport, base_url="http://e") as client:
        response = client.post("/embed", json={"inputs": ["hello"]})
    assert response.status_code == 200
    assert "x-queue-depth" in response.headers
    assert transport.stats().pool.backends[0].queue_depth == float(
        response.headers["x-queue-depth"]
    )


def test_health_path_matches_the_default_check(roomy: WorkerProcess) -> None:
    """The library's default health-check path is one the worker answers 200 on once ready."""
    assert httpx.get(roomy.url + eb.HealthCheck().path).status_code == 200


@pytest.mark.anyio
async def test_worker_overload_is_load_not_death(
    roomy: WorkerProcess, cramped: WorkerProcess
) -> None:
    """A worker shedding load with 429 + Retry-After is avoided, never ejected, and no request is lost."""
    transport = eb.AsyncBalancingTransport(
        [roomy.url, cramped.url], balancer=eb.RoundRobin(), health_check=None
    )
    texts = [f"sentence number {i} about load shedding" for i in range(24)]
    results: dict[int, list[list[float]]] = {}
    async with (
        transport,
        httpx.AsyncClient(transport=transport, base_url="http://e", timeout=30) as client,
    ):

        async def one(i: int) -> None:
            response = await client.post("/embed", json={"inputs": [texts[i]]})
            response.raise_for_status()
            results[i] = response.json()

        async with anyio.create_task_group() as tg:
            for i in range(len(texts)):
                tg.start_soon(one, i)
    assert sorted(results) == list(range(len(texts)))
    row = transport.stats().pool.by_url()[cramped.url]
    assert row.overloads > 0
    assert row.ejections == 0
    assert row.failures == 0
    async with httpx.AsyncClient() as plain:
        direct = (await plain.post(roomy.url + "/embed", json={"inputs": [texts[5]]})).json()
    np.testing.assert_allclose(results[5], direct, atol=1e-5)
