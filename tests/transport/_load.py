"""Bounded closed-loop load for transport tests: sync (threads) and async (anyio)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import anyio
import attrs
import httpx


@attrs.define
class LoadResult:
    ok: int = 0
    failed: int = 0
    errors: list[str] = attrs.Factory(list)
    latencies: list[float] = attrs.Factory(list)
    backends: dict[str, int] = attrs.Factory(dict)


def _record(
    result: LoadResult,
    lock: threading.Lock | None,
    response: httpx.Response | None,
    error: BaseException | None,
    latency: float,
) -> None:
    def apply() -> None:
        if response is not None and response.status_code == 200:
            result.ok += 1
            result.latencies.append(latency)
            url = response.extensions["embedbalance.backend"].url
            result.backends[url] = result.backends.get(url, 0) + 1
        else:
            result.failed += 1
            result.errors.append(
                repr(error) if error else f"HTTP {response.status_code if response else '?'}"
            )

    if lock:
        with lock:
            apply()
    else:
        apply()


def run_sync(
    client: httpx.Client,
    total: int,
    concurrency: int,
    *,
    on_progress: Callable[[int], None] | None = None,
    deadline: float = 120.0,
) -> LoadResult:
    """Send ``total`` POST /embed through ``client`` from ``concurrency`` threads."""
    result = LoadResult()
    lock = threading.Lock()
    counter = iter(range(total))
    counter_lock = threading.Lock()
    stop_at = time.monotonic() + deadline

    def user() -> None:
        while time.monotonic() < stop_at:
            with counter_lock:
                i = next(counter, None)
            if i is None:
                return
            if on_progress is not None:
                on_progress(i)
            start = time.perf_counter()
            try:
                response = client.post("/embed", json={"inputs": [f"text {i}"]})
                _record(result, lock, response, None, time.perf_counter() - start)
            except Exception as exc:
                _record(result, lock, None, exc, time.perf_counter() - start)

    with ThreadPoolExecutor(concurrency) as pool:
        for f in [pool.submit(user) for _ in range(concurrency)]:
            f.result()
    return result


async def run_async(
    client: httpx.AsyncClient,
    total: int,
    concurrency: int,
    *,
    on_progress: Callable[[int], None] | None = None,
    deadline: float = 120.0,
) -> LoadResult:
    """The async twin of :func:`run_sync`, on whatever anyio backend is running."""
    result = LoadResult()
    counter = iter(range(total))

    async def user() -> None:
        while True:
            i = next(counter, None)
            if i is None:
                return
            if on_progress is not None:
                on_progress(i)
            start = time.perf_counter()
            try:
                response = await client.post("/embed", json={"inputs": [f"text {i}"]})
                _record(result, None, response, None, time.perf_counter() - start)
            except Exception as exc:
                _record(result, None, None, exc, time.perf_counter() - start)

    with anyio.fail_after(deadline):
        async with anyio.create_task_group() as tg:
            for _ in range(concurrency):
                tg.start_soon(user)
    return result
