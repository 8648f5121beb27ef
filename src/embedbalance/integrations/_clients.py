"""The sync/async client pair an adapter holds, and who closes what.

Frameworks call an embedder from sync code *and* from coroutines, so an adapter needs
both an :class:`~embedbalance.EmbeddingClient` and an
:class:`~embedbalance.AsyncEmbeddingClient`. Built from backends, it creates the sync
client at once and the async one on the first ``await`` (inside the event loop that
will use it, since its connections belong to that loop), and closes both. Built from a
client the caller made, it never closes that client: the caller owns it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from typing import Any

import anyio.to_thread
import numpy as np

from .._backend import Backend, BackendLike
from ..client import AsyncEmbeddingClient, EmbeddingClient
from ..discovery import Discovery

Rows = list[list[float]]


class ClientPair:
    """A sync client, an async client, or both; see the module docstring for ownership."""

    def __init__(
        self,
        backends: Iterable[BackendLike] | Discovery | None,
        *,
        client: EmbeddingClient | None,
        async_client: AsyncEmbeddingClient | None,
        options: Mapping[str, Any],
        owner: str,
    ) -> None:
        given = client is not None or async_client is not None
        if backends is None and not given:
            raise TypeError(f"{owner} needs backends, client= or async_client=")
        if backends is not None and given:
            raise TypeError(f"{owner} takes backends or a client, not both")
        if given and options:
            raise TypeError(
                f"{owner}: client options ({', '.join(sorted(options))}) apply only when "
                "it builds its own client from backends; configure the client you pass"
            )
        if client is not None and not isinstance(client, EmbeddingClient):
            raise TypeError(f"client= must be an EmbeddingClient, got {type(client).__name__}")
        if async_client is not None and not isinstance(async_client, AsyncEmbeddingClient):
            raise TypeError(
                f"async_client= must be an AsyncEmbeddingClient, got {type(async_client).__name__}"
            )
        self._owner = owner
        self._backends = backends
        self._options = dict(options)
        self._lock = threading.Lock()
        self._owns = backends is not None
        if backends is not None:
            # A Discovery source can feed one transport only, so a client pair built
            # from one serves coroutines through the sync client on a thread.
            if isinstance(backends, (str, Backend)):
                backends = [backends]
            self._share_sync = isinstance(backends, Discovery)
            if not self._share_sync:
                backends = list(backends)  # type: ignore[arg-type]
                self._backends = backends
            client = EmbeddingClient(backends, **self._options)
        else:
            self._share_sync = async_client is None
        self.sync = client
        self.async_ = async_client

    def embed(self, texts: list[str]) -> Rows:
        """Rows for ``texts`` from the sync client, as plain lists of floats."""
        if self.sync is None:
            raise TypeError(
                f"{self._owner} was built from an AsyncEmbeddingClient only: use its "
                "async methods, or pass client= as well"
            )
        if not texts:
            return []
        return _rows(self.sync.embed(texts))

    async def aembed(self, texts: list[str]) -> Rows:
        """Rows for ``texts`` from the async client (made on first use), or from the
        sync client on a worker thread when there is no async one."""
        if not texts:
            return []
        client = self._async_client()
        if client is None:
            sync = self.sync
            assert sync is not None
            return _rows(await anyio.to_thread.run_sync(sync.embed, texts))
        return _rows(await client.embed(texts))

    def _async_client(self) -> AsyncEmbeddingClient | None:
        if self.async_ is not None or self._share_sync:
            return self.async_
        with self._lock:
            if self.async_ is None:
                assert self._backends is not None
                self.async_ = AsyncEmbeddingClient(self._backends, **self._options)
            return self.async_

    def close(self) -> None:
        """Close the sync client if this pair made it (the async one needs ``aclose``)."""
        if self._owns and self.sync is not None:
            self.sync.close()

    async def aclose(self) -> None:
        """Close every client this pair made."""
        if self._owns:
            if self.async_ is not None:
                await self.async_.aclose()
            if self.sync is not None:
                await anyio.to_thread.run_sync(self.sync.close)


def _rows(matrix: np.ndarray[Any, Any]) -> Rows:
    rows: Rows = np.asarray(matrix, dtype=np.float64).tolist()
    return rows
