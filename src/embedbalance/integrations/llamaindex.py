"""LlamaIndex: a balanced :class:`llama_index.core.base.embeddings.base.BaseEmbedding`.

    from llama_index.core import Settings
    from embedbalance.integrations.llamaindex import EmbedbalanceEmbedding

    Settings.embed_model = EmbedbalanceEmbedding(["http://10.0.0.5:8000", "http://10.0.0.9:8000"])

LlamaIndex cuts a document set into batches of ``embed_batch_size`` texts before it calls
the model; this adapter defaults that to LlamaIndex's ceiling (2048) so that each call
reaches the client whole, and the client splits it across backends by capacity. Needs
the ``llamaindex`` extra (``pip install "embedbalance[llamaindex]"``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.callbacks import CallbackManager
from pydantic import PrivateAttr

from .._backend import BackendLike
from ..client import AsyncEmbeddingClient, EmbeddingClient
from ..discovery import Discovery
from ._clients import ClientPair

__all__ = ["EmbedbalanceEmbedding"]

#: LlamaIndex's upper bound for ``embed_batch_size``: hand the client as much as allowed.
MAX_BATCH = 2048


class EmbedbalanceEmbedding(BaseEmbedding):
    """LlamaIndex embedding model over many replicas.

    Give either ``backends`` (plus any :class:`~embedbalance.EmbeddingClient` keyword)
    or an existing ``client=`` and/or ``async_client=``; ownership and the sync/async
    fallbacks are those of
    :class:`~embedbalance.integrations.langchain.EmbedbalanceEmbeddings`. ``model_name``
    is only a label for LlamaIndex (say, for its cache keys); the model is whatever
    the backends serve.
    """

    _pair: ClientPair = PrivateAttr()

    def __init__(
        self,
        backends: Iterable[BackendLike] | Discovery | BackendLike | None = None,
        *,
        client: EmbeddingClient | None = None,
        async_client: AsyncEmbeddingClient | None = None,
        model_name: str = "embedbalance",
        embed_batch_size: int = MAX_BATCH,
        callback_manager: CallbackManager | None = None,
        **options: Any,
    ) -> None:
        pair = ClientPair(
            backends,  # type: ignore[arg-type]
            client=client,
            async_client=async_client,
            options=options,
            owner=type(self).__name__,
        )
        try:
            super().__init__(
                model_name=model_name,
                embed_batch_size=embed_batch_size,
                callback_manager=callback_manager or CallbackManager([]),
            )
        except BaseException:
            pair.close()
            raise
        self._pair = pair

    @classmethod
    def class_name(cls) -> str:
        return "EmbedbalanceEmbedding"

    @property
    def client(self) -> EmbeddingClient | None:
        """The sync client (its ``stats()`` shows per-backend traffic)."""
        return self._pair.sync

    @property
    def async_client(self) -> AsyncEmbeddingClient | None:
        """The async client, once one exists."""
        return self._pair.async_

    def _get_query_embedding(self, query: str) -> list[float]:
        return self._pair.embed([query])[0]

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return (await self._pair.aembed([query]))[0]

    def _get_text_embedding(self, text: str) -> list[float]:
        return self._pair.embed([text])[0]

    async def _aget_text_embedding(self, text: str) -> list[float]:
        return (await self._pair.aembed([text]))[0]

    def _get_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        return self._pair.embed(list(texts))

    async def _aget_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        return await self._pair.aembed(list(texts))

    def close(self) -> None:
        """Close the sync client, if this model created it."""
        self._pair.close()

    async def aclose(self) -> None:
        """Close every client this model created."""
        await self._pair.aclose()
