"""The LlamaIndex adapter against real workers: rows equal direct requests through
LlamaIndex's own batching entry points, with one replica killed mid-run."""

from __future__ import annotations

import anyio
import pytest

pytest.importorskip("llama_index.core")

from llama_index.core.base.embeddings.base import BaseEmbedding
from tests.helpers.worker_proc import WorkerProcess
from tests.integrations._adapters import (
    BATCH,
    MANY,
    KillMidRun,
    assert_rows_equal,
    victim,
)
from tests.integrations._checks import TEXTS, Reference, dead_url

from embedbalance import EmbeddingClient
from embedbalance.integrations.llamaindex import MAX_BATCH, EmbedbalanceEmbedding

__all__ = ["victim"]


def test_is_a_llamaindex_embedding(urls: list[str], reference: Reference) -> None:
    """If this fails, LlamaIndex (``Settings.embed_model``, indexes) cannot take the
    adapter, or it cuts documents into LlamaIndex's default batches of 10."""
    emb = EmbedbalanceEmbedding(urls, truncate=True)
    try:
        assert isinstance(emb, BaseEmbedding)
        assert emb.embed_batch_size == MAX_BATCH
        assert_rows_equal([emb.get_query_embedding(TEXTS[0])], [TEXTS[0]], reference)
        assert_rows_equal([emb.get_text_embedding(TEXTS[1])], [TEXTS[1]], reference)
    finally:
        emb.close()


def test_batch_survives_a_replica_killed_mid_run(
    urls: list[str], reference: Reference, victim: WorkerProcess
) -> None:
    """If this fails, a replica dying during ``get_text_embedding_batch`` loses,
    reorders or corrupts rows instead of being retried on the survivors."""
    killer = KillMidRun(victim)
    emb = EmbedbalanceEmbedding([*urls, victim.url], on_batch=killer, **BATCH)
    try:
        rows = emb.get_text_embedding_batch(MANY)
    finally:
        emb.close()
    killer.assert_mid_run()
    assert_rows_equal(rows, MANY, reference)


# trio in the slow suite, as the client tests do: the default run keeps its time budget.
@pytest.mark.parametrize("loop", ["asyncio", pytest.param("trio", marks=pytest.mark.slow)])
def test_async_batch_survives_a_replica_killed_mid_run(
    urls: list[str], reference: Reference, victim: WorkerProcess, loop: str
) -> None:
    """If this fails, LlamaIndex's async path (``aget_text_embedding_batch``) breaks on
    a dying replica or on one of the two event loops."""
    killer = KillMidRun(victim)

    async def main() -> tuple[list[list[float]], list[float]]:
        emb = EmbedbalanceEmbedding([*urls, victim.url], on_batch=killer, **BATCH)
        # LlamaIndex's public async batch entry point gathers with asyncio; on trio
        # the adapter's own batch coroutine (plain anyio underneath) is what runs.
        batch = emb.aget_text_embedding_batch if loop == "asyncio" else emb._aget_text_embeddings
        try:
            return await batch(MANY), await emb.aget_query_embedding(TEXTS[2])
        finally:
            await emb.aclose()

    rows, query = anyio.run(main, backend=loop)
    killer.assert_mid_run()
    assert_rows_equal(rows, MANY, reference)
    assert_rows_equal([query], [TEXTS[2]], reference)


def test_wraps_an_existing_client_without_closing_it(urls: list[str], reference: Reference) -> None:
    """If this fails, the adapter closes a client its caller still uses."""
    with EmbeddingClient([*urls, dead_url()], truncate=True) as client:
        emb = EmbedbalanceEmbedding(client=client)
        assert emb.client is client
        rows = emb.get_text_embedding_batch(TEXTS[:12])
        assert_rows_equal(rows, TEXTS[:12], reference)
        emb.close()
        assert client.embed([TEXTS[12]]).shape == (1, 384)


def test_bad_construction_is_a_type_error() -> None:
    """If this fails, a wrong constructor call surfaces later, inside LlamaIndex."""
    with pytest.raises(TypeError, match="needs backends"):
        EmbedbalanceEmbedding()
