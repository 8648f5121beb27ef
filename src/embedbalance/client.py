"""The embedding client: texts in, one float32 matrix out, balanced over many backends.

Why it exists on top of the transports: a caller with 50,000 texts wants one call,
not a loop of HTTP requests. The client cuts the input into sub-batches by an
estimated token budget, sends them concurrently through a
:class:`~embedbalance.BalancingTransport` (each carrying its token count as its
cost, so token-aware balancers see real work), and puts the rows back in input
order. Retries, ejection and hedging stay in the transport: the client plans,
checks answers and reassembles.

Rows can never be mixed across sub-batches: each sub-batch carries the input
positions of its texts, the sub-batches partition the input, and an answer must have
exactly one row per text, of the client's one dimension, every value a finite number.
That check runs as the transport's answer check (``VALIDATE_EXTENSION``): a replica
that answers garbage fails that attempt, which is retried on another replica, so a
job succeeds with every row in order while at least one replica can embed.

Servers' limits are respected rather than guessed: the first call reads ``GET /info``
(TEI's ``max_client_batch_size`` and ``max_batch_tokens``) and caps sub-batches to
them, and a ``413`` ("too many inputs", "payload too large") splits the sub-batch in
two and remembers the smaller size.
"""

from __future__ import annotations

import contextvars
import logging
import random
import re
import threading
import time
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator, Sized
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor, as_completed
from types import TracebackType
from typing import Any, Literal, overload

import anyio
import attrs
import httpx
import numpy as np
import numpy.typing as npt

from ._backend import Backend, BackendLike
from ._batching import Encoder, Job, TokenCounter, assemble, plan_jobs, token_counter
from ._bulk import AsyncBulkGate, BulkGate
from ._clock import Clock, monotonic
from ._inputs import achunks, chunks, collect
from ._progress import DEFAULT_THRESHOLD, Progress, open_progress
from ._unique import Unique
from ._wire import Options, WireApi, api_for, normalize_rows
from .balancers import Balancer
from .cache import CacheLookup, CacheStats, EmbeddingCache
from .discovery import Discovery
from .exceptions import (
    AllAttemptsFailed,
    Attempt,
    DimensionMismatch,
    EmbedbalanceError,
    ResponseFormatError,
)
from .health import HealthCheck, OutlierDetection, SlowStart
from .health_runner import speaking_as
from .locality import Locality
from .priority import BULK, BulkLimit, Priority, check_priority
from .retry import Hedge, Retry
from .transport import (
    ATTEMPTS_EXTENSION,
    BACKEND_EXTENSION,
    COST_EXTENSION,
    MODEL_EXTENSION,
    PRIORITY_EXTENSION,
    TOTAL_TIMEOUT_EXTENSION,
    VALIDATE_EXTENSION,
    VALIDATED_EXTENSION,
    AsyncBalancingTransport,
    BalancingTransport,
    MetricsSink,
    TransportStats,
)

__all__ = [
    "AsyncEmbeddingClient",
    "BatchEvent",
    "ClientStats",
    "EmbeddingClient",
    "EmbeddingRequestError",
]

log = logging.getLogger("embedbalance.client")

Api = Literal["tei", "openai"]
FloatMatrix = npt.NDArray[np.float32]
Dtype = Literal["float32", "float16"]

#: Where each API shape lives on a server.
PATHS: dict[str, str] = {"tei": "/embed", "openai": "/v1/embeddings"}
#: A placeholder host: the balancing transport rewrites scheme, host and port.
_BASE_URL = "http://embedbalance.invalid"
#: Sub-batches in flight per live backend when ``max_concurrency`` is not given.
_PER_BACKEND = 2
#: Sub-batches in flight while no backend is known yet (discovery still resolving).
_FALLBACK_CONCURRENCY = 8
#: TEI's 413 message for too many inputs names the server's limit.
_TEI_BATCH_LIMIT = re.compile(r"maximum allowed batch size (\d+)")


class EmbeddingRequestError(EmbedbalanceError, httpx.HTTPStatusError):
    """A backend refused a request with a 4xx (an input too long, a wrong model name,
    a missing API key): resending it elsewhere would fail the same way.

    ``status`` is the HTTP status, ``url`` the backend, ``detail`` the server's message.
    Also an ``httpx.HTTPStatusError`` carrying the request and the response.
    """

    def __init__(
        self, url: str, status: int, detail: str, response: httpx.Response | None = None
    ) -> None:
        self.url, self.status, self.detail = url, status, detail
        message = f"backend {url} answered HTTP {status}: {detail}"
        if response is None:
            request = httpx.Request("POST", url)
            response = httpx.Response(status, request=request)
        super().__init__(message, request=response.request, response=response)


@attrs.frozen
class BatchEvent:
    """One sub-batch answered: who answered, how much it carried and how long it took.

    ``started`` is a ``time.monotonic()`` reading; ``latency`` is what the caller saw,
    retries and hedges included; ``tokens`` is the cost the balancer was given.
    """

    backend: str
    texts: int
    tokens: int
    started: float
    latency: float


class _Split(Exception):
    """A server refused a sub-batch as too large (413): send it in two halves."""


@attrs.frozen
class ClientStats(TransportStats):
    """The transport's snapshot plus what the client saved: ``duplicates`` is how many
    texts were answered with an identical text's row of the same call instead of being
    sent; ``cache`` the cache's counters (``None`` without a cache)."""

    duplicates: int = 0
    cache: CacheStats | None = None


@attrs.define
class _Config:
    """The I/O-free half shared by both clients: request shapes, planning, checks."""

    wire: WireApi
    options: Options
    batch_tokens: int
    batch_size: int
    count_tokens: TokenCounter
    sort_by_length: bool
    progress: bool | None
    progress_threshold: int
    on_batch: Callable[[BatchEvent], None] | None
    dimension: int | None
    dtype: Dtype
    timeout: float | None
    probe_info: bool
    dedupe: bool = True
    cache: EmbeddingCache | None = None
    #: Texts answered by an identical text of the same call instead of being sent.
    duplicates: int = 0
    priority: Priority = "interactive"
    #: Limits learned from servers (``/info``, 413 answers); None until known.
    server_texts: int | None = None
    server_tokens: int | None = None
    info_done: bool = False
    #: Dimensions pinned for per-call models other than the client's own.
    model_dimensions: dict[str, int] = attrs.field(factory=dict, init=False)
    _lock: threading.Lock = attrs.field(factory=threading.Lock, init=False)

    def canary_api(self) -> tuple[str, str | None, str | None]:
        """``(api, path, model)`` for a canary that asks as this client does."""
        return self.wire.name, self.wire.path, self.options.model

    @classmethod
    def build(
        cls,
        *,
        api: str,
        model: str | None,
        path: str | None,
        normalize: bool | None,
        truncate: bool | None,
        dimensions: int | None,
        dtype: str,
        encoding_format: str,
        batch_tokens: int,
        batch_size: int,
        tokenizer: Encoder | TokenCounter | None,
        sort_by_length: bool,
        progress: bool | None,
        progress_threshold: int,
        on_batch: Callable[[BatchEvent], None] | None,
        dimension: int | None,
        timeout: float | None,
        probe_info: bool,
        dedupe: bool = True,
        cache: EmbeddingCache | None = None,
        priority: str = "interactive",
    ) -> _Config:
        wire = api_for(api, path)
        if encoding_format not in ("float", "base64"):
            raise ValueError(
                f"encoding_format must be 'float' or 'base64', got {encoding_format!r}"
            )
        if batch_tokens < 1 or batch_size < 1:
            raise ValueError("batch_tokens and batch_size must be >= 1")
        for name, value in (("dimension", dimension), ("dimensions", dimensions)):
            if value is not None and (isinstance(value, bool) or value < 1):
                raise ValueError(f"{name} must be >= 1, got {value!r}")
        if dimension is not None and dimensions is not None and dimension != dimensions:
            raise ValueError(f"dimension={dimension} contradicts dimensions={dimensions}")
        if dtype not in ("float32", "float16"):
            raise ValueError(f"dtype must be 'float32' or 'float16', got {dtype!r}")
        if timeout is not None and not timeout > 0:
            raise ValueError(f"timeout must be > 0 or None, got {timeout!r}")
        if cache is not None and not isinstance(cache, EmbeddingCache):
            raise TypeError(f"cache must be an EmbeddingCache or None, got {cache!r}")
        return cls(
            wire=wire,
            options=Options(
                model=model,
                normalize=normalize,
                truncate=truncate,
                dimensions=dimensions,
                encoding_format=encoding_format,
            ),
            batch_tokens=batch_tokens,
            batch_size=batch_size,
            count_tokens=token_counter(tokenizer),
            sort_by_length=sort_by_length,
            progress=progress,
            progress_threshold=progress_threshold,
            on_batch=on_batch,
            dimension=dimension if dimension is not None else dimensions,
            dtype=dtype,  # type: ignore[arg-type]
            timeout=timeout,
            probe_info=probe_info,
            dedupe=dedupe,
            cache=cache,
            priority=check_priority(priority),
        )

    # -- planning ----------------------------------------------------------------------

    def limits(self) -> tuple[int, int]:
        """Texts and tokens per sub-batch: the caller's, capped by what servers said."""
        texts, tokens = self.batch_size, self.batch_tokens
        if self.server_texts is not None:
            texts = min(texts, self.server_texts)
        if self.server_tokens is not None:
            tokens = min(tokens, self.server_tokens)
        return texts, tokens

    def plan(self, texts: list[str], backends: int) -> list[Job]:
        """Sub-batches for ``texts`` within this client's (and its servers') limits,
        split at least once per usable backend when there is enough work for each."""
        max_texts, max_tokens = self.limits()
        return plan_jobs(
            texts,
            self.count_tokens,
            backends=backends,
            max_texts=max_texts,
            max_tokens=max_tokens,
            sort_by_length=self.sort_by_length,
        )

    def unique(self, texts: list[str], model: str | None) -> Unique:
        """What to send for ``texts``: each distinct text once (unless ``dedupe`` is
        off), and none the cache already holds."""
        unique = Unique.of(texts, self.dedupe)
        if unique.inverse is not None:
            with self._lock:
                self.duplicates += len(texts) - len(unique.texts)
        if self.cache is None:
            return unique
        lookup = CacheLookup.of(self.cache, self.cache_namespace(model), unique.texts)
        return attrs.evolve(unique, texts=lookup.missing, cached=lookup)

    def cache_namespace(self, model: str | None) -> tuple[object, ...]:
        """Everything besides the text that decides the row this client returns: the
        API and route, the model, and every option that changes a vector."""
        o = self.options
        return (
            self.wire.name,
            self.wire.path,
            o.model if model is None else model,
            o.normalize,
            o.truncate,
            o.dimensions,
            o.encoding_format,
            self.dtype,
        )

    def stats(self, transport: TransportStats) -> ClientStats:
        cache = self.cache.stats() if self.cache is not None else None
        fields = {f.name: getattr(transport, f.name) for f in attrs.fields(TransportStats)}
        return ClientStats(**fields, duplicates=self.duplicates, cache=cache)

    def open_progress(self, total: int | None) -> Progress:
        return open_progress(
            self.progress, total, threshold=self.progress_threshold, desc="embedding"
        )

    # -- what servers say about themselves -----------------------------------------------

    def learn_info(self, response: httpx.Response) -> None:
        """Cap sub-batches by a server's ``/info`` (TEI's field names); pin the dimension
        when the server states it. Any failure only means nothing is learned."""
        if not response.is_success:
            log.debug(
                "GET /info answered HTTP %d: using the configured limits", response.status_code
            )
            return
        try:
            info = response.json()
        except ValueError:
            return
        if not isinstance(info, dict):
            return
        texts = _positive_int(info.get("max_client_batch_size"))
        tokens = _positive_int(info.get("max_batch_tokens"))
        with self._lock:
            if texts is not None:
                self.server_texts = min(texts, self.server_texts or texts)
            if tokens is not None:
                self.server_tokens = min(tokens, self.server_tokens or tokens)

    def info_kwargs(self) -> dict[str, Any]:
        """``GET /info`` goes to a replica of the client's model, where it names one."""
        model = self.options.model
        return {} if model is None else {"extensions": {MODEL_EXTENSION: model}}

    def learn_too_large(self, texts: int, detail: str) -> None:
        """A 413 for ``texts`` texts: remember the server's stated limit, else fewer."""
        match = _TEI_BATCH_LIMIT.search(detail)
        limit = int(match.group(1)) if match else max(1, texts // 2)
        with self._lock:
            self.server_texts = min(limit, self.server_texts or limit)
        log.info(
            "a backend refused %d texts at once: sub-batches now hold at most %d", texts, limit
        )

    # -- wire ----------------------------------------------------------------------------

    def request(self, texts: list[str], cost: int, model: str | None) -> dict[str, Any]:
        """Keyword arguments for ``http.post``: the body, and the transport extensions
        carrying the cost, the answer check and the sub-batch's deadline."""
        options = self.options if model is None else attrs.evolve(self.options, model=model)
        extensions: dict[str, Any] = {
            COST_EXTENSION: cost,
            VALIDATE_EXTENSION: lambda response: self.rows(response, len(texts)),
        }
        if options.model is not None:
            # Routed by this rather than by the body: nothing to parse, and TEI-shaped
            # requests (which carry no model) are routed too.
            extensions[MODEL_EXTENSION] = options.model
        if self.timeout is not None:
            extensions[TOTAL_TIMEOUT_EXTENSION] = self.timeout
        if self.priority == BULK:
            extensions[PRIORITY_EXTENSION] = BULK
        return {"json": self.wire.body(texts, options), "extensions": extensions}

    def rows(self, response: httpx.Response, n: int) -> FloatMatrix:
        """The rows of one 2xx answer, checked for shape: ``n`` rows of finite numbers.

        This is the transport's answer check: what it raises
        (:class:`~embedbalance.ResponseFormatError`) fails that attempt, which is then
        retried on another replica. The dimension is checked later, in
        :meth:`outcome`: a replica serving another model is a deployment error to name,
        not a failure to route around silently.
        """
        url = backend_url(response)
        try:
            payload = response.json()
        except ValueError as exc:
            raise ResponseFormatError(f"backend {url} answered invalid JSON: {exc}") from None
        rows = self.wire.rows(payload, url)
        if rows.shape[0] != n:
            raise ResponseFormatError(f"backend {url} answered {rows.shape[0]} rows for {n} texts")
        return rows

    def finish(self, rows: FloatMatrix, url: str, model: str | None = None) -> FloatMatrix:
        """Client-side ``dimensions`` and ``normalize`` where the server did not apply
        them, the dimension check, and the output dtype."""
        wanted = self.options.dimensions
        renormalize = False
        if wanted is not None and rows.shape[1] > wanted:
            # A server that ignores ``dimensions``: Matryoshka truncation here instead.
            rows = rows[:, :wanted]
            renormalize = self.options.normalize is not False
        if renormalize or (self.options.normalize and not self.wire.normalizes):
            rows = normalize_rows(rows)
        self.check_dimension(url, rows.shape[1], model)
        return rows.astype(self.dtype, copy=False)

    def outcome(
        self, response: httpx.Response, n: int, model: str | None = None
    ) -> tuple[FloatMatrix, str]:
        """The rows the transport checked, or the error that the final answer means."""
        url = backend_url(response)
        validated = response.extensions.get(VALIDATED_EXTENSION)
        if isinstance(validated, np.ndarray):
            return self.finish(validated, url, model), url
        status = response.status_code
        if status == 413 and n > 1:
            self.learn_too_large(n, _error_detail(response))
            raise _Split
        if response.is_success:
            # Wrong on every replica tried: raise what made the last one fail.
            return self.finish(self.rows(response, n), url, model), url
        if 400 <= status < 500 and status not in (424, 429):
            raise EmbeddingRequestError(url, status, _error_detail(response), response)
        attempts = [
            *response.extensions.get(ATTEMPTS_EXTENSION, ()),
            Attempt(url, f"HTTP {status}: {_error_detail(response)}"),
        ]
        raise AllAttemptsFailed(attempts)

    def check_dimension(self, url: str, got: int, model: str | None = None) -> None:
        """Pin the first dimension seen (or the one given) and refuse any other; a
        per-call ``model`` other than the client's has its own (models differ in size)."""
        if model is not None and model != self.options.model:
            with self._lock:
                expected = self.model_dimensions.setdefault(model, got)
            if got != expected:
                raise DimensionMismatch(url, expected, got)
            return
        with self._lock:
            if self.dimension is None:
                self.dimension = got
                return
            expected = self.dimension
        if got != expected:
            raise DimensionMismatch(url, expected, got)

    def dimension_from_info(self, response: httpx.Response) -> int:
        url = backend_url(response)
        why = f"HTTP {response.status_code}"
        if response.is_success:
            try:
                payload = response.json()
            except ValueError:
                payload = None
            value = payload.get("dimension") if isinstance(payload, dict) else None
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                with self._lock:
                    if self.dimension is None:
                        self.dimension = value
                    return self.dimension
            why = "no positive integer 'dimension'"
        raise ResponseFormatError(
            f"cannot tell the embedding dimension for an empty input: GET /info on {url} "
            f"gave {why}; pass dimension= to the client"
        )

    def emit(self, url: str, texts: int, tokens: int, started: float) -> None:
        if self.on_batch is not None:
            self.on_batch(BatchEvent(url, texts, tokens, started, time.monotonic() - started))

    def empty(self) -> FloatMatrix:
        assert self.dimension is not None
        return np.empty((0, self.dimension), dtype=self.dtype)


def _positive_int(value: object) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    return None


def _halves(texts: list[str]) -> tuple[list[str], list[str]]:
    mid = len(texts) // 2
    return texts[:mid], texts[mid:]


def backend_url(response: httpx.Response) -> str:
    """The backend that answered, as the transport reported it."""
    backend = response.extensions.get(BACKEND_EXTENSION)
    if isinstance(backend, Backend):
        return backend.url
    u = response.request.url
    return f"{u.scheme}://{u.netloc.decode('ascii')}"


def _error_detail(response: httpx.Response) -> str:
    try:
        payload = response.json()
    except ValueError:
        return response.text[:500] or "(empty body)"
    if isinstance(payload, dict):
        err = payload.get("error", payload.get("message"))
        if isinstance(err, dict):  # OpenAI: {"error": {"message": ...}}
            err = err.get("message")
        if isinstance(err, str):
            return err
    return str(payload)[:500]


_CLIENT_DOC = """
    Connection to the backends:

    - ``backends``: URL strings, :class:`~embedbalance.Backend` objects or a discovery
      source; ``balancer``, ``health_check``, ``outlier_detection``, ``slow_start``,
      ``panic_threshold``, ``retry``, ``hedge``, ``attempt_timeout``, ``transport``
      (the inner one), ``metrics``, ``clock``, ``rng``: passed to the balancing
      transport unchanged.
    - ``timeout``: seconds one sub-batch may take in all, every retry included (the
      transport's ``total_timeout`` for it; also the cap of each httpx phase).
      ``None``: no limit.
    - ``headers``: sent with every request (an ``Authorization`` header, say).

    What is sent:

    - ``api``: ``"tei"`` (``POST /embed``, Hugging Face TEI and the reference worker) or
      ``"openai"`` (``POST /v1/embeddings``: OpenAI, vLLM, infinity); ``path``
      overrides the route.
    - ``model``: the OpenAI ``model`` field (``None``: not sent); ``embed(model=...)``
      overrides it per call. Either way, requests go only to backends serving that
      model (``Backend.model``, or learned from ``/info``) or of unknown model, and
      each model keeps its own dimension check.
    - ``normalize``: unit-length rows. Sent to TEI-shaped servers; done here for the
      OpenAI API, which has no such field (``None``: the server's default).
    - ``truncate``: cut inputs longer than the model's limit instead of failing with a
      4xx. ``None`` (the default) sends nothing, so the server's own setting applies.
    - ``dimensions``: Matryoshka truncation to this many dimensions: sent to the server,
      and done here (then renormalised) when a server returns more.
    - ``dtype``: ``"float32"`` (default) or ``"float16"`` rows.
    - ``encoding_format``: OpenAI only, ``"float"`` or ``"base64"`` (smaller, faster).

    How work is split:

    - ``batch_tokens`` / ``batch_size``: the most estimated tokens / texts in one
      sub-batch. ``probe_info`` (default ``True``) reads ``GET /info`` once and caps
      both at the server's ``max_batch_tokens`` / ``max_client_batch_size``; a 413
      answer halves a sub-batch and caps later ones at the server's stated limit.
    - ``tokenizer``: counts tokens exactly, an object with ``encode(text)`` (a Hugging
      Face tokenizer, tiktoken) or a ``str -> int`` function; ``None`` estimates about
      four characters per token, which is enough to weigh sub-batches.
    - ``sort_by_length``: group texts of similar length into the same sub-batch, so
      workers pad less (``True``); rows still come back in input order.
    - ``max_concurrency``: sub-batches in flight at once (``None``: two per live
      backend, following the pool as discovery grows or shrinks it).
    - ``dimension``: the expected embedding size; ``None`` pins the first one seen.
    - ``dedupe``: identical texts within one call are sent once and each still gets
      its row (``True``); ``False`` sends every text as given.
    - ``cache``: an :class:`~embedbalance.EmbeddingCache` shared across calls; texts it
      holds are not sent again (``None``: no cache). :meth:`stats` counts both savings.

    Priority (``docs/priority.md``):

    - ``priority``: ``"interactive"`` (default; nothing is sent) or ``"bulk"``: every
      request carries ``X-Priority: bulk``, which a priority-aware worker serves only
      when no interactive work waits.
    - ``bulk_limit``: for a bulk client, the :class:`~embedbalance.BulkLimit` policy that
      adapts how many sub-batches are in flight to what the pool absorbs without a
      backlog (at most ``max_concurrency``); ``None``: no adaptive limit.

    Feedback: ``progress`` (``True``: a tqdm bar; ``False``: never; ``None``: for jobs
    of ``progress_threshold`` texts or more, when tqdm is installed) and ``on_batch``, a
    function called with a :class:`BatchEvent` for every sub-batch answered.

    Errors: a 4xx is :class:`EmbeddingRequestError`; answers that stay wrong on every
    replica tried raise :class:`~embedbalance.ResponseFormatError` or
    :class:`~embedbalance.DimensionMismatch`; a sub-batch that failed everywhere raises
    :class:`~embedbalance.AllAttemptsFailed`; none reachable,
    :class:`~embedbalance.NoBackendAvailable`.
"""


@attrs.frozen
class _Pending:
    """One list of texts submitted to the thread pool and not yet gathered."""

    unique: Unique
    jobs: list[Job]
    futures: list[Future[FloatMatrix]]

    def cancel(self) -> None:
        for fut in self.futures:
            fut.cancel()


def _watch(metrics: MetricsSink | None, cfg: _Config) -> None:
    """Let a metrics sink that can (``PrometheusMetrics``) export the client's savings."""
    watch = getattr(metrics, "watch_client", None)
    if watch is not None:
        watch(lambda: (cfg.duplicates, cfg.cache.stats() if cfg.cache is not None else None))


def _concurrency(given: int | None, live: int) -> int:
    if given is not None:
        return given
    return _PER_BACKEND * live if live else _FALLBACK_CONCURRENCY


class EmbeddingClient:
    """Embed texts over many backends from sync code (scripts, Flask, Django, threads).

    Sub-batches run on a bounded thread pool that shares one ``httpx.Client``; the
    client is thread-safe, and meant to be created once and closed at exit (or used as
    a context manager)."""

    __doc__ = (__doc__ or "") + _CLIENT_DOC

    def __init__(
        self,
        backends: Iterable[BackendLike] | Discovery,
        *,
        api: Api = "tei",
        model: str | None = None,
        path: str | None = None,
        normalize: bool | None = None,
        truncate: bool | None = None,
        dimensions: int | None = None,
        dtype: Dtype = "float32",
        encoding_format: Literal["float", "base64"] = "float",
        batch_tokens: int = 4096,
        batch_size: int = 32,
        tokenizer: Encoder | TokenCounter | None = None,
        sort_by_length: bool = True,
        dedupe: bool = True,
        cache: EmbeddingCache | None = None,
        max_concurrency: int | None = None,
        dimension: int | None = None,
        probe_info: bool = True,
        timeout: float | None = 60.0,
        headers: dict[str, str] | None = None,
        priority: Priority = "interactive",
        bulk_limit: BulkLimit | None = BulkLimit(),
        progress: bool | None = None,
        progress_threshold: int = DEFAULT_THRESHOLD,
        on_batch: Callable[[BatchEvent], None] | None = None,
        balancer: Balancer | Callable[[], Balancer] | None = None,
        health_check: HealthCheck | None = HealthCheck(),
        outlier_detection: OutlierDetection | None = OutlierDetection(),
        slow_start: SlowStart | None = SlowStart(),
        panic_threshold: float = 0.5,
        zone: Locality | str | None = None,
        retry: Retry | int | bool | None = None,
        hedge: Hedge | None = Hedge(),
        attempt_timeout: float | Literal["auto"] | None = None,
        transport: httpx.BaseTransport | Callable[[Backend], httpx.BaseTransport] | None = None,
        metrics: MetricsSink | None = None,
        clock: Clock = monotonic,
        rng: random.Random | None = None,
    ) -> None:
        if max_concurrency is not None and max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1, got {max_concurrency!r}")
        self._cfg = _Config.build(
            api=api,
            model=model,
            path=path,
            normalize=normalize,
            truncate=truncate,
            dimensions=dimensions,
            dtype=dtype,
            encoding_format=encoding_format,
            batch_tokens=batch_tokens,
            batch_size=batch_size,
            tokenizer=tokenizer,
            sort_by_length=sort_by_length,
            progress=progress,
            progress_threshold=progress_threshold,
            on_batch=on_batch,
            dimension=dimension,
            timeout=timeout,
            probe_info=probe_info,
            dedupe=dedupe,
            cache=cache,
            priority=priority,
        )
        self.transport = BalancingTransport(
            backends,
            balancer=balancer,  # type: ignore[arg-type]
            health_check=speaking_as(health_check, *self._cfg.canary_api()),
            outlier_detection=outlier_detection,
            slow_start=slow_start,
            panic_threshold=panic_threshold,
            zone=zone,
            retry=retry,
            hedge=hedge,
            attempt_timeout=attempt_timeout,
            transport=transport,
            metrics=metrics,
            clock=clock,
            rng=rng,
        )
        self._http = httpx.Client(
            transport=self.transport, base_url=_BASE_URL, timeout=timeout, headers=headers
        )
        _watch(metrics, self._cfg)
        self._gate = (
            BulkGate(
                bulk_limit,
                clock=clock,
                backends=self._usable_backends,
                ceiling=lambda: _concurrency(max_concurrency, self._usable_backends()),
                timeout=timeout,
            )
            if self._cfg.priority == BULK and bulk_limit is not None
            else None
        )
        self._max_concurrency = max_concurrency
        self._executor: ThreadPoolExecutor | None = None
        self._executor_size = 0
        self._lock = threading.Lock()
        self._closed = False
        # Sub-batches submitted and not done, on any executor (a resize leaves work on
        # the old one): close() cancels the queued ones itself, see there.
        self._futures: set[Future[FloatMatrix]] = set()

    def __repr__(self) -> str:
        return f"<EmbeddingClient api={self._cfg.wire.name!r} {self.transport.pool!r}>"

    @property
    def dimension(self) -> int | None:
        """The embedding size: given, or pinned by the first answer; None until known."""
        return self._cfg.dimension

    def stats(self) -> ClientStats:
        """The transport's snapshot (per-backend requests, latencies, ejections) plus
        the duplicates folded and the cache's counters."""
        return self._cfg.stats(self.transport.stats())

    # -- lifecycle -----------------------------------------------------------------------

    def __enter__(self) -> EmbeddingClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Wait for sub-batches already running, drop queued ones, close connections and
        stop health checks. Idempotent. A call another thread has in progress raises
        ``RuntimeError("the client is closed")``.

        Why not ``shutdown(cancel_futures=True)``: it takes the queued work items off
        the queue and cancels their futures without waking anyone waiting on them
        (``as_completed`` learns of a cancellation only from the worker that skips the
        item), so the interrupted call would wait forever. Cancelling here and leaving
        the items queued lets the pool's threads skip each one and wake its waiter."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            executor, self._executor = self._executor, None
            queued = list(self._futures)
        for fut in queued:
            fut.cancel()  # false for one already running: that one is waited for below
        if executor is not None:
            executor.shutdown(wait=True)
        self._http.close()

    def _forget(self, fut: Future[FloatMatrix]) -> None:
        with self._lock:
            self._futures.discard(fut)

    def _ensure_open(self) -> None:
        """Every call checks this first: after close() the caller reads this message,
        not httpx's (or nothing, for a call that would need no request)."""
        if self._closed:
            raise RuntimeError("the client is closed")

    def _pool(self) -> ThreadPoolExecutor:
        """The sub-batch thread pool, sized from the pool's *live* membership: with DNS
        discovery the first call may find few or no backends, and the pool grows later.
        A resize swaps in a new executor; the old one finishes what it was given."""
        with self._lock:
            self._ensure_open()
            n = _concurrency(self._max_concurrency, len(self.transport.pool.backends))
            executor = self._executor
            if executor is None or n > self._executor_size or n * 2 <= self._executor_size:
                if executor is not None:
                    executor.shutdown(wait=False)
                executor = self._executor = ThreadPoolExecutor(
                    n, thread_name_prefix="embedbalance-client"
                )
                self._executor_size = n
            return executor

    # -- requests --------------------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        """``GET /info`` from one backend (the balancer picks it), as a dict."""
        self._ensure_open()
        response = self._http.get("/info", **self._cfg.info_kwargs())
        if not response.is_success:
            raise EmbeddingRequestError(
                backend_url(response), response.status_code, _error_detail(response), response
            )
        payload = response.json()
        if not isinstance(payload, dict):
            raise ResponseFormatError(f"backend {backend_url(response)}: /info is not an object")
        return payload

    def _usable_backends(self) -> int:
        """Replicas the client's requests may go to now (the bulk limit's per-replica
        floor and ceiling): not every member, only the healthy ones of its model."""
        return self.transport.pool.usable_count(self._cfg.options.model)

    def _learn_limits(self) -> None:
        cfg = self._cfg
        if cfg.info_done or not cfg.probe_info:
            return
        cfg.info_done = True
        try:
            cfg.learn_info(self._http.get("/info", **self._cfg.info_kwargs()))
        except httpx.HTTPError as exc:
            log.debug("GET /info failed (%s): using the configured limits", exc)

    def _embed_batch(self, texts: list[str], tokens: int, model: str | None) -> FloatMatrix:
        cfg = self._cfg
        started = time.monotonic()
        kwargs = cfg.request(texts, tokens, model)
        if self._gate is None:
            response = self._http.post(cfg.wire.path, **kwargs)
        else:
            response = self._gate.call(lambda: self._http.post(cfg.wire.path, **kwargs), tokens)
        try:
            rows, url = cfg.outcome(response, len(texts), model)
        except _Split:
            parts = [
                self._embed_batch(half, max(1, tokens * len(half) // len(texts)), model)
                for half in _halves(texts)
            ]
            return np.concatenate(parts)
        cfg.emit(url, len(texts), tokens, started)
        return rows

    def _submit(self, texts: list[str], model: str | None) -> _Pending:
        pool = self._pool()
        self._learn_limits()
        unique = self._cfg.unique(texts, model)
        # Split for the replicas that can take this model's work now, not every member.
        usable = self.transport.pool.usable_count(model or self._cfg.options.model)
        jobs = self._cfg.plan(unique.texts, max(1, usable))
        futures: list[Future[FloatMatrix]] = []
        try:
            for job in jobs:
                pool, fut = self._start(pool, job.texts(unique.texts), job.cost, model)
                futures.append(fut)
        except BaseException:
            for fut in futures:
                fut.cancel()
            raise
        return _Pending(unique, jobs, futures)

    def _start(
        self, pool: ThreadPoolExecutor, texts: list[str], cost: int, model: str | None
    ) -> tuple[ThreadPoolExecutor, Future[FloatMatrix]]:
        """One sub-batch onto ``pool``, in a copy of the caller's context (contextvars),
        as an async task would run it: the caller's tracing span, log context and the
        like follow it. Returns the pool used and the sub-batch's future.

        The pool may have been shut down since ``_pool()`` handed it out: by ``close()``
        (raise what every call on a closed client raises) or by another thread's call
        that resized it (the new pool takes this sub-batch and the rest)."""
        context = contextvars.copy_context()
        try:
            fut = pool.submit(context.run, self._embed_batch, texts, cost, model)
        except RuntimeError:
            self._ensure_open()
            fresh = self._pool()
            if fresh is pool:
                raise
            pool = fresh
            fut = pool.submit(context.run, self._embed_batch, texts, cost, model)
        with self._lock:
            self._futures.add(fut)
        fut.add_done_callback(self._forget)
        return pool, fut

    def _gather(self, pending: _Pending, bar: Progress) -> FloatMatrix:
        """Every row of one submission in input order; on the first failure, drop the
        queued sub-batches and raise it."""
        index = {fut: i for i, fut in enumerate(pending.futures)}
        parts: list[FloatMatrix | None] = [None] * len(pending.jobs)
        try:
            for fut in as_completed(index):
                i = index[fut]
                parts[i] = fut.result()
                bar.update(len(pending.jobs[i].indices))
        except BaseException as exc:
            pending.cancel()
            if isinstance(exc, CancelledError) and self._closed:
                raise RuntimeError("the client is closed") from exc
            raise
        unique = pending.unique
        rows = unique.expand(
            assemble(len(unique.texts), pending.jobs, [p for p in parts if p is not None])
        )
        bar.update(len(rows) - len(unique.texts))  # the repeats, answered with their first
        return rows

    @overload
    def embed(self, texts: str, *, model: str | None = None) -> npt.NDArray[Any]: ...
    @overload
    def embed(self, texts: Iterable[str], *, model: str | None = None) -> npt.NDArray[Any]: ...

    def embed(self, texts: str | Iterable[str], *, model: str | None = None) -> npt.NDArray[Any]:
        """One row per text, in input order: shape ``(len(texts), dimension)``; a single
        ``str`` gives one row, shape ``(dimension,)`` (as sentence-transformers does).

        Every item is checked before any request: a non-``str`` raises ``TypeError``, an
        empty string ``ValueError``. An empty input returns shape ``(0, dimension)``
        without an embedding request (the dimension comes from ``dimension=``, an earlier
        answer, or ``GET /info``; failing all three raises ``ResponseFormatError``).
        ``model`` overrides the client's for this call (OpenAI API). Raises
        ``DimensionMismatch`` when backends disagree on the size,
        ``ResponseFormatError`` on answers malformed on every replica tried,
        ``EmbeddingRequestError`` on a 4xx, and the transport's ``AllAttemptsFailed`` /
        ``NoBackendAvailable``.
        """
        if isinstance(texts, str):
            row: npt.NDArray[Any] = self.embed([texts], model=model)[0]
            return row
        items = collect(texts)
        if not items:
            return self._empty()
        bar = self._cfg.open_progress(len(items))
        try:
            return self._gather(self._submit(items, model), bar)
        finally:
            bar.close()

    def _empty(self) -> FloatMatrix:
        self._ensure_open()
        if self._cfg.dimension is None:
            self._cfg.dimension_from_info(self._http.get("/info", **self._cfg.info_kwargs()))
        return self._cfg.empty()

    def embed_iter(
        self, texts: Iterable[str], *, chunk_size: int = 1024, model: str | None = None
    ) -> Iterator[FloatMatrix]:
        """Embed a corpus of any size with bounded memory: yields one array per
        ``chunk_size`` texts (the last may be shorter), in input order.

        The next chunk is being embedded while the caller handles the current one, so at
        most two chunks are held at a time. Items are checked chunk by chunk, before that
        chunk is sent. Closing the iterator early drops the queued sub-batches.
        """
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size!r}")
        total = len(texts) if isinstance(texts, Sized) else None
        bar = self._cfg.open_progress(total)
        window: deque[_Pending] = deque()
        try:
            for chunk in chunks(texts, chunk_size):
                window.append(self._submit(chunk, model))
                if len(window) == 2:
                    yield self._gather(window.popleft(), bar)
            while window:
                yield self._gather(window.popleft(), bar)
        finally:
            for pending in window:
                pending.cancel()
            bar.close()

    @classmethod
    def from_env(
        cls,
        prefix: str = "EMBEDBALANCE_",
        *,
        environ: dict[str, str] | None = None,
        **overrides: Any,
    ) -> EmbeddingClient:
        """Build from ``EMBEDBALANCE_*`` environment variables (``docs/config.md`` lists
        them); keyword ``overrides`` win (objects such as ``metrics=``, ``transport=``).
        Raises :class:`~embedbalance.config.ConfigError` naming a wrong variable."""
        from .config import from_env

        return cls(**{**from_env(prefix, environ).client_kwargs(), **overrides})

    @classmethod
    def from_config(cls, mapping: dict[str, Any], **overrides: Any) -> EmbeddingClient:
        """Build from a plain mapping (a YAML or JSON file loaded into one; keys in
        ``docs/config.md``); keyword ``overrides`` win. Raises
        :class:`~embedbalance.config.ConfigError` naming a wrong setting."""
        from .config import from_config

        return cls(**{**from_config(mapping).client_kwargs(), **overrides})


class AsyncEmbeddingClient:
    """The async twin, for asyncio and trio apps (FastAPI, Starlette, anyio code).

    Sub-batches of one call run in an anyio task group, at most ``max_concurrency``
    at once across all calls of this client (a capacity limiter that follows the
    pool's live membership), over one ``httpx.AsyncClient``. Use ``async with`` or
    call :meth:`aclose`."""

    __doc__ = (__doc__ or "") + _CLIENT_DOC

    def __init__(
        self,
        backends: Iterable[BackendLike] | Discovery,
        *,
        api: Api = "tei",
        model: str | None = None,
        path: str | None = None,
        normalize: bool | None = None,
        truncate: bool | None = None,
        dimensions: int | None = None,
        dtype: Dtype = "float32",
        encoding_format: Literal["float", "base64"] = "float",
        batch_tokens: int = 4096,
        batch_size: int = 32,
        tokenizer: Encoder | TokenCounter | None = None,
        sort_by_length: bool = True,
        dedupe: bool = True,
        cache: EmbeddingCache | None = None,
        max_concurrency: int | None = None,
        dimension: int | None = None,
        probe_info: bool = True,
        timeout: float | None = 60.0,
        headers: dict[str, str] | None = None,
        priority: Priority = "interactive",
        bulk_limit: BulkLimit | None = BulkLimit(),
        progress: bool | None = None,
        progress_threshold: int = DEFAULT_THRESHOLD,
        on_batch: Callable[[BatchEvent], None] | None = None,
        balancer: Balancer | Callable[[], Balancer] | None = None,
        health_check: HealthCheck | None = HealthCheck(),
        outlier_detection: OutlierDetection | None = OutlierDetection(),
        slow_start: SlowStart | None = SlowStart(),
        panic_threshold: float = 0.5,
        zone: Locality | str | None = None,
        retry: Retry | int | bool | None = None,
        hedge: Hedge | None = Hedge(),
        attempt_timeout: float | Literal["auto"] | None = None,
        transport: httpx.AsyncBaseTransport
        | Callable[[Backend], httpx.AsyncBaseTransport]
        | None = None,
        metrics: MetricsSink | None = None,
        clock: Clock = monotonic,
        rng: random.Random | None = None,
    ) -> None:
        if max_concurrency is not None and max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1, got {max_concurrency!r}")
        self._cfg = _Config.build(
            api=api,
            model=model,
            path=path,
            normalize=normalize,
            truncate=truncate,
            dimensions=dimensions,
            dtype=dtype,
            encoding_format=encoding_format,
            batch_tokens=batch_tokens,
            batch_size=batch_size,
            tokenizer=tokenizer,
            sort_by_length=sort_by_length,
            progress=progress,
            progress_threshold=progress_threshold,
            on_batch=on_batch,
            dimension=dimension,
            timeout=timeout,
            probe_info=probe_info,
            dedupe=dedupe,
            cache=cache,
            priority=priority,
        )
        self.transport = AsyncBalancingTransport(
            backends,
            balancer=balancer,  # type: ignore[arg-type]
            health_check=speaking_as(health_check, *self._cfg.canary_api()),
            outlier_detection=outlier_detection,
            slow_start=slow_start,
            panic_threshold=panic_threshold,
            zone=zone,
            retry=retry,
            hedge=hedge,
            attempt_timeout=attempt_timeout,
            transport=transport,
            metrics=metrics,
            clock=clock,
            rng=rng,
        )
        self._http = httpx.AsyncClient(
            transport=self.transport, base_url=_BASE_URL, timeout=timeout, headers=headers
        )
        _watch(metrics, self._cfg)
        self._gate = (
            AsyncBulkGate(
                bulk_limit,
                clock=clock,
                backends=self._usable_backends,
                ceiling=lambda: _concurrency(max_concurrency, self._usable_backends()),
                timeout=timeout,
            )
            if self._cfg.priority == BULK and bulk_limit is not None
            else None
        )
        self._max_concurrency = max_concurrency
        # Created on first use, inside the event loop that will use it.
        self._limiter: anyio.CapacityLimiter | None = None
        self._closed = False
        # Sub-batches sent and not yet answered, and the event aclose() waits on for
        # them (made by aclose, set by the last one to finish).
        self._running = 0
        self._drained: anyio.Event | None = None

    def __repr__(self) -> str:
        return f"<AsyncEmbeddingClient api={self._cfg.wire.name!r} {self.transport.pool!r}>"

    @property
    def dimension(self) -> int | None:
        """The embedding size: given, or pinned by the first answer; None until known."""
        return self._cfg.dimension

    def stats(self) -> ClientStats:
        """The transport's snapshot (per-backend requests, latencies, ejections) plus
        the duplicates folded and the cache's counters."""
        return self._cfg.stats(self.transport.stats())

    async def __aenter__(self) -> AsyncEmbeddingClient:
        await self.transport.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Wait for the sub-batches already sent, drop the ones not yet sent (a call
        in progress in another task then raises ``RuntimeError("the client is
        closed")``), close connections and stop the transport's background tasks, as
        the sync client's :meth:`EmbeddingClient.close` does. Idempotent.

        Why wait: closing the connections under a request in flight cut it off, and its
        call failed as if the replica had (``AllAttemptsFailed`` with a read error),
        which also counted against a healthy replica.
        """
        if self._closed:
            return
        self._closed = True
        if self._running:
            self._drained = anyio.Event()
            await self._drained.wait()
        await self._http.aclose()

    def _ensure_open(self) -> None:
        """Every call checks this first, as in the sync client."""
        if self._closed:
            raise RuntimeError("the client is closed")

    def _limit(self) -> anyio.CapacityLimiter:
        """The limiter on sub-batches in flight, resized to the live membership."""
        self._ensure_open()
        n = _concurrency(self._max_concurrency, len(self.transport.pool.backends))
        if self._limiter is None:
            self._limiter = anyio.CapacityLimiter(n)
        elif self._limiter.total_tokens != n:
            self._limiter.total_tokens = n
        return self._limiter

    async def info(self) -> dict[str, Any]:
        """``GET /info`` from one backend (the balancer picks it), as a dict."""
        self._ensure_open()
        response = await self._http.get("/info", **self._cfg.info_kwargs())
        if not response.is_success:
            raise EmbeddingRequestError(
                backend_url(response), response.status_code, _error_detail(response), response
            )
        payload = response.json()
        if not isinstance(payload, dict):
            raise ResponseFormatError(f"backend {backend_url(response)}: /info is not an object")
        return payload

    def _usable_backends(self) -> int:
        """Replicas the client's requests may go to now (the bulk limit's per-replica
        floor and ceiling): not every member, only the healthy ones of its model."""
        return self.transport.pool.usable_count(self._cfg.options.model)

    async def _learn_limits(self) -> None:
        cfg = self._cfg
        if cfg.info_done or not cfg.probe_info:
            return
        cfg.info_done = True
        try:
            cfg.learn_info(await self._http.get("/info", **self._cfg.info_kwargs()))
        except httpx.HTTPError as exc:
            log.debug("GET /info failed (%s): using the configured limits", exc)

    async def _embed_batch(self, texts: list[str], tokens: int, model: str | None) -> FloatMatrix:
        cfg = self._cfg
        started = time.monotonic()
        kwargs = cfg.request(texts, tokens, model)
        if self._gate is None:
            response = await self._http.post(cfg.wire.path, **kwargs)
        else:
            response = await self._gate.call(
                lambda: self._http.post(cfg.wire.path, **kwargs), tokens
            )
        try:
            rows, url = cfg.outcome(response, len(texts), model)
        except _Split:
            parts = [
                await self._embed_batch(half, max(1, tokens * len(half) // len(texts)), model)
                for half in _halves(texts)
            ]
            return np.concatenate(parts)
        cfg.emit(url, len(texts), tokens, started)
        return rows

    async def _empty(self) -> FloatMatrix:
        self._ensure_open()
        if self._cfg.dimension is None:
            self._cfg.dimension_from_info(await self._http.get("/info", **self._cfg.info_kwargs()))
        return self._cfg.empty()

    async def _run(self, texts: list[str], bar: Progress, model: str | None) -> FloatMatrix:
        """All sub-batches of ``texts`` concurrently; the first failure cancels the rest
        and is raised as itself, not wrapped in an exception group."""
        limiter = self._limit()
        await self._learn_limits()
        unique = self._cfg.unique(texts, model)
        # Split for the replicas that can take this model's work now, not every member.
        usable = self.transport.pool.usable_count(model or self._cfg.options.model)
        jobs = self._cfg.plan(unique.texts, max(1, usable))
        parts: list[FloatMatrix | None] = [None] * len(jobs)
        errors: list[Exception] = []

        async def one(i: int, job: Job, scope: anyio.CancelScope) -> None:
            async with limiter:
                if self._closed:  # closed while this one waited its turn: never sent
                    # No cancel: the call's sub-batches already sent finish (aclose waits
                    # for them); the others see "closed" here in turn.
                    errors.append(RuntimeError("the client is closed"))
                    return
                self._running += 1
                try:
                    parts[i] = await self._embed_batch(job.texts(unique.texts), job.cost, model)
                except Exception as exc:
                    errors.append(exc)
                    scope.cancel()
                    return
                finally:
                    self._running -= 1
                    if not self._running and self._drained is not None:
                        self._drained.set()
            bar.update(len(job.indices))

        async with anyio.create_task_group() as tg:
            for i, job in enumerate(jobs):
                tg.start_soon(one, i, job, tg.cancel_scope)
        if errors:
            raise errors[0]
        rows = unique.expand(assemble(len(unique.texts), jobs, [p for p in parts if p is not None]))
        bar.update(len(rows) - len(unique.texts))  # the repeats, answered with their first
        return rows

    @overload
    async def embed(self, texts: str, *, model: str | None = None) -> npt.NDArray[Any]: ...
    @overload
    async def embed(
        self, texts: Iterable[str], *, model: str | None = None
    ) -> npt.NDArray[Any]: ...

    async def embed(
        self, texts: str | Iterable[str], *, model: str | None = None
    ) -> npt.NDArray[Any]:
        """One row per text, in input order; see :meth:`EmbeddingClient.embed`."""
        if isinstance(texts, str):
            row: npt.NDArray[Any] = (await self.embed([texts], model=model))[0]
            return row
        items = collect(texts)
        if not items:
            return await self._empty()
        bar = self._cfg.open_progress(len(items))
        try:
            return await self._run(items, bar, model)
        finally:
            bar.close()

    async def embed_iter(
        self,
        texts: Iterable[str] | AsyncIterable[str],
        *,
        chunk_size: int = 1024,
        model: str | None = None,
    ) -> AsyncIterator[FloatMatrix]:
        """Yields one array per ``chunk_size`` texts, in order, holding one chunk at a time.

        Accepts sync and async iterables. Unlike the sync twin it does not embed the next
        chunk while the caller holds the current one: a task group cannot stay open
        across a ``yield`` (it would swallow the caller's cancellations), so each chunk's
        sub-batches run and finish inside one ``await``.
        """
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size!r}")
        total = len(texts) if isinstance(texts, Sized) else None
        bar = self._cfg.open_progress(total)
        try:
            async for chunk in achunks(texts, chunk_size):
                yield await self._run(chunk, bar, model)
        finally:
            bar.close()

    @classmethod
    def from_env(
        cls,
        prefix: str = "EMBEDBALANCE_",
        *,
        environ: dict[str, str] | None = None,
        **overrides: Any,
    ) -> AsyncEmbeddingClient:
        """Build from ``EMBEDBALANCE_*`` environment variables (``docs/config.md`` lists
        them); keyword ``overrides`` win (objects such as ``metrics=``, ``transport=``).
        Raises :class:`~embedbalance.config.ConfigError` naming a wrong variable."""
        from .config import from_env

        return cls(**{**from_env(prefix, environ).client_kwargs(), **overrides})

    @classmethod
    def from_config(cls, mapping: dict[str, Any], **overrides: Any) -> AsyncEmbeddingClient:
        """Build from a plain mapping (a YAML or JSON file loaded into one; keys in
        ``docs/config.md``); keyword ``overrides`` win. Raises
        :class:`~embedbalance.config.ConfigError` naming a wrong setting."""
        from .config import from_config

        return cls(**{**from_config(mapping).client_kwargs(), **overrides})
