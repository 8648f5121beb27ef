"""A real worker process lets interactive requests overtake queued bulk ones."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import pytest
from tests.helpers.worker_proc import WorkerProcess, start_worker

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def slow_worker() -> Iterator[WorkerProcess]:
    """One text per pass and 100 ms added to each, so a bulk backlog is long and the
    order in which requests finish is the order the batcher chose."""
    with start_worker(
        "--torch-threads", "1", "--max-batch-requests", "1", "--delay-ms", "100"
    ) as worker:
        yield worker


async def test_interactive_request_overtakes_a_bulk_backlog(slow_worker: WorkerProcess) -> None:
    """Ten bulk requests are queued first; an interactive request sent after them
    finishes before all but at most two of them (the pass running when it arrived, and
    one for scheduling slack), and the bulk answers report their backlog in
    X-Queue-Depth-Bulk. If this fails, the worker ignores X-Priority and a bulk job
    delays users by its whole backlog."""
    finished: list[str] = []
    depths: list[int] = []

    async with httpx.AsyncClient(base_url=slow_worker.url, timeout=60) as http:

        async def send(tag: str, priority: str | None) -> None:
            headers = {"X-Priority": priority} if priority else {}
            r = await http.post("/embed", json={"inputs": [f"text {tag}"]}, headers=headers)
            assert r.status_code == 200, r.text
            if priority == "bulk":
                depths.append(int(r.headers["x-queue-depth-bulk"]))
            finished.append(tag)

        bulk = [asyncio.ensure_future(send(f"b{i}", "bulk")) for i in range(10)]
        for _ in range(200):  # until the worker holds the backlog
            metrics = (await http.get("/metrics")).text
            line = next(
                x
                for x in metrics.splitlines()
                if x.startswith("embedbalance_worker_bulk_queue_depth")
            )
            if float(line.split()[-1]) >= 8:
                break
            await asyncio.sleep(0.02)
        else:
            pytest.fail("the bulk backlog never formed")
        await send("i", None)
        await asyncio.gather(*bulk)
    assert finished.index("i") <= 2, finished
    assert max(depths) >= 5


def test_invalid_priority_header_is_a_400(slow_worker: WorkerProcess) -> None:
    """X-Priority other than interactive/bulk is answered 400 invalid_header. If this
    fails, a typo is silently served as interactive (or bulk)."""
    r = httpx.post(
        slow_worker.url + "/embed", json={"inputs": ["x"]}, headers={"X-Priority": "urgent"}
    )
    assert r.status_code == 400
    assert r.json()["error_type"] == "invalid_header"
