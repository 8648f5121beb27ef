"""AsyncEmbeddingClient on asyncio and trio, against real workers and fakes."""

from __future__ import annotations

import collections
from collections.abc import AsyncIterator

import anyio
import numpy as np
import pytest
from tests.client._checks import assert_rows_match
from tests.client.fake_server import FakeBackend

import embedbalance as eb
from embedbalance.client import AsyncEmbeddingClient, BatchEvent

pytestmark = pytest.mark.anyio


async def test_rows_match_single_worker_embedding(
    urls: list[str], corpus: list[str], reference: dict[str, np.ndarray]
) -> None:
    """Concurrent sub-batches come back as each text's own embedding, from both workers."""
    events: list[BatchEvent] = []
    async with AsyncEmbeddingClient(
        urls, batch_size=8, truncate=True, on_batch=events.append
    ) as client:
        matrix = await client.embed(corpus[:100])
    assert_rows_match(matrix, corpus[:100], reference)
    assert set(collections.Counter(e.backend for e in events)) == set(urls)


async def test_embed_iter_accepts_async_iterables(
    urls: list[str], corpus: list[str], reference: dict[str, np.ndarray]
) -> None:
    """An async generator input yields chunk-sized arrays in input order."""

    async def texts() -> AsyncIterator[str]:
        for t in corpus[:70]:
            await anyio.lowlevel.checkpoint()
            yield t

    async with AsyncEmbeddingClient(urls, truncate=True) as client:
        chunks = [c async for c in client.embed_iter(texts(), chunk_size=30)]
    assert [c.shape[0] for c in chunks] == [30, 30, 10]
    assert_rows_match(np.concatenate(chunks), corpus[:70], reference)


async def test_dimension_mismatch_is_raised_bare(urls: list[str], corpus: list[str]) -> None:
    """The wrong backend's DimensionMismatch escapes the task group as itself."""
    with FakeBackend(dim=7) as wrong:
        async with AsyncEmbeddingClient(
            [urls[0], wrong.url], balancer=eb.RoundRobin(), health_check=None, dimension=384
        ) as client:
            with pytest.raises(eb.DimensionMismatch) as info:
                await client.embed(corpus[:64])
    assert info.value.url == wrong.url


async def test_empty_and_bad_inputs(fake: FakeBackend) -> None:
    """Empty input gives (0, dim) via /info; a non-str item fails before any embed request."""
    async with AsyncEmbeddingClient([fake.url], health_check=None) as client:
        assert (await client.embed([])).shape == (0, 7)
        with pytest.raises(TypeError, match=r"texts\[2\] is NoneType"):
            await client.embed(["a", "b", None])  # type: ignore[list-item]
    assert fake.embed_requests == []


async def test_semaphore_bounds_requests_in_flight() -> None:
    """max_concurrency caps outstanding sub-batches on the async side too."""
    with FakeBackend(delay=0.05) as slow:
        async with AsyncEmbeddingClient(
            [slow.url], health_check=None, batch_size=2, max_concurrency=3
        ) as client:
            out = await client.embed([f"t{i}" for i in range(40)])
    assert out[:, 0].tolist() == [len(f"t{i}") for i in range(40)]
    assert slow.max_in_flight == 3
