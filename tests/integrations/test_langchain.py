"""The LangChain adapter against real workers: rows equal direct requests, from
backends or from existing clients, sync and async, with one replica killed mid-run."""

from __future__ import annotations

import anyio
import pytest

pytest.importorskip("langchain_core")

from langchain_core.embeddings import Embeddings
from tests.helpers.worker_proc import WorkerProcess
from tests.integrations._adapters import (
    BATCH,
    MANY,
    KillMidRun,
    assert_rows_equal,
    victim,
)
from tests.integrations._checks import TEXTS, Reference, dead_url

from embedbalance import AsyncEmbeddingClient, EmbeddingClient
from embedbalance.integrations.langchain import EmbedbalanceEmbeddings

__all__ = ["victim"]


def test_is_a_langchain_embeddings(urls: list[str], reference: Reference) -> None:
    """If this fails, LangChain code (vector stores, retrievers) cannot take the adapter."""
    with EmbedbalanceEmbeddings(urls, truncate=True) as emb:
        assert isinstance(emb, Embeddings)
        query = emb.embed_query(TEXTS[0])
        assert_rows_equal([query], [TEXTS[0]], reference)
        assert emb.embed_documents([]) == []


def test_embed_documents_survives_a_replica_killed_mid_run(
    urls: list[str], reference: Reference, victim: WorkerProcess
) -> None:
    """If this fails, a replica dying during ``embed_documents`` loses, reorders or
    corrupts rows instead of being retried on the survivors."""
    killer = KillMidRun(victim)
    with EmbedbalanceEmbeddings([*urls, victim.url], on_batch=killer, **BATCH) as emb:
        rows = emb.embed_documents(MANY)
        killer.assert_mid_run()
        assert_rows_equal(rows, MANY, reference)
        # And it goes on working with the replica gone.
        assert_rows_equal(emb.embed_documents(TEXTS[:5]), TEXTS[:5], reference)


# trio in the slow suite, as the client tests do: the default run keeps its time budget.
@pytest.mark.parametrize("loop", ["asyncio", pytest.param("trio", marks=pytest.mark.slow)])
def test_aembed_documents_survives_a_replica_killed_mid_run(
    urls: list[str], reference: Reference, victim: WorkerProcess, loop: str
) -> None:
    """If this fails, the async path (its own AsyncEmbeddingClient, built in the running
    loop) breaks on a dying replica or on one of the two event loops."""
    killer = KillMidRun(victim)

    async def main() -> tuple[list[list[float]], list[float]]:
        async with EmbedbalanceEmbeddings([*urls, victim.url], on_batch=killer, **BATCH) as emb:
            rows = await emb.aembed_documents(MANY)
            assert isinstance(emb.async_client, AsyncEmbeddingClient)
            return rows, await emb.aembed_query(TEXTS[3])

    rows, query = anyio.run(main, backend=loop)
    killer.assert_mid_run()
    assert_rows_equal(rows, MANY, reference)
    assert_rows_equal([query], [TEXTS[3]], reference)


def test_wraps_an_existing_sync_client_without_closing_it(
    urls: list[str], reference: Reference
) -> None:
    """If this fails, the adapter closes a client its caller still uses, or its async
    methods need an async client the caller never gave."""
    with EmbeddingClient([*urls, dead_url()], truncate=True) as client:
        emb = EmbedbalanceEmbeddings(client=client)
        assert emb.client is client
        assert_rows_equal(emb.embed_documents(TEXTS[:6]), TEXTS[:6], reference)
        rows = anyio.run(emb.aembed_documents, TEXTS[6:9])
        assert_rows_equal(rows, TEXTS[6:9], reference)
        emb.close()
        assert_rows_equal([client.embed([TEXTS[9]])[0].tolist()], [TEXTS[9]], reference)


def test_wraps_an_existing_async_client(urls: list[str], reference: Reference) -> None:
    """If this fails, an app that already holds an AsyncEmbeddingClient cannot reuse it,
    or the sync methods fail with something less clear than a TypeError."""

    async def main() -> list[list[float]]:
        async with AsyncEmbeddingClient(urls, truncate=True) as client:
            emb = EmbedbalanceEmbeddings(async_client=client)
            with pytest.raises(TypeError, match="async methods"):
                emb.embed_query("x")
            return await emb.aembed_documents(TEXTS[:4])

    assert_rows_equal(anyio.run(main), TEXTS[:4], reference)


@pytest.mark.parametrize(
    ("args", "kwargs", "match"),
    [
        ((), {}, "needs backends"),
        ((["http://127.0.0.1:1"],), {"client": "not a client"}, "not both"),
        ((), {"client": "not a client"}, "must be an EmbeddingClient"),
    ],
)
def test_bad_construction_is_a_type_error(args: tuple, kwargs: dict, match: str) -> None:
    """If this fails, a wrong constructor call fails later and less clearly (inside
    LangChain) instead of at once, naming what is wrong."""
    with pytest.raises(TypeError, match=match):
        EmbedbalanceEmbeddings(*args, **kwargs)


def test_options_with_a_given_client_are_refused(urls: list[str]) -> None:
    """If this fails, options such as ``retry=`` passed next to ``client=`` would be
    silently ignored."""
    with EmbeddingClient(urls) as client, pytest.raises(TypeError, match="retry"):
        EmbedbalanceEmbeddings(client=client, retry=2)
