"""The gates that hold a bulk client's requests to its :class:`~embedbalance.BulkLimiter`.

Why apart from the limiter: the limiter decides (pure, property-tested); a gate only
waits for a slot (a condition variable for threads, an anyio condition for tasks), times
the request, and reads from the answer what the limiter needs: was the request refused
or retried, and how much bulk work the server reported waiting.

A gate also resends a sub-batch the pool refused: a worker pushes back on bulk work
first (429 with ``Retry-After``), which is its design, not an error to end a re-index
with. :func:`refusal_wait` decides, once for both twins, whether and how long to wait.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Awaitable, Callable

import anyio
import httpx

from ._clock import Clock
from ._hints import parse_queue_depth, parse_retry_after
from .exceptions import NoBackendAvailable
from .priority import BulkLimit, BulkLimiter
from .transport import ATTEMPTS_EXTENSION

log = logging.getLogger("embedbalance.client")

#: Seconds to wait before resending a refused sub-batch whose refusal names no time.
DEFAULT_REFUSAL_WAIT = 1.0
#: Reasons a backend was unusable that only mean "not now": waiting may cure them.
_PASSING = frozenset({"overloaded", "overloaded (bulk)", "draining"})

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


def refusal_wait(
    response: httpx.Response | None,
    error: BaseException | None,
    *,
    now: float,
    deadline: float,
    resends_left: int,
) -> float | None:
    """Seconds to wait before resending a sub-batch, or None to hand its outcome back.

    A resend is worth it for a refusal that says "later": a 429 (or a 503 with
    ``Retry-After``; the wait is what it asks, else :data:`DEFAULT_REFUSAL_WAIT`), or a
    :class:`~embedbalance.NoBackendAvailable` only because every backend is overloaded
    (the wait: until the first of them is back, in the clock the pool and the gate
    share). Never when no resend is left, nor when the wait would pass ``deadline``
    (the sub-batch's timeout: the caller asked for an answer or an error by then).
    """
    if resends_left <= 0:
        return None
    if response is not None:
        status = response.status_code
        retry_after = response.headers.get("retry-after")
        if not (status == 429 or (status == 503 and retry_after is not None)):
            return None
        parsed = parse_retry_after(retry_after)
        wait = DEFAULT_REFUSAL_WAIT if parsed is None else parsed
    elif isinstance(error, NoBackendAvailable):
        reasons = error.reasons
        if not reasons or any(r.reason not in _PASSING for r in reasons):
            return None
        untils = [r.until for r in reasons if r.until is not None]
        if not untils:
            return None
        wait = max(0.0, min(untils) - now)
    else:
        return None
    return wait if now + wait <= deadline else None


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
        timeout: float | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.limiter = BulkLimiter.create(
            policy, backends=backends(), max_concurrency=ceiling(), clock=clock
        )
        self._clock = clock
        self._backends = backends
        self._ceiling = ceiling
        self._timeout = timeout
        self._sleep = sleep
        self._cond = threading.Condition()

    def call(self, send: Callable[[], httpx.Response], cost: float = 1.0) -> httpx.Response:
        """Wait for a slot, run ``send`` (a request of ``cost``, its tokens), return the
        slot with what it measured; resend what the pool refused for now (see
        :func:`refusal_wait`), up to the policy's ``max_resends`` times, without a slot
        while it waits."""
        first = self._clock()
        deadline = math.inf if self._timeout is None else first + self._timeout
        resends_left = self.limiter.policy.max_resends
        while True:
            response, wait = self._once(send, cost, deadline, resends_left)
            if wait is None:
                assert response is not None
                return response
            resends_left -= 1
            log.debug("bulk sub-batch refused for now: resending in %.3gs", wait)
            self._sleep(wait)

    def _once(
        self, send: Callable[[], httpx.Response], cost: float, deadline: float, resends: int
    ) -> tuple[httpx.Response | None, float | None]:
        """One send through a slot: its answer, or the wait before a resend."""
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
            except Exception as exc:  # failed everywhere: the strongest overload signal
                measured = True
                wait = refusal_wait(
                    None, exc, now=self._clock(), deadline=deadline, resends_left=resends
                )
                if wait is None:
                    raise
                return None, wait
            latency = self._clock() - started
            overloaded, depth = sample(response)
            measured = True
            now = self._clock()
            return response, refusal_wait(
                response, None, now=now, deadline=deadline, resends_left=resends
            )
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
        timeout: float | None = None,
        sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
    ) -> None:
        self.limiter = BulkLimiter.create(
            policy, backends=backends(), max_concurrency=ceiling(), clock=clock
        )
        self._clock = clock
        self._backends = backends
        self._ceiling = ceiling
        self._timeout = timeout
        self._sleep = sleep
        # Created on first use, inside the event loop that will use it.
        self._cond: anyio.Condition | None = None

    async def call(
        self, send: Callable[[], Awaitable[httpx.Response]], cost: float = 1.0
    ) -> httpx.Response:
        """Wait for a slot, await ``send()`` (a request of ``cost``), return the slot
        with what it measured; resend what the pool refused for now, as the sync
        twin does."""
        first = self._clock()
        deadline = math.inf if self._timeout is None else first + self._timeout
        resends_left = self.limiter.policy.max_resends
        while True:
            response, wait = await self._once(send, cost, deadline, resends_left)
            if wait is None:
                assert response is not None
                return response
            resends_left -= 1
            log.debug("bulk sub-batch refused for now: resending in %.3gs", wait)
            await self._sleep(wait)

    async def _once(
        self,
        send: Callable[[], Awaitable[httpx.Response]],
        cost: float,
        deadline: float,
        resends: int,
    ) -> tuple[httpx.Response | None, float | None]:
        """One send through a slot: its answer, or the wait before a resend."""
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
            except Exception as exc:  # failed everywhere: the strongest overload signal
                measured = True
                wait = refusal_wait(
                    None, exc, now=self._clock(), deadline=deadline, resends_left=resends
                )
                if wait is None:
                    raise
                return None, wait
            latency = self._clock() - started
            overloaded, depth = sample(response)
            measured = True
            now = self._clock()
            return response, refusal_wait(
                response, None, now=now, deadline=deadline, resends_left=resends
            )
        finally:
            with anyio.CancelScope(shield=True):
                async with cond:
                    _settle(self.limiter, measured, latency, cost, overloaded, depth)
                    cond.notify_all()
