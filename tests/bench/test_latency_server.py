"""The latency-emulating backend: slots, queueing, health and slowdown behave as the
benchmark assumes."""

from __future__ import annotations

import asyncio
import statistics
import time

import httpx
import pytest
from _proxies import free_port
from latency_server import LatencyModel, ServerState, lognormal_params, serve


def test_lognormal_params_give_the_requested_mean() -> None:
    """Samples average to the configured mean, so ideal throughput = slots / mean holds."""
    model = LatencyModel(mean=0.2, cv=0.5, seed=3)
    samples = [model.sample() for _ in range(20_000)]
    assert statistics.fmean(samples) == pytest.approx(0.2, rel=0.03)
    assert statistics.stdev(samples) / statistics.fmean(samples) == pytest.approx(0.5, rel=0.1)


def test_lognormal_params_reject_nonsense() -> None:
    """A non-positive mean is refused rather than producing NaN service times."""
    with pytest.raises(ValueError, match="mean"):
        lognormal_params(0.0, 0.3)


async def _with_server(state: ServerState, body):  # type: ignore[no-untyped-def]
    port = free_port()
    ready = asyncio.Event()
    task = asyncio.ensure_future(serve(state, "127.0.0.1", port, ready))
    await ready.wait()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            return await body(client)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


def test_requests_queue_for_the_slots() -> None:
    """With 2 slots and 0.2 s service, 4 concurrent requests take two waves (~0.4 s)."""
    state = ServerState(2, LatencyModel(mean=0.2, cv=0.0))

    async def body(client: httpx.AsyncClient) -> list[float]:
        async def one() -> float:
            t0 = time.monotonic()
            r = await client.post("/embed", json={"inputs": ["x"]})
            assert r.status_code == 200
            assert "X-Queue-Depth" in r.headers
            return time.monotonic() - t0

        return sorted(await asyncio.gather(*(one() for _ in range(4))))

    took = asyncio.run(_with_server(state, body))
    assert took[1] < 0.33  # first wave
    assert took[2] >= 0.38  # second wave waited for a slot
    assert state.served == 4


def test_health_answers_while_slots_are_busy_and_slowdown_applies() -> None:
    """/health bypasses the queue, and /admin/slowdown scales later service times."""
    state = ServerState(1, LatencyModel(mean=0.05, cv=0.0))

    async def body(client: httpx.AsyncClient) -> tuple[float, float]:
        busy = asyncio.ensure_future(client.post("/embed", json={}))
        await asyncio.sleep(0.01)
        t0 = time.monotonic()
        assert (await client.get("/health")).status_code == 200
        health_took = time.monotonic() - t0
        await busy
        assert (await client.post("/admin/slowdown?factor=4")).status_code == 200
        t0 = time.monotonic()
        await client.post("/embed", json={})
        return health_took, time.monotonic() - t0

    health_took, slowed = asyncio.run(_with_server(state, body))
    assert health_took < 0.04
    assert slowed >= 0.19
    assert state.model.factor == 4


def test_arrivals_list_when_each_post_arrived() -> None:
    """/admin/arrivals gives one monotonic time per served POST (not for /health), in
    order, within the span the client saw — the benchmarks' placed-work shares."""
    state = ServerState(4, LatencyModel(mean=0.001, cv=0.0))

    async def body(client: httpx.AsyncClient) -> tuple[float, list[float], float]:
        t0 = time.monotonic()
        for _ in range(3):
            assert (await client.post("/embed", json={})).status_code == 200
        assert (await client.get("/health")).status_code == 200
        arrivals = (await client.get("/admin/arrivals")).json()
        return t0, arrivals, time.monotonic()

    t0, arrivals, t1 = asyncio.run(_with_server(state, body))
    assert len(arrivals) == 3
    assert arrivals == sorted(arrivals)
    assert t0 <= arrivals[0]
    assert arrivals[-1] <= t1


def test_a_hang_holds_requests_until_it_ends_and_then_serves_them() -> None:
    """``/admin/hang?on=1`` holds every later request unanswered; ``on=0`` ends the hang
    and the requests caught in it are served. If this fails, a hang outlives its end:
    the caught requests keep every slot, and the benchmark's "hang from 30% to 60%"
    measures a replica lost for good."""
    state = ServerState(2, LatencyModel(mean=0.01, cv=0.0))

    async def body(client: httpx.AsyncClient) -> tuple[list[int], bool, int]:
        assert (await client.post("/admin/hang?on=1")).json() == {"hung": True}
        caught = [asyncio.ensure_future(client.post("/embed", json={})) for _ in range(3)]
        await asyncio.sleep(0.3)
        still_waiting = not any(c.done() for c in caught)
        health = (await client.get("/health")).status_code  # the process still answers
        assert (await client.post("/admin/hang?on=0")).json() == {"hung": False}
        answers = await asyncio.wait_for(asyncio.gather(*caught), timeout=5)
        return [a.status_code for a in answers], still_waiting, health

    codes, still_waiting, health = asyncio.run(_with_server(state, body))
    assert still_waiting
    assert health == 200
    assert codes == [200, 200, 200]
    assert state.served == 3
    assert state.busy == 0
    assert state.waiting == 0
