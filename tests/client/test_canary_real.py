"""Canary checks against real workers: a replica that answers ``/health`` but serves
wrong vectors never contributes a row, and one that turns wrong mid-run is ejected.

Three real workers (the suite's shared ones) and a proxy in front of one of them that
rotates every vector on command (``tests/helpers/canary_proxy.py``): the proxy is a
fourth replica, alive and fast, and wrong. Which replica answered each sub-batch comes
from the client's own ``on_batch`` events; every row is also compared with its text's
embedding from a single worker.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import anyio
import numpy as np
import pytest
from canary_proxy import canary_proxy
from tests.client._checks import assert_rows_match
from tests.helpers.worker_proc import WorkerProcess

import embedbalance as eb
from embedbalance.client import BatchEvent

pytestmark = pytest.mark.timeout(120)

#: Short intervals so the test runs in seconds; bounds below are generous on purpose
#: (a shared machine): the point is "ejected by the next rounds", not a latency figure.
CANARY = eb.Canary(interval=0.3)
CHECK = eb.HealthCheck(interval=0.1, jitter=0.0, canary=CANARY)
SETTLE = 15.0


def _wait_for(what: Callable[[], bool], seconds: float = SETTLE) -> float:
    """Poll ``what`` until true; the seconds it took (fails after ``seconds``)."""
    start = time.monotonic()
    while not what():
        assert time.monotonic() - start < seconds, "condition not reached in time"
        time.sleep(0.02)
    return time.monotonic() - start


def _state(pool: eb.BackendPool, url: str) -> eb.BackendStats:
    return pool.stats().by_url()[url]


def test_a_wrong_replica_never_serves_a_row(
    workers: tuple[WorkerProcess, ...], corpus: list[str], reference: dict[str, np.ndarray]
) -> None:
    """From the first request on, the replica serving rotated vectors gets only canaries:
    no sub-batch of any result comes from it, and its stats say why. The canary, left at
    its defaults, asks in the client's OpenAI shape. If this fails, users receive vectors
    from a replica with the wrong model."""
    canary = eb.Canary(interval=0.3)
    with canary_proxy(workers[0].url, "roll") as bad:
        events: list[BatchEvent] = []
        urls = [w.url for w in workers]
        with eb.EmbeddingClient(
            [*urls, bad.url],
            api="openai",
            batch_size=4,
            truncate=True,
            slow_start=None,
            balancer=eb.RoundRobin(),
            health_check=eb.HealthCheck(interval=0.1, jitter=0.0, canary=canary),
            on_batch=events.append,
        ) as client:
            first = client.embed(corpus[:80])
            _wait_for(lambda: bad.embed_requests >= 2)  # a later canary round too
            second = client.embed(corpus[80:120])
            row = _state(client.transport.pool, bad.url)
    assert_rows_match(first, corpus[:80], reference)
    assert_rows_match(second, corpus[80:120], reference)
    served = {e.backend for e in events}
    assert bad.url not in served
    assert served == set(urls)
    # Everything the bad replica embedded was a canary.
    assert bad.texts_served["roll"] == bad.embed_requests * len(canary.texts)
    assert set(bad.paths) == {"/v1/embeddings"}
    assert row.state == "ejected"
    assert row.canary is not None
    assert row.canary.startswith("canary: cosine ")
    assert "vs majority of 3" in row.canary


def test_a_replica_that_turns_wrong_is_ejected_and_comes_back(
    workers: tuple[WorkerProcess, ...], corpus: list[str], reference: dict[str, np.ndarray]
) -> None:
    """A replica serving right vectors takes its share; once it starts rotating them it
    is ejected by the next canary rounds and serves nothing more; set right again, it is
    re-admitted. If this fails, a replica that goes bad mid-run (a hot-swapped model, a
    failing GPU) keeps corrupting results, or a fixed one never returns."""
    with canary_proxy(workers[0].url, "pass") as flaky:
        events: list[BatchEvent] = []
        with eb.EmbeddingClient(
            [w.url for w in workers] + [flaky.url],
            batch_size=4,
            truncate=True,
            slow_start=None,
            balancer=eb.RoundRobin(),
            health_check=CHECK,
            on_batch=events.append,
        ) as client:
            pool = client.transport.pool
            assert_rows_match(client.embed(corpus[:40]), corpus[:40], reference)
            assert flaky.url in {e.backend for e in events}

            flaky.mode = "roll"
            took = _wait_for(lambda: _state(pool, flaky.url).state == "ejected")
            assert took < SETTLE
            assert "vs majority of 3" in (_state(pool, flaky.url).canary or "")
            events.clear()
            assert_rows_match(client.embed(corpus[40:100]), corpus[40:100], reference)
            assert flaky.url not in {e.backend for e in events}

            flaky.mode = "pass"
            _wait_for(lambda: _state(pool, flaky.url).state == "healthy")
            events.clear()
            assert_rows_match(client.embed(corpus[100:140]), corpus[100:140], reference)
            assert flaky.url in {e.backend for e in events}
    assert flaky.texts_served["roll"] > 0  # it did serve rotated canaries meanwhile


@pytest.mark.anyio
async def test_a_wrong_newcomer_gets_no_traffic_async(
    workers: tuple[WorkerProcess, ...], corpus: list[str], reference: dict[str, np.ndarray]
) -> None:
    """A replica added while traffic flows gets no request before its first canary, and
    once that disagrees none after (async twin, asyncio and trio). If this fails, a
    scaled-up pod with the wrong model serves its first requests unchecked."""
    with canary_proxy(workers[0].url, "roll") as bad:
        events: list[BatchEvent] = []
        async with eb.AsyncEmbeddingClient(
            [w.url for w in workers],
            batch_size=4,
            truncate=True,
            slow_start=None,
            balancer=eb.RoundRobin(),
            health_check=CHECK,
            on_batch=events.append,
        ) as client:
            pool = client.transport.pool
            pool.add(bad.url)
            deadline = time.monotonic() + SETTLE
            start = 0
            while _state(pool, bad.url).state != "ejected":
                assert time.monotonic() < deadline, "the wrong newcomer was never ejected"
                texts = corpus[start : start + 12]
                assert_rows_match(await client.embed(texts), texts, reference)
                start = (start + 12) % 180
                await anyio.sleep(0.01)
            assert_rows_match(await client.embed(corpus[:40]), corpus[:40], reference)
            row = _state(pool, bad.url)
    assert bad.url not in {e.backend for e in events}
    assert bad.texts_served["roll"] == bad.embed_requests * len(CANARY.texts)
    assert "vs majority of 3" in (row.canary or "")
