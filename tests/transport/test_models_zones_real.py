"""Models and zones against two real workers on loopback.

The two workers serve the same weights under different served-model names ("small",
"large"), so where each request went shows in the answer itself (OpenAI's ``model``
field) as well as in the transport's stats. The same two then play two zones: zone
"a" is killed mid-run and brought back on its port.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import anyio
import httpx
import numpy as np
import pytest
from worker_proc import WorkerProcess, start_worker

import embedbalance as eb

pytestmark = pytest.mark.timeout(120)

WORKER_ARGS = ("--torch-threads", "1", "--max-wait-ms", "2")
TEXTS = [f"text number {i} about zones" for i in range(12)]


@pytest.fixture(scope="module")
def workers() -> Iterator[dict[str, WorkerProcess]]:
    """Two workers, "small" and "large"; whichever is running at the end is stopped."""
    with ThreadPoolExecutor(2) as pool:
        futures = {
            name: pool.submit(start_worker, *WORKER_ARGS, "--served-model-name", name)
            for name in ("small", "large")
        }
        started = {name: fut.result() for name, fut in futures.items()}
    try:
        yield started
    finally:
        for worker in started.values():
            worker.stop()


def _until(condition: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)


def test_models_learned_from_info_route_openai_requests(
    workers: dict[str, WorkerProcess],
) -> None:
    """If this fails, an OpenAI-shaped request for one model is answered by a worker
    serving another, the models are not learned from /info, or an unserved model is
    sent somewhere instead of refused by name."""
    small, large = workers["small"], workers["large"]
    transport = eb.BalancingTransport(
        [small.url, large.url], health_check=eb.HealthCheck(interval=0.2)
    )
    with (
        transport,
        httpx.Client(transport=transport, base_url="http://embeddings") as client,
    ):
        _until(lambda: {b.model for b in transport.stats().pool.backends} == {"small", "large"})
        for model, worker in (("small", small), ("large", large)) * 10:
            response = client.post("/v1/embeddings", json={"input": ["hi"], "model": model})
            assert response.status_code == 200
            assert response.json()["model"] == model
            assert response.extensions[eb.BACKEND_EXTENSION].url == worker.url
        # TEI-shaped requests carry no model: the extension routes them.
        response = client.post(
            "/embed", json={"inputs": ["hi"]}, extensions={eb.MODEL_EXTENSION: "large"}
        )
        assert response.extensions[eb.BACKEND_EXTENSION].url == large.url
        with pytest.raises(eb.NoBackendAvailable, match=r"'huge'.*'large', 'small'"):
            client.post("/v1/embeddings", json={"input": ["hi"], "model": "huge"})
        # A malformed body is not the transport's business: the server answers it.
        broken = client.post(
            "/v1/embeddings",
            content=b'{"input": ["hi"], "model": ',
            headers={"content-type": "application/json"},
        )
        assert 400 <= broken.status_code < 500
        by_model = transport.stats().pool.by_model()
    assert by_model["small"].successes == 10
    assert by_model["large"].successes == 11
    assert by_model["small"].latency_p50 is not None


def test_one_client_two_models_each_with_its_own_dimension_check(
    workers: dict[str, WorkerProcess],
) -> None:
    """If this fails, a client cannot serve two models (per-call model ignored by the
    router, or the second model trips the first one's dimension pin)."""
    small, large = workers["small"], workers["large"]
    events: list[eb.BatchEvent] = []
    with eb.EmbeddingClient(
        [eb.Backend(small.url, model="small"), eb.Backend(large.url, model="large")],
        model="small",
        on_batch=events.append,
        health_check=None,
        batch_size=4,
    ) as client:
        # The client's own GET /info (its limits, its dimension) asks its model's replicas.
        assert {client.info()["model_id"] for _ in range(6)} == {"small"}
        rows_small = client.embed(TEXTS)
        small_urls = {e.backend for e in events}
        events.clear()
        rows_large = client.embed(TEXTS, model="large")
        large_urls = {e.backend for e in events}
        stats = client.stats().pool.by_model()
    assert small_urls == {small.url}
    assert large_urls == {large.url}
    assert rows_small.shape == rows_large.shape == (len(TEXTS), 384)
    np.testing.assert_allclose(rows_small, rows_large, atol=1e-5)  # same weights
    assert stats["large"].successes == 3
    assert stats["small"].successes == 3 + 6 + 1  # embeds, info() calls, the limits probe


def test_async_transport_learns_models_too(workers: dict[str, WorkerProcess]) -> None:
    """If this fails, only sync apps get models from /info; async ones route blindly."""
    small, large = workers["small"], workers["large"]

    async def main() -> None:
        async with eb.AsyncBalancingTransport(
            [small.url, large.url], health_check=eb.HealthCheck(interval=0.2)
        ) as transport:
            with anyio.fail_after(15):
                while {b.model for b in transport.stats().pool.backends} != {"small", "large"}:
                    await anyio.sleep(0.05)
            async with httpx.AsyncClient(transport=transport, base_url="http://e") as client:
                for _ in range(5):
                    r = await client.post("/v1/embeddings", json={"input": "x", "model": "large"})
                    assert r.json()["model"] == "large"

    anyio.run(main)


def test_a_zone_killed_mid_run_spills_without_loss_and_traffic_returns(
    workers: dict[str, WorkerProcess],
) -> None:
    """If this fails, a caller in zone a either sends traffic across zones while its own
    zone is fine, loses texts when that zone dies, or never comes back to it."""
    a, b = workers["small"], workers["large"]
    port = a.port
    client = eb.EmbeddingClient(
        [eb.Backend(a.url, zone="a"), eb.Backend(b.url, zone="b")],
        zone="a",
        # A killed worker refuses connections at once, so fall=1 sees it without a short
        # timeout; a short one made a busy machine's slow check spill traffic to b.
        health_check=eb.HealthCheck(interval=0.1, fall=1, rise=1, timeout=5.0),
        slow_start=None,
        batch_size=4,
        retry=eb.Retry(attempts=3),
    )
    with client:
        reference = client.embed(TEXTS)
        for _ in range(5):
            np.testing.assert_allclose(client.embed(TEXTS), reference, atol=1e-5)
        zones = client.stats().pool.requests_by_zone()
        assert zones["b"] == 0
        assert zones["a"] >= 18

        a.kill()  # zone a is gone: every text must still be embedded, by zone b
        for _ in range(10):
            np.testing.assert_allclose(client.embed(TEXTS), reference, atol=1e-5)
        during = client.stats().pool.requests_by_zone()
        assert during["b"] >= 30

        workers["small"] = a = start_worker(
            *WORKER_ARGS, "--served-model-name", "small", "--port", str(port)
        )
        _until(lambda: client.stats().pool.by_url()[a.url].state == "healthy")
        for _ in range(5):
            np.testing.assert_allclose(client.embed(TEXTS), reference, atol=1e-5)
        after = client.stats().pool.requests_by_zone()
    assert after["b"] == during["b"]  # back home: nothing more crossed zones
    assert after["a"] >= during["a"] + 15
