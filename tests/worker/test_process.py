"""The real CLI on loopback: concurrency, batching, load headers, metrics, backpressure."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from tests.helpers.worker_proc import WorkerProcess, start_worker

from embedbalance_worker.metrics import METRIC_NAMES


@pytest.fixture(scope="module")
def worker() -> Iterator[WorkerProcess]:
    """One default worker (float32, 2 threads) shared by this module."""
    with start_worker("--max-wait-ms", "5", "--torch-threads", "2") as proc:
        yield proc


def _embed(url: str, texts: list[str]) -> httpx.Response:
    return httpx.post(url + "/embed", json={"inputs": texts}, timeout=60)


def _metric(text: str, name: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_binds_loopback_and_announces_the_port(worker: WorkerProcess) -> None:
    """--port 0 binds an ephemeral port on 127.0.0.1 and prints it on stdout."""
    assert worker.url == f"http://127.0.0.1:{worker.port}"
    assert worker.port > 0


def test_64_concurrent_callers_get_their_own_rows_in_shared_batches(worker: WorkerProcess) -> None:
    """Concurrent single-text callers are batched together, yet each gets exactly its row."""
    texts = [f"text number {i} about {'cats' if i % 2 else 'ships'}" for i in range(64)]
    solo = np.array([_embed(worker.url, [t]).json()[0] for t in texts[:4]], dtype=np.float32)
    before = httpx.get(worker.url + "/metrics").text
    with ThreadPoolExecutor(64) as pool:
        responses = list(pool.map(lambda t: _embed(worker.url, [t]), texts))
    after = httpx.get(worker.url + "/metrics").text
    assert all(r.status_code == 200 for r in responses)
    rows = np.array([r.json()[0] for r in responses], dtype=np.float32)
    np.testing.assert_allclose(rows[:4], solo, atol=2e-4)
    sims = rows @ rows.T
    assert np.allclose(np.diag(sims), 1.0, atol=1e-4)
    assert (sims - np.eye(64) < 0.9999).all(), "two callers received the same row"
    passes = _metric(after, "embedbalance_worker_batch_size_count") - _metric(
        before, "embedbalance_worker_batch_size_count"
    )
    assert 0 < passes < 64, "no forward pass was shared"
    for r in responses:
        assert int(r.headers["x-queue-depth"]) >= 0
        assert int(r.headers["x-in-flight"]) >= 0


def test_multi_text_callers_keep_their_order(worker: WorkerProcess) -> None:
    """8 concurrent callers with 32 texts each get their rows in their own input order."""
    batches = [[f"caller {c} text {i} " + "pad " * (i % 9) for i in range(32)] for c in range(8)]
    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(lambda b: _embed(worker.url, b), batches))
    for batch, resp in zip(batches, responses, strict=True):
        rows = np.array(resp.json(), dtype=np.float32)
        check = np.array(_embed(worker.url, [batch[5], batch[17]]).json(), dtype=np.float32)
        np.testing.assert_allclose(rows[[5, 17]], check, atol=2e-4)


def test_metrics_expose_every_documented_family(worker: WorkerProcess) -> None:
    """/metrics lists every name in METRIC_NAMES and counts requests by route and status."""
    _embed(worker.url, ["count me"])
    text = httpx.get(worker.url + "/metrics").text
    for name in METRIC_NAMES:
        assert re.search(rf"^{name}(_bucket|_count|_sum)?[ {{]", text, re.M), name
    assert 'embedbalance_worker_requests_total{route="/embed",status="200"}' in text
    assert _metric(text, "embedbalance_worker_tokens_total") > 0


def test_metrics_pass_promtool(worker: WorkerProcess) -> None:
    """`promtool check metrics` accepts the exposition (names, types, help, units)."""
    from system import system_binary

    promtool = system_binary("promtool")
    _embed(worker.url, ["something to count"])
    text = httpx.get(worker.url + "/metrics").text
    done = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_bad_requests_do_not_disturb_concurrent_good_ones(worker: WorkerProcess) -> None:
    """Garbage sent alongside good requests fails alone; every good request succeeds."""

    def send(i: int) -> int:
        if i % 2:
            return httpx.post(
                worker.url + "/embed",
                content=b'{"inputs": [1, "x"',
                headers={"content-type": "application/json"},
            ).status_code
        return _embed(worker.url, [f"good {i}"]).status_code

    with ThreadPoolExecutor(16) as pool:
        codes = list(pool.map(send, range(32)))
    assert codes[0::2] == [200] * 16
    assert codes[1::2] == [400] * 16


def test_overload_answers_429_with_retry_after_and_load_headers() -> None:
    """A full queue answers 429 at once with Retry-After >= 1, JSON and load headers."""
    args = ("--delay-ms", "300", "--max-queue-tokens", "40", "--max-batch-size", "1")
    with start_worker(*args) as slow:
        with ThreadPoolExecutor(20) as pool:
            responses = list(pool.map(lambda i: _embed(slow.url, [f"load {i}"]), range(20)))
        codes = [r.status_code for r in responses]
        assert 429 in codes
        assert 200 in codes
        assert set(codes) <= {200, 429}
        for r in responses:
            if r.status_code == 429:
                assert int(r.headers["retry-after"]) >= 1
                assert r.json()["error_type"] == "overloaded"
                assert int(r.headers["x-queue-depth"]) >= 1
                assert int(r.headers["x-in-flight"]) >= 1
        assert _embed(slow.url, ["after the storm"]).status_code == 200
