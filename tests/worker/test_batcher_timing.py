"""Where a request's time goes inside the batcher (:class:`Timing`), on a manual clock:
each forward pass advances it by a fixed step, so every figure is exact."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import numpy as np
import pytest

from embedbalance_worker import Batcher, Timing
from embedbalance_worker.model import FloatArray

STEP = 0.25


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _batcher(clock: _Clock, max_batch_size: int) -> Batcher:
    def forward(chunk: Sequence[Sequence[int]]) -> FloatArray:
        clock.now += STEP  # each forward call takes STEP seconds
        return np.array([[float(len(ids)), float(sum(ids))] for ids in chunk], np.float32)

    return Batcher(
        forward,
        max_batch_size=max_batch_size,
        max_batch_tokens=10_000,
        max_queue_tokens=10_000,
        max_wait_s=0.0,
        clock=clock,
    )


async def _run(max_batch_size: int, requests: list[list[list[int]]]) -> list[Timing]:
    clock = _Clock()
    batcher = _batcher(clock, max_batch_size)
    batcher.start()
    timings = [Timing() for _ in requests]
    try:
        results = await asyncio.wait_for(
            asyncio.gather(
                *(batcher.submit(ids, timing=t) for ids, t in zip(requests, timings, strict=True))
            ),
            10.0,
        )
    finally:
        await asyncio.wait_for(batcher.aclose(), 10.0)
    for ids, rows in zip(requests, results, strict=True):
        assert rows.tolist() == [[float(len(x)), float(sum(x))] for x in ids]
    return timings


def test_a_request_split_over_passes_counts_each_pass_as_inference() -> None:
    """Three texts, one per pass: 3 steps of inference and no queueing. If this fails,
    x-inference-time undercounts a large request and a balancer reads its service time
    as a third of what it is."""
    (t,) = asyncio.run(_run(1, [[[1, 2], [3], [4, 5, 6]]]))
    assert t.inference == pytest.approx(3 * STEP)
    assert t.queue == pytest.approx(0.0)


def test_a_request_behind_another_waits_one_pass_in_the_queue() -> None:
    """Two one-text requests, one text per pass: the first runs at once, the second
    waits for it. If this fails, x-queue-time stops telling queueing from service."""
    first, second = asyncio.run(_run(1, [[[1]], [[2]]]))
    assert (first.inference, first.queue) == (pytest.approx(STEP), pytest.approx(0.0))
    assert (second.inference, second.queue) == (pytest.approx(STEP), pytest.approx(STEP))


def test_requests_sharing_a_pass_each_count_it_once() -> None:
    """One pass carrying both requests (two texts of the first): one step each."""
    first, second = asyncio.run(_run(8, [[[1], [2]], [[3]]]))
    assert first.inference == pytest.approx(STEP)
    assert second.inference == pytest.approx(STEP)
