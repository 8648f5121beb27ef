"""Dynamic batching: many callers' texts share one forward pass, each caller gets its rows.

Why per-text pieces: a caller with 32 texts and 64 callers with one text each must be
able to share a forward pass, and a request larger than one batch must be split, so the
queue holds single texts that remember their request and row.

Why a token bound on the queue: queued work is what makes latency grow without limit.
Refusing at once with 429 and a ``Retry-After`` lets the client library send the work to
another replica instead of waiting here.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import attrs
import numpy as np

from embedbalance_worker.model import FloatArray

Forward = Callable[[Sequence[Sequence[int]]], FloatArray]

log = logging.getLogger("embedbalance_worker")


class Overloaded(Exception):
    """The queue is full; ``retry_after`` (whole seconds, >= 1) estimates when it drains."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"queue full, retry after {retry_after}s")
        self.retry_after = retry_after


class Closed(Exception):
    """The batcher is draining or stopped and takes no new work."""


@attrs.define(eq=False, repr=False)
class _Request:
    """One caller's texts and the rows computed for them so far."""

    ids: list[list[int]]
    future: asyncio.Future[FloatArray]
    enqueued_at: float
    rows: FloatArray | None = None
    remaining: int = 0
    untaken: int = 0


@attrs.frozen
class _Piece:
    request: _Request
    row: int

    @property
    def length(self) -> int:
        return len(self.request.ids[self.row])


@attrs.frozen
class Progress:
    """What the liveness check reads: is the batcher moving, and are passes succeeding.

    Times are the batcher's clock. ``running_since``: start of the pass in progress;
    ``waiting_since``: arrival of the oldest text not yet in a pass;
    ``consecutive_failures``: failed passes since the last success.
    """

    alive: bool
    running_since: float | None
    waiting_since: float | None
    consecutive_failures: int
    last_failure_at: float | None
    passes: int


@attrs.frozen
class BatchStats:
    """What one forward pass did, for metrics."""

    size: int
    real_tokens: int
    padded_tokens: int
    seconds: float
    queue_times: tuple[float, ...]


def plan_chunks(lengths: Sequence[int], max_waste: float = 0.3, min_rows: int = 8) -> list[int]:
    """Split rows sorted by length into forward chunks that waste little padding.

    Returns chunk sizes. A new chunk starts when adding the next row would make padding
    exceed ``max_waste`` of the real tokens and the current chunk already has ``min_rows``
    rows (tiny chunks cost more in per-call overhead than padding would).
    """
    sizes: list[int] = []
    count = 0
    real = 0
    for length in lengths:
        if count >= min_rows and (count + 1) * length > (1 + max_waste) * (real + length):
            sizes.append(count)
            count, real = 0, 0
        count += 1
        real += length
    if count:
        sizes.append(count)
    return sizes


class Batcher:
    """Groups queued texts into forward passes run on one background thread.

    Limits: ``max_batch_size`` rows and ``max_batch_tokens`` padded tokens per pass;
    ``max_queue_tokens`` tokens waiting (a request arriving at an empty queue is always
    admitted, so a request larger than the bound is slow rather than impossible). When
    the model is idle, the first text waits up to ``max_wait_s`` for company; while a
    pass runs, new texts simply queue and go together in the next one.
    """

    def __init__(
        self,
        forward: Forward,
        *,
        max_batch_size: int,
        max_batch_tokens: int,
        max_queue_tokens: int,
        max_wait_s: float,
        on_batch: Callable[[BatchStats], None] | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self._forward = forward
        self.max_batch_size = max_batch_size
        self.max_batch_tokens = max_batch_tokens
        self.max_queue_tokens = max_queue_tokens
        self.max_wait_s = max_wait_s
        self._on_batch = on_batch
        self._pieces: deque[_Piece] = deque()
        self._queued_tokens = 0
        self._queued_requests = 0
        self._closed = False
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="forward")
        self._tokens_per_s = 0.0
        self._busy = False
        self._clock = clock
        self._running_since: float | None = None
        self._failures = 0
        self._last_failure_at: float | None = None
        self._passes = 0

    # -- state read by the HTTP layer and metrics -------------------------------------
    @property
    def queue_depth(self) -> int:
        """Requests with at least one text not yet in a forward pass."""
        return self._queued_requests

    @property
    def queued_tokens(self) -> int:
        return self._queued_tokens

    @property
    def idle(self) -> bool:
        """Nothing queued and no pass running."""
        return not self._pieces and not self._busy

    def progress(self) -> Progress:
        """A snapshot for the liveness check (see :class:`Progress`)."""
        waiting = next((p.request.enqueued_at for p in self._pieces), None)
        return Progress(
            alive=self._task is not None and not self._task.done(),
            running_since=self._running_since,
            waiting_since=waiting,
            consecutive_failures=self._failures,
            last_failure_at=self._last_failure_at,
            passes=self._passes,
        )

    def retry_after(self) -> int:
        """Seconds until the queue has likely drained, from the measured token rate."""
        rate = self._tokens_per_s or 2000.0
        return max(1, math.ceil(self._queued_tokens / rate))

    # -- lifecycle -------------------------------------------------------------------
    def start(self) -> None:
        """Start the scheduling task on the running loop."""
        self._wakeup = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="batcher")

    def close(self) -> None:
        """Refuse new work; work already queued still runs."""
        self._closed = True
        if self._wakeup is not None:
            self._wakeup.set()

    async def aclose(self) -> None:
        """Refuse new work, finish the queue, stop the task and the thread.

        A forward pass that never returns keeps this waiting: callers bound it (the CLI's
        drain deadline does), and the thread is not joined, so exit is never blocked.
        """
        self.close()
        try:
            if self._task is not None and not self._task.done():
                await self._task
        finally:
            self._executor.shutdown(wait=False)

    # -- admission -------------------------------------------------------------------
    async def submit(self, ids: list[list[int]]) -> FloatArray:
        """Embed one request's tokenized texts; rows come back in the same order.

        Raises :class:`Overloaded` at once when the queue bound would be passed and
        :class:`Closed` while draining. Cancelling the caller drops its untaken texts.
        """
        if self._closed or self._wakeup is None:
            raise Closed("the worker is draining")
        tokens = sum(len(x) for x in ids)
        if self._pieces and self._queued_tokens + tokens > self.max_queue_tokens:
            raise Overloaded(self.retry_after())
        loop = asyncio.get_running_loop()
        request = _Request(
            ids=ids,
            future=loop.create_future(),
            enqueued_at=self._clock(),
            remaining=len(ids),
            untaken=len(ids),
        )
        self._pieces.extend(_Piece(request, row) for row in range(len(ids)))
        self._queued_tokens += tokens
        self._queued_requests += 1
        self._wakeup.set()
        try:
            return await request.future
        finally:
            if not request.future.done():
                request.future.cancel()

    # -- scheduling ------------------------------------------------------------------
    def _take(self) -> list[_Piece]:
        """Pop the next batch in arrival order within the row and padded-token limits."""
        batch: list[_Piece] = []
        width = 0
        while self._pieces and len(batch) < self.max_batch_size:
            piece = self._pieces[0]
            request = piece.request
            if request.future.done():  # the caller went away: drop its texts
                self._pieces.popleft()
                self._dequeue(piece)
                continue
            new_width = max(width, piece.length)
            if batch and new_width * (len(batch) + 1) > self.max_batch_tokens:
                break
            self._pieces.popleft()
            self._dequeue(piece)
            batch.append(piece)
            width = new_width
        return batch

    def _dequeue(self, piece: _Piece) -> None:
        self._queued_tokens -= piece.length
        piece.request.untaken -= 1
        if piece.request.untaken == 0:
            self._queued_requests -= 1

    def _batch_full(self) -> bool:
        if len(self._pieces) >= self.max_batch_size:
            return True
        width = max(p.length for p in self._pieces)
        return width * len(self._pieces) >= self.max_batch_tokens

    async def _run(self) -> None:
        assert self._wakeup is not None
        loop = asyncio.get_running_loop()
        while True:
            if not self._pieces:
                if self._closed:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            # The model is idle: give concurrent callers a moment to join this pass.
            if self.max_wait_s > 0 and not self._closed and not self._batch_full():
                deadline = self._pieces[0].request.enqueued_at + self.max_wait_s
                while not self._batch_full() and (left := deadline - self._clock()) > 0:
                    self._wakeup.clear()
                    try:
                        await asyncio.wait_for(self._wakeup.wait(), left)
                    except asyncio.TimeoutError:
                        break
            batch: list[_Piece] = []
            self._busy = True
            try:
                batch = self._take()
                if batch:
                    await self._execute(loop, batch)
            except Exception as exc:  # the loop outlives any one batch
                log.exception("batch failed outside the forward pass")
                self._fail(batch, exc)
            finally:
                self._busy = False
                self._running_since = None

    def _fail(self, batch: list[_Piece], exc: BaseException) -> None:
        self._failures += 1
        self._last_failure_at = self._clock()
        for piece in batch:
            if not piece.request.future.done():
                piece.request.future.set_exception(exc)

    async def _execute(self, loop: asyncio.AbstractEventLoop, batch: list[_Piece]) -> None:
        started = self._clock()
        self._running_since = started
        # A request's queue time ends when its last text enters a pass.
        finished = {id(p.request): p.request for p in batch if p.request.untaken == 0}
        queue_times = tuple(started - r.enqueued_at for r in finished.values())
        batch.sort(key=lambda p: p.length)
        ids = [p.request.ids[p.row] for p in batch]
        try:
            rows, padded = await loop.run_in_executor(self._executor, self._forward_chunks, ids)
        except Exception as exc:  # a failed pass fails its callers, never the worker
            log.error("forward pass of %d texts failed: %r", len(batch), exc)
            self._fail(batch, exc)
            return
        self._failures = 0
        self._passes += 1
        seconds = self._clock() - started
        real = sum(len(x) for x in ids)
        rate = real / max(seconds, 1e-6)
        self._tokens_per_s = (
            rate if not self._tokens_per_s else 0.8 * self._tokens_per_s + 0.2 * rate
        )
        for piece, row in zip(batch, rows, strict=True):
            request = piece.request
            if request.future.done():
                continue
            if request.rows is None:
                request.rows = np.empty((len(request.ids), rows.shape[1]), dtype=np.float32)
            request.rows[piece.row] = row
            request.remaining -= 1
            if request.remaining == 0:
                request.future.set_result(request.rows)
        if self._on_batch is not None:
            try:
                self._on_batch(BatchStats(len(batch), real, padded, seconds, queue_times))
            except Exception:
                log.exception("batch statistics callback failed")

    def _forward_chunks(self, ids: list[list[int]]) -> tuple[FloatArray, int]:
        """Runs on the forward thread: one model call per similar-length chunk."""
        out: list[FloatArray] = []
        padded = 0
        start = 0
        for size in plan_chunks([len(x) for x in ids]):
            chunk = ids[start : start + size]
            padded += size * max(len(x) for x in chunk)
            out.append(self._forward(chunk))
            start += size
        return np.concatenate(out, axis=0), padded
