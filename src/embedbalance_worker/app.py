"""The ASGI app: routes, the worker's lifecycle state, and error answers.

Why the model loads in the background: the port is open (and ``/health`` says 503) while
weights load, so orchestrators see a live but not-ready process instead of a refused
connection they cannot tell from a crash.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import logging
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from embedbalance_worker.batcher import Batcher, BatchStats, Closed, Overloaded
from embedbalance_worker.config import WorkerConfig
from embedbalance_worker.errors import ApiError, error_response
from embedbalance_worker.metrics import CONTENT_TYPE, WorkerMetrics
from embedbalance_worker.model import EmbeddingModel, FloatArray, l2_normalize
from embedbalance_worker.parsing import EmbedRequest, parse_openai, parse_tei, read_json

log = logging.getLogger("embedbalance_worker")

ROUTES = ("/embed", "/v1/embeddings", "/health", "/info", "/metrics")


def worker_version() -> str:
    """The installed distribution's version; a source checkout reports ``0+unknown``."""
    try:
        return metadata.version("embedbalance")
    except metadata.PackageNotFoundError:
        return "0+unknown"


class WorkerState:
    """Everything that changes while a worker runs: phase, model, batcher, counters.

    Phases: ``loading`` -> ``ready`` -> ``draining``; ``failed`` if loading raised.
    """

    def __init__(self, config: WorkerConfig, model: EmbeddingModel | None = None) -> None:
        self.config = config
        self.model = model
        self.phase = "loading"
        self.load_error: BaseException | None = None
        self.batcher: Batcher | None = None
        self.in_flight = 0
        self.metrics = WorkerMetrics(
            queue_depth=lambda: float(self.batcher.queue_depth if self.batcher else 0),
            in_flight=lambda: float(self.in_flight),
        )
        self.on_fatal: Callable[[BaseException], None] | None = None
        self._tokenizer_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tokenize")
        self._api_key = config.api_key.encode() if config.api_key else None

    # -- lifecycle ---------------------------------------------------------------------
    async def start(self) -> None:
        """Load (unless given) and warm the model off the loop, then start batching."""
        loop = asyncio.get_running_loop()
        try:
            if self.model is None:
                self.model = await loop.run_in_executor(None, EmbeddingModel, self.config)
        except Exception as exc:
            self.phase = "failed"
            self.load_error = exc
            log.error("model failed to load: %s", exc)
            if self.on_fatal is not None:
                self.on_fatal(exc)
            return
        self.batcher = Batcher(
            self.model.forward,
            max_batch_size=self.config.max_batch_size,
            max_batch_tokens=self.config.max_batch_tokens,
            max_queue_tokens=self.config.max_queue_tokens,
            max_wait_s=self.config.max_wait_ms / 1000.0,
            on_batch=self._record_batch,
        )
        self.batcher.start()
        if self.phase == "loading":
            self.phase = "ready"

    def begin_drain(self) -> None:
        """Stop taking embedding work and fail health; queued work still completes."""
        self.phase = "draining"
        if self.batcher is not None:
            self.batcher.close()

    async def wait_drained(self, timeout: float) -> bool:
        """Wait (bounded) until every admitted request has been answered."""
        deadline = time.monotonic() + timeout
        while self.in_flight > 0 or (self.batcher is not None and not self.batcher.idle):
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.01)
        return True

    async def stop(self) -> None:
        self.begin_drain()
        if self.batcher is not None:
            await self.batcher.aclose()
        self._tokenizer_thread.shutdown(wait=False)

    def _record_batch(self, stats: BatchStats) -> None:
        m = self.metrics
        m.inference_duration.observe(stats.seconds)
        m.batch_size.observe(stats.size)
        m.batch_tokens.observe(stats.padded_tokens)
        m.tokens.inc(stats.real_tokens)
        for seconds in stats.queue_times:
            m.queue_time.observe(seconds)

    # -- request helpers ---------------------------------------------------------------
    def load_headers(self) -> dict[str, str]:
        """The load report every embedding answer carries, for client-side balancing."""
        depth = self.batcher.queue_depth if self.batcher is not None else 0
        return {"X-Queue-Depth": str(depth), "X-In-Flight": str(self.in_flight)}

    def check_auth(self, request: Request) -> None:
        if self._api_key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            token.strip().encode(), self._api_key
        ):
            raise ApiError(
                401,
                "unauthorized",
                "missing or wrong bearer token",
                {"WWW-Authenticate": "Bearer"},
            )

    def check_ready(self) -> EmbeddingModel:
        if self.phase == "ready" and self.model is not None:
            return self.model
        headers = {"Retry-After": "1", **self.load_headers()}
        if self.phase == "draining":
            raise ApiError(503, "draining", "the worker is shutting down", headers)
        if self.phase == "failed":
            raise ApiError(503, "load_failed", f"the model failed to load: {self.load_error}")
        raise ApiError(
            503, "loading", "the model is still loading", {**headers, "Retry-After": "2"}
        )

    async def embed(self, req: EmbedRequest) -> tuple[FloatArray, int]:
        """Rows for the request's texts, in order, plus the tokens used."""
        model = self.check_ready()
        assert self.batcher is not None
        loop = asyncio.get_running_loop()
        ids = await loop.run_in_executor(self._tokenizer_thread, model.tokenize, req.texts)
        limit = model.max_input_length
        for i, row in enumerate(ids):
            if len(row) > limit:
                if not req.truncate:
                    raise ApiError(
                        413,
                        "input_too_long",
                        f"input {i} has {len(row)} tokens, over the model's limit of {limit}; "
                        "send truncate=true to cut it",
                    )
                ids[i] = model.truncate(row)
        self.in_flight += 1
        try:
            rows = await self.batcher.submit(ids)
        except Overloaded as exc:
            raise ApiError(
                429,
                "overloaded",
                "the worker's queue is full; retry later or elsewhere",
                {"Retry-After": str(exc.retry_after)},
            ) from None
        except Closed:
            raise ApiError(
                503, "draining", "the worker is shutting down", {"Retry-After": "1"}
            ) from None
        finally:
            self.in_flight -= 1
        if req.normalize:
            rows = l2_normalize(rows)
        return rows, sum(len(x) for x in ids)


def _state(request: Request) -> WorkerState:
    state: WorkerState = request.app.state.worker
    return state


def _with_load(state: WorkerState, exc: ApiError) -> Response:
    return error_response(
        exc.status, exc.error_type, exc.message, {**exc.headers, **state.load_headers()}
    )


async def embed_tei(request: Request) -> Response:
    """POST /embed: TEI shape in, a list of vectors out."""
    state = _state(request)
    try:
        state.check_auth(request)
        state.check_ready()
        payload = await read_json(request, state.config.max_body_bytes)
        req = parse_tei(
            payload, max_inputs=state.config.max_inputs, normalize=state.config.normalize
        )
        rows, _ = await state.embed(req)
    except ApiError as exc:
        return _with_load(state, exc)
    return JSONResponse(rows.tolist(), headers=state.load_headers())


async def embed_openai(request: Request) -> Response:
    """POST /v1/embeddings: OpenAI shape, floats or base64 little-endian float32."""
    state = _state(request)
    try:
        state.check_auth(request)
        model = state.check_ready()
        payload = await read_json(request, state.config.max_body_bytes)
        req = parse_openai(
            payload, max_inputs=state.config.max_inputs, normalize=state.config.normalize
        )
        rows, tokens = await state.embed(req)
    except ApiError as exc:
        return _with_load(state, exc)
    data: list[dict[str, Any]] = []
    for i, row in enumerate(rows):
        embedding: Any
        if req.encoding_format == "base64":
            embedding = base64.b64encode(row.astype("<f4").tobytes()).decode("ascii")
        else:
            embedding = row.tolist()
        data.append({"object": "embedding", "index": i, "embedding": embedding})
    body = {
        "object": "list",
        "data": data,
        "model": model.model_id,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }
    return JSONResponse(body, headers=state.load_headers())


async def health(request: Request) -> Response:
    """GET /health: 200 only when the model is loaded, warm, and the worker not draining."""
    state = _state(request)
    if state.phase == "ready":
        return JSONResponse({"status": "ok"})
    return JSONResponse(
        {"status": state.phase, "error": f"worker is {state.phase}", "error_type": state.phase},
        status_code=503,
        headers={"Retry-After": "1"},
    )


async def info(request: Request) -> Response:
    """GET /info: what a client needs to size its requests."""
    state = _state(request)
    try:
        state.check_auth(request)
    except ApiError as exc:
        return exc.response()
    cfg = state.config
    model = state.model
    return JSONResponse(
        {
            "model_id": model.model_id if model else cfg.resolved_model_id(),
            "dimension": model.dimension if model else None,
            "max_input_length": model.max_input_length if model else None,
            "dtype": model.dtype_name if model else cfg.dtype,
            "device": str(model.device) if model else cfg.device,
            "pooling": cfg.pooling,
            "normalize": cfg.normalize,
            "max_batch_tokens": cfg.max_batch_tokens,
            "max_batch_size": cfg.max_batch_size,
            "max_wait_ms": cfg.max_wait_ms,
            "max_inputs_per_request": cfg.max_inputs,
            "max_queue_tokens": cfg.max_queue_tokens,
            "max_body_bytes": cfg.max_body_bytes,
            "status": state.phase,
            "version": worker_version(),
        }
    )


async def metrics(request: Request) -> Response:
    """GET /metrics: Prometheus text format."""
    state = _state(request)
    try:
        state.check_auth(request)
    except ApiError as exc:
        return exc.response()
    return Response(state.metrics.render(), media_type=CONTENT_TYPE)


class _MetricsMiddleware:
    """Counts and times every HTTP request, labelled by a bounded set of route names."""

    def __init__(self, app: ASGIApp, state: WorkerState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        route = path if path in ROUTES else "other"
        status = 500
        started = time.perf_counter()

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            m = self.state.metrics
            m.requests.labels(route=route, status=str(status)).inc()
            m.request_duration.labels(route=route).observe(time.perf_counter() - started)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    slug = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    message = {
        404: f"no route {request.url.path}",
        405: f"method {request.method} not allowed on {request.url.path}",
    }.get(exc.status_code, str(exc.detail))
    return error_response(exc.status_code, slug, message, exc.headers)


async def _internal_error(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s", request.url.path, exc_info=exc)
    return error_response(500, "internal", "internal error")


def create_app(
    config: WorkerConfig | None = None, *, model: EmbeddingModel | None = None
) -> Starlette:
    """Build a worker app; the model loads (unless given) when the ASGI lifespan starts.

    Passing an already loaded ``model`` lets tests build many apps on one set of weights.
    The app's :class:`WorkerState` is ``app.state.worker``.
    """
    config = config or WorkerConfig()
    state = WorkerState(config, model)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        loader = asyncio.get_running_loop().create_task(state.start())
        try:
            yield
        finally:
            if not loader.done():
                loader.cancel()
            await state.stop()

    app = Starlette(
        routes=[
            Route("/embed", embed_tei, methods=["POST"]),
            Route("/v1/embeddings", embed_openai, methods=["POST"]),
            Route("/health", health, methods=["GET"]),
            Route("/info", info, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
        ],
        exception_handlers={HTTPException: _http_error, Exception: _internal_error},
        lifespan=lifespan,
    )
    app.state.worker = state
    app.add_middleware(_MetricsMiddleware, state=state)
    return app


__all__ = ["WorkerState", "create_app"]
