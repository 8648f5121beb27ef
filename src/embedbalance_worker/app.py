"""The ASGI app: routes, the worker's lifecycle state, and error answers.

Why the model loads in the background: the port is open (and ``/health`` says 503) while
weights load, so orchestrators see a live but not-ready process instead of a refused
connection they cannot tell from a crash.

The order of work for an embedding request is the order of cost: auth, readiness and
headers (free), admission (a counter), reading and parsing the body, tokenizing (bounded
per text), then the batcher's queue bound. Each step can refuse before the next is paid.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata
from typing import Any

import numpy as np
import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from embedbalance_worker.admission import Admission, Refused
from embedbalance_worker.batcher import (
    BULK,
    INTERACTIVE,
    PRIORITIES,
    Batcher,
    BatchStats,
    Closed,
    Forward,
    Overloaded,
    Timing,
)
from embedbalance_worker.config import WorkerConfig
from embedbalance_worker.errors import ApiError, error_response
from embedbalance_worker.liveness import Liveness
from embedbalance_worker.metrics import CONTENT_TYPE, WorkerMetrics
from embedbalance_worker.model import (
    EmbeddingModel,
    FloatArray,
    InputTooLong,
    TokenizationFailed,
    l2_normalize,
)
from embedbalance_worker.parsing import (
    EmbedRequest,
    check_headers,
    decode_json,
    parse_openai,
    parse_tei,
    read_body,
)

log = logging.getLogger("embedbalance_worker")

ROUTES = ("/embed", "/v1/embeddings", "/embeddings", "/health", "/info", "/metrics")

#: Requests with at most this many characters of text are tokenized on the event loop:
#: a thread hand-off costs more than tokenizing them.
INLINE_TOKENIZE_CHARS = 4096

#: Request header naming the request's priority: ``interactive`` (default) or ``bulk``.
PRIORITY_HEADER = "x-priority"

#: The longest shutdown waits for the batcher (its queue has been drained before).
STOP_TIMEOUT_S = 5.0

Parser = Callable[..., EmbedRequest]


def worker_version() -> str:
    """The installed distribution's version; a source checkout reports ``0+unknown``."""
    try:
        return metadata.version("embedbalance")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def _json(body: Any, headers: dict[str, str] | None = None) -> Response:
    """orjson straight from numpy rows: no per-float Python objects on the way out."""
    return Response(
        orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY),
        media_type="application/json",
        headers=headers,
    )


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
        self.max_batch_tokens: int | None = config.max_batch_tokens
        self.admission = Admission(
            max_requests=config.max_concurrent_requests,
            max_intake_bytes=config.max_intake_bytes,
            small_body_bytes=config.small_body_bytes,
            max_body_bytes=config.max_body_bytes,
            max_bulk_requests=max(
                1, int(config.max_concurrent_requests * config.bulk_request_share)
            ),
        )
        self.liveness = Liveness(
            stuck_after_s=config.stuck_after_s,
            failures_to_unhealthy=config.failures_to_unhealthy,
            failure_window_s=config.failure_window_s,
        )
        self.metrics = WorkerMetrics(
            queue_depth=lambda: float(self.batcher.queue_depth if self.batcher else 0),
            in_flight=lambda: float(self.in_flight),
            bulk_queue_depth=lambda: float(self.batcher.depth_of(BULK) if self.batcher else 0),
        )
        self.on_fatal: Callable[[BaseException], None] | None = None
        self._tokenizer_threads = ThreadPoolExecutor(
            max_workers=config.tokenization_workers, thread_name_prefix="tokenize"
        )
        self._api_key = config.api_key.encode() if config.api_key else None
        # Our own thread for loading, not the loop's default executor: asyncio.run joins
        # that one on exit, which would make a SIGTERM during loading wait for the load.
        # The same thread then runs every forward pass (the batcher takes it over): the
        # thread that warmed torch's CPU thread pool runs small passes fastest (a
        # batch-1 pass took 11.5 ms on another thread against 8.5 ms on it).
        self._loader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="forward")

    # -- lifecycle ---------------------------------------------------------------------
    async def start(self) -> None:
        """Load (unless given) and warm the model off the loop, then start batching."""
        loop = asyncio.get_running_loop()
        try:
            if self.model is None:
                self.model = await loop.run_in_executor(self._loader, EmbeddingModel, self.config)
            if self.max_batch_tokens is None:
                self.max_batch_tokens = await loop.run_in_executor(
                    self._loader, self.model.calibrate_batch_tokens
                )
        except Exception as exc:
            self.phase = "failed"
            self.load_error = exc
            log.error("model failed to load: %s", exc)
            if self.on_fatal is not None:
                self.on_fatal(exc)
            return
        self.batcher = Batcher(
            _delayed(self.model.forward, self.config.delay_ms / 1000.0),
            max_batch_size=self.config.max_batch_size,
            max_batch_tokens=self.max_batch_tokens,
            max_queue_tokens=self.config.max_queue_tokens,
            max_wait_s=self.config.max_wait_ms / 1000.0,
            max_bulk_batch_tokens=self.config.max_bulk_batch_tokens,
            max_bulk_queue_tokens=self.config.max_bulk_queue_tokens,
            on_batch=self._record_batch,
            clock=time.monotonic,
            executor=self._loader,
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
        self._tokenizer_threads.shutdown(wait=False)
        if self.batcher is None:  # still loading: nobody else will stop the thread
            self._loader.shutdown(wait=False)
            return
        # The batcher owns the loading thread now: it finishes the queue on it, then
        # shuts it down (shutting it down first failed every queued pass).
        try:  # a forward pass that never returns must not hold shutdown
            await asyncio.wait_for(self.batcher.aclose(), STOP_TIMEOUT_S)
        except asyncio.TimeoutError:
            log.warning("batcher did not stop within %.0fs; leaving it", STOP_TIMEOUT_S)

    def _record_batch(self, stats: BatchStats) -> None:
        m = self.metrics
        m.inference_duration.observe(stats.seconds)
        m.batch_size.observe(stats.size)
        m.batch_tokens.observe(stats.padded_tokens)
        m.tokens.inc(stats.real_tokens)
        for seconds in stats.queue_times:
            m.queue_time.observe(seconds)

    # -- health ------------------------------------------------------------------------
    def unhealthy(self) -> tuple[str, str] | None:
        """``None`` when this worker can embed now, else ``(error_type, message)``."""
        if self.phase != "ready":
            return self.phase, f"worker is {self.phase}"
        if self.batcher is None:
            return "loading", "worker is loading"
        return self.liveness.verdict(self.batcher.progress(), time.monotonic())

    # -- request helpers ---------------------------------------------------------------
    def load_headers(self) -> dict[str, str]:
        """The load report every embedding answer carries, for client-side balancing."""
        batcher = self.batcher
        depth = batcher.queue_depth if batcher is not None else 0
        bulk = batcher.depth_of(BULK) if batcher is not None else 0
        return {
            "X-Queue-Depth": str(depth),
            "X-Queue-Depth-Bulk": str(bulk),
            "X-In-Flight": str(self.in_flight),
        }

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

    @staticmethod
    def priority_of(request: Request) -> str:
        """The request's ``X-Priority`` (case and spaces ignored; absent: interactive)."""
        raw = request.headers.get(PRIORITY_HEADER)
        if raw is None:
            return INTERACTIVE
        value = raw.strip().lower()
        if value not in PRIORITIES:
            raise ApiError(
                400,
                "invalid_header",
                f"X-Priority must be one of {', '.join(PRIORITIES)}, got {raw!r}",
            )
        return value

    def _token_ids(self, model: EmbeddingModel, req: EmbedRequest) -> list[list[int]]:
        """Every input as token ids within the model's limit, in input order."""
        try:
            tokenized = iter(model.tokenize(req.texts, truncate=req.truncate))
        except InputTooLong as exc:
            index = [i for i, item in enumerate(req.items) if isinstance(item, str)][exc.index]
            raise ApiError(
                413,
                "input_too_long",
                f"input {index} has more than {exc.limit} tokens, the model's limit; "
                "send truncate=true to cut it",
            ) from None
        except TokenizationFailed as exc:
            index = [i for i, item in enumerate(req.items) if isinstance(item, str)][exc.index]
            raise ApiError(422, "tokenization_failed", f"input {index}: {exc}") from None
        limit = model.max_input_length
        out: list[list[int]] = []
        for i, item in enumerate(req.items):
            if isinstance(item, str):
                out.append(next(tokenized))
                continue
            if max(item) >= model.vocab_size:
                raise ApiError(
                    422,
                    "invalid_input",
                    f"input {i} has token id {max(item)}, outside the vocabulary "
                    f"(0..{model.vocab_size - 1})",
                )
            if len(item) > limit:
                if not req.truncate:
                    raise ApiError(
                        413,
                        "input_too_long",
                        f"input {i} has {len(item)} tokens, over the model's limit of {limit}; "
                        "send truncate=true to cut it",
                    )
                item = item[:limit]
            out.append(list(item))
        return out

    async def embed(
        self, request: Request, parse: Parser
    ) -> tuple[FloatArray, int, EmbedRequest, dict[str, str]]:
        """Admit, read, parse, tokenize and batch one request: its rows, tokens used,
        and the headers to answer with (load and TEI's timing headers)."""
        started = time.perf_counter()
        self.check_auth(request)
        model = self.check_ready()
        cfg = self.config
        declared = check_headers(request, cfg.max_body_bytes)
        priority = self.priority_of(request)
        try:
            ticket = self.admission.enter(declared, bulk=priority == BULK)
        except Refused as exc:
            raise ApiError(
                429,
                "overloaded",
                f"the worker is at its admission limit ({exc.reason}); retry later or elsewhere",
                {"Retry-After": "1"},
            ) from None
        self.in_flight += 1
        try:
            payload = decode_json(await read_body(request, cfg.max_body_bytes))
            req = parse(
                payload,
                max_inputs=cfg.max_inputs,
                normalize=cfg.normalize,
                truncate=cfg.auto_truncate,
            )
            del payload
            if req.dimensions is not None and req.dimensions > model.dimension:
                raise ApiError(
                    422,
                    "invalid_field",
                    f"'dimensions' is {req.dimensions}, above the model's {model.dimension}",
                )
            tokenizing = time.perf_counter()
            if req.chars <= INLINE_TOKENIZE_CHARS:
                ids = self._token_ids(model, req)
            else:
                loop = asyncio.get_running_loop()
                ids = await loop.run_in_executor(
                    self._tokenizer_threads, self._token_ids, model, req
                )
            tokenizing = time.perf_counter() - tokenizing
            ticket.end_intake()
            assert self.batcher is not None
            timing = Timing()
            try:
                rows = await self.batcher.submit(ids, priority=priority, timing=timing)
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
            except Exception as exc:  # the forward pass failed: the worker's fault
                raise ApiError(500, "backend", f"the forward pass failed: {exc!r}") from None
        finally:
            self.in_flight -= 1
            ticket.close()
        if req.dimensions is not None:
            rows = np.ascontiguousarray(rows[:, : req.dimensions])
        if req.normalize:
            rows = l2_normalize(rows)
        tokens = sum(len(x) for x in ids)
        headers = self.load_headers()
        total = _ms(time.perf_counter() - started)
        # TEI's timing headers, same names and meaning (whole milliseconds): dashboards
        # built for TEI read them, and a balancer (ours, among others) takes the
        # inference time as an exact service time and the queue time as queueing.
        headers.update(
            {
                "x-compute-type": model.device.type,
                "x-compute-time": total,
                "x-compute-characters": str(req.chars),
                "x-compute-tokens": str(tokens),
                "x-total-time": total,
                "x-tokenization-time": _ms(tokenizing),
                "x-queue-time": _ms(timing.queue),
                "x-inference-time": _ms(timing.inference),
            }
        )
        return rows, tokens, req, headers


def _ms(seconds: float) -> str:
    """Whole milliseconds, as TEI writes its timing headers."""
    return str(int(seconds * 1000.0))


def _delayed(forward: Forward, delay_s: float) -> Forward:
    """``forward``, then a sleep: the demo/test-only ``delay_ms``, outside the model so
    start-up (warm-up, calibration) is not slowed by it."""
    if delay_s <= 0:
        return forward

    def slow(batch: Sequence[Sequence[int]]) -> FloatArray:
        rows = forward(batch)
        time.sleep(delay_s)
        return rows

    return slow


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
        rows, _, _, headers = await state.embed(request, parse_tei)
    except ApiError as exc:
        return _with_load(state, exc)
    return _json(rows, headers)


async def embed_openai(request: Request) -> Response:
    """POST /v1/embeddings (and /embeddings): OpenAI shape, floats or base64 float32."""
    state = _state(request)
    try:
        rows, tokens, req, headers = await state.embed(request, parse_openai)
    except ApiError as exc:
        return _with_load(state, exc)
    assert state.model is not None
    b64 = req.encoding_format == "base64"
    data = [
        {
            "object": "embedding",
            "index": i,
            "embedding": base64.b64encode(row.astype("<f4").tobytes()).decode("ascii")
            if b64
            else row,
        }
        for i, row in enumerate(rows)
    ]
    body = {
        "object": "list",
        "data": data,
        "model": state.model.model_id,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }
    return _json(body, headers)


async def health(request: Request) -> Response:
    """GET /health: 200 only while the worker can embed (loaded, not draining, batcher
    moving, forward passes succeeding)."""
    state = _state(request)
    problem = state.unhealthy()
    if problem is None:
        return JSONResponse({"status": "ok"})
    error_type, message = problem
    return JSONResponse(
        {"status": error_type, "error": message, "error_type": error_type},
        status_code=503,
        headers={"Retry-After": "1"},
    )


def info_body(state: WorkerState) -> dict[str, Any]:
    """``/info``: TEI's field names, and the worker's own older names as aliases."""
    cfg = state.config
    model = state.model
    pooling = model.pooling if model else (cfg.pooling or "from model config")
    dtype = model.dtype_name if model else cfg.dtype
    max_input_length = model.max_input_length if model else None
    return {
        # TEI's names
        "model_id": model.model_id if model else cfg.resolved_model_id(),
        "model_sha": None,
        "model_dtype": dtype,
        "model_type": {"embedding": {"pooling": pooling}},
        "max_concurrent_requests": cfg.max_concurrent_requests,
        "max_input_length": max_input_length,
        "max_batch_tokens": state.max_batch_tokens,
        "max_batch_requests": cfg.max_batch_size,
        "max_client_batch_size": cfg.max_inputs,
        "auto_truncate": cfg.auto_truncate,
        "tokenization_workers": cfg.tokenization_workers,
        "version": worker_version(),
        "sha": None,
        "docker_label": None,
        # the worker's own names (kept for existing clients)
        "dimension": model.dimension if model else None,
        "dtype": dtype,
        "device": str(model.device) if model else cfg.device,
        "pooling": pooling,
        "normalize": cfg.normalize,
        "model_normalizes": model.normalizes if model else None,
        "max_batch_size": cfg.max_batch_size,
        "max_wait_ms": cfg.max_wait_ms,
        "max_inputs_per_request": cfg.max_inputs,
        "max_queue_tokens": cfg.max_queue_tokens,
        "max_body_bytes": cfg.max_body_bytes,
        "status": state.phase,
    }


async def info(request: Request) -> Response:
    """GET /info: what a client needs to size its requests."""
    state = _state(request)
    try:
        state.check_auth(request)
    except ApiError as exc:
        return exc.response()
    return JSONResponse(info_body(state))


async def metrics(request: Request) -> Response:
    """GET /metrics: Prometheus text format; open unless ``protect_metrics``."""
    state = _state(request)
    if state.config.protect_metrics:
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
            Route("/embeddings", embed_openai, methods=["POST"]),
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
