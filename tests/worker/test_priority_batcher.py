"""The batcher serves interactive texts before bulk ones, with the real batcher and a
fake forward function (so the order of passes is observable and no model is needed)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence

import numpy as np
import pytest

from embedbalance_worker import Batcher, Overloaded
from embedbalance_worker.batcher import BULK, INTERACTIVE
from embedbalance_worker.model import FloatArray

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    """The batcher is asyncio-based, like uvicorn."""
    return "asyncio"


class GatedForward:
    """A forward pass that records each batch's first token ids and, while ``gate`` is
    clear, blocks: the test decides when a pass ends, so it can queue work behind it."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.started = threading.Event()
        self.passes: list[list[int]] = []

    def __call__(self, batch: Sequence[Sequence[int]]) -> FloatArray:
        self.passes.append([x[0] for x in batch])
        self.started.set()
        self.gate.wait(10)
        return np.array([[float(x[0]), float(len(x))] for x in batch], dtype=np.float32)


async def _running_pass(
    batcher: Batcher, forward: GatedForward, tag: int
) -> asyncio.Task[FloatArray]:
    """Start one bulk request and wait until its pass is inside the forward function."""
    task = asyncio.ensure_future(batcher.submit([[tag, 1]], priority=BULK))
    while not forward.started.is_set():
        await asyncio.sleep(0.001)
    return task


async def test_interactive_overtakes_queued_bulk() -> None:
    """An interactive request queued behind 20 bulk requests runs in the very next pass,
    alone, and every bulk request still gets its own rows afterwards. If this fails,
    the batcher serves in arrival order and a bulk job delays interactive users by its
    whole backlog."""
    forward = GatedForward()
    batcher = Batcher(
        forward, max_batch_size=4, max_batch_tokens=64, max_queue_tokens=10_000, max_wait_s=0
    )
    batcher.start()
    first = await _running_pass(batcher, forward, 1000)
    bulk = [asyncio.ensure_future(batcher.submit([[i, 1]], priority=BULK)) for i in range(20)]
    interactive = asyncio.ensure_future(batcher.submit([[500, 1]], priority=INTERACTIVE))
    await asyncio.sleep(0.01)
    assert batcher.queue_depth == 21
    assert batcher.depth_of(BULK) == 20
    forward.gate.set()
    rows = await interactive
    assert rows[0, 0] == 500
    results = await asyncio.gather(first, *bulk)
    await batcher.aclose()
    assert forward.passes[1] == [500]
    assert [int(r[0, 0]) for r in results[1:]] == list(range(20))
    assert sorted(x for p in forward.passes[2:] for x in p) == list(range(20))


async def test_passes_never_mix_priorities_and_bulk_passes_are_smaller() -> None:
    """While interactive texts wait, a pass holds only interactive texts within
    max_batch_tokens; bulk passes stay within max_bulk_batch_tokens. If this fails, an
    interactive request shares (and waits for) a long bulk pass."""
    forward = GatedForward()
    batcher = Batcher(
        forward,
        max_batch_size=64,
        max_batch_tokens=40,
        max_bulk_batch_tokens=10,
        max_queue_tokens=10_000,
        max_wait_s=0,
    )
    batcher.start()
    first = await _running_pass(batcher, forward, 1000)
    tasks = []
    for i in range(30):  # interleaved arrivals, each text 2 tokens long
        priority = INTERACTIVE if i % 3 == 0 else BULK
        tasks.append(asyncio.ensure_future(batcher.submit([[i, 1]], priority=priority)))
    await asyncio.sleep(0.01)
    forward.gate.set()
    await asyncio.gather(first, *tasks)
    await batcher.aclose()
    interactive = {i for i in range(30) if i % 3 == 0}
    later = forward.passes[1:]
    kinds = [{x in interactive for x in p} for p in later]
    assert all(len(k) == 1 for k in kinds), later
    first_bulk = next(i for i, k in enumerate(kinds) if k == {False})
    assert all(k == {False} for k in kinds[first_bulk:])
    for p, k in zip(later, kinds, strict=True):
        assert len(p) * 2 <= (40 if k == {True} else 10)


async def test_bulk_is_refused_before_interactive() -> None:
    """Past max_bulk_queue_tokens a bulk request is refused at once, while an interactive
    request of the same size is still admitted (queued bulk never refuses it). If this
    fails, a bulk backlog turns interactive users away with 429."""
    forward = GatedForward()
    batcher = Batcher(
        forward,
        max_batch_size=4,
        max_batch_tokens=64,
        max_queue_tokens=20,
        max_bulk_queue_tokens=10,
        max_wait_s=0,
    )
    batcher.start()
    first = await _running_pass(batcher, forward, 1000)
    queued = [asyncio.ensure_future(batcher.submit([[i, 1]], priority=BULK)) for i in range(5)]
    await asyncio.sleep(0.01)
    assert batcher.queued_tokens == 10
    with pytest.raises(Overloaded) as refused:
        await batcher.submit([[99, 1]], priority=BULK)
    assert refused.value.retry_after >= 1
    interactive = [
        asyncio.ensure_future(batcher.submit([[50 + i, 1]], priority=INTERACTIVE))
        for i in range(10)
    ]
    await asyncio.sleep(0.01)
    assert batcher.depth_of(INTERACTIVE) == 10
    with pytest.raises(Overloaded):
        await batcher.submit([[98, 1]], priority=INTERACTIVE)
    forward.gate.set()
    await asyncio.gather(first, *queued, *interactive)
    await batcher.aclose()


async def test_unknown_priority_is_a_value_error() -> None:
    """A priority other than interactive or bulk raises ValueError before queueing. If
    this fails, a typo silently becomes one of the two classes."""
    batcher = Batcher(
        GatedForward(), max_batch_size=4, max_batch_tokens=64, max_queue_tokens=100, max_wait_s=0
    )
    batcher.start()
    with pytest.raises(ValueError, match="priority"):
        await batcher.submit([[1]], priority="urgent")
    assert batcher.queue_depth == 0
    await batcher.aclose()


async def test_bulk_waiting_behind_interactive_work_is_not_stuck() -> None:
    """progress().waiting_since is the arrival of the next text in line: the
    interactive head while interactive work waits, the bulk head only once none does.
    If this fails, bulk starved by steady interactive traffic for stuck_after_s makes
    /health report a busy, working worker as stuck."""
    now = [100.0]
    forward = GatedForward()
    batcher = Batcher(
        forward,
        max_batch_size=4,
        max_batch_tokens=64,
        max_queue_tokens=10_000,
        max_wait_s=0,
        clock=lambda: now[0],
    )
    batcher.start()
    first = await _running_pass(batcher, forward, 1000)
    bulk = asyncio.ensure_future(batcher.submit([[1, 1]], priority=BULK))
    await asyncio.sleep(0.01)
    assert batcher.progress().waiting_since == 100.0
    now[0] = 500.0
    interactive = asyncio.ensure_future(batcher.submit([[2, 1]], priority=INTERACTIVE))
    await asyncio.sleep(0.01)
    assert batcher.progress().waiting_since == 500.0
    forward.gate.set()
    await asyncio.gather(first, bulk, interactive)
    assert batcher.progress().waiting_since is None
    await batcher.aclose()


def test_admission_keeps_request_slots_for_interactive_work() -> None:
    """With max_bulk_requests=3 of 4 slots, a fourth bulk request is refused while an
    interactive one still gets the last slot. If this fails, a bulk flood takes every
    slot and users get 429 before the job does."""
    from embedbalance_worker.admission import Admission, Refused

    gate = Admission(
        max_requests=4,
        max_intake_bytes=1 << 20,
        small_body_bytes=1024,
        max_body_bytes=1 << 20,
        max_bulk_requests=3,
    )
    tickets = [gate.enter(100, bulk=True) for _ in range(3)]
    with pytest.raises(Refused, match="bulk"):
        gate.enter(100, bulk=True)
    tickets.append(gate.enter(100))
    with pytest.raises(Refused):
        gate.enter(100)
    for ticket in tickets:
        ticket.close()
    assert gate.requests == 0
