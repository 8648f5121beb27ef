"""LangChain: a balanced :class:`langchain_core.embeddings.Embeddings`.

    from embedbalance.integrations.langchain import EmbedbalanceEmbeddings

    embeddings = EmbedbalanceEmbeddings(["http://10.0.0.5:8000", "http://10.0.0.9:8000"])
    vectors = embeddings.embed_documents(["first chunk", "second chunk"])

Why an adapter and not ``OpenAIEmbeddings(http_client=...)``: that route works too (see
``docs/integrations.md``), but it sends LangChain's own batches one request at a time,
while this one hands the whole list to the client, which splits it across backends by
their capacity, retries a failed sub-batch elsewhere and returns rows in input order.
Needs the ``langchain`` extra (``pip install "embedbalance[langchain]"``).
"""

from __future__ import annotations

from collections.abc import Iterable
from types import TracebackType
from typing import Any

from langchain_core.embeddings import Embeddings

from .._backend import BackendLike
from ..client import AsyncEmbeddingClient, EmbeddingClient
from ..discovery import Discovery
from ._clients import ClientPair

__all__ = ["EmbedbalanceEmbeddings"]


class EmbedbalanceEmbeddings(Embeddings):
    """LangChain ``Embeddings`` over many replicas.

    Give either ``backends`` (plus any :class:`~embedbalance.EmbeddingClient` keyword,
    such as ``api="openai"`` or ``retry=``) or an existing ``client=`` and/or
    ``async_client=``. Built from backends it owns its clients: the sync one is created
    now, the async one on the first ``aembed_*`` call (in that event loop), and
    :meth:`close` / :meth:`aclose` release them. Clients passed in are never closed here.

    Without an async client (only ``client=`` given, or a discovery source, which can
    feed one transport), the ``aembed_*`` methods run the sync client on a worker thread.
    Without a sync client, the sync methods raise :class:`TypeError`.
    """

    def __init__(
        self,
        backends: Iterable[BackendLike] | Discovery | BackendLike | None = None,
        *,
        client: EmbeddingClient | None = None,
        async_client: AsyncEmbeddingClient | None = None,
        **options: Any,
    ) -> None:
        self._pair = ClientPair(
            backends,  # type: ignore[arg-type]
            client=client,
            async_client=async_client,
            options=options,
            owner=type(self).__name__,
        )

    @property
    def client(self) -> EmbeddingClient | None:
        """The sync client (its ``stats()`` shows per-backend traffic)."""
        return self._pair.sync

    @property
    def async_client(self) -> AsyncEmbeddingClient | None:
        """The async client, once one exists."""
        return self._pair.async_

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        """One row per text, in order; the list is split across backends."""
        return self._pair.embed(list(texts))

    def embed_query(self, text: str) -> list[float]:
        """The row of one text (queries and documents embed the same way here)."""
        return self._pair.embed([text])[0]

    async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
        """Async :meth:`embed_documents`."""
        return await self._pair.aembed(list(texts))

    async def aembed_query(self, text: str) -> list[float]:
        """Async :meth:`embed_query`."""
        return (await self._pair.aembed([text]))[0]

    def close(self) -> None:
        """Close the sync client, if this adapter created it."""
        self._pair.close()

    async def aclose(self) -> None:
        """Close every client this adapter created."""
        await self._pair.aclose()

    def __enter__(self) -> EmbedbalanceEmbeddings:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    async def __aenter__(self) -> EmbedbalanceEmbeddings:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"<EmbedbalanceEmbeddings client={self._pair.sync or self._pair.async_!r}>"
