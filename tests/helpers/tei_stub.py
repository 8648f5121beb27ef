"""A stand-in for Hugging Face Text Embeddings Inference (TEI) that answers the way TEI's
router does, for tests of what clients make of a real deployment's answers.

Why a stub and not TEI itself: TEI is a Rust server with a model download; what a client
must get right is its HTTP contract, which is small and written down in its router
(``router/src/http/server.rs``, ``router/src/lib.rs``), so this module copies that:

- Routes: ``POST /embed`` (TEI's own shape), ``POST /v1/embeddings`` and ``POST
  /embeddings`` (OpenAI-compatible), ``GET /info``, and the public ``GET /health``,
  ``GET /``, ``GET /ping`` and ``GET /metrics``.
- Errors: ``{"error": ..., "error_type": ...}`` with TEI's ``ErrorType -> status`` map:
  ``unhealthy`` 503, ``backend`` 424 (the model failed), ``overloaded`` 429 (no
  ``Retry-After``: TEI sends none), ``validation`` 413 (batch larger than
  ``max_client_batch_size``, input longer than ``max_input_length``), ``tokenizer`` 422,
  ``empty`` 400. On the OpenAI routes the same errors are ``{"message", "code",
  "type"}`` (flat, not nested under ``"error"``). A body the JSON extractor refuses is
  plain text, 400 (syntax) or 422 (shape), as axum answers; a body over
  ``payload_limit`` is 413, plain text.
- Success headers: ``x-compute-type``, ``x-compute-time``, ``x-compute-characters``,
  ``x-compute-tokens``, ``x-total-time``, ``x-tokenization-time``, ``x-queue-time``,
  ``x-inference-time`` (whole milliseconds).
- ``api_key``: like TEI's ``--api-key``, non-public routes need ``Authorization:
  Bearer <key>`` (401, empty body). ``health_auth`` is *not* TEI's: it puts ``/health``
  behind the same key, as an authenticating gateway in front of TEI does, so tests can
  check that health checks carry the user's headers.

Vectors are deterministic: :func:`tei_vector` derives one from a hash of the text, so a
test can compare any server's rows with the expected ones. Tokens are whitespace words.

The server is uvicorn in a thread of the test process (a real socket on 127.0.0.1, an
ephemeral port, optional TLS); behaviour is switched at runtime by setting attributes:
``mode`` (``"ok"``, ``"424"``, ``"429"``, ``"503"`` (unhealthy: health and embeds answer
503), ``"500"``, ``"null_rows"`` (rows of JSON ``null``, what serde writes for NaN),
``"hang"``, ``"trickle"`` (the answer dribbles out over ``trickle_seconds``)) and
``delay`` (seconds before each embedding answer). It records what it saw: counters,
request headers, and the most embedding requests it held at once (``max_in_flight``; a
shared :class:`Concurrency` can be passed to count across several stubs).

Typical use::

    with tei_stubs(3) as (a, b, c):
        c.mode = "424"
        ...  # requests to a.url, b.url, c.url
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import math
import socket
import struct
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import attrs
import uvicorn

__all__ = [
    "ERROR_STATUS",
    "Concurrency",
    "TeiStub",
    "tei_stubs",
    "tei_vector",
]

#: TEI's ``impl From<&ErrorType> for StatusCode``.
ERROR_STATUS = {
    "unhealthy": 503,
    "backend": 424,
    "overloaded": 429,
    "validation": 413,
    "tokenizer": 422,
    "empty": 400,
}

MODES = ("ok", "424", "429", "503", "500", "null_rows", "hang", "trickle")
EMBED_PATHS = ("/embed", "/v1/embeddings", "/embeddings")


def tei_vector(text: str, dim: int = 8, normalize: bool = True) -> list[float]:
    """The stub's embedding of ``text``: ``dim`` floats from SHA-256 of the text (the same
    on every stub and every run), L2-normalised unless ``normalize`` is false."""
    values: list[float] = []
    counter = 0
    while len(values) < dim:
        digest = hashlib.sha256(f"{counter}:{text}".encode()).digest()
        for (word,) in struct.iter_unpack(">I", digest):
            values.append(word / 2**31 - 1.0)
        counter += 1
    values = values[:dim]
    if normalize:
        norm = math.sqrt(sum(v * v for v in values)) or 1.0
        values = [v / norm for v in values]
    # Round-trip through float32 so rows compare exactly after numpy's float32 parse.
    return [struct.unpack("<f", struct.pack("<f", v))[0] for v in values]


class Concurrency:
    """Counts requests in flight across every stub that shares it; ``max_distinct`` is
    the most *distinct* request ids (header ``x-request-id``) seen in flight at once, so
    a hedged copy of a request does not count twice."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.in_flight = 0
        self.max_in_flight = 0
        self._ids: dict[str, int] = {}
        self.max_distinct = 0

    def enter(self, request_id: str | None) -> None:
        with self._lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            if request_id is not None:
                self._ids[request_id] = self._ids.get(request_id, 0) + 1
                self.max_distinct = max(self.max_distinct, len(self._ids))

    def leave(self, request_id: str | None) -> None:
        with self._lock:
            self.in_flight -= 1
            if request_id is not None:
                left = self._ids.get(request_id, 1) - 1
                if left:
                    self._ids[request_id] = left
                else:
                    self._ids.pop(request_id, None)


@attrs.define
class Seen:
    """One request as the stub parsed it."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes


class _Rejected(Exception):
    def __init__(self, status: int, error_type: str, message: str) -> None:
        super().__init__(message)
        self.status, self.error_type, self.message = status, error_type, message


class TeiStub:
    """One TEI-semantics server on 127.0.0.1 (see the module docs); :meth:`stop` ends it.

    ``tls``: a ``trustme.LeafCert`` to serve https with. ``max_client_batch_size``,
    ``max_input_length``, ``max_batch_tokens``, ``max_concurrent_requests``,
    ``auto_truncate``, ``model_id``, ``dim``: what ``/info`` reports and the limits
    enforced as TEI does (a single input over ``max_concurrent_requests`` in flight
    gets 429; a batch waits, as TEI's batch path does).
    """

    def __init__(
        self,
        *,
        dim: int = 8,
        model_id: str = "stub/tei-minilm",
        max_client_batch_size: int = 32,
        max_input_length: int = 512,
        max_batch_tokens: int = 16384,
        max_concurrent_requests: int = 512,
        auto_truncate: bool = False,
        payload_limit: int = 2_000_000,
        api_key: str | None = None,
        health_auth: bool = False,
        tls: Any = None,
        concurrency: Concurrency | None = None,
    ) -> None:
        self.dim = dim
        self.model_id = model_id
        self.max_client_batch_size = max_client_batch_size
        self.max_input_length = max_input_length
        self.max_batch_tokens = max_batch_tokens
        self.max_concurrent_requests = max_concurrent_requests
        self.auto_truncate = auto_truncate
        self.payload_limit = payload_limit
        self.api_key = api_key
        self.health_auth = health_auth
        self.mode = "ok"
        self.delay = 0.0
        self.trickle_seconds = 2.0
        self.concurrency = concurrency if concurrency is not None else Concurrency()
        self.seen: list[Seen] = []
        self.counts: dict[str, int] = {}
        self.health_checks = 0
        self.health_unauthorized = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        self._stopping = False
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        ssl: dict[str, Any] = {}
        if tls is not None:
            self._tmp = tempfile.TemporaryDirectory(prefix="tei-stub-")
            pem = Path(self._tmp.name) / "server.pem"
            tls.private_key_and_cert_chain_pem.write_to_path(str(pem))
            ssl = {"ssl_certfile": str(pem), "ssl_keyfile": str(pem)}
        self.scheme = "https" if tls is not None else "http"
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self.port: int = sock.getsockname()[1]
        config = uvicorn.Config(
            self._app,
            log_level="warning",
            lifespan="off",
            interface="asgi3",
            access_log=False,
            timeout_graceful_shutdown=1,
            **ssl,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, name="tei-stub", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("TEI stub did not start")
            time.sleep(0.01)

    # -- for tests ---------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    @property
    def embed_requests(self) -> int:
        """Embedding requests that reached this stub (any outcome)."""
        with self._lock:
            return sum(self.counts.get(p, 0) for p in EMBED_PATHS)

    def info(self) -> dict[str, Any]:
        """What ``GET /info`` answers (TEI's ``Info`` struct)."""
        return {
            "model_id": self.model_id,
            "model_sha": None,
            "model_dtype": "float32",
            "model_type": {"embedding": {"pooling": "mean"}},
            "max_concurrent_requests": self.max_concurrent_requests,
            "max_input_length": self.max_input_length,
            "max_batch_tokens": self.max_batch_tokens,
            "max_batch_requests": None,
            "max_client_batch_size": self.max_client_batch_size,
            "auto_truncate": self.auto_truncate,
            "tokenization_workers": 1,
            "version": "stub",
            "sha": None,
            "docker_label": None,
        }

    def signal_stop(self) -> None:
        """Ask the server to stop without waiting: a fixture stopping several stubs
        signals them all first, so their shutdowns (a 0.1 s tick each) overlap."""
        self._stopping = True
        self._server.should_exit = True

    def stop(self) -> None:
        """Stop serving and free the port (a later connection is refused)."""
        self.signal_stop()
        self._thread.join(timeout=10)
        if self._tmp is not None:
            self._tmp.cleanup()

    # -- the server --------------------------------------------------------------------

    def _authorized(self, headers: dict[str, str]) -> bool:
        return self.api_key is None or headers.get("authorization") == f"Bearer {self.api_key}"

    async def _app(self, scope: Any, receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        body = b""
        too_big = False
        while True:
            message = await receive()
            body += message.get("body", b"")
            if len(body) > self.payload_limit:
                too_big = True
            if not message.get("more_body"):
                break
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        path, method = scope["path"], scope["method"]
        with self._lock:
            self.seen.append(Seen(method, path, headers, body))
            self.counts[path] = self.counts.get(path, 0) + 1
        if method == "GET" and path in ("/health", "/", "/ping"):
            await self._health(send, headers)
        elif method == "GET" and path == "/metrics":
            await _send_text(send, 200, "te_request_count 0\n")
        elif not self._authorized(headers):
            await _send_raw(send, 401, b"", [])
        elif method == "GET" and path == "/info":
            await _send_json(send, 200, self.info())
        elif method == "POST" and path in EMBED_PATHS:
            if too_big:
                await _send_text(
                    send, 413, "Failed to buffer the request body: length limit exceeded"
                )
                return
            await self._embed(send, path != "/embed", headers, body)
        else:
            await _send_raw(send, 404, b"", [])

    async def _health(self, send: Any, headers: dict[str, str]) -> None:
        with self._lock:
            self.health_checks += 1
            if self.health_auth and not self._authorized(headers):
                self.health_unauthorized += 1
                unauthorized = True
            else:
                unauthorized = False
        if unauthorized:
            await _send_raw(send, 401, b"", [])
        elif self.mode == "503":
            await _send_json(send, 503, {"error": "unhealthy", "error_type": "unhealthy"})
        else:
            await _send_raw(send, 200, b"", [])

    async def _embed(self, send: Any, openai: bool, headers: dict[str, str], body: bytes) -> None:
        started = time.monotonic()
        request_id = headers.get("x-request-id")
        with self._lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            single_over = self.in_flight > self.max_concurrent_requests
        self.concurrency.enter(request_id)
        try:
            try:
                texts, single, options = self._parse(body, openai)
                if single and single_over:
                    raise _Rejected(429, "overloaded", "Model is overloaded")
                rows = await self._compute(texts, options)
            except _Rejected as rejected:
                await self._error(send, openai, rejected)
                return
            except _Plain as plain:
                await _send_text(send, plain.status, str(plain))
                return
            tokens = sum(len(t.split()) for t in texts)
            ms = str(int((time.monotonic() - started) * 1000))
            timing = [
                (b"x-compute-type", b"cpu"),
                (b"x-compute-time", ms.encode()),
                (b"x-compute-characters", str(sum(len(t) for t in texts)).encode()),
                (b"x-compute-tokens", str(tokens).encode()),
                (b"x-total-time", ms.encode()),
                (b"x-tokenization-time", b"0"),
                (b"x-queue-time", b"0"),
                (b"x-inference-time", ms.encode()),
            ]
            if openai:
                fmt = options.get("encoding_format", "float")
                data = [
                    {"object": "embedding", "embedding": _encode(row, fmt), "index": i}
                    for i, row in enumerate(rows)
                ]
                payload: Any = {
                    "object": "list",
                    "data": data,
                    "model": self.model_id,
                    "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
                }
            else:
                payload = rows
            data_bytes = json.dumps(payload).encode()
            if self.mode == "trickle":
                await self._trickle(send, data_bytes, timing)
            else:
                await _send_raw(
                    send, 200, data_bytes, [(b"content-type", b"application/json"), *timing]
                )
        finally:
            self.concurrency.leave(request_id)
            with self._lock:
                self.in_flight -= 1

    def _parse(self, body: bytes, openai: bool) -> tuple[list[str], bool, dict[str, Any]]:
        try:
            request = json.loads(body)
        except ValueError as exc:
            raise _Plain(400, f"Failed to parse the request body as JSON: {exc}") from None
        key = "input" if openai else "inputs"
        if not isinstance(request, dict) or key not in request:
            raise _Plain(
                422,
                f"Failed to deserialize the JSON body into the target type: missing field `{key}`",
            )
        raw = request[key]
        single = isinstance(raw, str)
        texts = [raw] if single else raw
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            raise _Plain(
                422,
                f"Failed to deserialize the JSON body into the target type: `{key}` is not a string or a list of strings",
            )
        if not texts:
            raise _Rejected(400, "empty", "`inputs` cannot be empty")
        if len(texts) > self.max_client_batch_size:
            raise _Rejected(
                413,
                "validation",
                f"batch size {len(texts)} > maximum allowed batch size {self.max_client_batch_size}",
            )
        truncate = request.get("truncate")
        truncate = self.auto_truncate if truncate is None else bool(truncate)
        for text in texts:
            if not text:
                raise _Rejected(400, "empty", "`inputs` cannot be empty")
            n = len(text.split())
            if n > self.max_input_length and not truncate:
                raise _Rejected(
                    413,
                    "validation",
                    f"Input validation error: `inputs` must have less than {self.max_input_length} tokens. Given: {n}",
                )
        return texts, single, request

    async def _compute(self, texts: list[str], options: dict[str, Any]) -> list[Any]:
        mode = self.mode
        if mode == "hang":
            while not self._stopping:
                await asyncio.sleep(0.02)
            raise _Rejected(503, "unhealthy", "shutting down")
        if self.delay:
            await asyncio.sleep(self.delay)
        if mode == "424":
            raise _Rejected(424, "backend", "Inference failed: model error on this replica")
        if mode == "429":
            raise _Rejected(429, "overloaded", "Model is overloaded")
        if mode == "503":
            raise _Rejected(503, "unhealthy", "unhealthy")
        if mode == "500":
            raise _Rejected(500, "backend", "internal error")
        normalize = options.get("normalize", True)
        rows: list[Any] = [tei_vector(t, self.dim, bool(normalize)) for t in texts]
        if mode == "null_rows":
            rows = [[None] * self.dim for _ in rows]
        return rows

    async def _error(self, send: Any, openai: bool, rejected: _Rejected) -> None:
        if openai:
            payload = {
                "message": rejected.message,
                "code": rejected.status,
                "type": rejected.error_type,
            }
        else:
            payload = {"error": rejected.message, "error_type": rejected.error_type}
        await _send_json(send, rejected.status, payload)

    async def _trickle(self, send: Any, data: bytes, headers: list[tuple[bytes, bytes]]) -> None:
        """Send the answer a byte at a time over ``trickle_seconds``: no single read ever
        waits long, so only a whole-attempt deadline can stop it early."""
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json"), *headers],
            }
        )
        steps = max(1, int(self.trickle_seconds / 0.05))
        size = max(1, math.ceil(len(data) / steps))
        for start in range(0, len(data), size):
            if self._stopping:
                break
            await send(
                {
                    "type": "http.response.body",
                    "body": data[start : start + size],
                    "more_body": True,
                }
            )
            await asyncio.sleep(0.05)
        await send({"type": "http.response.body", "body": b""})


class _Plain(Exception):
    """An axum extractor rejection: plain text, not TEI's JSON error."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _encode(row: Sequence[float | None], fmt: str) -> Any:
    if fmt == "base64" and all(v is not None for v in row):
        return base64.b64encode(struct.pack(f"<{len(row)}f", *row)).decode()
    return list(row)


async def _send_raw(
    send: Any, status: int, body: bytes, headers: list[tuple[bytes, bytes]]
) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _send_json(send: Any, status: int, payload: Any) -> None:
    await _send_raw(
        send, status, json.dumps(payload).encode(), [(b"content-type", b"application/json")]
    )


async def _send_text(send: Any, status: int, text: str) -> None:
    await _send_raw(send, status, text.encode(), [(b"content-type", b"text/plain; charset=utf-8")])


@contextlib.contextmanager
def tei_stubs(n: int, **kwargs: Any) -> Iterator[list[TeiStub]]:
    """``n`` running stubs built with ``kwargs``, all stopped on exit."""
    started: list[TeiStub] = []
    try:
        for _ in range(n):
            started.append(TeiStub(**kwargs))
        yield started
    finally:
        for stub in started:
            stub.stop()
