"""Dynamic batching: many callers' texts share one forward pass, each caller gets its rows.

Why per-text pieces: a caller with 32 texts and 64 callers with one text each must be
able to share a forward pass, and a request larger than one batch must be split, so the
queue holds single texts that remember their request and row.

Why a token bound on the queue: queued work is what makes latency grow without limit.
Refusing at once with 429 and a ``Retry-After`` lets the client library send the work to
another replica instead of waiting here.

Why two queues: an interactive request (a user waiting on a search box) and a bulk
re-index share the replicas. In one arrival-order queue, an interactive text waits for
every bulk text queued before it. Here each pass is taken from the interactive queue
when it holds anything, and from the bulk queue only when it is empty; bulk passes are
bounded (``max_bulk_batch_tokens``) so that the pass an interactive request may find
running is short. An interactive request therefore waits for at most one bulk pass,
however long the bulk queue. The price is strict priority: a worker saturated by
interactive work runs no bulk at all, which is what a bulk job should want.
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

#: Priorities a request may carry (the ``X-Priority`` request header on the wire).
INTERACTIVE = "interactive"
BULK = "bulk"
PRIORITIES: tuple[str, ...] = (INTERACTIVE, BULK)

log = logging.getLogger("embedbalance_worker")


class Overloaded(Exception):
    """The queue is full; ``retry_after`` (whole seconds, >= 1) estimates when it drains."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"queue full, retry after {retry_after}s")
        self.retry_after = retry_after


class Closed(Exception):
    """The batcher is draining or stopped and takes no new work."""


@attrs.define
class Timing:
    """Where one request's time went inside the batcher, in seconds, filled in by
    :meth:`Batcher.submit` when it returns: ``inference`` — the forward passes that
    carried its texts (a request split over several passes counts each); ``queue`` —
    the rest of its time in the batcher (waiting for a pass, and between its passes).
    The worker reports both to clients as TEI's ``x-queue-time`` and
    ``x-inference-time``: a balancer learns a service time from them exactly, instead
    of guessing it from the latency."""

    queue: float = 0.0
    inference: float = 0.0


@attrs.define(eq=False, repr=False)
class _Request:
    """One caller's texts and the rows computed for them so far."""

    ids: list[list[int]]
    future: asyncio.Future[FloatArray]
    enqueued_at: float
    priority: str = INTERACTIVE
    rows: FloatArray | None = None
    remaining: int = 0
    untaken: int = 0
    #: Seconds of forward passes that carried its texts so far.
    inference: float = 0.0
    #: End of the pass that computed its last row. Read here, not when the caller
    #: resumes: the next pass may already be running by then, and its time is not queue.
    finished_at: float = 0.0


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
    ``waiting_since``: arrival of the oldest text next in line for a pass (interactive
    texts go first, so bulk texts waiting behind them do not count);
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

    Priorities (``submit(..., priority=)``): a pass holds interactive texts only while
    any wait, and bulk texts only when none do; a bulk pass is bounded by
    ``max_bulk_batch_tokens`` padded tokens (``None``: ``max_batch_tokens``), so an
    interactive request waits for at most one such pass. Queue bounds: interactive
    work is refused past ``max_queue_tokens`` *interactive* tokens waiting (queued bulk
    never refuses it: it would overtake that bulk anyway); bulk work past
    ``max_bulk_queue_tokens`` tokens waiting of either kind (``None``: half of
    ``max_queue_tokens``), so bulk is pushed back first and its backlog stays small.

    ``executor`` (one thread) runs the passes, and is shut down with the batcher; give
    the one that loaded the model (see the worker app), else the batcher makes its own.
    """

    def __init__(
        self,
        forward: Forward,
        *,
        max_batch_size: int,
        max_batch_tokens: int,
        max_queue_tokens: int,
        max_wait_s: float,
        max_bulk_batch_tokens: int | None = None,
        max_bulk_queue_tokens: int | None = None,
        on_batch: Callable[[BatchStats], None] | None = None,
        clock: Callable[[], float] = time.perf_counter,
        executor: ThreadPoolExecutor | None = None,
    ) -> None:
        self._forward = forward
        self.max_batch_size = max_batch_size
        self.max_batch_tokens = max_batch_tokens
        self.max_queue_tokens = max_queue_tokens
        self.max_wait_s = max_wait_s
        self.max_bulk_batch_tokens = min(
            max_batch_tokens,
            max_bulk_batch_tokens if max_bulk_batch_tokens is not None else max_batch_tokens,
        )
        self.max_bulk_queue_tokens = (
            max_bulk_queue_tokens
            if max_bulk_queue_tokens is not None
            else max(1, max_queue_tokens // 2)
        )
        self._on_batch = on_batch
        self._queues: dict[str, deque[_Piece]] = {p: deque() for p in PRIORITIES}
        self._tokens: dict[str, int] = dict.fromkeys(PRIORITIES, 0)
        self._requests: dict[str, int] = dict.fromkeys(PRIORITIES, 0)
        self._closed = False
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        # The forward passes' one thread; a given executor (of one thread) is taken over and
        # shut down with the batcher. The worker hands over the thread that loaded and
        # warmed the model: torch's CPU thread pool answers small passes ~3 ms faster
        # on the thread that first used it (batch-1 8.5 ms against 11.5 ms here).
        self._executor = executor or ThreadPoolExecutor(max_workers=1, thread_name_prefix="forward")
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
        """Requests with at least one text not yet in a forward pass (both priorities)."""
        return sum(self._requests.values())

    def depth_of(self, priority: str) -> int:
        """Requests of one priority with at least one text not yet in a forward pass."""
        return self._requests[priority]

    @property
    def queued_tokens(self) -> int:
        return sum(self._tokens.values())

    @property
    def _pending(self) -> bool:
        return any(self._queues.values())

    @property
    def idle(self) -> bool:
        """Nothing queued and no pass running."""
        return not self._pending and not self._busy

    def progress(self) -> Progress:
        """A snapshot for the liveness check (see :class:`Progress`)."""
        # The next in line: bulk work waiting behind interactive work is starved by
        # design, not stuck, so only the queue served next counts.
        queue = self._queues[INTERACTIVE] or self._queues[BULK]
        waiting = queue[0].request.enqueued_at if queue else None
        return Progress(
            alive=self._task is not None and not self._task.done(),
            running_since=self._running_since,
            waiting_since=waiting,
            consecutive_failures=self._failures,
            last_failure_at=self._last_failure_at,
            passes=self._passes,
        )

    def retry_after(self, priority: str = INTERACTIVE) -> int:
        """Seconds until the work ahead of a new request of ``priority`` has likely
        drained, from the measured token rate (bulk waits behind everything)."""
        rate = self._tokens_per_s or 2000.0
        ahead = self._tokens[INTERACTIVE] if priority == INTERACTIVE else self.queued_tokens
        return max(1, math.ceil(ahead / rate))

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
    async def submit(
        self,
        ids: list[list[int]],
        *,
        priority: str = INTERACTIVE,
        timing: Timing | None = None,
    ) -> FloatArray:
        """Embed one request's tokenized texts; rows come back in the same order.

        ``priority`` is ``"interactive"`` (the default) or ``"bulk"``; another value
        raises ``ValueError``. Raises :class:`Overloaded` at once when the queue bound
        for that priority would be passed and :class:`Closed` while draining.
        Cancelling the caller drops its untaken texts. A ``timing`` record is filled
        in with where the request's time went (see :class:`Timing`) once rows return.
        """
        if priority not in PRIORITIES:
            raise ValueError(f"priority must be one of {', '.join(PRIORITIES)}, got {priority!r}")
        if self._closed or self._wakeup is None:
            raise Closed("the worker is draining")
        tokens = sum(len(x) for x in ids)
        if priority == INTERACTIVE:
            full = self._tokens[INTERACTIVE] + tokens > self.max_queue_tokens
            waiting = bool(self._queues[INTERACTIVE])
        else:
            full = self.queued_tokens + tokens > self.max_bulk_queue_tokens
            waiting = self._pending
        if waiting and full:
            raise Overloaded(self.retry_after(priority))
        loop = asyncio.get_running_loop()
        request = _Request(
            ids=ids,
            future=loop.create_future(),
            enqueued_at=self._clock(),
            priority=priority,
            remaining=len(ids),
            untaken=len(ids),
        )
        self._queues[priority].extend(_Piece(request, row) for row in range(len(ids)))
        self._tokens[priority] += tokens
        self._requests[priority] += 1
        self._wakeup.set()
        try:
            rows = await request.future
            if timing is not None:
                timing.inference = request.inference
                waited = request.finished_at - request.enqueued_at - request.inference
                timing.queue = max(0.0, waited)
            return rows
        finally:
            if not request.future.done():
                request.future.cancel()

    # -- scheduling ------------------------------------------------------------------
    def _take(self) -> list[_Piece]:
        """Pop the next batch within the row and padded-token limits: interactive texts
        in arrival order while any wait, else bulk texts in arrival order, within the
        smaller bulk budget. Never both: a pass that carries an interactive text is as
        short as that text's company allows."""
        interactive = self._queues[INTERACTIVE]
        self._drop_abandoned(interactive)
        if interactive:
            return self._take_from(interactive, self.max_batch_tokens)
        bulk = self._queues[BULK]
        self._drop_abandoned(bulk)
        return self._take_from(bulk, self.max_bulk_batch_tokens)

    def _drop_abandoned(self, queue: deque[_Piece]) -> None:
        """Drop texts at the head whose caller went away."""
        while queue and queue[0].request.future.done():
            self._dequeue(queue.popleft())

    def _take_from(self, queue: deque[_Piece], max_tokens: int) -> list[_Piece]:
        batch: list[_Piece] = []
        width = 0
        while queue and len(batch) < self.max_batch_size:
            piece = queue[0]
            if piece.request.future.done():  # the caller went away: drop its texts
                self._dequeue(queue.popleft())
                continue
            new_width = max(width, piece.length)
            if batch and new_width * (len(batch) + 1) > max_tokens:
                break
            queue.popleft()
            self._dequeue(piece)
            batch.append(piece)
            width = new_width
        return batch

    def _dequeue(self, piece: _Piece) -> None:
        priority = piece.request.priority
        self._tokens[priority] -= piece.length
        piece.request.untaken -= 1
        if piece.request.untaken == 0:
            self._requests[priority] -= 1

    def _batch_full(self) -> bool:
        """The next pass is as large as it may get, so waiting for company is pointless."""
        queue = self._queues[INTERACTIVE]
        max_tokens = self.max_batch_tokens
        if not queue:
            queue, max_tokens = self._queues[BULK], self.max_bulk_batch_tokens
        if not queue:
            return True
        if len(queue) >= self.max_batch_size:
            return True
        width = max(p.length for p in queue)
        return width * len(queue) >= max_tokens

    async def _run(self) -> None:
        assert self._wakeup is not None
        loop = asyncio.get_running_loop()
        while True:
            if not self._pending:
                if self._closed:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            # The model is idle: give concurrent callers a moment to join this pass.
            if self.max_wait_s > 0 and not self._closed and not self._batch_full():
                oldest = self.progress().waiting_since
                assert oldest is not None
                deadline = oldest + self.max_wait_s
                # close() ends the wait too: no company can come once draining.
                while (
                    not self._closed
                    and not self._batch_full()
                    and (left := deadline - self._clock()) > 0
                ):
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
        ended = self._clock()
        seconds = ended - started
        real = sum(len(x) for x in ids)
        rate = real / max(seconds, 1e-6)
        self._tokens_per_s = (
            rate if not self._tokens_per_s else 0.8 * self._tokens_per_s + 0.2 * rate
        )
        for request in {id(p.request): p.request for p in batch}.values():
            request.inference += seconds
        for piece, row in zip(batch, rows, strict=True):
            request = piece.request
            if request.future.done():
                continue
            if request.rows is None:
                request.rows = np.empty((len(request.ids), rows.shape[1]), dtype=np.float32)
            request.rows[piece.row] = row
            request.remaining -= 1
            if request.remaining == 0:
                request.finished_at = ended
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
