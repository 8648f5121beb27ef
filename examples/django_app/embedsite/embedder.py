"""The process's embedding client: built from ``settings.EMBEDBALANCE`` on first use,
shared by every request thread of the process, rebuilt in a forked child.

Why lazily, and why per process: gunicorn ``--preload`` imports the project in the
master and then forks its workers. A client built at import would hand every worker the
master's open sockets (two processes writing to one connection) and a thread pool whose
threads did not survive the fork. So nothing is built until a request needs it, and a
forked child drops what it inherited (without closing it: those sockets and threads
belong to the parent) and builds its own.

Django has no shutdown signal; :func:`close` is registered with ``atexit`` and is what a
gunicorn ``worker_exit`` hook should call.
"""

from __future__ import annotations

import atexit
import os
import threading

import attrs
from django.conf import settings
from prometheus_client import CollectorRegistry

from embedbalance import EmbeddingClient, PrometheusMetrics

__all__ = ["Embedder", "close", "get"]


@attrs.define
class Embedder:
    """What one process holds: the client (and its transport) and its metrics registry."""

    client: EmbeddingClient
    registry: CollectorRegistry


_lock = threading.Lock()
_embedder: Embedder | None = None


def get() -> Embedder:
    """The process's embedder, built on the first call (thread-safe)."""
    global _embedder
    embedder = _embedder
    if embedder is not None:
        return embedder
    with _lock:
        if _embedder is None:
            config = settings.EMBEDBALANCE
            registry = CollectorRegistry()
            options = {**config.get("OPTIONS", {}), **config["CONFIG"].client_kwargs()}
            client = EmbeddingClient(**options, metrics=PrometheusMetrics(registry=registry))
            _embedder = Embedder(client, registry)
        return _embedder


def close() -> None:
    """Close the client: joins its threads and the health checker. Idempotent; the next
    :func:`get` builds a fresh one."""
    global _embedder
    with _lock:
        embedder, _embedder = _embedder, None
    if embedder is not None:
        embedder.client.close()


def _forget_in_child() -> None:
    # Runs in a freshly forked child, single-threaded: the lock may have been held by a
    # parent thread that does not exist here.
    global _lock, _embedder
    _lock = threading.Lock()
    _embedder = None


os.register_at_fork(after_in_child=_forget_in_child)
atexit.register(close)
