"""The gates that hold a bulk client's requests to its :class:`~embedbalance.BulkLimiter`.

Why apart from the limiter: the limiter decides (pure, property-tested); a gate only
waits for a slot (a condition variable for threads, an anyio condition for tasks), times
the request, and reads from the answer what the limiter needs: was the request refused
or retried, and how much bulk work the server reported waiting.
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable

import anyio
import httpx

from ._clock import Clock
from ._hints import parse_queue_depth
from .priority import BulkLimit, BulkLimiter
from .transport import ATTEMPTS_EXTENSION

#: Our worker's answer header: bulk-priority requests waiting in its batcher.
BULK_QUEUE_DEPTH_HEADER = "x-queue-depth-bulk"


def sample(response: httpx.Response) -> tuple[bool, float | None]:
    """``(overloaded, bulk queue depth)`` from one final answer: overloaded when it is a
    429/503 or when earlier attempts failed (the transport retried them elsewhere)."""
    overloaded = response.status_code in (429, 503) or bool(
        response.extensions.get(ATTEMPTS_EXTENSION)
    )
    raw = response.headers.get(BULK_QUEUE_DEPTH_HEADER)
    depth = None if raw is None else parse_queue_depth({"x-queue-depth": raw})
    return overloaded, depth


def _settle(
    limiter: BulkLimiter,
    measured: bool,
    latency: float | None,
    cost: float,
    overloaded: bool,
    depth: float | None,
) -> None:
    if measured:
        limiter.release(latency, cost=cost, overloaded=overloaded, queue_depth=depth)
    else:  # cancelled: nothing was learned about the pool
        limiter.abandon()


class BulkGate:
    """Sync gate: at most ``limiter.slots`` requests through :meth:`call` at once.

    ``ceiling()`` (the client's concurrency) and ``backends()`` (live backends) are
    read before each request, so the limit's bounds follow the pool as it changes.
    """

    def __init__(
        self,
        policy: BulkLimit,
        *,
        clock: Clock,
        backends: Callable[[], int],
        ceiling: Callable[[], int],
    ) -> None:
        self.limiter = BulkLimiter.create(
            policy, backends=backends(), max_concurrency=ceiling(), clock=clock
        )
        self._clock = clock
        self._backends = backends
        self._ceiling = ceiling
        self._cond = threading.Condition()

    def call(self, send: Callable[[], httpx.Response], cost: float = 1.0) -> httpx.Response:
        """Wait for a slot, run ``send`` (a request of ``cost``, its tokens), return the
        slot with what it measured."""
        with self._cond:
            self.limiter.resize(self._ceiling(), backends=self._backends())
            while not self.limiter.try_acquire():
                self._cond.wait()
        started = self._clock()
        latency: float | None = None
        overloaded, depth, measured = True, None, False
        try:
            try:
                response = send()
            except Exception:  # failed everywhere: the strongest overload signal
                measured = True
                raise
            latency = self._clock() - started
            overloaded, depth = sample(response)
            measured = True
            return response
        finally:
            with self._cond:
                _settle(self.limiter, measured, latency, cost, overloaded, depth)
                self._cond.notify_all()


class AsyncBulkGate:
    """The async twin of :class:`BulkGate` (asyncio and trio, through anyio)."""

    def __init__(
        self,
        policy: BulkLimit,
        *,
        clock: Clock,
        backends: Callable[[], int],
        ceiling: Callable[[], int],
    ) -> None:
        self.limiter = BulkLimiter.create(
            policy, backends=backends(), max_concurrency=ceiling(), clock=clock
        )
        self._clock = clock
        self._backends = backends
        self._ceiling = ceiling
        # Created on first use, inside the event loop that will use it.
        self._cond: anyio.Condition | None = None

    async def call(
        self, send: Callable[[], Awaitable[httpx.Response]], cost: float = 1.0
    ) -> httpx.Response:
        """Wait for a slot, await ``send()`` (a request of ``cost``), return the slot
        with what it measured."""
        if self._cond is None:
            self._cond = anyio.Condition()
        cond = self._cond
        async with cond:
            self.limiter.resize(self._ceiling(), backends=self._backends())
            while not self.limiter.try_acquire():
                await cond.wait()
        started = self._clock()
        latency: float | None = None
        overloaded, depth, measured = True, None, False
        try:
            try:
                response = await send()
            except Exception:  # failed everywhere: the strongest overload signal
                measured = True
                raise
            latency = self._clock() - started
            overloaded, depth = sample(response)
            measured = True
            return response
        finally:
            with anyio.CancelScope(shield=True):
                async with cond:
                    _settle(self.limiter, measured, latency, cost, overloaded, depth)
                    cond.notify_all()
