"""The embedding client: texts in, one float32 matrix out, balanced over many backends.

Why it exists on top of the transports: a caller with 50,000 texts wants one call,
not a loop of HTTP requests. The client cuts the input into sub-batches by an
estimated token budget, sends them concurrently through a
:class:`~embedbalance.BalancingTransport` (each carrying its token count as its
cost, so token-aware balancers see real work), and puts the rows back in input
order. Retries, ejection and hedging stay in the transport: the client only plans,
checks and reassembles.

Rows can never be mixed across sub-batches: each sub-batch carries the input
positions of its texts, the sub-batches partition the input, and an answer must have
exactly one row per text, of the client's one dimension, or the whole call fails.
"""

from __future__ import annotations

import base64
import binascii
import random
import threading
import time
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator, Sized
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from types import TracebackType
from typing import Any, Literal

import anyio
import attrs
import httpx
import numpy as np
import numpy.typing as npt

from ._backend import Backend, BackendLike
from ._batching import Encoder, TokenCounter, plan, token_counter
from ._clock import Clock, monotonic
from ._progress import DEFAULT_THRESHOLD, Progress, open_progress
from .balancers import Balancer
from .discovery import Discovery
from .exceptions import DimensionMismatch, EmbedbalanceError, ResponseFormatError
from .health import HealthCheck, OutlierDetection, SlowStart
from .retry import Hedge, Retry
from .transport import (
    BACKEND_EXTENSION,
    COST_EXTENSION,
    AsyncBalancingTransport,
    BalancingTransport,
    MetricsSink,
    TransportStats,
)

__all__ = ["AsyncEmbeddingClient", "BatchEvent", "EmbeddingClient", "EmbeddingRequestError"]

Api = Literal["tei", "openai"]
FloatMatrix = npt.NDArray[np.float32]

#: Where each API shape lives on a server.
PATHS: dict[str, str] = {"tei": "/embed", "openai": "/v1/embeddings"}
#: A placeholder host: the balancing transport rewrites scheme, host and port.
_BASE_URL = "http://embedbalance.invalid"
#: Below this many texts per backend, splitting costs more in overhead than it saves.
_MIN_SPLIT_TEXTS = 8
#: Sub-batches in flight per backend when ``max_concurrency`` is not given.
_PER_BACKEND = 2
_FALLBACK_CONCURRENCY = 8


class EmbeddingRequestError(EmbedbalanceError):
    """A backend refused a request with a 4xx (an input too long, a wrong model name,
    a missing API key): resending it elsewhere would fail the same way.

    ``status`` is the HTTP status, ``url`` the backend, ``detail`` the server's message.
    """

    def __init__(self, url: str, status: int, detail: str) -> None:
        self.url, self.status, self.detail = url, status, detail
        super().__init__(f"backend {url} answered HTTP {status}: {detail}")


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


@attrs.frozen
class _Job:
    """One sub-batch: the input positions it carries, in the order sent, and its cost."""

    indices: npt.NDArray[np.intp]
    cost: int

    def texts(self, texts: list[str]) -> list[str]:
        return [texts[i] for i in self.indices]


def _assemble(n: int, jobs: list[_Job], parts: list[FloatMatrix]) -> FloatMatrix:
    """Put every sub-batch's rows back at its texts' input positions.

    Every position is written exactly once: the jobs partition ``range(n)`` and each
    answer was checked to have one row per text and the client's one dimension.
    """
    out = np.empty((n, parts[0].shape[1]), dtype=np.float32)
    for job, rows in zip(jobs, parts, strict=True):
        out[job.indices] = rows
    return out


@attrs.define
class _Config:
    """The I/O-free half shared by both clients: request shapes, planning, checks."""

    api: Api
    model: str | None
    path: str
    normalize: bool | None
    truncate: bool
    encoding_format: Literal["float", "base64"]
    batch_tokens: int
    batch_size: int
    count_tokens: TokenCounter
    sort_by_length: bool
    progress: bool | None
    progress_threshold: int
    on_batch: Callable[[BatchEvent], None] | None
    dimension: int | None
    _dim_lock: threading.Lock = attrs.field(factory=threading.Lock, init=False)

    @classmethod
    def build(
        cls,
        *,
        api: str,
        model: str | None,
        path: str | None,
        normalize: bool | None,
        truncate: bool,
        encoding_format: str,
        batch_tokens: int,
        batch_size: int,
        tokenizer: Encoder | TokenCounter | None,
        sort_by_length: bool,
        progress: bool | None,
        progress_threshold: int,
        on_batch: Callable[[BatchEvent], None] | None,
        dimension: int | None,
    ) -> _Config:
        if api not in PATHS:
            raise ValueError(f"api must be 'tei' or 'openai', got {api!r}")
        if encoding_format not in ("float", "base64"):
            raise ValueError(
                f"encoding_format must be 'float' or 'base64', got {encoding_format!r}"
            )
        if batch_tokens < 1 or batch_size < 1:
            raise ValueError("batch_tokens and batch_size must be >= 1")
        if dimension is not None and dimension < 1:
            raise ValueError(f"dimension must be >= 1, got {dimension!r}")
        return cls(
            api=api,  # type: ignore[arg-type]
            model=model,
            path=path or PATHS[api],
            normalize=normalize,
            truncate=truncate,
            encoding_format=encoding_format,  # type: ignore[arg-type]
            batch_tokens=batch_tokens,
            batch_size=batch_size,
            count_tokens=token_counter(tokenizer),
            sort_by_length=sort_by_length,
            progress=progress,
            progress_threshold=progress_threshold,
            on_batch=on_batch,
            dimension=dimension,
        )

    # -- input -------------------------------------------------------------------------

    @staticmethod
    def check_item(i: int, item: object) -> str:
        if not isinstance(item, str):
            raise TypeError(f"texts[{i}] is {type(item).__name__}, expected str")
        if not item:
            # Every server we speak to refuses an empty input; fail before sending.
            raise ValueError(f"texts[{i}] is an empty string; backends refuse empty inputs")
        return item

    @staticmethod
    def check_iterable(texts: object) -> None:
        if isinstance(texts, (str, bytes)):
            raise TypeError(
                "texts must be an iterable of str, not a single "
                f"{type(texts).__name__}: wrap it in a list"
            )

    def collect(self, texts: Iterable[str]) -> list[str]:
        """Every item, checked, before any request is made."""
        self.check_iterable(texts)
        return [self.check_item(i, t) for i, t in enumerate(texts)]

    def chunks(self, texts: Iterable[str], size: int) -> Iterator[list[str]]:
        """Checked lists of ``size`` items; only one is held at a time."""
        self.check_iterable(texts)
        chunk: list[str] = []
        for i, t in enumerate(texts):
            chunk.append(self.check_item(i, t))
            if len(chunk) == size:
                yield chunk
                chunk = []
        if chunk:
            yield chunk

    async def achunks(
        self, texts: Iterable[str] | AsyncIterable[str], size: int
    ) -> AsyncIterator[list[str]]:
        if not isinstance(texts, AsyncIterable):
            for chunk in self.chunks(texts, size):
                yield chunk
            return
        pending: list[str] = []
        i = 0
        async for t in texts:
            pending.append(self.check_item(i, t))
            i += 1
            if len(pending) == size:
                yield pending
                pending = []
        if pending:
            yield pending

    def plan(self, texts: list[str], backends: int) -> list[_Job]:
        """Sub-batches of similar length, split at least once per backend when there is
        enough work for each.

        Why sort by length: a worker pads every text of a forward pass to the longest
        one, so a sub-batch mixing a 10-token and a 256-token text pays for 512. Rows go
        back to their input positions in :func:`_assemble`.
        """
        tokens = [self.count_tokens(t) for t in texts]
        order = (
            np.argsort(np.asarray(tokens), kind="stable")
            if self.sort_by_length
            else np.arange(len(texts))
        )
        ordered = [tokens[i] for i in order]
        min_parts = min(backends, len(texts) // _MIN_SPLIT_TEXTS)
        slices = plan(
            ordered, max_tokens=self.batch_tokens, max_texts=self.batch_size, min_parts=min_parts
        )
        return [_Job(order[s], sum(ordered[s])) for s in slices]

    def open_progress(self, total: int | None) -> Progress:
        return open_progress(
            self.progress, total, threshold=self.progress_threshold, desc="embedding"
        )

    # -- wire format -------------------------------------------------------------------

    def body(self, texts: list[str]) -> dict[str, Any]:
        if self.api == "tei":
            body: dict[str, Any] = {"inputs": texts, "truncate": self.truncate}
            if self.normalize is not None:
                body["normalize"] = self.normalize
            return body
        body = {"input": texts, "encoding_format": self.encoding_format}
        if self.model is not None:
            body["model"] = self.model
        if self.truncate:
            body["truncate"] = True  # not OpenAI's; sent only when asked for
        return body

    def parse(self, response: httpx.Response, n: int) -> tuple[FloatMatrix, str]:
        """The rows of one answer, checked for count and dimension, and who sent them."""
        url = backend_url(response)
        if not response.is_success:
            raise EmbeddingRequestError(url, response.status_code, _error_detail(response))
        try:
            payload = response.json()
        except ValueError as exc:
            raise ResponseFormatError(f"backend {url} answered invalid JSON: {exc}") from None
        rows = (
            self._rows_tei(payload, url) if self.api == "tei" else self._rows_openai(payload, url)
        )
        if rows.shape[0] != n:
            raise ResponseFormatError(f"backend {url} answered {rows.shape[0]} rows for {n} texts")
        self.check_dimension(url, rows.shape[1])
        return rows, url

    def _matrix(self, rows: object, url: str) -> FloatMatrix:
        try:
            matrix = np.asarray(rows, dtype=np.float32)
        except (ValueError, TypeError):
            raise ResponseFormatError(
                f"backend {url} answered rows that are not equal-length lists of numbers"
            ) from None
        if matrix.ndim != 2 or matrix.shape[1] == 0:
            raise ResponseFormatError(
                f"backend {url} answered an array of shape {matrix.shape}, expected (n, dim)"
            )
        return matrix

    def _rows_tei(self, payload: object, url: str) -> FloatMatrix:
        if not isinstance(payload, list):
            raise ResponseFormatError(
                f"backend {url} answered {type(payload).__name__}, not a list"
            )
        return self._matrix(payload, url)

    def _rows_openai(self, payload: object, url: str) -> FloatMatrix:
        data = payload.get("data") if isinstance(payload, dict) else None
        if not isinstance(data, list):
            raise ResponseFormatError(f"backend {url} answered no 'data' list")
        by_index: dict[int, object] = {}
        for item in data:
            if not isinstance(item, dict) or not isinstance(item.get("index"), int):
                raise ResponseFormatError(f"backend {url} answered a data item without an index")
            by_index[item["index"]] = item.get("embedding")
        if sorted(by_index) != list(range(len(data))):
            raise ResponseFormatError(f"backend {url} answered indices that are not 0..n-1")
        rows = [by_index[i] for i in range(len(data))]
        if rows and all(isinstance(r, str) for r in rows):
            try:
                decoded = [np.frombuffer(base64.b64decode(r), dtype="<f4") for r in rows]  # type: ignore[arg-type]
            except (binascii.Error, ValueError):
                raise ResponseFormatError(f"backend {url} answered invalid base64") from None
            return self._matrix(decoded, url)
        return self._matrix(rows, url)

    def check_dimension(self, url: str, got: int) -> None:
        """Pin the first dimension seen (or the one given) and refuse any other."""
        with self._dim_lock:
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
                value = response.json().get("dimension")
            except (ValueError, AttributeError):
                value = None
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                with self._dim_lock:
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
        err = payload.get("error")
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
    - ``timeout``: seconds for one whole sub-batch, retries included (httpx's timeout).
    - ``headers``: sent with every request (an ``Authorization`` header, say).

    What is sent:

    - ``api``: ``"tei"`` (``POST /embed``, Hugging Face TEI and the reference worker) or
      ``"openai"`` (``POST /v1/embeddings``); ``path`` overrides the route.
    - ``model``: the OpenAI ``model`` field (``None``: not sent).
    - ``normalize``: TEI's flag (``None``: not sent, the server's default applies).
    - ``truncate``: cut inputs longer than the model's limit instead of failing with a
      4xx (``False``, like the servers).
    - ``encoding_format``: OpenAI only, ``"float"`` or ``"base64"`` (smaller, faster).

    How work is split:

    - ``batch_tokens`` / ``batch_size``: the most estimated tokens / texts in one
      sub-batch. Keep ``batch_size`` at or under the server's per-request limit (the
      worker's ``max_inputs_per_request``, TEI's ``max_client_batch_size``: 32 by default).
    - ``tokenizer``: counts tokens exactly, an object with ``encode(text)`` (a Hugging
      Face tokenizer, tiktoken) or a ``str -> int`` function; ``None`` estimates about
      four characters per token, which is enough to weigh sub-batches.
    - ``sort_by_length``: group texts of similar length into the same sub-batch, so
      workers pad less (``True``); rows still come back in input order.
    - ``max_concurrency``: sub-batches in flight at once (``None``: two per backend).
    - ``dimension``: the expected embedding size; ``None`` pins the first one seen.

    Feedback: ``progress`` (``True``: a tqdm bar; ``False``: never; ``None``: for jobs
    of ``progress_threshold`` texts or more, when tqdm is installed) and ``on_batch``, a
    function called with a :class:`BatchEvent` for every sub-batch answered.
"""


@attrs.frozen
class _Pending:
    """One list of texts submitted to the thread pool and not yet gathered."""

    n: int
    jobs: list[_Job]
    futures: list[Future[FloatMatrix]]

    def cancel(self) -> None:
        for fut in self.futures:
            fut.cancel()


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
        truncate: bool = False,
        encoding_format: Literal["float", "base64"] = "float",
        batch_tokens: int = 4096,
        batch_size: int = 32,
        tokenizer: Encoder | TokenCounter | None = None,
        sort_by_length: bool = True,
        max_concurrency: int | None = None,
        dimension: int | None = None,
        timeout: float | None = 60.0,
        headers: dict[str, str] | None = None,
        progress: bool | None = None,
        progress_threshold: int = DEFAULT_THRESHOLD,
        on_batch: Callable[[BatchEvent], None] | None = None,
        balancer: Balancer | None = None,
        health_check: HealthCheck | None = HealthCheck(),
        outlier_detection: OutlierDetection | None = OutlierDetection(),
        slow_start: SlowStart | None = SlowStart(),
        panic_threshold: float = 0.5,
        retry: Retry | int | bool | None = None,
        hedge: Hedge | None = None,
        attempt_timeout: float | None = None,
        transport: httpx.BaseTransport | None = None,
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
            encoding_format=encoding_format,
            batch_tokens=batch_tokens,
            batch_size=batch_size,
            tokenizer=tokenizer,
            sort_by_length=sort_by_length,
            progress=progress,
            progress_threshold=progress_threshold,
            on_batch=on_batch,
            dimension=dimension,
        )
        self.transport = BalancingTransport(
            backends,
            balancer=balancer,
            health_check=health_check,
            outlier_detection=outlier_detection,
            slow_start=slow_start,
            panic_threshold=panic_threshold,
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
        self._max_concurrency = max_concurrency
        self._executor: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self._closed = False

    def __repr__(self) -> str:
        return f"<EmbeddingClient api={self._cfg.api!r} {self.transport.pool!r}>"

    @property
    def dimension(self) -> int | None:
        """The embedding size: given, or pinned by the first answer; None until known."""
        return self._cfg.dimension

    def stats(self) -> TransportStats:
        """The transport's snapshot: per-backend requests, latencies, ejections."""
        return self.transport.stats()

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
        stop health checks. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)
        self._http.close()

    def _pool(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._closed:
                raise RuntimeError("the client is closed")
            if self._executor is None:
                n = self._max_concurrency
                if n is None:
                    known = len(self.transport.pool.backends)
                    n = _PER_BACKEND * known if known else _FALLBACK_CONCURRENCY
                self._executor = ThreadPoolExecutor(n, thread_name_prefix="embedbalance-client")
            return self._executor

    # -- requests --------------------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        """``GET /info`` from one backend (the balancer picks it), as a dict."""
        response = self._http.get("/info")
        if not response.is_success:
            raise EmbeddingRequestError(
                backend_url(response), response.status_code, _error_detail(response)
            )
        payload = response.json()
        if not isinstance(payload, dict):
            raise ResponseFormatError(f"backend {backend_url(response)}: /info is not an object")
        return payload

    def _embed_batch(self, texts: list[str], tokens: int) -> FloatMatrix:
        started = time.monotonic()
        response = self._http.post(
            self._cfg.path, json=self._cfg.body(texts), extensions={COST_EXTENSION: tokens}
        )
        rows, url = self._cfg.parse(response, len(texts))
        self._cfg.emit(url, len(texts), tokens, started)
        return rows

    def _empty(self) -> FloatMatrix:
        if self._cfg.dimension is None:
            self._cfg.dimension_from_info(self._http.get("/info"))
        assert self._cfg.dimension is not None
        return np.empty((0, self._cfg.dimension), dtype=np.float32)

    def _submit(self, texts: list[str]) -> _Pending:
        pool = self._pool()
        jobs = self._cfg.plan(texts, len(self.transport.pool.backends))
        futures = [pool.submit(self._embed_batch, job.texts(texts), job.cost) for job in jobs]
        return _Pending(len(texts), jobs, futures)

    @staticmethod
    def _gather(pending: _Pending, bar: Progress) -> FloatMatrix:
        """Every row of one submission in input order; on the first failure, drop the
        queued sub-batches and raise it."""
        index = {fut: i for i, fut in enumerate(pending.futures)}
        parts: list[FloatMatrix | None] = [None] * len(pending.jobs)
        try:
            for fut in as_completed(index):
                i = index[fut]
                parts[i] = fut.result()
                bar.update(len(pending.jobs[i].indices))
        except BaseException:
            pending.cancel()
            raise
        return _assemble(pending.n, pending.jobs, [p for p in parts if p is not None])

    def embed(self, texts: Iterable[str]) -> FloatMatrix:
        """One float32 row per text, in input order: shape ``(len(texts), dimension)``.

        Every item is checked before any request: a non-``str`` raises ``TypeError``, an
        empty string ``ValueError``. An empty input returns shape ``(0, dimension)``
        without an embedding request (the dimension comes from ``dimension=``, an earlier
        answer, or ``GET /info``; failing all three raises ``ResponseFormatError``).
        Raises ``DimensionMismatch`` when backends disagree on the size,
        ``ResponseFormatError`` on a malformed answer, ``EmbeddingRequestError`` on a 4xx,
        and the transport's ``AllAttemptsFailed`` / ``NoBackendAvailable``.
        """
        items = self._cfg.collect(texts)
        if not items:
            return self._empty()
        bar = self._cfg.open_progress(len(items))
        try:
            return self._gather(self._submit(items), bar)
        finally:
            bar.close()

    def embed_iter(self, texts: Iterable[str], *, chunk_size: int = 1024) -> Iterator[FloatMatrix]:
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
            for chunk in self._cfg.chunks(texts, chunk_size):
                window.append(self._submit(chunk))
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
    at once across all calls of this client (a semaphore), over one
    ``httpx.AsyncClient``. Use ``async with`` or call :meth:`aclose`."""

    __doc__ = (__doc__ or "") + _CLIENT_DOC

    def __init__(
        self,
        backends: Iterable[BackendLike] | Discovery,
        *,
        api: Api = "tei",
        model: str | None = None,
        path: str | None = None,
        normalize: bool | None = None,
        truncate: bool = False,
        encoding_format: Literal["float", "base64"] = "float",
        batch_tokens: int = 4096,
        batch_size: int = 32,
        tokenizer: Encoder | TokenCounter | None = None,
        sort_by_length: bool = True,
        max_concurrency: int | None = None,
        dimension: int | None = None,
        timeout: float | None = 60.0,
        headers: dict[str, str] | None = None,
        progress: bool | None = None,
        progress_threshold: int = DEFAULT_THRESHOLD,
        on_batch: Callable[[BatchEvent], None] | None = None,
        balancer: Balancer | None = None,
        health_check: HealthCheck | None = HealthCheck(),
        outlier_detection: OutlierDetection | None = OutlierDetection(),
        slow_start: SlowStart | None = SlowStart(),
        panic_threshold: float = 0.5,
        retry: Retry | int | bool | None = None,
        hedge: Hedge | None = None,
        attempt_timeout: float | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
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
            encoding_format=encoding_format,
            batch_tokens=batch_tokens,
            batch_size=batch_size,
            tokenizer=tokenizer,
            sort_by_length=sort_by_length,
            progress=progress,
            progress_threshold=progress_threshold,
            on_batch=on_batch,
            dimension=dimension,
        )
        self.transport = AsyncBalancingTransport(
            backends,
            balancer=balancer,
            health_check=health_check,
            outlier_detection=outlier_detection,
            slow_start=slow_start,
            panic_threshold=panic_threshold,
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
        self._max_concurrency = max_concurrency
        # Created on first use, inside the event loop that will use it.
        self._semaphore: anyio.Semaphore | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"<AsyncEmbeddingClient api={self._cfg.api!r} {self.transport.pool!r}>"

    @property
    def dimension(self) -> int | None:
        """The embedding size: given, or pinned by the first answer; None until known."""
        return self._cfg.dimension

    def stats(self) -> TransportStats:
        """The transport's snapshot: per-backend requests, latencies, ejections."""
        return self.transport.stats()

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
        """Close connections and stop the transport's background tasks. Idempotent."""
        if self._closed:
            return
        self._closed = True
        await self._http.aclose()

    def _limit(self) -> anyio.Semaphore:
        if self._closed:
            raise RuntimeError("the client is closed")
        if self._semaphore is None:
            n = self._max_concurrency
            if n is None:
                known = len(self.transport.pool.backends)
                n = _PER_BACKEND * known if known else _FALLBACK_CONCURRENCY
            self._semaphore = anyio.Semaphore(n)
        return self._semaphore

    async def info(self) -> dict[str, Any]:
        """``GET /info`` from one backend (the balancer picks it), as a dict."""
        response = await self._http.get("/info")
        if not response.is_success:
            raise EmbeddingRequestError(
                backend_url(response), response.status_code, _error_detail(response)
            )
        payload = response.json()
        if not isinstance(payload, dict):
            raise ResponseFormatError(f"backend {backend_url(response)}: /info is not an object")
        return payload

    async def _embed_batch(self, texts: list[str], tokens: int) -> FloatMatrix:
        started = time.monotonic()
        response = await self._http.post(
            self._cfg.path, json=self._cfg.body(texts), extensions={COST_EXTENSION: tokens}
        )
        rows, url = self._cfg.parse(response, len(texts))
        self._cfg.emit(url, len(texts), tokens, started)
        return rows

    async def _empty(self) -> FloatMatrix:
        if self._cfg.dimension is None:
            self._cfg.dimension_from_info(await self._http.get("/info"))
        assert self._cfg.dimension is not None
        return np.empty((0, self._cfg.dimension), dtype=np.float32)

    async def _run(self, texts: list[str], bar: Progress) -> FloatMatrix:
        """All sub-batches of ``texts`` concurrently; the first failure cancels the rest
        and is raised as itself, not wrapped in an exception group."""
        semaphore = self._limit()
        jobs = self._cfg.plan(texts, len(self.transport.pool.backends))
        parts: list[FloatMatrix | None] = [None] * len(jobs)
        errors: list[Exception] = []

        async def one(i: int, job: _Job, scope: anyio.CancelScope) -> None:
            async with semaphore:
                try:
                    parts[i] = await self._embed_batch(job.texts(texts), job.cost)
                except Exception as exc:
                    errors.append(exc)
                    scope.cancel()
                    return
            bar.update(len(job.indices))

        async with anyio.create_task_group() as tg:
            for i, job in enumerate(jobs):
                tg.start_soon(one, i, job, tg.cancel_scope)
        if errors:
            raise errors[0]
        return _assemble(len(texts), jobs, [p for p in parts if p is not None])

    async def embed(self, texts: Iterable[str]) -> FloatMatrix:
        """One float32 row per text, in input order; see :meth:`EmbeddingClient.embed`."""
        items = self._cfg.collect(texts)
        if not items:
            return await self._empty()
        bar = self._cfg.open_progress(len(items))
        try:
            return await self._run(items, bar)
        finally:
            bar.close()

    async def embed_iter(
        self, texts: Iterable[str] | AsyncIterable[str], *, chunk_size: int = 1024
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
            async for chunk in self._cfg.achunks(texts, chunk_size):
                yield await self._run(chunk, bar)
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
