"""The batcher's rules, exactly, with a pure forward function and a manual clock.

Why no model: the rules under test (admission, ordering, pass bounds, waiting for
company, failure handling, the rate behind ``Retry-After``, liveness counters) do not
depend on what the rows contain, and a forward pass that computes each row from its
token ids (``[len(ids), sum(ids), ids[0]]``) shows which text went where. A gated
forward pass lets a test decide when a pass ends, so it can queue work behind it and
read the queue while it waits. Every wait is bounded, so a broken batcher fails a test
in seconds instead of hanging it.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from collections.abc import Callable, Coroutine, Iterator, Sequence
from typing import Any

import numpy as np
import pytest

from embedbalance_worker import Batcher, Closed, Overloaded
from embedbalance_worker.batcher import BULK, INTERACTIVE, BatchStats, Progress, plan_chunks

pytestmark = pytest.mark.anyio

#: A text whose first id is FAIL makes the forward pass raise; SHORT makes it return
#: one row fewer than it was given (a broken model).
FAIL = 666
SHORT = 777
#: Seconds any single await in these tests may take.
WAIT = 3.0


@pytest.fixture
def anyio_backend() -> str:
    """The batcher is asyncio-based, like uvicorn."""
    return "asyncio"


class Overran(BaseException):
    """A test ran past its deadline. A BaseException, so that the batcher's own
    ``except Exception`` (the loop outliving a batch) cannot swallow it."""


@pytest.fixture(autouse=True)
def deadline() -> Iterator[None]:
    """Fail any test here that runs past 10 s, even one whose event loop never yields
    (a batcher spinning on an error): bounded awaits cannot fire then, a signal can."""

    def overran(signum: int, frame: object) -> None:
        raise Overran("test ran past 10 s")

    previous = signal.signal(signal.SIGALRM, overran)
    signal.setitimer(signal.ITIMER_REAL, 10.0)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


class ManualClock:
    """The batcher's clock, moved by hand (and by the gated forward pass)."""

    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def rows_of(batch: Sequence[Sequence[int]]) -> Any:
    """The pure forward pass: one float64 row per text, computed from its ids."""
    for ids in batch:
        if ids[0] == FAIL:
            raise RuntimeError(f"forward refused {FAIL}")
    out = np.array([[len(ids), sum(ids), ids[0]] for ids in batch], dtype=np.float64)
    if any(ids[0] == SHORT for ids in batch):
        return out[:-1]
    return out


def expected(ids: Sequence[Sequence[int]]) -> Any:
    return np.array([[len(x), sum(x), x[0]] for x in ids], dtype=np.float32)


class Gate:
    """A pure forward pass that blocks each call until the test releases it, records
    the texts of every call and the thread it ran on, and moves the clock by ``step``
    when it ends (the pass's duration on the batcher's clock)."""

    def __init__(self, clock: ManualClock | None = None) -> None:
        self.calls: list[list[list[int]]] = []
        self.threads: list[str] = []
        self.returned = 0
        self.clock = clock
        self.step = 0.0
        self._go = threading.Semaphore(0)

    def release(self, n: int = 1) -> None:
        for _ in range(n):
            self._go.release()

    def open(self) -> None:
        self.release(10_000)

    def __call__(self, batch: Sequence[Sequence[int]]) -> Any:
        self.calls.append([list(x) for x in batch])
        self.threads.append(threading.current_thread().name)
        try:
            if not self._go.acquire(timeout=WAIT * 2):
                raise TimeoutError("the test never released this pass")
            if self.clock is not None:
                self.clock.now += self.step
            return rows_of(batch)
        finally:
            self.returned += 1

    def firsts(self) -> list[list[int]]:
        """Each call's texts by first id."""
        return [[x[0] for x in call] for call in self.calls]


async def until(cond: Callable[[], bool]) -> None:
    """Wait, bounded, until ``cond`` holds."""

    async def poll() -> None:
        while not cond():
            await asyncio.sleep(0.001)

    await asyncio.wait_for(poll(), WAIT)


def logged(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The worker's log messages, whole, so that a changed message does not pass."""
    return [r.getMessage() for r in caplog.records if r.name == "embedbalance_worker"]


def spawn(coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
    return asyncio.ensure_future(coro)


async def result(task: Any) -> Any:
    return await asyncio.wait_for(task, WAIT)


def make(forward: Callable[..., Any], **limits: Any) -> Batcher:
    base: dict[str, Any] = dict(
        max_batch_size=8, max_batch_tokens=1000, max_queue_tokens=10_000, max_wait_s=0.0
    )
    return Batcher(forward, **{**base, **limits})


async def finish(batcher: Batcher, gate: Gate | None = None) -> None:
    if gate is not None:
        gate.open()
    await asyncio.wait_for(batcher.aclose(), WAIT)


async def enqueue(
    batcher: Batcher, ids: list[list[int]], priority: str = INTERACTIVE
) -> asyncio.Task[Any]:
    """Submit in a task and return once its texts are queued (or refused)."""
    before = batcher.queue_depth
    task = spawn(batcher.submit(ids, priority=priority))
    await until(lambda: batcher.queue_depth > before or task.done())
    return task


async def running(batcher: Batcher, gate: Gate, ids: list[list[int]]) -> asyncio.Task[Any]:
    """Submit and return once its pass is inside the (gated) forward pass."""
    calls = len(gate.calls)
    task = spawn(batcher.submit(ids))
    await until(lambda: len(gate.calls) > calls)
    return task


# -- pure parts ------------------------------------------------------------------------


def test_overloaded_and_closed_say_what_happened() -> None:
    """Overloaded carries the whole seconds it was built with and says them. If this
    fails, the 429's Retry-After header or its log line lies about the wait."""
    exc = Overloaded(7)
    assert exc.retry_after == 7
    assert str(exc) == "queue full, retry after 7s"
    assert isinstance(exc, Exception)
    assert isinstance(Closed("x"), Exception)


@pytest.mark.parametrize(
    ("lengths", "kwargs", "sizes"),
    [
        ([], {}, []),
        ([5], {}, [1]),
        ([1] * 9, {}, [9]),
        ([1] * 8 + [2], {}, [8, 1]),
        ([1] * 7 + [100], {}, [8]),
        ([1] * 8 + [100, 100], {}, [8, 2]),
        ([1, 3], {"max_waste": 0.5, "min_rows": 1}, [2]),
        ([1, 4], {"max_waste": 0.5, "min_rows": 1}, [1, 1]),
        ([1, 2, 3], {"max_waste": 0.0, "min_rows": 1}, [1, 1, 1]),
        ([2, 2, 2], {"max_waste": 0.0, "min_rows": 1}, [3]),
        ([1, 1, 2, 2], {"max_waste": 0.0, "min_rows": 2}, [2, 2]),
        ([1, 1, 2], {"max_waste": 0.0, "min_rows": 3}, [3]),
    ],
)
def test_plan_chunks_exact(lengths: list[int], kwargs: dict[str, Any], sizes: list[int]) -> None:
    """A chunk closes only once it has min_rows rows and the next row would push padding
    strictly past max_waste of the real tokens (defaults 0.3 and 8); the waste count
    restarts with each chunk. If this fails, passes pad more than they should or call
    the model in needlessly small pieces."""
    assert plan_chunks(lengths, **kwargs) == sizes


def test_derived_bulk_bounds() -> None:
    """A bulk pass is never bounded above max_batch_tokens, defaults to it, and the bulk
    queue bound defaults to half the interactive one, at least 1. If this fails, bulk
    passes can be longer than the promise to interactive work allows, or bulk is never
    admitted."""
    b = make(rows_of, max_batch_tokens=100, max_queue_tokens=10)
    assert (b.max_bulk_batch_tokens, b.max_bulk_queue_tokens) == (100, 5)
    b = make(rows_of, max_batch_tokens=100, max_bulk_batch_tokens=40, max_queue_tokens=3)
    assert (b.max_bulk_batch_tokens, b.max_bulk_queue_tokens) == (40, 1)
    b = make(rows_of, max_batch_tokens=100, max_bulk_batch_tokens=400, max_queue_tokens=1)
    assert (b.max_bulk_batch_tokens, b.max_bulk_queue_tokens) == (100, 1)
    b = make(rows_of, max_queue_tokens=10, max_bulk_queue_tokens=7)
    assert b.max_bulk_queue_tokens == 7
    assert (b.max_batch_size, b.max_batch_tokens, b.max_queue_tokens) == (8, 1000, 10)


async def test_submit_refuses_bad_priority_first_then_an_unstarted_batcher() -> None:
    """An unknown priority is a ValueError naming the choices, checked before anything
    else; an unstarted batcher refuses work as Closed. If this fails, a bad header
    reaches the queue or a request waits forever on a batcher that never runs."""
    b = make(rows_of)
    with pytest.raises(
        ValueError, match=r"^priority must be one of interactive, bulk, got 'urgent'$"
    ):
        await result(b.submit([[1]], priority="urgent"))
    with pytest.raises(Closed, match=r"^the worker is draining$"):
        await result(b.submit([[1]]))
    await finish(b)


# -- rows --------------------------------------------------------------------------------


async def test_rows_come_back_in_each_callers_order_as_float32() -> None:
    """Two callers share one pass, the model sees the texts sorted by length, and each
    caller gets float32 rows in its own order. If this fails, callers get each other's
    rows, rows out of order, or float64 arrays."""
    gate = Gate()
    b = make(gate)
    b.start()
    try:
        first = await running(b, gate, [[100]])
        a_ids = [[1, 1, 1], [2], [3, 3], [4, 4, 4, 4]]
        b_ids = [[5, 5], [6, 6, 6, 6, 6], [7]]
        a = await enqueue(b, a_ids)
        c = await enqueue(b, b_ids)
        gate.open()
        got_a, got_b = await result(a), await result(c)
        assert (await result(first)).tolist() == [[1.0, 100.0, 100.0]]
        for got, ids in ((got_a, a_ids), (got_b, b_ids)):
            assert got.dtype == np.float32
            assert got.shape == (len(ids), 3)
            np.testing.assert_array_equal(got, expected(ids))
        assert len(gate.calls) == 2
        lengths = [len(x) for x in gate.calls[1]]
        assert lengths == sorted(lengths)
        assert len(lengths) == 7
        assert all(name.startswith("forward") for name in gate.threads)
    finally:
        await finish(b, gate)


async def test_passes_are_chunked_and_stats_are_exact() -> None:
    """One pass calls the model once per planned chunk and reports size, real and padded
    tokens, its duration and each finished request's queue time, all on the batcher's
    clock. If this fails, the batch metrics misreport padding or queueing."""
    clock = ManualClock(0.0)
    gate = Gate(clock)
    stats: list[BatchStats] = []
    b = make(gate, max_batch_size=16, clock=clock, on_batch=stats.append)
    b.start()
    try:
        first = await running(b, gate, [[100]])
        clock.now = 10.0
        a_ids = [[i + 1] for i in range(8)] + [[9] * 10]
        a = await enqueue(b, a_ids)
        clock.now = 11.0
        c = await enqueue(b, [[5, 5]])
        clock.now = 12.0
        gate.step = 0.5
        gate.open()
        np.testing.assert_array_equal(await result(a), expected(a_ids))
        np.testing.assert_array_equal(await result(c), expected([[5, 5]]))
        await result(first)
        await until(lambda: len(stats) == 2)
        assert stats[0] == BatchStats(1, 1, 1, 12.5, (0.0,))
        assert stats[1] == BatchStats(10, 20, 28, 1.0, (2.5, 1.5))
        assert [len(call) for call in gate.calls] == [1, 8, 2]
    finally:
        await finish(b, gate)


async def test_a_pass_in_three_chunks_keeps_every_row() -> None:
    """A pass split into three chunks sends each text to the model exactly once, in its
    chunk, and each row back to its text. If this fails, a long mixed pass embeds some
    texts twice and hands their rows to others."""
    stats: list[BatchStats] = []
    b = make(rows_of, max_batch_size=32, on_batch=stats.append)
    b.start()
    try:
        ids = [[10] * 10] + [[i + 1] for i in range(8)] + [[i + 20, 0] for i in range(8)]
        np.testing.assert_array_equal(await result(b.submit(ids)), expected(ids))
        await until(lambda: len(stats) == 1)
        assert (stats[0].size, stats[0].real_tokens, stats[0].padded_tokens) == (17, 34, 34)
    finally:
        await finish(b)


async def test_queue_time_counts_when_a_requests_last_text_is_taken() -> None:
    """A request split over two passes reports its queue time once, with the pass that
    takes its last text. If this fails, queue times are double-counted or cut short."""
    clock = ManualClock(5.0)
    gate = Gate(clock)
    stats: list[BatchStats] = []
    b = make(gate, max_batch_size=2, clock=clock, on_batch=stats.append)
    b.start()
    try:
        task = spawn(b.submit([[1], [2], [3]]))
        await until(lambda: len(gate.calls) == 1)
        assert b.queue_depth == 1
        assert b.queued_tokens == 1
        clock.now = 6.0
        gate.release()
        await until(lambda: len(gate.calls) == 2)
        assert b.queue_depth == 0
        assert b.queued_tokens == 0
        gate.release()
        np.testing.assert_array_equal(await result(task), expected([[1], [2], [3]]))
        await until(lambda: len(stats) == 2)
        assert stats[0].queue_times == ()
        assert stats[1].queue_times == (1.0,)
    finally:
        await finish(b, gate)


# -- admission ---------------------------------------------------------------------------


async def test_interactive_admission_counts_interactive_tokens_inclusively() -> None:
    """Interactive work is admitted up to exactly max_queue_tokens interactive tokens
    waiting, refused past it with a 429 whose Retry-After is the queue over 2000 tokens/s
    rounded up, and queued bulk never counts against it. If this fails, the worker
    refuses work it could hold or queues without bound."""
    gate = Gate()
    b = make(gate, max_queue_tokens=10, max_bulk_queue_tokens=100)
    b.start()
    try:
        first = await running(b, gate, [[1, 1]])
        assert (b.queued_tokens, b.queue_depth, b.idle) == (0, 0, False)
        bulk = await enqueue(b, [[9] * 30], priority=BULK)
        six = await enqueue(b, [[1, 2, 3], [4, 5, 6]])
        assert (b.queued_tokens, b.queue_depth) == (36, 2)
        assert (b.depth_of(INTERACTIVE), b.depth_of(BULK)) == (1, 1)
        four = await enqueue(b, [[7, 7, 7, 7]])
        assert (b.queued_tokens, b.depth_of(INTERACTIVE)) == (40, 2)
        with pytest.raises(Overloaded) as refused:
            await result(b.submit([[8]]))
        assert refused.value.retry_after == 1
        assert (b.queued_tokens, b.queue_depth) == (40, 3)
        gate.open()
        for task in (first, bulk, six, four):
            await result(task)
        await until(lambda: b.idle)
        assert (b.queued_tokens, b.queue_depth) == (0, 0)
    finally:
        await finish(b, gate)


async def test_a_request_arriving_at_an_empty_queue_is_always_admitted() -> None:
    """However large, a request is admitted when nothing of its kind waits (for
    interactive: no interactive text; for bulk: nothing at all). If this fails, a
    request larger than the queue bound can never be served."""
    gate = Gate()
    b = make(gate, max_queue_tokens=10, max_bulk_queue_tokens=4)
    b.start()
    try:
        first = await running(b, gate, [[1]])
        big_bulk = await enqueue(b, [[2] * 50], priority=BULK)
        big = await enqueue(b, [[3] * 50])
        with pytest.raises(Overloaded):
            await result(b.submit([[4] * 11]))
        with pytest.raises(Overloaded):
            await result(b.submit([[5]], priority=BULK))
        gate.open()
        for task in (first, big_bulk, big):
            await result(task)
        assert gate.firsts() == [[1], [3], [2]]
    finally:
        await finish(b, gate)


async def test_bulk_admission_counts_all_waiting_tokens_inclusively() -> None:
    """Bulk is admitted up to exactly max_bulk_queue_tokens tokens waiting of either
    kind and refused past it. If this fails, a bulk backlog grows past its bound or
    bulk is refused while there is room."""
    gate = Gate()
    b = make(gate, max_queue_tokens=100, max_bulk_queue_tokens=6)
    b.start()
    try:
        first = await running(b, gate, [[1]])
        one = await enqueue(b, [[2, 2, 2, 2]], priority=BULK)
        two = await enqueue(b, [[3, 3]], priority=BULK)
        assert (b.depth_of(BULK), b.queued_tokens) == (2, 6)
        with pytest.raises(Overloaded):
            await result(b.submit([[4]], priority=BULK))
        gate.release(2)  # the two bulk requests share one pass
        for task in (first, one, two):
            await result(task)
        first = await running(b, gate, [[1]])
        mixed = await enqueue(b, [[5, 5, 5]])
        ok = await enqueue(b, [[6, 6, 6]], priority=BULK)
        with pytest.raises(Overloaded):
            await result(b.submit([[7]], priority=BULK))
        gate.open()
        for task in (first, mixed, ok):
            await result(task)
    finally:
        await finish(b, gate)


async def test_retry_after_exact_before_any_pass_finished() -> None:
    """Before any pass has finished, Retry-After assumes 2000 tokens/s: the tokens ahead
    over that, rounded up, at least 1; interactive counts interactive tokens, bulk
    counts everything. If this fails, a 429's Retry-After is off."""
    gate = Gate()
    b = make(gate, max_queue_tokens=100_000, max_bulk_queue_tokens=100_000)
    b.start()
    try:
        assert b.retry_after() == 1
        first = await running(b, gate, [[1]])
        assert (b.retry_after(), b.retry_after(BULK)) == (1, 1)
        tasks = [await enqueue(b, [[2] * 4000])]
        assert (b.retry_after(), b.retry_after(INTERACTIVE), b.retry_after(BULK)) == (2, 2, 2)
        tasks.append(await enqueue(b, [[3]]))
        assert (b.retry_after(), b.retry_after(BULK)) == (3, 3)
        tasks.append(await enqueue(b, [[4] * 2000], priority=BULK))
        assert (b.retry_after(), b.retry_after(BULK)) == (3, 4)
        b.max_queue_tokens = 4001
        with pytest.raises(Overloaded) as refused:
            await result(b.submit([[5]]))
        assert refused.value.retry_after == 3
        b.max_bulk_queue_tokens = 6001
        with pytest.raises(Overloaded) as refused:
            await result(b.submit([[5]], priority=BULK))
        assert refused.value.retry_after == 4
        gate.open()
        for task in (first, *tasks):
            await result(task)
    finally:
        await finish(b, gate)


async def test_retry_after_follows_the_measured_rate() -> None:
    """After passes finish, the rate is the first pass's tokens per second, then an
    average weighing each new pass by 0.2. If this fails, Retry-After ignores how fast
    this worker really is."""
    clock = ManualClock(0.0)
    gate = Gate(clock)
    b = make(gate, max_batch_size=1, max_queue_tokens=100_000, clock=clock)
    b.start()
    try:
        x = await running(b, gate, [[1] * 100])
        gate.step = 1.0
        gate.release()
        await result(x)  # 100 tokens in 1 s: 100 tokens/s
        y = await running(b, gate, [[2] * 100])
        z = await enqueue(b, [[3] * 250])
        assert b.retry_after() == 3
        w = await enqueue(b, [[4] * 100], priority=BULK)
        assert (b.retry_after(), b.retry_after(BULK)) == (3, 4)
        gate.step = 0.25  # 100 tokens in 0.25 s: 400/s, averaged to 0.8*100 + 0.2*400
        gate.release()
        await result(y)
        await until(lambda: len(gate.calls) == 3)  # z's pass, held
        v = await enqueue(b, [[5] * 480])
        assert b.retry_after() == 3
        u = await enqueue(b, [[6]])
        assert b.retry_after() == 4
        gate.open()
        for task in (z, w, v, u):
            await result(task)
    finally:
        await finish(b, gate)


async def test_a_pass_on_a_still_clock_counts_as_very_fast() -> None:
    """A pass that took no time on the clock counts as a microsecond, never as a
    division by zero. If this fails, one instant pass breaks the rate or Retry-After."""
    clock = ManualClock(0.0)
    gate = Gate(clock)
    b = make(gate, max_batch_size=1, max_queue_tokens=100_000, clock=clock)
    b.start()
    try:
        x = await running(b, gate, [[1] * 100])
        gate.release()
        await result(x)
        y = await running(b, gate, [[2]])
        z = await enqueue(b, [[3] * 50_000])
        assert b.retry_after() == 1
        gate.open()
        await result(y)
        await result(z)
    finally:
        await finish(b, gate)


# -- scheduling --------------------------------------------------------------------------


async def test_interactive_first_and_pass_bounds_inclusive() -> None:
    """Interactive texts overtake queued bulk; an interactive pass holds up to exactly
    max_batch_tokens padded tokens, a bulk pass up to exactly max_bulk_batch_tokens; a
    single text larger than the bound still runs, alone. If this fails, bulk delays
    interactive users or passes run longer than the bound promises."""
    gate = Gate()
    b = make(gate, max_batch_tokens=12, max_bulk_batch_tokens=4)
    b.start()
    try:
        first = await running(b, gate, [[900]])
        tasks = [await enqueue(b, [[10 + i, 0]], priority=BULK) for i in range(4)]
        tasks.append(await enqueue(b, [[50] + [0] * 9], priority=BULK))
        tasks += [await enqueue(b, [[20 + i, 0, 0, 0]]) for i in range(4)]
        tasks.append(await enqueue(b, [[30] + [0] * 19]))
        gate.open()
        for task in (first, *tasks):
            await result(task)
        assert gate.firsts() == [[900], [20, 21, 22], [23], [30], [10, 11], [12, 13], [50]]
    finally:
        await finish(b, gate)


async def test_a_pass_holds_at_most_max_batch_size_texts() -> None:
    """Passes take at most max_batch_size texts, in arrival order. If this fails, a
    pass exceeds the size the model was configured for."""
    gate = Gate()
    b = make(gate, max_batch_size=2)
    b.start()
    try:
        first = await running(b, gate, [[900]])
        task = await enqueue(b, [[1], [2], [3], [4], [5]])
        gate.open()
        np.testing.assert_array_equal(await result(task), expected([[1], [2], [3], [4], [5]]))
        await result(first)
        assert gate.firsts() == [[900], [1, 2], [3, 4], [5]]
    finally:
        await finish(b, gate)


@pytest.mark.parametrize(
    ("limits", "ids", "priority"),
    [
        ({"max_batch_size": 3}, [[1], [2], [3]], INTERACTIVE),
        ({"max_batch_tokens": 8}, [[1, 1, 1, 1], [2, 2]], INTERACTIVE),
        ({"max_batch_tokens": 8}, [[1, 1], [2, 2, 2, 2]], INTERACTIVE),
        ({"max_bulk_batch_tokens": 4}, [[1, 1], [2, 2]], BULK),
    ],
)
async def test_a_full_pass_does_not_wait_for_company(
    limits: dict[str, Any], ids: list[list[int]], priority: str
) -> None:
    """Texts that already fill a pass (max_batch_size texts, or the widest text times the
    count reaching the token bound, the bulk bound for bulk) run at once, however long
    max_wait_s is. If this fails, full batches sit out the whole wait."""
    clock = ManualClock(0.0)
    b = make(rows_of, max_wait_s=1000.0, clock=clock, **{"max_batch_size": 100, **limits})
    b.start()
    try:
        got = await result(b.submit(ids, priority=priority))
        np.testing.assert_array_equal(got, expected(ids))
    finally:
        await finish(b)


@pytest.mark.parametrize("max_wait_s", [1000.0, 0.5])
async def test_a_pass_that_is_not_full_waits_for_company(max_wait_s: float) -> None:
    """Texts short of a full pass wait (up to max_wait_s from the oldest, however short)
    and the next arrivals join them in one pass; an interactive pass is judged by
    max_batch_tokens, not the smaller bulk bound. If this fails, the batcher runs many
    small passes instead of batching."""
    clock = ManualClock(0.0)
    gate = Gate()
    b = make(
        gate,
        max_batch_size=4,
        max_batch_tokens=9,
        max_bulk_batch_tokens=4,
        max_wait_s=max_wait_s,
        clock=clock,
    )
    b.start()
    try:
        a = await enqueue(b, [[1, 1], [2, 2]])
        await asyncio.sleep(0.05)
        assert gate.calls == []
        c = await enqueue(b, [[3]])
        await asyncio.sleep(0.05)
        assert gate.calls == []
        d = await enqueue(b, [[4]])
        await until(lambda: len(gate.calls) == 1)
        gate.open()
        await result(a), await result(c), await result(d)
        assert sorted(gate.firsts()[0]) == [1, 2, 3, 4]
    finally:
        await finish(b, gate)


async def test_a_wait_that_times_out_ends_even_if_the_clock_stood_still() -> None:
    """The wait for company ends when its timer fires, without asking the clock again.
    If this fails, a lone text can wait forever on a clock that moves slowly or not
    at all."""
    b = make(rows_of, max_wait_s=0.05, clock=ManualClock(0.0))
    b.start()
    try:
        np.testing.assert_array_equal(await result(b.submit([[1]])), expected([[1]]))
    finally:
        await finish(b)


async def test_waiting_ends_at_the_oldest_texts_deadline() -> None:
    """The wait for company ends max_wait_s after the oldest queued text arrived: a text
    arriving one second before that still waits for more, one arriving at it goes at
    once with everything queued. If this fails, the wait is measured from the wrong
    text, or cut short, or never ends."""
    clock = ManualClock(0.0)
    gate = Gate()
    b = make(gate, max_batch_size=3, max_wait_s=10.0, clock=clock)
    b.start()
    try:
        a = await enqueue(b, [[1]])
        clock.now = 9.0
        c = await enqueue(b, [[2]])
        await asyncio.sleep(0.05)
        assert gate.calls == []
        d = await enqueue(b, [[3]])
        await until(lambda: len(gate.calls) == 1)
        gate.release()
        await result(a), await result(c), await result(d)
        assert sorted(gate.firsts()[0]) == [1, 2, 3]
        clock.now = 100.0
        e = await enqueue(b, [[4]])
        await asyncio.sleep(0.05)
        assert len(gate.calls) == 1
        clock.now = 110.0
        f = await enqueue(b, [[5]])
        await until(lambda: len(gate.calls) == 2)
        gate.open()
        await result(e), await result(f)
        assert sorted(gate.firsts()[1]) == [4, 5]
    finally:
        await finish(b, gate)


async def test_cancelled_callers_texts_are_dropped_wherever_they_wait() -> None:
    """A caller that goes away before its texts run loses them (at the head of the queue
    or in the middle), its tokens leave the queue count, and an interactive queue
    holding only abandoned texts lets bulk run. If this fails, the model embeds texts
    nobody waits for or the queue count never drains."""
    gate = Gate()
    b = make(gate)
    b.start()
    try:
        first = await running(b, gate, [[900]])
        gone_head = await enqueue(b, [[1, 1, 1]])
        kept = await enqueue(b, [[2]])
        gone_mid = await enqueue(b, [[3, 3], [3]])
        kept_too = await enqueue(b, [[4]])
        bulk = await enqueue(b, [[5]], priority=BULK)
        assert (b.queue_depth, b.queued_tokens) == (5, 9)
        for task in (gone_head, gone_mid):
            task.cancel()
        for task in (gone_head, gone_mid):
            with pytest.raises(asyncio.CancelledError):
                await result(task)
        gate.release()
        await result(first)
        await until(lambda: len(gate.calls) == 2)
        assert sorted(gate.firsts()[1]) == [2, 4]
        assert (b.queue_depth, b.queued_tokens) == (1, 1)
        gate.release()
        await result(kept), await result(kept_too)
        await until(lambda: len(gate.calls) == 3)  # the bulk text's pass, held
        gone_all = await enqueue(b, [[6]])
        bulk_two = await enqueue(b, [[7]], priority=BULK)
        gone_all.cancel()
        with pytest.raises(asyncio.CancelledError):
            await result(gone_all)
        gate.open()
        await result(bulk), await result(bulk_two)
        assert gate.firsts()[2:] == [[5], [7]]
        await until(lambda: b.idle)
        assert (b.queue_depth, b.queued_tokens) == (0, 0)
    finally:
        await finish(b, gate)


async def test_abandoned_interactive_texts_do_not_make_bulk_wait_again() -> None:
    """When the only interactive text waiting was abandoned and its wait for company is
    over, the bulk text behind it runs at once rather than starting a wait of its own.
    If this fails, a client hanging up adds max_wait_s to the bulk work queued behind."""
    clock = ManualClock(0.0)
    gate = Gate()
    b = make(gate, max_wait_s=1000.0, clock=clock)
    b.start()
    try:
        gone = await enqueue(b, [[1]])
        gone.cancel()
        with pytest.raises(asyncio.CancelledError):
            await result(gone)
        clock.now = 1000.0
        bulk = await enqueue(b, [[2]], priority=BULK)
        await until(lambda: len(gate.calls) == 1)
        gate.open()
        await result(bulk)
        assert gate.firsts() == [[2]]
    finally:
        await finish(b, gate)


async def test_a_caller_gone_during_its_pass_does_not_block_the_others() -> None:
    """A caller cancelled while its text is in a pass is skipped when rows come back;
    the others in that pass still get theirs. If this fails, one impatient client
    leaves its pass-mates waiting forever."""
    gate = Gate()
    b = make(gate)
    b.start()
    try:
        first = await running(b, gate, [[900]])
        gone = await enqueue(b, [[1]])
        kept = await enqueue(b, [[2, 2], [3, 3, 3]])
        gate.release()
        await result(first)
        await until(lambda: len(gate.calls) == 2)
        gone.cancel()
        with pytest.raises(asyncio.CancelledError):
            await result(gone)
        gate.open()
        np.testing.assert_array_equal(await result(kept), expected([[2, 2], [3, 3, 3]]))
        assert b.progress().passes == 2
    finally:
        await finish(b, gate)


# -- failures and liveness -----------------------------------------------------------------


async def test_a_failed_pass_answers_only_its_callers_and_the_loop_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A forward pass that raises gives its callers that exception (a request split
    over passes fails once and is not answered again), logs an error, and the next
    passes run. If this fails, one bad batch takes the worker down or answers the
    wrong callers."""
    b = make(rows_of, max_batch_size=1)
    b.start()
    try:
        with caplog.at_level(logging.ERROR, logger="embedbalance_worker"):
            tasks = [
                spawn(b.submit(ids)) for ids in ([[1, 2]], [[FAIL]], [[3]], [[4], [FAIL], [5]])
            ]
            done = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), WAIT)
        np.testing.assert_array_equal(done[0], expected([[1, 2]]))
        np.testing.assert_array_equal(done[2], expected([[3]]))
        for failed in (done[1], done[3]):
            assert isinstance(failed, RuntimeError)
            assert str(failed) == f"forward refused {FAIL}"
        assert "forward pass of 1 texts failed: RuntimeError('forward refused 666')" in logged(
            caplog
        )
        assert b.progress().alive
        np.testing.assert_array_equal(await result(b.submit([[6]])), expected([[6]]))
    finally:
        await finish(b)


async def test_a_pass_returning_too_few_rows_fails_its_callers() -> None:
    """A forward function that returns fewer rows than texts fails that pass's callers
    (ValueError), counts as a failure, and the loop goes on. If this fails, a broken
    model leaves callers waiting forever or hands out misaligned rows."""
    clock = ManualClock(3.0)
    b = make(rows_of, clock=clock)
    b.start()
    try:
        with pytest.raises(ValueError, match="shorter"):
            await result(b.submit([[SHORT], [SHORT, 1]]))
        progress = b.progress()
        assert (progress.consecutive_failures, progress.last_failure_at) == (1, 3.0)
        assert progress.alive
        np.testing.assert_array_equal(await result(b.submit([[6]])), expected([[6]]))
    finally:
        await finish(b)


async def test_a_failed_pass_with_a_cancelled_caller_answers_the_rest() -> None:
    """When a pass fails after one of its callers went away, the others still get the
    exception and the loop survives. If this fails, a client hanging up during a
    failing pass kills the batching task."""
    gate = Gate()
    b = make(gate)
    b.start()
    try:
        first = await running(b, gate, [[900]])
        gone = await enqueue(b, [[1]])
        fail = await enqueue(b, [[FAIL, 1]])
        gate.release()
        await result(first)
        await until(lambda: len(gate.calls) == 2)
        gone.cancel()
        with pytest.raises(asyncio.CancelledError):
            await result(gone)
        gate.open()
        with pytest.raises(RuntimeError, match="forward refused"):
            await result(fail)
        assert b.progress().alive
        np.testing.assert_array_equal(await result(b.submit([[6]])), expected([[6]]))
    finally:
        await finish(b, gate)


async def test_progress_reports_what_the_liveness_check_reads() -> None:
    """progress() says whether the task runs, when the pass in progress started, when
    the next-in-line text arrived (interactive first), failures since the last success,
    when the last one happened, and passes done, all on the batcher's clock. If this
    fails, /health calls a stuck batcher healthy or a healthy one stuck."""
    clock = ManualClock(100.0)
    gate = Gate(clock)
    b = make(gate, max_batch_size=1, clock=clock)
    assert b.progress() == Progress(False, None, None, 0, None, 0)
    b.start()
    try:
        assert b.progress() == Progress(True, None, None, 0, None, 0)
        clock.now = 101.0
        x = await running(b, gate, [[1]])
        assert b.progress() == Progress(True, 101.0, None, 0, None, 0)
        clock.now = 102.0
        bulk = await enqueue(b, [[2]], priority=BULK)
        assert b.progress().waiting_since == 102.0
        clock.now = 103.0
        inter = await enqueue(b, [[FAIL]])
        assert b.progress().waiting_since == 103.0
        clock.now = 104.0
        gate.release()
        await result(x)
        await until(lambda: len(gate.calls) == 2)
        assert b.progress() == Progress(True, 104.0, 102.0, 0, None, 1)
        clock.now = 105.0
        gate.release()
        with pytest.raises(RuntimeError):
            await result(inter)
        await until(lambda: len(gate.calls) == 3)
        assert b.progress() == Progress(True, 105.0, None, 1, 105.0, 1)
        clock.now = 106.0
        fail2 = await enqueue(b, [[FAIL]])
        clock.now = 107.0
        gate.release()
        await result(bulk)
        await until(lambda: len(gate.calls) == 4)
        assert b.progress() == Progress(True, 107.0, None, 0, 105.0, 2)
        gate.release()
        with pytest.raises(RuntimeError):
            await result(fail2)
        await until(lambda: b.idle)
        assert b.progress() == Progress(True, None, None, 1, 107.0, 2)
        clock.now = 108.0
        gate.release()
        with pytest.raises(RuntimeError):
            await result(b.submit([[FAIL]]))
        assert b.progress() == Progress(True, None, None, 2, 108.0, 2)
    finally:
        await finish(b, gate)
    assert b.progress() == Progress(False, None, None, 2, 108.0, 2)


async def test_a_failing_stats_callback_is_logged_and_ignored(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An on_batch callback that raises is logged; the callers still get their rows and
    the loop goes on. If this fails, a metrics bug fails embeddings."""

    def broken(stats: BatchStats) -> None:
        raise RuntimeError("metrics down")

    b = make(rows_of, on_batch=broken)
    b.start()
    try:
        with caplog.at_level(logging.ERROR, logger="embedbalance_worker"):
            np.testing.assert_array_equal(await result(b.submit([[1]])), expected([[1]]))
            np.testing.assert_array_equal(await result(b.submit([[2]])), expected([[2]]))
        assert "batch statistics callback failed" in logged(caplog)
        assert b.progress().consecutive_failures == 0
    finally:
        await finish(b)


async def test_an_error_outside_the_forward_pass_is_logged_as_such(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An exception after the forward pass (rows that do not line up) is logged as a
    batch failure outside the forward pass. If this fails, the log points operators at
    the model when the fault is elsewhere."""
    b = make(rows_of)
    b.start()
    try:
        with (
            caplog.at_level(logging.ERROR, logger="embedbalance_worker"),
            pytest.raises(ValueError, match="shorter"),
        ):
            await result(b.submit([[SHORT], [SHORT, 1]]))
        assert "batch failed outside the forward pass" in logged(caplog)
    finally:
        await finish(b)


# -- lifecycle ---------------------------------------------------------------------------


async def test_close_refuses_new_work_and_finishes_queued_work_without_waiting() -> None:
    """After close(), submit raises Closed, work already queued still runs (without
    waiting for company that cannot come) and aclose() returns once it is done, with the
    task stopped. If this fails, a draining worker drops accepted work, keeps taking new
    work, or sits out max_wait_s before its last pass."""
    clock = ManualClock(0.0)
    gate = Gate()
    b = make(gate, max_batch_size=2, max_wait_s=1000.0, clock=clock)
    b.start()
    assert "batcher" in {t.get_name() for t in asyncio.all_tasks()}
    try:
        first = spawn(b.submit([[1], [2]]))
        await until(lambda: len(gate.calls) == 1)
        queued = await enqueue(b, [[3]])
        b.close()
        with pytest.raises(Closed, match=r"^the worker is draining$"):
            await result(b.submit([[4]]))
        gate.open()
        np.testing.assert_array_equal(await result(queued), expected([[3]]))
        await result(first)
        await asyncio.wait_for(b.aclose(), WAIT)
        assert b.progress().alive is False
        assert gate.firsts() == [[1, 2], [3]]
    finally:
        await finish(b, gate)


async def test_close_ends_a_wait_for_company_already_under_way() -> None:
    """A text already waiting for company when close() comes goes at once: no more
    company can come. If this fails, a draining worker sits out max_wait_s (here 1000 s
    on a clock that never moves) before its last pass, and SIGTERM's drain deadline
    cuts the request off."""
    gate = Gate()
    b = make(gate, max_batch_size=4, max_wait_s=1000.0, clock=ManualClock(0.0))
    b.start()
    try:
        waiting = await enqueue(b, [[5]])
        await asyncio.sleep(0.05)
        assert gate.calls == []  # waiting for company
        b.close()
        await until(lambda: len(gate.calls) == 1)
        gate.open()
        np.testing.assert_array_equal(await result(waiting), expected([[5]]))
        await asyncio.wait_for(b.aclose(), WAIT)
    finally:
        await finish(b, gate)


async def test_a_cancelled_aclose_does_not_join_a_hung_forward_thread() -> None:
    """When the caller of aclose() gives up on a pass that never returns, aclose()
    returns without joining the forward thread. If this fails, a hung model blocks the
    worker's exit past its drain deadline."""
    gate = Gate()
    b = make(gate)
    b.start()
    try:
        first = await running(b, gate, [[1]])
        closing = spawn(b.aclose())
        await asyncio.sleep(0.01)
        closing.cancel()
        with pytest.raises(asyncio.CancelledError):
            await result(closing)
        assert gate.returned == 0
        first.cancel()
    finally:
        gate.open()
    await until(lambda: gate.returned == 1)


async def test_aclose_drains_the_queue_before_returning() -> None:
    """aclose() returns only after every queued caller has its answer. If this fails,
    shutdown cuts off accepted requests."""
    gate = Gate()
    b = make(gate, max_batch_size=1)
    b.start()
    try:
        first = await running(b, gate, [[900]])
        tasks = [await enqueue(b, [[i + 1]]) for i in range(5)]
        closing = spawn(b.aclose())
        await asyncio.sleep(0.01)
        assert not closing.done()
        gate.open()
        await asyncio.wait_for(closing, WAIT)
        assert all(t.done() for t in (first, *tasks))
        for i, task in enumerate(tasks):
            np.testing.assert_array_equal(task.result(), expected([[i + 1]]))
        assert not b.progress().alive
    finally:
        await finish(b, gate)


async def test_close_and_aclose_on_an_unstarted_batcher() -> None:
    """Closing a batcher that never started is harmless. If this fails, a worker that
    failed during startup cannot shut down cleanly."""
    b = make(rows_of)
    b.close()
    await asyncio.wait_for(b.aclose(), WAIT)
    assert b.idle
    assert not b.progress().alive
