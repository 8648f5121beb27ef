"""Flask: one balanced embedding client per process, shared by every request thread.

Start two workers and the app (the dev server runs each request in its own thread)::

    embedbalance-worker --port 8001 &
    embedbalance-worker --port 8002 &
    export EMBEDBALANCE_BACKENDS=http://127.0.0.1:8001,http://127.0.0.1:8002
    flask --app examples/flask_app run --port 5000

    curl -s localhost:5000/embed -H 'content-type: application/json' \\
         -d '{"texts": ["hello", "world"]}'

Routes:

- ``POST /embed`` ``{"texts": [...]}`` -> ``{"embeddings": [[...], ...], "dimension": 384}``
- ``GET /stats`` -> the transport's snapshot (per-backend requests, latencies, ejections)
- ``GET /metrics`` -> Prometheus text, from a registry that belongs to this app

Under gunicorn (``gunicorn 'examples.flask_app:create_app()' --workers 4 --threads 8``)
every worker process builds its own client on its first request; see
``docs/integrations.md``.
"""

from __future__ import annotations

import atexit
import os
import threading
import weakref
from collections.abc import Mapping, Sequence
from typing import Any

import attrs
from flask import Flask, Response, current_app, jsonify, request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from embedbalance import (
    AllAttemptsFailed,
    EmbedbalanceError,
    EmbeddingClient,
    NoBackendAvailable,
    PrometheusMetrics,
    config,
)

#: Comma-separated backend URLs; every other ``EMBEDBALANCE_*`` variable of
#: docs/config.md (balancer, retry, hedge, timeouts...) is read too.
BACKENDS_ENV = "EMBEDBALANCE_BACKENDS"
#: Two workers started with ``embedbalance-worker --port 8001`` / ``--port 8002``.
DEFAULT_BACKENDS = "http://127.0.0.1:8001,http://127.0.0.1:8002"
#: Texts accepted in one request: a guard against one caller filling every backend.
MAX_TEXTS = 256
_EXTENSION = "embedbalance"


#: The example's own choices; any ``EMBEDBALANCE_*`` variable overrides them.
CLIENT_DEFAULTS: dict[str, Any] = {
    "truncate": True,  # cut over-long texts instead of failing the request
    "timeout": 30.0,
}


def client_options_from_env() -> dict[str, Any]:
    """``EmbeddingClient`` keywords from the ``EMBEDBALANCE_*`` variables (validated by
    :mod:`embedbalance.config`, whose errors name the variable), over the example's
    defaults; the two local workers when neither backends nor DNS names are given."""
    environ = dict(os.environ)
    if not environ.get(BACKENDS_ENV, "").strip() and not environ.get("EMBEDBALANCE_DNS"):
        environ[BACKENDS_ENV] = DEFAULT_BACKENDS
    return {**CLIENT_DEFAULTS, **config.from_env(environ=environ).client_kwargs()}


def backends_from_env() -> list[str]:
    """The backend URLs the environment names, or the documented default."""
    return [backend.url for backend in client_options_from_env()["backends"]]


@attrs.define
class Embedder:
    """What one process holds: the client (and its transport) and its metrics registry."""

    client: EmbeddingClient
    registry: CollectorRegistry

    def close(self) -> None:
        self.client.close()


def _forget_after_fork(ref: weakref.ref[PerProcessEmbedder]) -> None:
    holder = ref()
    if holder is not None:
        holder._forget()


class PerProcessEmbedder:
    """Builds the :class:`Embedder` on first use in each process and hands every thread
    of that process the same one.

    Why not at import or in ``create_app``: gunicorn ``--preload`` imports the app in the
    master and then forks. A client built there would give every worker the master's
    sockets (two processes writing to one connection) and a thread pool whose threads did
    not survive the fork. In a forked child the parent's embedder is dropped, not closed
    (its sockets and threads belong to the parent), and the next request builds a new one.
    """

    def __init__(self, options: Mapping[str, Any]) -> None:
        self.options = dict(options)
        self.backends = [getattr(b, "url", b) for b in self.options["backends"]]
        self._lock = threading.Lock()
        self._embedder: Embedder | None = None
        # A weak reference, so that an app dropped by its owner (tests build many) can go.
        ref = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: _forget_after_fork(ref))
        atexit.register(self.close)

    def get(self) -> Embedder:
        """The process's embedder, built on the first call (thread-safe)."""
        embedder = self._embedder
        if embedder is not None:
            return embedder
        with self._lock:
            if self._embedder is None:
                registry = CollectorRegistry()
                client = EmbeddingClient(
                    **self.options,
                    metrics=PrometheusMetrics(registry=registry),
                )
                self._embedder = Embedder(client, registry)
            return self._embedder

    def close(self) -> None:
        """Close the client: joins its threads and the health checker. Idempotent; the
        next :meth:`get` builds a fresh one."""
        with self._lock:
            embedder, self._embedder = self._embedder, None
        if embedder is not None:
            embedder.close()

    def _forget(self) -> None:
        # Runs in a freshly forked child, single-threaded: the lock may have been held by
        # a parent thread that does not exist here.
        self._lock = threading.Lock()
        self._embedder = None


def embedder_of(app: Flask) -> PerProcessEmbedder:
    """The app's per-process embedder holder (``create_app`` installs it)."""
    holder: PerProcessEmbedder = app.extensions[_EXTENSION]
    return holder


def shutdown(app: Flask) -> None:
    """Close the app's client now (also registered with ``atexit``): Flask has no
    shutdown hook of its own, and gunicorn's ``worker_exit`` can call this."""
    embedder_of(app).close()


def _bad_request(message: str) -> tuple[Response, int]:
    return jsonify(error=message), 400


def _parse_texts(payload: Any) -> list[str] | str:
    """The texts of a request body, or an error message."""
    if not isinstance(payload, dict) or not isinstance(payload.get("texts"), list):
        return 'expected a JSON object {"texts": ["...", ...]}'
    texts: list[Any] = payload["texts"]
    if not texts or len(texts) > MAX_TEXTS:
        return f"send between 1 and {MAX_TEXTS} texts"
    if not all(isinstance(t, str) and t for t in texts):
        return "every text must be a non-empty string"
    return texts


def embed() -> tuple[Response, int]:
    """Embed the posted texts through the shared client; backend trouble becomes a 503
    or 502 so that callers can tell it from their own mistakes (400)."""
    texts = _parse_texts(request.get_json(silent=True))
    if isinstance(texts, str):
        return _bad_request(texts)
    client = embedder_of(current_app).get().client
    try:
        rows = client.embed(texts)
    except (NoBackendAvailable, AllAttemptsFailed) as exc:
        return jsonify(error=f"no embedding backend could answer: {exc}"), 503
    except EmbedbalanceError as exc:
        return jsonify(error=str(exc)), 502
    return jsonify(embeddings=rows.tolist(), dimension=int(rows.shape[1])), 200


def stats() -> Response:
    """The transport's snapshot as JSON: cheap, needs no Prometheus, good for a debug page."""
    snapshot = embedder_of(current_app).get().client.stats()
    return jsonify(attrs.asdict(snapshot))


def metrics() -> Response:
    """Prometheus exposition of this process's registry (one per worker process)."""
    registry = embedder_of(current_app).get().registry
    return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)


def create_app(backends: Sequence[str] | None = None) -> Flask:
    """The app: backends from the argument, or everything from the ``EMBEDBALANCE_*``
    variables. Builds nothing that talks to the network; the client comes on the first
    request."""
    app = Flask(__name__)
    options = (
        client_options_from_env()
        if backends is None
        else {**CLIENT_DEFAULTS, "backends": list(backends)}
    )
    app.extensions[_EXTENSION] = PerProcessEmbedder(options)
    app.add_url_rule("/embed", view_func=embed, methods=["POST"])
    app.add_url_rule("/stats", view_func=stats)
    app.add_url_rule("/metrics", view_func=metrics)
    return app


#: For ``flask --app examples/flask_app run``; cheap to build (nothing starts until used).
app = create_app()
