"""The batcher groups callers into shared forward passes and answers each with its own rows."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from embedbalance_worker import Batcher, Closed, EmbeddingModel, Overloaded
from embedbalance_worker.batcher import BatchStats, plan_chunks
from embedbalance_worker.model import cosine_rows, l2_normalize

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    """The batcher is asyncio-based, like uvicorn."""
    return "asyncio"


def _texts(n: int) -> list[str]:
    return [("word " * (1 + (i * 7) % 40)) + f"item {i}" for i in range(n)]


async def test_concurrent_callers_share_passes_and_get_their_own_rows(
    model: EmbeddingModel,
) -> None:
    """40 concurrent callers are served in fewer passes, each row equal to a solo forward."""
    stats: list[BatchStats] = []
    batcher = Batcher(
        model.forward,
        max_batch_size=16,
        max_batch_tokens=600,
        max_queue_tokens=100_000,
        max_wait_s=0.005,
        on_batch=stats.append,
    )
    batcher.start()
    texts = _texts(40)
    requests = [
        [model.truncate(x) for x in model.tokenize(texts[i : i + 1 + i % 3])] for i in range(40)
    ]
    results = await asyncio.gather(*(batcher.submit(ids) for ids in requests))
    await batcher.aclose()
    assert len(stats) < sum(len(r) for r in requests)
    assert all(s.size <= 16 for s in stats)
    assert all(s.padded_tokens <= 600 for s in stats)
    for i, rows in enumerate(results):
        expected = model.encode(texts[i : i + 1 + i % 3])
        assert rows.shape == expected.shape
        assert cosine_rows(l2_normalize(rows), expected).min() >= 0.9999


async def test_queue_bound_refuses_at_once_with_retry_after(model: EmbeddingModel) -> None:
    """Past max_queue_tokens, submit raises Overloaded immediately with Retry-After >= 1."""
    batcher = Batcher(
        model.forward, max_batch_size=4, max_batch_tokens=512, max_queue_tokens=30, max_wait_s=0
    )
    batcher.start()
    ids = model.tokenize(["a few words here"])  # 6 tokens
    tasks = [asyncio.ensure_future(batcher.submit(ids)) for _ in range(20)]
    done = await asyncio.gather(*tasks, return_exceptions=True)
    await batcher.aclose()
    refused = [r for r in done if isinstance(r, Overloaded)]
    served = [r for r in done if isinstance(r, np.ndarray)]
    assert refused
    assert served
    assert len(refused) + len(served) == 20
    assert all(r.retry_after >= 1 for r in refused)


async def test_closed_batcher_refuses_new_work_but_finishes_queued(model: EmbeddingModel) -> None:
    """After close(), queued requests still complete and new ones raise Closed."""
    batcher = Batcher(
        model.forward, max_batch_size=2, max_batch_tokens=512, max_queue_tokens=10_000, max_wait_s=0
    )
    batcher.start()
    ids = model.tokenize(["queued text"])
    queued = [asyncio.ensure_future(batcher.submit(ids)) for _ in range(5)]
    await asyncio.sleep(0)
    batcher.close()
    with pytest.raises(Closed):
        await batcher.submit(ids)
    rows = await asyncio.gather(*queued)
    await batcher.aclose()
    assert all(r.shape == (1, 384) for r in rows)
    assert batcher.queue_depth == 0


def test_plan_chunks_separates_very_different_lengths() -> None:
    """Sorted rows split where padding would waste more than 30%, never below 8 rows a chunk."""
    assert plan_chunks([5] * 10) == [10]
    assert plan_chunks([5] * 8 + [200] * 8) == [8, 8]
    assert plan_chunks([5] * 3 + [200]) == [4]
    sizes = plan_chunks(sorted([3, 9, 27, 81, 243] * 10))
    assert sum(sizes) == 50
